"""``streamrec evaluate``: prequential quality of streamrec against popularity.

The dataset is replayed in-process through the model code the worker runs
(:class:`models.evaluation.StreamrecRecommender`, configured from the settings
like the worker; at micro-batch 1 its compiled loop,
:mod:`models.compiled_replay`, unless ``--python-loop``), under
``../shared/EVALUATION.md``; the reference popularity
baseline runs on the same stream with the same micro-batch size. The table,
JSON and plot helpers here are shared with ``benchmarks.peers``.

matplotlib is imported only when a plot is asked for (an optional extra).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.evaluation import (
    CUTOFFS,
    EvaluationResult,
    Popularity,
    Recommender,
    Stream,
    prequential,
    rolling_rate,
)

_COLUMNS = [f"{m}@{n}" for n in CUTOFFS for m in ("hr", "mrr", "ndcg")]


def evaluate_systems(
    stream: Stream,
    factories: Sequence[Callable[[], Recommender]],
    *,
    batch_size: int = 1,
    progress: bool = True,
) -> list[EvaluationResult]:
    """Run each system (made fresh by its factory) over the whole stream."""
    from tqdm import tqdm

    results = []
    for make in factories:
        model = make()
        with tqdm(
            total=len(stream),
            unit="ev",
            desc=model.name,
            file=sys.stderr,
            disable=not progress,
            leave=False,
        ) as bar:
            results.append(
                prequential(stream, model, batch_size=batch_size, progress=bar.update)
            )
    return results


def format_table(results: Sequence[EvaluationResult]) -> str:
    """One row per system: HR/MRR/NDCG at 10 and 20, tests and events/s."""
    header = ["system", *(c.upper() for c in _COLUMNS), "tests", "events/s"]
    rows = [header]
    for result in results:
        figures = result.metrics()
        rows.append(
            [
                result.name,
                *(f"{figures[c]:.6f}" for c in _COLUMNS),
                f"{result.tests:,}",
                f"{result.events_per_second:,.0f}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_rolling_hr(
    results: Sequence[EvaluationResult],
    path: str | Path,
    *,
    window: int,
    title: str,
    n: int = 20,
) -> None:
    """PNG of HR@n over the stream, a rolling mean over ``window`` tests."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=110)
    for result in results:
        rates = rolling_rate(result.hits(n), window)
        # each point sits at the event of the last test in its window
        at = result.positions[len(result.positions) - len(rates) :]
        axes.plot(
            at, rates, label=f"{result.name} (HR@{n} {result.hits(n).mean():.4f})"
        )
    axes.set_xlabel("event in the stream")
    axes.set_ylabel(f"HR@{n}, rolling mean of {window:,} tests")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """JSON with nan and infinities as null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    Path(path).write_text(json.dumps(clean(payload), indent=2) + "\n")


def run_evaluate(args: Any, config: Any) -> int:
    """The command: read, evaluate streamrec and popularity, report."""
    from models.evaluation import (
        StreamrecRecommender,
        encode,
        first_half,
        second_half,
    )
    from producers.datasets import read_events_with_stats

    fav_as = None if args.fav_as == "drop" else args.fav_as
    events, stats = read_events_with_stats(
        args.path, args.format, limit=args.limit, fav_as=fav_as
    )
    stream = encode(events)
    half = getattr(args, "half", None)
    if half == "first":
        stream = first_half(stream)  # the second half is never read
    results = evaluate_systems(
        stream,
        [
            lambda: StreamrecRecommender(
                config, compiled=not getattr(args, "python_loop", False)
            ),
            Popularity,
        ],
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    if half == "second":
        results = [second_half(r, len(stream)) for r in results]
    print(
        f"{stats.path} ({stats.fmt}): {len(stream):,} events, "
        f"{len(stream.user_ids):,} users, {len(stream.item_ids):,} items; "
        f"micro-batch {args.batch_size}"
        + (f"; tests of the {half} half" if half else "")
    )
    print(format_table(results))
    if args.json_out:
        write_json(
            args.json_out,
            {
                "dataset": str(stats.path),
                "format": stats.fmt,
                "fav_as": args.fav_as if stats.fmt == "taobao" else None,
                "limit": args.limit,
                "events": len(stream),
                "users": len(stream.user_ids),
                "items": len(stream.item_ids),
                "batch_size": args.batch_size,
                "half": half,
                "config": asdict(config),
                "results": [r.summary() for r in results],
            },
        )
        print(f"wrote {args.json_out}")
    if args.plot:
        title = f"{Path(args.path).name}: rolling HR@20, micro-batch {args.batch_size}"
        window = args.window or max(100, results[0].tests // 20)
        plot_rolling_hr(results, args.plot, window=window, title=title)
        print(f"wrote {args.plot}")
    return 0
