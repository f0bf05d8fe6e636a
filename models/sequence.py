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
from collections.abc import Sequence

import numba
import numpy as np

FLOAT = np.float32
EMPTY = -1  # an unused slot of a link row
_INT64, _FLOAT32 = np.dtype(np.int64), np.dtype(FLOAT)  # the kernel's dtypes
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
    lengths = np.fromiter(
        (min(len(h), steps) for h in histories), np.int64, len(histories)
    )
    starts = np.zeros(len(histories) + 1, np.int64)
    np.cumsum(lengths, out=starts[1:])
    flat = np.fromiter(
        (row for h in histories for row in h[len(h) - min(len(h), steps) :]),
        np.int64,
        int(starts[-1]),
    )
    return _batch_links(
        flat,
        starts,
        np.asarray(items, np.int64),
        np.asarray(weights, np.float64),
        float(backward),
    )


@numba.njit(cache=True)
def _batch_links(
    histories: np.ndarray,
    starts: np.ndarray,
    items: np.ndarray,
    weights: np.ndarray,
    backward: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`batch_links` on flat histories (event ``k``'s counted entries
    are ``histories[starts[k]:starts[k + 1]]``, newest last)."""
    n_pairs = 0
    for k in range(len(items)):
        n_pairs += starts[k + 1] - starts[k]
    size = 2 * n_pairs if backward else n_pairs
    keys = np.empty(size, np.int64)
    amounts = np.empty(size, np.float64)
    n = 0
    for k in range(len(items)):
        item = items[k]
        for distance in range(starts[k + 1] - starts[k]):
            earlier = histories[starts[k + 1] - 1 - distance]
            if earlier == item:
                continue
            inverse = 1.0 / (distance + 1)
            keys[n] = earlier << _SHIFT | item
            amounts[n] = weights[k] * inverse
            n += 1
            if backward:
                keys[n] = item << _SHIFT | earlier
                amounts[n] = backward * weights[k] * inverse
                n += 1
    # sum per pair, in the order met (stable), in float64 as numpy's bincount
    order = np.argsort(keys[:n], kind="mergesort")
    unique = np.empty(n, np.int64)
    summed = np.zeros(n, np.float64)
    m = -1
    for at in order:
        if m < 0 or keys[at] != unique[m]:
            m += 1
            unique[m] = keys[at]
        summed[m] += amounts[at]
    unique = unique[: m + 1]
    return unique >> _SHIFT, unique & _MASK, summed[: m + 1].astype(np.float32)


def merge_rows(
    row_targets: np.ndarray,
    row_weights: np.ndarray,
    new_rows: np.ndarray,
    new_targets: np.ndarray,
    new_weights: np.ndarray,
    keys: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Add new links to link rows and keep the strongest ``cap`` of each.

    ``row_targets``/``row_weights`` (S, cap) are the current rows (EMPTY
    slots unused); new link ``n`` goes to row ``new_rows[n]``. ``keys[t]``
    orders equal weights of target ``t`` (smaller first; equal keys to the
    smaller target). Rows and targets are indices below 2**31. Returns the
    new (S, cap) rows, strongest first.

    The reference merge, for any rows and any new links; the learner and the
    owner use :func:`merge_links_into`, which gives the same rows.
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
    order = np.lexsort((keys[targets], -summed, rows))
    rows, targets, summed = rows[order], targets[order], summed[order]
    starts = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - starts
    keep = rank < cap
    out_targets = np.full((n_rows, cap), EMPTY, np.int64)
    out_weights = np.zeros((n_rows, cap), FLOAT)
    out_targets[rows[keep], rank[keep]] = targets[keep]
    out_weights[rows[keep], rank[keep]] = summed[keep]
    return out_targets, out_weights


def merge_links_into(
    row_targets: np.ndarray,
    row_weights: np.ndarray,
    new_rows: np.ndarray,
    new_targets: np.ndarray,
    new_weights: np.ndarray,
    keys: np.ndarray,
) -> None:
    """:func:`merge_rows` in place, for rows kept in its cut order (every row
    this project stores): by :func:`merge_unique_into` when the new (row,
    target) pairs are unique (one message's or batch's summed links), else by
    :func:`merge_rows` on the rows the links touch.

    ``row_targets`` (int64) and ``row_weights`` (float32) may be a whole
    table: only the rows in ``new_rows`` are read or written.
    """
    links = _kernel_args(
        row_targets, row_weights, new_rows, new_targets, new_weights, keys
    )
    if _pairs_unique(links[2], links[3]):
        _merge_unique_into(*links)
        return
    _, _, new_rows, new_targets, new_weights, keys = links
    rows, position = np.unique(new_rows, return_inverse=True)
    row_targets[rows], row_weights[rows] = merge_rows(
        row_targets[rows],
        row_weights[rows],
        position.ravel(),
        new_targets,
        new_weights,
        keys,
    )


def merge_unique_into(
    row_targets: np.ndarray,
    row_weights: np.ndarray,
    new_rows: np.ndarray,
    new_targets: np.ndarray,
    new_weights: np.ndarray,
    keys: np.ndarray,
) -> None:
    """:func:`merge_rows` in place, for new links whose (row, target) pairs
    are unique (what :func:`batch_links` gives) into rows kept in its cut
    order: the same rows, without its sort, in a few microseconds a call
    (numpy's per-call overhead made the merge about a sixth of an event's
    time at micro-batch 1).

    ``row_targets`` (int64) and ``row_weights`` (float32) may be a whole
    table: only the rows in ``new_rows`` are read or written.
    """
    _merge_unique_into(
        *_kernel_args(
            row_targets, row_weights, new_rows, new_targets, new_weights, keys
        )
    )


def _kernel_args(
    row_targets: np.ndarray,
    row_weights: np.ndarray,
    new_rows: np.ndarray,
    new_targets: np.ndarray,
    new_weights: np.ndarray,
    keys: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """The arguments in the kernel's dtypes, so that it compiles once."""
    # the rows change in place: a converted copy would drop the result
    if row_targets.dtype != _INT64 or row_weights.dtype != _FLOAT32:
        raise TypeError("link rows must be int64 targets and float32 weights")
    if row_targets.shape != row_weights.shape:
        raise ValueError("link targets and weights differ in shape")
    new_rows = np.asarray(new_rows, _INT64)
    new_targets = np.asarray(new_targets, _INT64)
    # rounded to float32 before the sum, as merge_rows rounds them
    new_weights = np.asarray(new_weights, _FLOAT32)
    if not len(new_rows) == len(new_targets) == len(new_weights):
        raise ValueError("new links differ in length")
    keys = np.asarray(keys, _INT64)
    return row_targets, row_weights, new_rows, new_targets, new_weights, keys


@numba.njit(cache=True)
def _pairs_unique(new_rows: np.ndarray, new_targets: np.ndarray) -> bool:
    """Whether no (row, target) pair is among the new links twice."""
    pairs = np.sort(new_rows << _SHIFT | new_targets)
    return not (pairs[1:] == pairs[:-1]).any()


@numba.njit(cache=True)
def _comes_first(
    weight: np.float32,
    key: np.int64,
    target: np.int64,
    other_weight: np.float32,
    other_key: np.int64,
    other_target: np.int64,
) -> bool:
    """Whether a used entry goes before another in merge_rows's cut order:
    its lexsort on (-weight, key, target), where a NaN weight sorts last."""
    if weight > other_weight:
        return True
    if weight < other_weight:
        return False
    if weight != weight:  # NaN: after every number, equal to another NaN
        if other_weight == other_weight:
            return False
    elif other_weight != other_weight:
        return True
    if key != other_key:
        return key < other_key
    return target < other_target


@numba.njit(cache=True)
def _ahead(
    weight: np.float32,
    target: np.int64,
    other_weight: np.float32,
    other_target: np.int64,
    keys: np.ndarray,
) -> bool:
    """:func:`_comes_first`, reading the two keys only when the weights tie
    (a key is a load from anywhere in the table)."""
    if weight > other_weight:
        return True
    if weight < other_weight:
        return False
    return _comes_first(
        weight, keys[target], target, other_weight, keys[other_target], other_target
    )


@numba.njit(cache=True)
def used_slots(targets: np.ndarray) -> int:
    """How many slots of a link row are used: they come first, so bisect
    for the first unused one."""
    low, high = 0, len(targets)
    while low < high:
        middle = (low + high) // 2
        if targets[middle] == EMPTY:
            high = middle
        else:
            low = middle + 1
    return low


@numba.njit(cache=True)
def _holds(targets: np.ndarray, target: int) -> bool:
    """Whether a row holds ``target``: a count over its used slots, which
    the compiler vectorises, where a scan that stops at the match cannot be
    (and a row comes from memory: the fewer of its cache lines, the better)."""
    count = 0
    for s in range(used_slots(targets)):
        count += targets[s] == target
    return count > 0


@numba.njit(cache=True)
def _merge_unique_into(
    row_targets: np.ndarray,
    row_weights: np.ndarray,
    new_rows: np.ndarray,
    new_targets: np.ndarray,
    new_weights: np.ndarray,
    keys: np.ndarray,
) -> None:
    """The merge of :func:`merge_unique_into`: sums first, then inserts.

    Every link whose target is in its row first adds its weight and moves to
    its new place; only then are the fresh targets inserted, each at its
    place, the row's weakest entry dropping past the cap. In that order an
    entry that a fresh target pushes out gains nothing later, so each row
    ends as the ``cap`` strongest of its sums, as merge_rows cuts them.
    """
    n_rows, cap = row_targets.shape
    n_keys = len(keys)
    # numba does not check bounds: refuse bad links before touching a row
    for n in range(len(new_rows)):
        if new_rows[n] < 0 or new_rows[n] >= n_rows:
            raise IndexError("a new link's row is out of range")
        if new_targets[n] < 0 or new_targets[n] >= n_keys:
            raise IndexError("a new link's target has no key")
    fresh = np.zeros(len(new_rows), np.bool_)
    # sums: a target already in the row adds to its weight (float32, old
    # first) and moves up (or down) past the entries it now beats
    for n in range(len(new_rows)):
        targets, weights = row_targets[new_rows[n]], row_weights[new_rows[n]]
        target = new_targets[n]
        if not _holds(targets, target):
            fresh[n] = True
            continue
        slot = 0
        while targets[slot] != target:
            slot += 1
        weight = np.float32(weights[slot] + new_weights[n])
        while slot > 0 and _ahead(
            weight, target, weights[slot - 1], targets[slot - 1], keys
        ):
            targets[slot], weights[slot] = targets[slot - 1], weights[slot - 1]
            slot -= 1
        while (
            slot + 1 < cap
            and targets[slot + 1] != EMPTY
            and _ahead(weights[slot + 1], targets[slot + 1], weight, target, keys)
        ):
            targets[slot], weights[slot] = targets[slot + 1], weights[slot + 1]
            slot += 1
        targets[slot], weights[slot] = target, weight
    # inserts: a fresh target's place by bisection of the sorted row (unused
    # slots last), the entries from there shifted down by one; past a full
    # row's every entry, the range of the shift is empty
    for n in range(len(new_rows)):
        if not fresh[n]:
            continue
        targets, weights = row_targets[new_rows[n]], row_weights[new_rows[n]]
        target, weight = new_targets[n], new_weights[n]
        low, high = 0, cap
        while low < high:
            middle = (low + high) // 2
            other = targets[middle]
            if other != EMPTY and _ahead(weights[middle], other, weight, target, keys):
                low = middle + 1
            else:
                high = middle
        # shift down to the first unused slot only (or off the row's end)
        for s in range(low, cap):
            was_target, was_weight = targets[s], weights[s]
            targets[s], weights[s] = target, weight
            if was_target == EMPTY:
                break
            target, weight = was_target, was_weight


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
