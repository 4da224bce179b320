"""Service benchmark: N concurrent small merges submitted through the REST API to
`fisher-merge up`, end to end (HTTP, Redis, RQ workers forking a horse per job, local store).

For each worker count, a fresh `up` (private Redis) is started; N clients submit one isotropic
merge each of two tiny BERT checkpoints at once, then poll until every job has ended. Reported:
submitted, succeeded, lost (no terminal status within the deadline, or no merge.json at the
output: must be 0), wall time from the first submission to the last end, throughput, and
latency (submission to end) p50/p95, plus the queue wait (created to started) p50. The ratio
column is throughput against the first worker count, measured in the same run.

Usage: python bench/service_bench.py [--jobs 40] [--workers 1,2] [--workdir DIR]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.client import FisherMergeClient
from app.jobs.view import TERMINAL, JobView
from app.synthetic import save_tiny_classifier
from tests.conftest import free_port


@dataclass(frozen=True)
class Run:
    workers: int
    submitted: int
    succeeded: int
    lost: int
    wall_s: float
    latencies_s: list[float]
    queue_waits_s: list[float]

    @property
    def throughput(self) -> float:
        return self.succeeded / self.wall_s if self.wall_s else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_up(workdir: Path, workers: int) -> tuple[subprocess.Popen, FisherMergeClient]:
    port = free_port()
    env = {
        **os.environ,
        "FM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing there: a private one
        "FM_CACHE_URI": str(workdir / "cache"),
        "FM_MODEL_CACHE_DIR": str(workdir / "models"),
    }
    command = [sys.executable, "-m", "app.cli", "up", "--port", str(port)]
    up = subprocess.Popen(
        [*command, "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = FisherMergeClient(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while not client.ready():
        if time.monotonic() > deadline or up.poll() is not None:
            raise RuntimeError("fisher-merge up did not become ready")
        time.sleep(0.2)
    time.sleep(2.0)  # let the workers finish importing before the clock starts
    return up, client


def run(workdir: Path, models: list[Path], jobs: int, workers: int) -> Run:
    up, client = start_up(workdir / f"w{workers}", workers)
    try:
        out = workdir / f"w{workers}" / "out"

        def submit(i: int) -> tuple[str, float]:
            body = {
                "models": [str(path) for path in models],
                "method": "isotropic",
                "output_uri": str(out / f"m{i}"),
            }
            submitted = time.time()
            with FisherMergeClient(str(client.http.base_url)) as own:
                return own.merge(body).job_id, submitted

        started = time.time()
        with ThreadPoolExecutor(max_workers=min(jobs, 32)) as pool:
            submissions = list(pool.map(submit, range(jobs)))
        views: dict[str, JobView] = {}
        deadline = time.monotonic() + 60 + 10 * jobs
        while len(views) < jobs and time.monotonic() < deadline:
            for job_id, _ in submissions:
                if job_id not in views:
                    view = client.job(job_id)
                    if view.status in TERMINAL:
                        views[job_id] = view
            time.sleep(0.2)
        succeeded = [
            (views[job_id], at)
            for (job_id, at), i in zip(submissions, range(jobs), strict=True)
            if job_id in views
            and views[job_id].status == "succeeded"
            and (out / f"m{i}" / "merge.json").exists()
        ]
        ends = [view.ended_at.timestamp() for view, _ in succeeded if view.ended_at]
        return Run(
            workers=workers,
            submitted=len(submissions),
            succeeded=len(succeeded),
            lost=jobs - len(succeeded) - sum(v.status == "failed" for v in views.values()),
            wall_s=(max(ends) - started) if ends else 0.0,
            latencies_s=[view.ended_at.timestamp() - at for view, at in succeeded],
            queue_waits_s=[
                (view.started_at - view.created_at).total_seconds() for view, _ in succeeded
            ],
        )
    finally:
        up.send_signal(2)
        up.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="service-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        models = [save_tiny_classifier(workdir / f"in{i}", seed=i) for i in (1, 2)]
        runs = [run(workdir, models, args.jobs, int(n)) for n in args.workers.split(",")]
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, {args.jobs} concurrent merges, tiny BERTs")
    print(
        "| workers | submitted | succeeded | lost | wall s | merges/s | ratio "
        "| p50 s | p95 s | queue wait p50 s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = runs[0].throughput or 1.0
    for r in runs:
        print(
            f"| {r.workers} | {r.submitted} | {r.succeeded} | {r.lost} | {r.wall_s:.1f} "
            f"| {r.throughput:.2f} | {r.throughput / base:.2f}x "
            f"| {percentile(r.latencies_s, 0.5):.2f} | {percentile(r.latencies_s, 0.95):.2f} "
            f"| {statistics.median(r.queue_waits_s) if r.queue_waits_s else float('nan'):.2f} |"
        )


if __name__ == "__main__":
    main()
