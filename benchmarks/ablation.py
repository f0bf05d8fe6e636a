"""What each piece of streamrec's model is worth: switch one off at a time.

Prequential (EVALUATION.md) on each dataset, the default configuration and
then one piece switched off per row, beside sequential rules (the strongest
peer) on the same events::

    .venv/bin/python -m benchmarks.ablation                  # whole streams
    .venv/bin/python -m benchmarks.ablation --half first     # the tuning half

``--half second`` runs the whole stream and counts only the tests of its
second half. Prints HR@10, HR@20, MRR@20, NDCG@20 and events/s per row, and
each row's HR@20 over the defaults'.
"""

from __future__ import annotations

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from models.evaluation import (  # noqa: E402
    HALVES,
    EvaluationResult,
    StreamrecRecommender,
    encode,
    first_half,
    prequential,
    second_half,
)
from models.mf import MFConfig  # noqa: E402

UNIFORM_WEIGHTS = {"view": 1.0, "click": 1.0, "add_to_cart": 1.0, "purchase": 1.0}


def switched_off(config: MFConfig) -> list[tuple[str, MFConfig]]:
    """The defaults, then each piece switched off on its own."""
    off = dataclasses.replace
    return [
        ("defaults", config),
        ("- sequence part", off(config, seq_weight=0.0)),
        ("- popularity-aware negatives", off(config, popular_negatives=0.0)),
        ("- adaptive learning rates", off(config, adagrad=False)),
        ("- item biases", off(config, item_bias=False)),
        ("- recency weighting", off(config, seq_recency=1.0)),
        ("- event-type weights", off(config, event_weights=UNIFORM_WEIGHTS)),
        ("- popularity blending", off(config, pop_weight=0.0)),
        ("- factor model", off(config, learning_rate=1e-9, item_bias=False)),
        ("- candidates (whole catalogue)", off(config, candidate_popular=0)),
    ]


def evaluate(stream, model, batch_size: int, half: str | None) -> EvaluationResult:  # type: ignore[no-untyped-def]
    result = prequential(stream, model, batch_size=batch_size)
    return second_half(result, len(stream)) if half == "second" else result


def row(label: str, result: EvaluationResult, baseline: float) -> str:
    figures = result.metrics()
    share = figures["hr@20"] / baseline if baseline else float("nan")
    return (
        f"{label:30s} {figures['hr@10']:9.6f} {figures['hr@20']:9.6f} "
        f"{figures['mrr@20']:9.6f} {figures['ndcg@20']:9.6f} {share:7.3f} "
        f"{result.events_per_second:9,.0f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.peer_models import SequentialRules
    from benchmarks.peers import DATASETS, FAV_AS, _settings
    from producers.datasets import read_events_with_stats
    from streams.worker import mf_config

    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--half", choices=HALVES)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--limit", type=int, help="read only this many events")
    args = parser.parse_args(argv)
    config = mf_config(_settings())
    header = (
        f"{'configuration':30s} {'HR@10':>9s} {'HR@20':>9s} {'MRR@20':>9s} "
        f"{'NDCG@20':>9s} {'/dflt':>7s} {'events/s':>9s}"
    )
    for dataset in args.datasets:
        path = DATASETS.get(dataset, Path(dataset))
        events, _ = read_events_with_stats(path, limit=args.limit, fav_as=FAV_AS)
        stream = encode(events)
        if args.half == "first":
            stream = first_half(stream)
        peer = evaluate(stream, SequentialRules(), 1, args.half)
        print(
            f"\n== {dataset} ({f'{args.half} half' if args.half else 'whole stream'}, "
            f"{len(stream):,} events, "
            f"{peer.tests:,} tests, micro-batch {args.batch_size})\n{header}"
        )
        baseline = 0.0
        for label, candidate in switched_off(config):
            model = StreamrecRecommender(candidate, compiled=True)
            result = evaluate(stream, model, args.batch_size, args.half)
            baseline = baseline or result.metrics()["hr@20"]
            print(row(label, result, baseline))
            sys.stdout.flush()
        print(row("sequential-rules (peer, B=1)", peer, baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
