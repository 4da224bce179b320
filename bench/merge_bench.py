"""Merge benchmark: peak memory and wall time of whole merge processes on BERT-base-shaped models.

Three fp32 checkpoints (with Fisher files) are written to a scratch folder for each shape:
BERT-base, twice as deep, and with its largest tensor (the word embeddings) twice as large. Each
contender runs as its own process, timed from outside; peak RSS comes from its rusage.

  (a) baseline  load every model fully with safetensors, average, save (the naive way)
  (b) isotropic `fisher-merge merge --method isotropic` (and again with FM_LOCAL_FSYNC=false,
                since the baseline never waits for the disk)
  (c) fisher    `fisher-merge merge --method fisher`
  (d) mergekit  `mergekit-yaml` linear merge, when the command is found (MERGEKIT_YAML or PATH)

Wall time is the median of --repeat runs (interleaved), peak RSS the largest.

Usage: python bench/merge_bench.py [--shapes base,deep,wide] [--workdir DIR] [--repeat 3]
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SHAPES = {
    "base": {},
    "deep": {"num_hidden_layers": 24},
    "wide": {"vocab_size": 2 * 30522},
}
BASELINE = """
import sys, torch
from safetensors.torch import load_file, save_file
paths, out = sys.argv[1:-1], sys.argv[-1]
states = [load_file(p) for p in paths]
merged = {name: sum(s[name].float() for s in states) / len(states) for name in states[0]}
save_file(merged, out, metadata={"format": "pt"})
"""


@dataclass(frozen=True)
class Measurement:
    shape: str
    contender: str
    wall_s: float
    peak_rss_bytes: int


def make_models(root: Path, shape: str, count: int) -> list[Path]:
    """`count` random fp32 checkpoints of one shape, each with a Fisher file beside it.

    Runs in a child process: this one stays small, since a process spawned from it would
    inherit its peak RSS (exec records the old address space's high-water mark)."""
    if not all((root / shape / f"model{i}" / "config.json").exists() for i in range(count)):
        command = [sys.executable, __file__, "--make", shape, "--workdir", str(root)]
        subprocess.run([*command, "--models", str(count)], check=True)
    return [root / shape / f"model{i}" for i in range(count)]


def write_models(root: Path, shape: str, count: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(**SHAPES[shape], architectures=["BertForSequenceClassification"])
    with torch.device("meta"):
        specs = BertForSequenceClassification(config).state_dict()
    for i in range(count):
        path = root / shape / f"model{i}"
        if not (path / "model.safetensors").exists():
            path.mkdir(parents=True, exist_ok=True)
            generator = torch.Generator().manual_seed(i)
            state = {n: torch.randn(t.shape, generator=generator) for n, t in specs.items()}
            save_file(state, path / "model.safetensors", metadata={"format": "pt"})
            fisher = {n: t.square_() for n, t in state.items()}
            (path / "fisher").mkdir(exist_ok=True)
            save_file(fisher, path / "fisher" / "fisher.safetensors", metadata={"format": "pt"})
            del state, fisher
        config.to_json_file(path / "config.json")


def run_measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one process.

    posix_spawn, not fork: a forked child's peak RSS would start at this process's own."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed when collected)
    actions = [
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_DUP2, log.fileno(), 2),
    ]
    program = shutil.which(command[0]) or command[0]
    started = time.perf_counter()
    pid = os.posix_spawn(program, command, {**os.environ, **(env or {})}, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        log.seek(0)
        raise RuntimeError(f"{command[:3]} failed: {log.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def warm_page_cache(paths: list[Path]) -> None:
    for path in paths:
        for file in path.rglob("*.safetensors"):
            with open(file, "rb") as handle:
                while handle.read(64 << 20):
                    pass


def contenders(models: list[Path], out: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    python = sys.executable
    cli = [python, "-m", "app.cli", "merge", "--quiet", "--overwrite"]
    found = {
        "baseline": (
            [
                python,
                "-c",
                BASELINE,
                *[str(m / "model.safetensors") for m in models],
                str(out / "baseline.safetensors"),
            ],
            {},
        ),
        "isotropic": (
            [
                *cli,
                "--method",
                "isotropic",
                "--out",
                str(out / "isotropic"),
                *[arg for m in models for arg in ("--model", str(m))],
            ],
            {"FM_DEVICE": "cpu"},
        ),
        "isotropic, no fsync": (
            [
                *cli,
                "--method",
                "isotropic",
                "--out",
                str(out / "isotropic-nofsync"),
                *[arg for m in models for arg in ("--model", str(m))],
            ],
            {"FM_DEVICE": "cpu", "FM_LOCAL_FSYNC": "false"},
        ),
        "fisher": (
            [
                *cli,
                "--method",
                "fisher",
                "--out",
                str(out / "fisher"),
                *[arg for m in models for arg in ("--model", str(m))],
                *[arg for m in models for arg in ("--fisher", str(m / "fisher"))],
            ],
            {"FM_DEVICE": "cpu"},
        ),
    }
    mergekit = os.environ.get("MERGEKIT_YAML") or shutil.which("mergekit-yaml")
    if mergekit:
        config = out / "mergekit.yml"
        lines = ["merge_method: linear", "dtype: float32", "models:"]
        for model in models:
            lines += [f"  - model: {model}", "    parameters:", "      weight: 1.0"]
        config.write_text("\n".join(lines) + "\n")
        found["mergekit"] = ([mergekit, str(config), str(out / "mergekit")], {})
    return found


def table(results: list[Measurement]) -> str:
    lines = [
        "| shape | contender | wall s | peak RSS MiB | wall / (a) | RSS / (a) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    baselines = {r.shape: r for r in results if r.contender == "baseline"}
    for r in results:
        base = baselines[r.shape]
        lines.append(
            f"| {r.shape} | {r.contender} | {r.wall_s:.2f} | {r.peak_rss_bytes / 2**20:.0f} | "
            f"{r.wall_s / base.wall_s:.2f} | {r.peak_rss_bytes / base.peak_rss_bytes:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="base,deep,wide")
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (median)")
    parser.add_argument("--workdir", help="scratch folder kept between runs (default: temporary)")
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--make", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        write_models(Path(args.workdir), args.make, args.models)
        return
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fm-bench-"))
    results = []
    try:
        for shape in args.shapes.split(","):
            models = make_models(workdir, shape, args.models)
            out = workdir / shape / "out"
            out.mkdir(exist_ok=True)
            runs: dict[str, list[tuple[float, int]]] = {}
            for _ in range(args.repeat):  # interleaved, so drift hits every contender alike
                for name, (command, env) in contenders(models, out).items():
                    warm_page_cache(models)
                    wall, rss = run_measured(command, env)
                    runs.setdefault(name, []).append((wall, rss))
                    print(f"{shape:5} {name:20} {wall:7.2f} s {rss / 2**20:8.0f} MiB", flush=True)
            for name, measured in runs.items():
                wall = statistics.median(wall for wall, _ in measured)
                results.append(Measurement(shape, name, wall, max(rss for _, rss in measured)))
            shutil.rmtree(out)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.machine()}, {args.models} fp32 models per shape, median of {args.repeat} runs"
    )
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=2))


if __name__ == "__main__":
    main()
