"""The `fisher-merge` command: `merge`, `fisher`, `worker`, `serve` and `up`.

Every subcommand builds the same request model the REST API takes, from `--config FILE.json`
(`-` for standard input) with flags as shortcuts that override its fields.
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pydantic import ValidationError

from app.core.memory import return_freed_buffers_to_os
from app.merge.engine import Progress, ProgressCallback, run_merge
from app.merge.methods import METHODS
from app.schemas import FisherRequest, MergeRequest
from app.storage import StorageError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class UsageError(ValueError):
    """The command line itself is wrong."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    return_freed_buffers_to_os()
    try:
        return int(args.handler(args))
    except ValidationError as error:
        return _fail(f"invalid request: {describe_validation_error(error)}", EXIT_BAD_INPUT)
    except (UsageError, ValueError, FileNotFoundError) as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    except StorageError as error:
        return _fail(f"storage: {error}", EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was written", 130)


def _fail(message: str, code: int) -> int:
    print(f"fisher-merge: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def describe_validation_error(error: ValidationError) -> str:
    """One line: `field.path: message` for each problem."""
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"fisher-merge: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fisher-merge", description="Fisher-weighted merging of transformers checkpoints."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser(
        "merge",
        help="merge checkpoints",
        description="Merge checkpoints. The JSON body of POST /merge, with flags as shortcuts.",
    )
    merge.add_argument("--config", help="request JSON file, or - for standard input")
    merge.add_argument("--model", action="append", metavar="URI", help="checkpoint (repeat)")
    merge.add_argument(
        "--fisher", action="append", metavar="URI", help="Fisher prefix, one per --model, in order"
    )
    merge.add_argument("--lambdas", help="comma-separated weights, one per model")
    merge.add_argument("--method", choices=sorted(METHODS))
    merge.add_argument("--out", dest="output_uri", metavar="URI", help="output prefix")
    merge.add_argument("--target", type=int, help="index of the model whose head is kept")
    merge.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    merge.add_argument("--fisher-floor", type=float)
    merge.add_argument("--normalize-fishers", action="store_true", default=None)
    merge.add_argument("--max-shard-size", help="largest output shard, e.g. 2GB")
    merge.add_argument("--overwrite", action="store_true", default=None)
    merge.add_argument("--quiet", action="store_true", help="no progress bar")
    merge.set_defaults(handler=_merge)

    fisher = commands.add_parser(
        "fisher",
        help="compute (or find in the cache) a model's diagonal Fisher",
        description="The JSON body of POST /fisher, with flags as shortcuts.",
    )
    fisher.add_argument("--config", help="request JSON file, or - for standard input")
    fisher.add_argument("--model", metavar="URI", help="checkpoint prefix")
    fisher.add_argument("--dataset", metavar="URI", help="JSON Lines data set")
    fisher.add_argument("--text-field", action="append", help="text field (repeat for pairs)")
    fisher.add_argument("--label-field")
    fisher.add_argument("--task", choices=["sequence-classification", "causal-lm"])
    fisher.add_argument("--fisher-type", choices=["exact", "sampled", "empirical"])
    for flag in ("--n-examples", "--n-samples", "--batch-size", "--max-seq-length", "--seed"):
        fisher.add_argument(flag, type=int)
    fisher.add_argument("--shuffle", action="store_true", default=None)
    fisher.add_argument("--out", dest="output_uri", metavar="URI", help="instead of the cache")
    fisher.add_argument("--quiet", action="store_true", help="no progress bar")
    fisher.set_defaults(handler=_fisher)

    worker = commands.add_parser(
        "worker", help="run an RQ worker", description="Take jobs from the queues in Redis."
    )
    worker.add_argument("--queues", default="fisher,merge", help="comma-separated queue names")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.set_defaults(handler=_worker)

    serve = commands.add_parser("serve", help="run the REST API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=_serve)

    up = commands.add_parser(
        "up",
        help="run the API and one worker on this machine",
        description="The API and one worker with the local store, and the Redis at "
        "FM_REDIS_URL or a private redis-server started here. Ctrl-C stops everything.",
    )
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    up.set_defaults(handler=_up)
    return parser


def load_config(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--config {path}: not valid JSON ({error})") from None
    if not isinstance(body, dict):
        raise UsageError(f"--config {path}: expected a JSON object")
    return body


def merge_body(args: argparse.Namespace) -> dict[str, Any]:
    body = load_config(args.config)
    if args.model:
        body["models"] = [{"uri": uri} for uri in args.model]
    if args.fisher:
        models = [{"uri": m} if isinstance(m, str) else dict(m) for m in body.get("models", [])]
        if len(args.fisher) != len(models):
            raise UsageError(f"{len(args.fisher)} --fisher values for {len(models)} models")
        for model, fisher in zip(models, args.fisher, strict=True):
            model["fisher"] = fisher
        body["models"] = models
    if args.lambdas is not None:
        try:
            body["lambdas"] = [float(value) for value in args.lambdas.split(",")]
        except ValueError:
            raise UsageError(f"--lambdas {args.lambdas!r}: expected numbers like 0.7,0.3") from None
    return _with_flags(body, args, MERGE_FLAGS)


MERGE_FLAGS = {
    name: name
    for name in (
        "method",
        "output_uri",
        "target",
        "dtype",
        "fisher_floor",
        "normalize_fishers",
        "max_shard_size",
        "overwrite",
    )
}
FISHER_FLAGS = {
    name: name
    for name in (
        "model",
        "task",
        "fisher_type",
        "n_examples",
        "n_samples",
        "batch_size",
        "max_seq_length",
        "seed",
        "shuffle",
        "output_uri",
    )
}
DATASET_FLAGS = {"dataset": "uri", "text_field": "text_fields", "label_field": "label_field"}


def _with_flags(
    body: dict[str, Any], args: argparse.Namespace, flags: dict[str, str]
) -> dict[str, Any]:
    """`body` with every flag that was given (attribute name -> field) set over it."""
    given = {field: getattr(args, flag) for flag, field in flags.items()}
    return body | {field: value for field, value in given.items() if value is not None}


def fisher_body(args: argparse.Namespace) -> dict[str, Any]:
    body = load_config(args.config)
    dataset = _with_flags(dict(body.get("dataset") or {}), args, DATASET_FLAGS)
    if dataset:
        body["dataset"] = dataset
    return _with_flags(body, args, FISHER_FLAGS)


def _fisher(args: argparse.Namespace) -> int:
    from app.fisher.engine import run_fisher

    request = FisherRequest.model_validate(fisher_body(args))
    with _progress_bar(enabled=not args.quiet, unit="examples") as progress:
        result = run_fisher(request, progress=progress and _counts(progress))
    print(
        json.dumps(
            {
                "fisher_uri": result.fisher_uri,
                "cached": result.cached,
                "key": result.key,
                "n_examples": result.manifest["n_examples"],
            },
            indent=2,
        )
    )
    return 0


def _counts(progress: ProgressCallback) -> Callable[[int, int], None]:
    return lambda done, total: progress(Progress(done=done, total=total, unit="examples"))


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    uvicorn.run(create_app(), host=args.host, port=args.port)
    return 0


def _up(args: argparse.Namespace) -> int:
    from app.embedded import EmbeddedError, run_up

    try:
        if args.workers < 1:
            raise UsageError("--workers must be at least 1")
        run_up(args.host, args.port, args.workers)
    except EmbeddedError as error:
        raise UsageError(str(error)) from None
    return 0


def _worker(args: argparse.Namespace) -> int:
    from workers.main import run_worker

    run_worker([name.strip() for name in args.queues.split(",") if name.strip()], args.burst)
    return 0


def _merge(args: argparse.Namespace) -> int:
    request = MergeRequest.model_validate(merge_body(args))
    if any(model.fisher == "auto" for model in request.models):
        from app.fisher.auto import resolve_auto_fishers

        with _progress_bar(enabled=not args.quiet, unit="examples") as progress:
            request = resolve_auto_fishers(request, progress=progress and _counts(progress))
    with _progress_bar(enabled=not args.quiet) as progress:
        result = run_merge(request, progress=progress)
    summary = {
        "output_uri": result.output_uri,
        "files": result.files,
        "merged_tensors": result.manifest["merged"],
        "copied_from_target": result.manifest["copied_from_target"],
    }
    print(json.dumps(summary, indent=2))
    return 0


class _progress_bar:
    """A tqdm bar on an interactive terminal; nothing otherwise."""

    def __init__(self, enabled: bool, unit: str = "bytes") -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.unit = unit
        self.bar: Any = None

    def __enter__(self) -> ProgressCallback | None:
        if not self.enabled:
            return None
        from tqdm import tqdm

        if self.unit == "bytes":
            self.bar = tqdm(total=0, unit="B", unit_scale=True, desc="merging", file=sys.stderr)
        else:
            self.bar = tqdm(total=0, unit=" examples", desc="fisher", file=sys.stderr)
        return self._update

    def _update(self, progress: Progress) -> None:
        self.bar.total = progress.total
        self.bar.update(progress.done - self.bar.n)

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.close()


if __name__ == "__main__":
    sys.exit(main())
