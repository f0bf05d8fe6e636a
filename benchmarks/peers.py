"""streamrec beside its peers, under the prequential protocol of EVALUATION.md.

Every system sees the same stream, test-then-train, with the same micro-batch
size (default 1: the protocol to the letter), through
:func:`models.evaluation.prequential`:

``popularity``        the protocol's reference baseline
``river-FunkMF``      River's FunkMF, positives plus 4 sampled negatives
``river-BiasedMF``    River's BiasedMF, the same
``implicit-ALS``      implicit's ALS refit from scratch every 5 % of the stream
``ISGD``              Vinagre et al. 2014, incremental SGD, positive-only
``sequential-rules``  Ludewig and Jannach's SR over each shopper's stream
``streamrec``         streamrec's model at its default configuration

One table per dataset (HR/MRR/NDCG at 10 and 20, tests, events/s), then
streamrec's HR@20 over the best peer's with a paired 95 % bootstrap interval
(test events resampled, the same draw for both). Needs the ``peers`` extra::

    .venv/bin/pip install -e '.[peers]'
    .venv/bin/python -m benchmarks.peers --json-out peers.json

Datasets are names (``movielens``, ``taobao``) or paths to any file that
``producers.datasets`` reads. Taobao ``fav`` lines are kept as ``click``
events, as the data README's check values count them.
"""

from __future__ import annotations

import os

# One BLAS thread for every system, as the worker runs: on 2 cores a second
# thread only contends, and implicit warns about threaded BLAS (before numpy).
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.common import REPO_ROOT, machine_notes  # noqa: E402
from models.evaluation import (  # noqa: E402
    HALVES,
    EvaluationResult,
    Popularity,
    Recommender,
    Stream,
    bootstrap_ratio,
    encode,
    first_half,
    second_half,
)
from models.mf import MFConfig  # noqa: E402
from streams.evaluate import evaluate_systems, format_table, write_json  # noqa: E402

DATA = REPO_ROOT.parent / "shared" / "data"
DATASETS = {
    "movielens": DATA / "movielens-latest-small" / "ratings.csv",
    "taobao": DATA / "taobao-userbehavior" / "user_behavior_head.csv.gz",
}
SYSTEMS = (
    "popularity",
    "river-FunkMF",
    "river-BiasedMF",
    "implicit-ALS",
    "ISGD",
    "sequential-rules",
    "streamrec",
)
FAV_AS = "click"


def make_factory(
    name: str, stream: Stream, config: MFConfig
) -> Callable[[], Recommender]:
    """A maker of a fresh system called ``name`` for this stream."""
    from benchmarks import peer_models as peers
    from models.evaluation import StreamrecRecommender

    factories: dict[str, Callable[[], Recommender]] = {
        "popularity": Popularity,
        "river-FunkMF": lambda: peers.RiverMF("funk"),
        "river-BiasedMF": lambda: peers.RiverMF("biased"),
        "implicit-ALS": lambda: peers.PeriodicALS(len(stream)),
        "ISGD": peers.ISGD,
        "sequential-rules": peers.SequentialRules,
        "streamrec": lambda: StreamrecRecommender(config, compiled=True),
    }
    return factories[name]


def best_peer_ratio(
    results: Sequence[EvaluationResult], resamples: int, seed: int = 0
) -> dict[str, Any] | None:
    """streamrec's HR@20 over the best other system's, with its interval."""
    by_name = {r.name: r for r in results}
    ours = by_name.get("streamrec")
    peers = [r for r in results if r.name != "streamrec"]
    if ours is None or not peers:
        return None
    best = max(peers, key=lambda r: r.hits(20).mean())
    if not (best.positions == ours.positions).all():
        raise AssertionError("systems were tested on different events")
    interval = bootstrap_ratio(
        ours.hits(20), best.hits(20), resamples=resamples, seed=seed
    )
    return {"best_peer": best.name, **interval.as_dict()}


def half_ratios(
    results: Sequence[EvaluationResult], events: int, resamples: int
) -> dict[str, Any]:
    """:func:`best_peer_ratio` on the tests of each half of a whole-stream run.

    A system's first-half tests are those a run over the first half alone
    would make, with the same answers for every system whose state depends
    only on the events so far (all but implicit-ALS, whose refit points are
    fractions of the whole stream).
    """
    halves = {}
    for half in HALVES:
        parts = []
        for result in results:
            second = second_half(result, events)
            if half == "second":
                parts.append(second)
                continue
            keep = result.positions < events // 2
            parts.append(
                EvaluationResult(
                    result.name,
                    result.events,
                    result.batch_size,
                    result.seconds,
                    result.ranks[keep],
                    result.positions[keep],
                )
            )
        halves[half] = best_peer_ratio(parts, resamples)
    return halves


