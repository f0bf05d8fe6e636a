"""The short-term, sequence-aware part: online item-to-item transitions.

When a shopper meets item ``j`` at most ``steps`` events after item ``i``, the
link ``i -> j`` gains ``1 / distance`` (the weighting of sequential rules,
Ludewig and Jannach 2018). A shopper's sequence score of ``j`` sums the links
into ``j`` from their latest distinct items, the newest weighing most.

Links are global per-item state: each item keeps its strongest outgoing links
in a row of at most ``cap`` entries, so that an item record stays bounded. A
batch's links are aggregated per (source, target) by the learner, routed by
source item to the item's owner, and merged there: the old weight plus the
batch's, then the ``cap`` strongest kept. Ties in that cut go to the smaller
id hash (:func:`id_key`), which every worker computes alike, so an owner and
the in-process replay keep the same entries.

Known shortcoming (#3): a link that keeps falling out of a full row never
accumulates weight, and links never fade; a decayed or Space-Saving row would
track drifting co-occurrence better.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

FLOAT = np.float32
EMPTY = -1  # an unused slot of a link row
# a (row, target) pair as one int64 key: both are table rows, below 2**31
_SHIFT = 31
_MASK = (1 << _SHIFT) - 1


def id_key(item_id: str) -> int:
    """A stable, non-negative 63-bit key of an id: the tie rule of link rows."""
    digest = hashlib.blake2b(item_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def batch_links(
    histories: Sequence[Sequence[int]],
    items: Sequence[int],
    weights: Sequence[float],
    steps: int,
    backward: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Links of a batch, summed per (source, target): three flat arrays.

    ``histories[k]`` is what the shopper of event ``k`` met before it, newest
    last (only its last ``steps`` entries count); ``items[k]`` its item and
    ``weights[k]`` a factor on its links. An item never links to itself.
    With ``backward`` > 0 the item also links back to each earlier one, at
    that share of the forward weight (items met together, in either order).
    """
    sources: list[int] = []
    targets: list[int] = []
    amounts: list[float] = []
    inverse = [1.0 / d for d in range(1, steps + 1)]
    for history, item, weight in zip(histories, items, weights, strict=True):
        for distance, earlier in enumerate(reversed(history[-steps:])):
            if earlier != item:
                sources.append(earlier)
                targets.append(item)
                amounts.append(weight * inverse[distance])
                if backward:
                    sources.append(item)
                    targets.append(earlier)
                    amounts.append(backward * weight * inverse[distance])
    if not sources:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, FLOAT)
    pairs = np.asarray(sources, np.int64) << _SHIFT | np.asarray(targets, np.int64)
    unique, inverse_index = np.unique(pairs, return_inverse=True)
    summed = np.bincount(inverse_index, weights=amounts, minlength=len(unique))
    return unique >> _SHIFT, unique & _MASK, summed.astype(FLOAT)


def merge_rows(
    row_targets: np.ndarray,
    row_weights: np.ndarray,
    new_rows: np.ndarray,
    new_targets: np.ndarray,
    new_weights: np.ndarray,
    tie: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Add new links to link rows and keep the strongest ``cap`` of each.

    ``row_targets``/``row_weights`` (S, cap) are the current rows (EMPTY
    slots unused); new link ``n`` goes to row ``new_rows[n]``. ``tie`` maps
    targets to the key that orders equal weights (smaller first). Rows and
    targets are indices below 2**31. Returns the
    new (S, cap) rows, strongest first.
    """
    n_rows, cap = row_targets.shape
    used = row_targets != EMPTY
    old_rows = np.nonzero(used)[0]
    rows = np.concatenate([old_rows, new_rows])
    targets = np.concatenate([row_targets[used], new_targets])
    weights = np.concatenate([row_weights[used], new_weights]).astype(FLOAT)
    # sum: one (row, target) pair may be in the row and among the new links
    unique, inverse = np.unique(rows << _SHIFT | targets, return_inverse=True)
    summed = np.zeros(len(unique), FLOAT)
    # float32 adds in a fixed order (old first), as an owner adds them
    np.add.at(summed, inverse, weights)
    rows, targets = unique >> _SHIFT, unique & _MASK
    # cut: per row by weight, strongest first, ties by the target's key
    order = np.lexsort((tie(targets), -summed, rows))
    rows, targets, summed = rows[order], targets[order], summed[order]
    starts = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - starts
    keep = rank < cap
    out_targets = np.full((n_rows, cap), EMPTY, np.int64)
    out_weights = np.zeros((n_rows, cap), FLOAT)
    out_targets[rows[keep], rank[keep]] = targets[keep]
    out_weights[rows[keep], rank[keep]] = summed[keep]
    return out_targets, out_weights


def sequence_scores(
    link_targets: np.ndarray,
    link_weights: np.ndarray,
    sources: np.ndarray,
    source_weights: np.ndarray,
    n_items: int,
) -> np.ndarray:
    """Dense (shoppers x items) sequence scores.

    ``sources`` (T, S) are item rows (EMPTY where a shopper has fewer), with
    ``source_weights`` (T, S); the links of each source are added in, times
    its weight.
    """
    scores = np.zeros((len(sources), n_items), FLOAT)
    add_sequence_scores(scores, link_targets, link_weights, sources, source_weights)
    return scores


def add_sequence_scores(
    scores: np.ndarray,
    link_targets: np.ndarray,
    link_weights: np.ndarray,
    sources: np.ndarray,
    source_weights: np.ndarray,
) -> None:
    """:func:`sequence_scores` added into ``scores`` (T, n_items) in place:
    only the linked cells are touched, which is what makes it cheap."""
    shoppers, n_items = scores.shape
    if not shoppers or not n_items:
        return
    valid = sources != EMPTY
    safe = np.where(valid, sources, 0)
    targets = link_targets[safe]  # (T, S, cap)
    amounts = link_weights[safe] * (source_weights * valid)[:, :, None]
    present = (targets != EMPTY) & (amounts != 0)
    shopper_of = np.broadcast_to(np.arange(shoppers)[:, None, None], targets.shape)
    flat = shopper_of[present] * n_items + targets[present]
    np.add.at(scores.reshape(-1), flat, amounts[present])


def latest_distinct(recent: Sequence[str], n: int) -> list[str]:
    """The ``n`` newest distinct items of a history (newest last), newest first."""
    chosen: list[str] = []
    for item_id in reversed(recent):
        if item_id not in chosen:
            chosen.append(item_id)
            if len(chosen) == n:
                break
    return chosen
