"""Choose streamrec's defaults on the FIRST half of each stream only.

Runs the prequential protocol on the first half of each dataset's events (the
second half is never read) for the current defaults and for each value of
each swept parameter, one parameter at a time around the defaults, beside
sequential rules (the strongest peer) on the same half::

    .venv/bin/python -m benchmarks.tune --sweep seq_weight=0.5,1,2 \\
        --sweep pop_weight=0,0.5,1 --batch-size 1

Values are parsed as the default's type (``true``/``false`` for booleans).
The confirmation on the second half is ``python -m benchmarks.peers --half
second``, which tuning never looks at.
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
from typing import Any  # noqa: E402

from models.evaluation import (  # noqa: E402
    EvaluationResult,
    Stream,
    StreamrecRecommender,
    encode,
    first_half,
    prequential,
)
from models.mf import MFConfig  # noqa: E402


def parse_value(default: Any, text: str) -> Any:
    """``text`` as the type of ``default``."""
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() == "true"
    return type(default)(text)


def sweeps(config: MFConfig, specs: Sequence[str]) -> list[tuple[str, MFConfig]]:
    """(label, config) for the defaults, then each NAME=v1,v2 value in turn."""
    runs = [("defaults", config)]
    for spec in specs:
        name, _, values = spec.partition("=")
        default = getattr(config, name)
        for text in values.split(","):
            value = parse_value(default, text)
            runs.append(
                (f"{name}={text}", dataclasses.replace(config, **{name: value}))
            )
    return runs


def load(dataset: str, limit: int | None) -> Stream:
    from benchmarks.peers import DATASETS, FAV_AS
    from producers.datasets import read_events_with_stats

    path = DATASETS.get(dataset, Path(dataset))
    events, _ = read_events_with_stats(path, limit=limit, fav_as=FAV_AS)
    return first_half(encode(events))


def run(stream: Stream, config: MFConfig, batch_size: int) -> EvaluationResult:
    return prequential(
        stream, StreamrecRecommender(config, compiled=True), batch_size=batch_size
    )


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.peer_models import SequentialRules
    from benchmarks.peers import DATASETS, _settings
    from streams.worker import mf_config

    parser = argparse.ArgumentParser(prog="python -m benchmarks.tune")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--sweep", action="append", default=[], metavar="NAME=V,V")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--limit", type=int, help="read only this many events")
    args = parser.parse_args(argv)
    config = mf_config(_settings())
    for dataset in args.datasets:
        stream = load(dataset, args.limit)
        peer = prequential(stream, SequentialRules(), batch_size=1)
        best = peer.hits(20).sum()
        print(
            f"== {dataset}, first half: {len(stream):,} events, {peer.tests:,} "
            f"tests; sequential-rules HR@20 {peer.hits(20).mean():.6f} ({best} hits)"
        )
        for label, candidate in sweeps(config, args.sweep):
            result = run(stream, candidate, args.batch_size)
            hits = result.hits(20).sum()
            print(
                f"{label:28s} HR@20 {result.hits(20).mean():.6f}  hits {hits:6d}  "
                f"ratio {hits / max(best, 1):.3f}  {result.events_per_second:,.0f} ev/s"
            )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