def run_dataset(
    label: str, path: Path, systems: Sequence[str], args: argparse.Namespace
) -> dict[str, Any]:
    from producers.datasets import read_events_with_stats
    from streams.worker import mf_config

    config = mf_config(_settings())
    events, stats = read_events_with_stats(path, limit=args.limit, fav_as=FAV_AS)
    stream = encode(events)
    if args.half == "first":
        stream = first_half(stream)  # the second half is never read
    factories = [make_factory(name, stream, config) for name in systems]
    results = evaluate_systems(stream, factories, batch_size=args.batch_size)
    if args.half == "second":
        # whole stream learned, only the tests of its second half counted
        results = [second_half(r, len(stream)) for r in results]
    ratio = best_peer_ratio(results, args.resamples)
    _print_dataset(label, stats, stream, results, ratio, args.batch_size)
    halves = None
    if args.half:
        print(f"(tests of the {args.half} half only)")
    else:
        halves = half_ratios(results, len(stream), args.resamples)
        for half, figures in halves.items():
            if figures is not None:
                print(
                    f"  {half} half: / {figures['best_peer']} = "
                    f"{figures['ratio']:.3f} [{figures['low']:.3f}, "
                    f"{figures['high']:.3f}]"
                )
    return {
        "dataset": label,
        "path": str(path),
        "format": stats.fmt,
        "fav_as": FAV_AS if stats.fmt == "taobao" else None,
        "events": len(stream),
        "users": len(stream.user_ids),
        "items": len(stream.item_ids),
        "batch_size": args.batch_size,
        "half": args.half,
        "streamrec_config": asdict(config),
        "results": [r.summary() for r in results],
        "streamrec_over_best_peer_hr@20": ratio,
        "by_half": halves,
    }


def _settings():  # type: ignore[no-untyped-def]
    from config.settings import load_settings

    return load_settings()


def _print_dataset(
    label: str,
    stats: Any,
    stream: Stream,
    results: Sequence[EvaluationResult],
    ratio: dict[str, Any] | None,
    batch_size: int,
) -> None:
    print(
        f"\n== {label}: {stats.path.name} ({stats.fmt}), {len(stream):,} events, "
        f"{len(stream.user_ids):,} users, {len(stream.item_ids):,} items, "
        f"micro-batch {batch_size}"
    )
    print(format_table(results))
    if ratio is not None:
        print(
            f"streamrec HR@20 / {ratio['best_peer']} HR@20 = {ratio['ratio']:.3f} "
            f"(95 % paired bootstrap over test events, {ratio['resamples']:,} "
            f"resamples: {ratio['low']:.3f} to {ratio['high']:.3f})"
        )
    sys.stdout.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers",
        description="streamrec beside popularity, River, implicit ALS, ISGD and "
        "sequential rules, prequential (EVALUATION.md).",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(DATASETS),
        help=f"names ({', '.join(DATASETS)}) or dataset file paths",
    )
    parser.add_argument(
        "--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS, metavar="NAME"
    )
    parser.add_argument("--limit", type=int, help="read only this many events")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--half",
        choices=HALVES,
        help="first: only the first half of each stream (for tuning); second: "
        "the whole stream, tests of its second half only (to confirm)",
    )
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--json-out", help="write every figure to this JSON file")
    return parser


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for package in ("numpy", "scipy", "river", "implicit"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "missing"
    return found


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.batch_size < 1:
        print("--batch-size must be at least 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    runs = []
    for dataset in args.datasets:
        path = DATASETS.get(dataset, Path(dataset))
        if not path.exists():
            print(f"no dataset file at {path}", file=sys.stderr)
            return 2
        runs.append(run_dataset(dataset, path, args.systems, args))
    elapsed = time.perf_counter() - started
    print(f"\nall done in {elapsed:.0f} s")
    if args.json_out:
        payload = {
            "command": " ".join(["python -m benchmarks.peers", *argv]),
            "seconds": elapsed,
            "machine": machine_notes(),
            "versions": _versions(),
            "datasets": runs,
        }
        write_json(args.json_out, payload)
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
