"""What is hot now: time-decayed popularity over a sliding window.

Events per item are counted in tumbling buckets of ``bucket_s`` seconds (on the
worker, a windowed Faust table). An item's trend score sums the buckets that
end within the last ``window_s`` seconds, each weighed by its age::

    score_i = sum_b count_ib * 0.5 ** (max(0, now - end_b) / half_life_s)

The decay is what lets a new item with a fast start overtake an old favourite
with the same count spread over the whole window: its events are younger.
Scores are in events, so a score of 30 means "30 fresh events".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# ((item_id, (bucket_start, bucket_end)), count): the form a windowed table keeps
WindowedCount = tuple[tuple[str, tuple[float, float]], float]


@dataclass(frozen=True)
class TrendConfig:
    """The sliding window and how fast old events fade."""

    bucket_s: float = 60.0
    window_s: float = 900.0
    half_life_s: float = 300.0

    def __post_init__(self) -> None:
        if not (self.bucket_s > 0 and self.half_life_s > 0):
            raise ValueError(
                f"bucket_s and half_life_s must be positive, got {self.bucket_s} "
                f"and {self.half_life_s}"
            )
        if self.window_s < self.bucket_s:
            raise ValueError(
                f"window_s ({self.window_s}) must be at least one bucket "
                f"({self.bucket_s})"
            )


def bucket_weight(end: float, now: float, config: TrendConfig) -> float:
    """Weight of a bucket ending at ``end``: 1 while open, halving per half-life,
    0 once it ended more than ``window_s`` ago."""
    age = now - end
    if age >= config.window_s:
        return 0.0
    return math.pow(0.5, max(0.0, age) / config.half_life_s)


def trend_scores(
    counts: Iterable[WindowedCount], now: float, config: TrendConfig
) -> dict[str, float]:
    """Trend score per item from windowed counts; items out of the window drop."""
    weights: dict[float, float] = {}  # per bucket end: one pow per bucket
    scores: dict[str, float] = {}
    for (item_id, (_, end)), count in counts:
        weight = weights.get(end)
        if weight is None:
            weight = weights[end] = bucket_weight(end, now, config)
        if weight > 0.0 and count > 0:
            scores[item_id] = scores.get(item_id, 0.0) + weight * count
    return scores


def top_trending(scores: Mapping[str, float], k: int) -> list[tuple[str, float]]:
    """The ``k`` best ``(item_id, score)``, highest first, ties by id."""
    ranked = sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))
    return ranked[:k]


def merge_parts(parts: Iterable[Iterable[tuple[str, float]]]) -> dict[str, float]:
    """One score per item from the parts several workers published.

    Each item has one owner, so normally it is in one part. Just after a
    rebalance the previous owner's part may still hold it: the higher score
    wins rather than the sum, so that it is not counted twice.
    """
    merged: dict[str, float] = {}
    for part in parts:
        for item_id, score in part:
            if score > merged.get(item_id, -math.inf):
                merged[item_id] = score
    return merged
