"""Nearest items in factor space ("shoppers who viewed this also viewed").

Pure numpy over the item factors an :class:`~models.items.ItemTable` holds:
the worker calls it on its live replica, so every answer reflects the factors
as they are at that moment, with no index to rebuild.

For an item ``i`` with factors ``q_i``, candidate ``j`` scores

    cosine:  q_i . q_j / (|q_i| |q_j|)
    dot:     q_i . q_j

One matrix-vector product over the whole catalogue (10,000 items x 32
factors is about 0.1 ms), then a partial sort to the ``k`` best.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.items import ItemTable

Metric = Literal["cosine", "dot"]
METRICS: tuple[Metric, ...] = ("cosine", "dot")

# Below this norm a vector has no direction worth comparing.
_TINY_NORM = 1e-12


@dataclass(frozen=True)
class SimilarItems:
    """The items nearest one item, best first."""

    item_id: str
    items: list[str]
    scores: list[float]
    metric: Metric


def similarity_scores(
    vectors: np.ndarray, query: np.ndarray, metric: Metric = "cosine"
) -> np.ndarray:
    """Score every row of ``vectors`` (n, k) against ``query`` (k,); shape (n,).

    A zero vector scores 0 under cosine, never NaN.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    scores = vectors @ query
    if metric == "dot":
        return scores
    norms = np.linalg.norm(vectors, axis=1) * float(np.linalg.norm(query))
    return np.divide(scores, norms, out=np.zeros_like(scores), where=norms > _TINY_NORM)


def top_rows(scores: np.ndarray, k: int, exclude: int | None = None) -> np.ndarray:
    """Rows of the ``k`` highest scores, best first (ties: lower row first)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    scores = scores.astype(np.float64, copy=True)
    if exclude is not None:
        scores[exclude] = -np.inf
    k = min(k, len(scores) - (exclude is not None))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    best = np.argpartition(-scores, k - 1)[:k]
    # sort the k best by score, then by row, so that answers are reproducible
    return best[np.lexsort((best, -scores[best]))]


def similar_items(
    items: ItemTable, item_id: str, k: int, metric: Metric = "cosine"
) -> SimilarItems | None:
    """The ``k`` items nearest ``item_id``, or None when the item is unknown."""
    row = items.index.get(item_id)
    if row is None:
        return None
    vectors = items.vectors
    scores = similarity_scores(vectors, vectors[row], metric)
    best = top_rows(scores, k, exclude=row)
    ids = items.ids
    return SimilarItems(
        item_id,
        [ids[r] for r in best],
        [round(float(scores[r]), 6) for r in best],
        metric,
    )
