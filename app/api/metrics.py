"""`GET /metrics` in Prometheus' text format: HTTP requests (count and latency by route
template), and, read from Redis at scrape time, queue depths, jobs by status and workers."""

import time
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from redis import Redis
from rq import Queue, Worker
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.jobs.callbacks import CALLBACK_QUEUE

QUEUES = ("fisher", "merge", CALLBACK_QUEUE)


class QueueCollector(Collector):
    def __init__(self, connection: Redis) -> None:
        self.connection = connection

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "fisher_merge_queue_depth", "Jobs waiting to be taken by a worker.", labels=["queue"]
        )
        jobs = GaugeMetricFamily(
            "fisher_merge_jobs", "Jobs by queue and status.", labels=["queue", "status"]
        )
        for name in QUEUES:
            queue = Queue(name, connection=self.connection)
            waiting = queue.count
            depth.add_metric([name], waiting)
            args = {"name": name, "connection": self.connection}
            counts = {
                "queued": waiting
                + DeferredJobRegistry(**args).count
                + ScheduledJobRegistry(**args).count,
                "running": StartedJobRegistry(**args).count,  # also fails abandoned jobs
                "succeeded": FinishedJobRegistry(**args).count,
                "failed": FailedJobRegistry(**args).count,
                "cancelled": CanceledJobRegistry(**args).count,
            }
            for status, count in counts.items():
                jobs.add_metric([name, status], count)
        workers = GaugeMetricFamily("fisher_merge_workers", "Workers registered in Redis.")
        workers.add_metric([], Worker.count(connection=self.connection))
        yield from (depth, jobs, workers)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fisher_merge_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fisher_merge_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            registry=self.registry,
        )

    def watch(self, connection: Redis) -> None:
        self.registry.register(QueueCollector(connection))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI, so streaming and background work are untouched; routes are labelled by their
    template (`/jobs/{job_id}`), never by the raw path, to keep label counts bounded."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500

        async def record_status(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(code)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
