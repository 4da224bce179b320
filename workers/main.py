"""The worker process: `fisher-merge worker --queues fisher,merge`.

RQ forks a work horse per job, so this parent never touches CUDA (a CUDA context does not
survive a fork); each job initialises CUDA in its own horse. SIGTERM lets the current job
finish (warm shutdown); a second SIGTERM stops it.
"""

from redis import Redis
from rq import Queue, Worker

from app.core.config import Settings, get_settings
from app.core.memory import return_freed_buffers_to_os

QUEUES = ("fisher", "merge")


def run_worker(queues: list[str], burst: bool = False, settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown:
        raise ValueError(f"unknown queues {unknown}; choose from {list(QUEUES)}")
    return_freed_buffers_to_os()
    connection = Redis.from_url(settings.redis_url)
    worker = Worker([Queue(name, connection=connection) for name in queues], connection=connection)
    return worker.work(burst=burst)
