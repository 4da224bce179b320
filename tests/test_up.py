"""`fisher-merge up` from nothing: no Redis at FM_REDIS_URL, so it starts its own; the API
answers /readyz, a merge submitted through the client succeeds, Ctrl-C stops everything."""

import os
import signal
import subprocess
import sys

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.client import FisherMergeClient
from app.synthetic import save_tiny_classifier
from tests.conftest import free_port
from tests.reference import load_state
from tests.service import wait_for


def test_up_starts_everything_and_ctrl_c_stops_it(tmp_path):
    save_tiny_classifier(tmp_path / "a", seed=1)
    save_tiny_classifier(tmp_path / "b", seed=2)
    port = free_port()
    env = {
        **os.environ,
        "FM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing answers there
        "FM_CACHE_URI": str(tmp_path / "cache"),
        "FM_MODEL_CACHE_DIR": str(tmp_path / "models"),
    }
    up = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = FisherMergeClient(f"http://127.0.0.1:{port}")
        wait_for(client.ready, timeout_s=90, what="fisher-merge up to answer /readyz")
        body = {
            "models": [str(tmp_path / "a"), str(tmp_path / "b")],
            "method": "isotropic",
            "output_uri": str(tmp_path / "merged"),
        }
        view = client.wait(client.merge(body).job_id, timeout_s=120)
        assert view.status == "succeeded", view
        assert set(load_state(tmp_path / "merged")) == set(load_state(tmp_path / "a"))
    finally:
        up.send_signal(signal.SIGINT)
        _, stderr = up.communicate(timeout=60)
    assert up.returncode == 0, stderr
    private = stderr.split("started a private Redis at ")[1].split()[0]
    try:
        Redis.from_url(private, socket_connect_timeout=1).ping()
        raise AssertionError("the private Redis is still running")
    except RedisConnectionError:
        pass
    assert "Traceback" not in stderr
