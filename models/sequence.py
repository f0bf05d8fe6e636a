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


def merge_unique_rows(
    row_targets: np.ndarray,
    row_weights: np.ndarray,
    new_rows: np.ndarray,
    new_targets: np.ndarray,
    new_weights: np.ndarray,
    tie: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merge_rows` for new links whose (row, target) pairs are unique
    (what :func:`batch_links` gives) into rows kept as it leaves them
    (strongest first, ties to the smaller key, unused slots last): the same
    result, cheaper.

    A new link already in its row adds to that slot's weight (float32, the old
    weight first, as :func:`merge_rows` sums). A row that gets one new link
    (at micro-batch 1, every source but the event's item) only moves that one
    entry to its place, found by comparing it with the row; a row that gets
    several is sorted again.
    """
    new_rows = np.asarray(new_rows, np.int64)
    new_targets = np.asarray(new_targets, np.int64)
    new_weights = np.asarray(new_weights, FLOAT)
    if len(new_rows) <= _FEW_LINKS:
        return _place(row_targets, row_weights, new_rows, new_targets, new_weights, tie)
    rows, position = np.unique(new_rows, return_inverse=True)
    out_targets = np.array(row_targets, np.int64)
    out_weights = np.array(row_weights, FLOAT)
    out_targets[rows], out_weights[rows] = _sort_in(
        row_targets[rows],
        row_weights[rows],
        position.ravel(),
        new_targets,
        new_weights,
        tie,
    )
    return out_targets, out_weights


# Up to this many new links, each is placed by comparing it with its row;
# past it (big batches), the rows are sorted again.
_FEW_LINKS = 64


def _place(
    row_targets: np.ndarray,
    row_weights: np.ndarray,
    new_rows: np.ndarray,
    new_targets: np.ndarray,
    new_weights: np.ndarray,
    tie: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Unique new links into rows kept in cut order, without sorting a row:
    the entries a link does not touch keep their order, so each changed
    entry's place is the number of entries that come before it."""
    n_rows, cap = row_targets.shape
    targets, weights = row_targets[new_rows], row_weights[new_rows]  # (m, cap)
    match = targets == new_targets[:, None]
    found = match.any(axis=1)
    hit = np.flatnonzero(found)
    column = match[hit].argmax(axis=1)
    summed = new_weights.copy()
    summed[hit] = weights[hit, column] + new_weights[hit]
    used = row_targets != EMPTY
    unchanged = used.copy()
    unchanged[new_rows[hit], column] = False
    key = tie(new_targets)
    keys = tie(np.where(targets != EMPTY, targets, 0))
    # place: the row's untouched entries before the new weight ...
    weight = summed[:, None]
    before = unchanged[new_rows] & (
        (weights > weight) | ((weights == weight) & (keys < key[:, None]))
    )
    # ... and the row's other changed entries before it
    order = np.lexsort((key, -summed, new_rows))
    ranked_rows = new_rows[order]
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - np.searchsorted(ranked_rows, ranked_rows)
    place = before.sum(axis=1) + rank
    # fill: the untouched entries, in order, take the places left
    fresh = np.bincount(new_rows[~found], minlength=n_rows)
    width = cap + int(fresh.max())
    length = used.sum(axis=1) + fresh
    taken = np.zeros((n_rows, width), bool)
    taken[new_rows, place] = True
    left = ~taken & (np.arange(width) < length[:, None])
    out_targets = np.full((n_rows, width), EMPTY, np.int64)
    out_weights = np.zeros((n_rows, width), FLOAT)
    out_targets[left] = row_targets[unchanged]
    out_weights[left] = row_weights[unchanged]
    out_targets[new_rows, place] = new_targets
    out_weights[new_rows, place] = summed
    return out_targets[:, :cap], out_weights[:, :cap]


def _sort_in(
    row_targets: np.ndarray,
    row_weights: np.ndarray,
    new_rows: np.ndarray,
    new_targets: np.ndarray,
    new_weights: np.ndarray,
    tie: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Unique new links into rows, each row sorted again: the sums in place,
    the new targets in spare columns past the cap, one sort, the cut."""
    n_rows, cap = row_targets.shape
    weights = np.array(row_weights, dtype=FLOAT)
    # find: each new link's slot in its row, if the target is there already
    match = row_targets[new_rows] == new_targets[:, None]
    found = match.any(axis=1)
    hit = np.flatnonzero(found)
    if len(hit):
        weights[new_rows[hit], match[hit].argmax(axis=1)] += new_weights[hit]
    fresh = np.flatnonzero(~found)
    targets = row_targets
    if len(fresh):
        # append: the row's k-th fresh link goes to spare column cap + k
        fresh_rows = new_rows[fresh]
        order = np.argsort(fresh_rows, kind="stable")
        fresh, fresh_rows = fresh[order], fresh_rows[order]
        slot = np.arange(len(fresh)) - np.searchsorted(fresh_rows, fresh_rows)
        spare = int(slot.max()) + 1
        targets = np.concatenate(
            [row_targets, np.full((n_rows, spare), EMPTY, np.int64)], axis=1
        )
        weights = np.concatenate([weights, np.zeros((n_rows, spare), FLOAT)], axis=1)
        targets[fresh_rows, cap + slot] = new_targets[fresh]
        weights[fresh_rows, cap + slot] = new_weights[fresh]
    unused = targets == EMPTY
    keys = tie(np.where(unused, 0, targets))
    # cut: per row, strongest first, ties to the smaller key, unused last
    order = np.lexsort((keys, np.where(unused, np.inf, -weights)), axis=-1)[:, :cap]
    return (
        np.take_along_axis(targets, order, axis=1),
        np.take_along_axis(weights, order, axis=1),
    )


def merge_links(
    row_targets: np.ndarray,
    row_weights: np.ndarray,
    new_rows: np.ndarray,
    new_targets: np.ndarray,
    new_weights: np.ndarray,
    tie: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merge_rows` for rows kept in its cut order (every row this
    project stores), by :func:`merge_unique_rows` when the new (row, target)
    pairs are unique (one message's or batch's summed links)."""
    new_rows = np.asarray(new_rows, np.int64)
    new_targets = np.asarray(new_targets, np.int64)
    pairs = np.sort(new_rows << _SHIFT | new_targets)
    merge = merge_unique_rows if (pairs[1:] > pairs[:-1]).all() else merge_rows
    return merge(row_targets, row_weights, new_rows, new_targets, new_weights, tie)


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
    if shoppers == 1:
        # one shopper (micro-batch 1): the same cells added in the same order
        valid = sources[0] != EMPTY
        rows = sources[0][valid]
        targets = link_targets[rows]
        amounts = link_weights[rows] * source_weights[0][valid][:, None]
        present = (targets != EMPTY) & (amounts != 0)
        np.add.at(scores[0], targets[present], amounts[present])
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
