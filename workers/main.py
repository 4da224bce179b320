"""The worker process: `fisher-merge worker --queues fisher,merge`.

RQ forks a work horse per job, so this parent never touches CUDA (a CUDA context does not
survive a fork); each job initialises CUDA in its own horse. SIGTERM lets the current job
finish (warm shutdown); a second SIGTERM stops it. The worker also serves the `callbacks`
queue and runs RQ's scheduler, which re-queues failed callback deliveries after their back-off.
"""

from redis import Redis
from rq import Queue, Worker
from rq.job import Job

from app.core.config import Settings, get_settings
from app.core.memory import return_freed_buffers_to_os
from app.jobs.callbacks import CALLBACK_QUEUE

QUEUES = ("fisher", "merge")


class HeartbeatWorker(Worker):
    """RQ gives a running job 60 s beyond its heartbeat period before another process may call
    it abandoned; three periods is enough and lets a lost job read failed much sooner."""

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return 3 * self.job_monitoring_interval


def run_worker(queues: list[str], burst: bool = False, settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    unknown = sorted(set(queues) - {*QUEUES, CALLBACK_QUEUE})
    if unknown:
        raise ValueError(f"unknown queues {unknown}; choose from {[*QUEUES, CALLBACK_QUEUE]}")
    return_freed_buffers_to_os()
    # Import the job code (torch, transformers) once here, so each forked horse starts warm;
    # importing torch does not initialise CUDA, so forking afterwards stays safe.
    import workers.jobs  # noqa: F401

    connection = Redis.from_url(settings.redis_url)
    names = [CALLBACK_QUEUE, *(name for name in queues if name != CALLBACK_QUEUE)]
    worker = HeartbeatWorker(
        [Queue(name, connection=connection) for name in names],
        connection=connection,
        job_monitoring_interval=settings.worker_heartbeat_s,
    )
    return worker.work(burst=burst, with_scheduler=True)
