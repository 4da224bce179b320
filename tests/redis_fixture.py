"""The real Redis, database 15, emptied around each test that uses it."""

import os

import pytest
from redis import Redis

REDIS_URL = os.environ.get("FM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis() -> Redis:
    connection = Redis.from_url(REDIS_URL)
    connection.ping()  # .ci/run starts a Redis when none answers
    connection.flushdb()
    yield connection
    connection.flushdb()
