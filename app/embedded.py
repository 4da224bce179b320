"""`fisher-merge up`: the API and one worker on this machine, with the local-directory store
and the Redis at FM_REDIS_URL, or a private `redis-server` started here when none answers.
Ctrl-C (or SIGTERM) stops all of it."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from redis import Redis
from redis.exceptions import RedisError

from app.core.config import Settings, get_settings


class EmbeddedError(Exception):
    """`up` cannot start (no Redis and no redis-server to start)."""


def _answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except (RedisError, OSError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def redis_for(settings: Settings) -> Iterator[str]:
    """The configured Redis when it answers; otherwise a private one for as long as we run."""
    if _answers(settings.redis_url):
        yield settings.redis_url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise EmbeddedError(
            f"no Redis answers at FM_REDIS_URL={settings.redis_url} and there is no redis-server "
            "on PATH to start one; install Redis or point FM_REDIS_URL at one"
        )
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with tempfile.TemporaryDirectory(prefix="fisher-merge-redis-") as folder:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder]
        process = subprocess.Popen(
            [*command, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us, and we stop it last
        )
        try:
            deadline = time.monotonic() + 10
            while not _answers(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise EmbeddedError(f"redis-server on port {port} did not start")
                time.sleep(0.05)
            print(f"fisher-merge up: started a private Redis at {url}", file=sys.stderr)
            yield url
        finally:
            _stop(process, grace_s=5)


class WorkerProcess:
    """A `fisher-merge worker`, restarted if it dies while we run."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.stopping = threading.Event()
        self.process = self._start()
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"], env=self.env, start_new_session=True
        )

    def _watch(self) -> None:
        while not self.stopping.wait(1.0):
            code = self.process.poll()
            if code is not None and not self.stopping.is_set():
                print(f"fisher-merge up: worker exited ({code}); restarting", file=sys.stderr)
                self.process = self._start()


def stop_workers(workers: list[WorkerProcess], grace_s: float = 5.0) -> None:
    """Warm shutdown (current jobs may finish) for a few seconds, then cold."""
    for worker in workers:
        worker.stopping.set()
        worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for worker in workers:
        with suppress(subprocess.TimeoutExpired):
            worker.process.wait(max(deadline - time.monotonic(), 0.1))
            continue
        worker.process.send_signal(signal.SIGTERM)  # a second signal: RQ stops the job
        _stop(worker.process, grace_s=10)


def _stop(process: subprocess.Popen, grace_s: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_up(host: str, port: int, workers: int = 1, settings: Settings | None = None) -> None:
    import uvicorn

    from app.main import create_app

    settings = settings or get_settings()
    with redis_for(settings) as redis_url:
        settings = settings.model_copy(update={"redis_url": redis_url})
        env = {**os.environ, "FM_REDIS_URL": redis_url}
        processes = [WorkerProcess(env) for _ in range(workers)]
        try:
            print(
                f"fisher-merge up: API on http://{host}:{port} (docs at /docs), "
                f"{workers} worker{'s' if workers > 1 else ''}, "
                f"store {settings.cache_uri}; Ctrl-C stops everything",
                file=sys.stderr,
            )
            # uvicorn stops on SIGINT/SIGTERM, then re-raises the signal to whatever handler
            # was there before it; a quiet one spares the user a KeyboardInterrupt traceback
            signal.signal(signal.SIGINT, lambda *_: None)
            uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
        finally:
            stop_workers(processes)
