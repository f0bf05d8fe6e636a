"""The prequential loop at micro-batch 1, compiled whole (numba).

:func:`models.evaluation.prequential` drives :class:`StreamrecRecommender`
event by event through the worker's Python objects (profiles, the item
table, ``learn_batch``); at micro-batch 1 that costs a few hundred
microseconds an event, nearly all of it Python between the kernels. Here the
same loop runs in one compiled call over arrays: the same state (factors,
Adagrad sums, counts, link rows, each shopper's latest items, the memory of
recent positives), the same numpy random stream, and the same kernels for
every step of learning (the cores of ``bpr_batch`` and ``adagrad_steps``,
``event_gradients``, ``sum_slots`` and ``adagrad_into``, on scratch arrays
held across events; ``draw_items``, ``_batch_links``,
``_merge_unique_into``), called in the order ``OnlineMF.learn_batch`` and
``apply_item_update`` call them.

What differs is how a list is found, not what it holds. Its factor scores
are summed factor by factor (over a transposed copy, so that the loop over
items vectorises) where the worker multiplies by the item matrix with BLAS;
float32 sums in another order can differ in the last bit, so a near tie may
rank the other way. And its top 20 is seeded with the shopper's previous
list (:func:`models.kernels.top_rows`): those rows, most of them still near
the top after one step of learning, set the bar that the scan over every
item must reach, so that it skips most of the items and inserts few; the
list is the same with any seeds. Learning never reads a list, so the learned
state is the same to the bit. ``tests/unit/test_compiled_replay.py`` checks
both on real data: equal state, and equal ranks (on those streams, every
test ranks alike).

It covers what the in-process replay of a dataset needs: every event id once
(a file's own numbering), and ``min_history`` of at most 1
(:func:`supports`); :class:`models.evaluation.StreamrecRecommender` with
``compiled=True`` takes this loop at micro-batch 1 when it applies and the
Python one otherwise.

Where an event's time goes on MovieLens (~16 us in all, cycle counts of the
loop's sections): the list ~9 (the 16-factor sums over the items seen so
far ~4, the links of the shopper's latest items ~1.4, the top-20 scan
~2.5), learning ~7, of which the link merge is ~3.5 (about 19 links an
event into sorted rows of up to 300).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numba
import numpy as np

from models.evaluation import LIST_LENGTH, EvaluationResult, Stream
from models.items import FLOAT, initial_factors
from models.kernels import (
    _insert,
    adagrad_into,
    add_links,
    draw_items,
    event_gradients,
    gather_candidates,
    sum_slots,
    top_rows,
)
from models.mf import CANDIDATE_CATALOGUE, MFConfig
from models.sequence import _batch_links, _merge_unique_into, id_key

EMPTY = -1


# Who met what is a (users x items) table of flags: bounded here.
MAX_CELLS = 1 << 30


def supports(stream: Stream, config: MFConfig) -> bool:
    """Whether this loop replays ``stream`` as the Python one does."""
    unique_ids = len({e.event_id for e in stream.events}) == len(stream.events)
    cells = len(stream.user_ids) * len(stream.item_ids)
    return unique_ids and config.min_history <= 1 and cells <= MAX_CELLS


@dataclass
class ReplayState:
    """What the compiled loop learned, as the Python replay keeps it: factors
    per shopper and per item (rows in first-appearance order), item biases
    and link rows."""

    user_vectors: np.ndarray
    item_vectors: np.ndarray
    item_biases: np.ndarray
    link_targets: np.ndarray
    link_weights: np.ndarray


def prequential_compiled(
    stream: Stream, config: MFConfig, *, n: int = LIST_LENGTH, name: str = "streamrec"
) -> EvaluationResult:
    """:func:`models.evaluation.prequential` of streamrec's model at
    micro-batch 1, compiled; the same clock (the whole loop, start vectors
    and id hashes included; reading and numbering the file left out)."""
    if not supports(stream, config):
        raise ValueError("the compiled replay needs unique event ids, min_history <= 1")
    # compiling (or loading from numba's cache) is not replaying: it happens
    # once per machine, and leaving it in would time a compiler
    replay_arrays(stream.head(2), config, n)
    started = time.perf_counter()
    ranks, _ = replay_arrays(stream, config, n)
    seconds = time.perf_counter() - started
    tested = np.flatnonzero(ranks >= 0)
    return EvaluationResult(
        name=name,
        events=len(stream),
        batch_size=1,
        seconds=seconds,
        ranks=ranks[tested].astype(np.int32),
        positions=tested.astype(np.int64),
    )


def replay_arrays(
    stream: Stream, config: MFConfig, n: int = LIST_LENGTH
) -> tuple[np.ndarray, ReplayState]:
    """Test then train on every event of ``stream``: per event its rank
    (1-based, 0 when not in the top ``n``) if it was a test, else -1; and
    the state learned."""
    c = config
    weights = np.fromiter(
        (c.event_weights[e.event_type] for e in stream.events), FLOAT, len(stream)
    )
    user_init = _start_vectors(["user:" + u for u in stream.user_ids], c)
    item_init = _start_vectors(stream.item_ids, c)
    keys = np.fromiter((id_key(i) for i in stream.item_ids), np.int64)
    seq_on = bool(c.seq_weight) and c.link_cap > 0
    source_weights = c.seq_weight * c.seq_recency ** np.arange(c.seq_sources)
    ranks, *state = _replay(
        stream.users,
        stream.items,
        weights,
        np.random.default_rng(c.seed),  # OnlineMF's stream, drawn alike
        user_init,
        item_init,
        keys,
        # log(1 + count) as ItemTable rounds it: float64, then float32
        np.log1p(np.arange(len(stream) + 1, dtype=np.float64)).astype(FLOAT),
        np.array(
            [
                c.learning_rate,
                c.regularization,
                c.grad_clip,
                c.grad_clip * c.batch_clip,
                c.popular_negatives,
                c.seq_backward,
                c.pop_weight * c.pop_history,
                c.pop_history,
            ]
        ),
        np.array(
            [
                c.adagrad,
                c.item_bias,
                c.n_negatives,
                c.negative_pool,
                max(1, c.negative_memory),
                seq_on,
                c.seq_steps,
                c.seq_sources,
                c.link_cap if seq_on else 0,
                bool(c.pop_weight),
                c.recent_items,
                c.candidate_popular,
                CANDIDATE_CATALOGUE,
                n,
                c.min_history,
            ],
            np.int64,
        ),
        source_weights.astype(FLOAT),
    )
    return ranks, ReplayState(*state)


def _start_vectors(ids: list[str], config: MFConfig) -> np.ndarray:
    k = config.n_factors
    if not ids:
        return np.zeros((0, k), FLOAT)
    return np.stack(
        [initial_factors(i, k, config.init_scale, config.seed) for i in ids]
    )


@numba.njit(cache=True)
def _replay(
    users: np.ndarray,
    items: np.ndarray,
    weights: np.ndarray,
    rng: np.random.Generator,
    user_init: np.ndarray,
    item_init: np.ndarray,
    keys: np.ndarray,
    log_table: np.ndarray,
    reals: np.ndarray,
    ints: np.ndarray,
    source_weights: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Test then train on every event: the ranks of :func:`replay_arrays`,
    then the fields of :class:`ReplayState`."""
    lr, reg, clip, item_limit = reals[0], reals[1], reals[2], reals[3]
    popular_share, backward = reals[4], reals[5]
    pop_numerator, pop_history = np.float32(reals[6]), np.float32(reals[7])
    adagrad, item_bias = ints[0] != 0, ints[1] != 0
    n_negatives, negative_pool, memory_size = ints[2], ints[3], ints[4]
    seq_on, seq_steps, n_sources, cap = ints[5] != 0, ints[6], ints[7], ints[8]
    pop_on, recent_size, n_head = ints[9] != 0, ints[10], ints[11]
    catalogue, list_length, min_history = ints[12], ints[13], ints[14]
    n_users, k = user_init.shape
    n_total = len(item_init)

    # the state: what the profiles and the item table hold in Python
    user_vectors = user_init.copy()
    user_accums = np.zeros(n_users, np.float32)
    n_events = np.zeros(n_users, np.int64)
    recent = np.full((n_users, max(1, recent_size)), EMPTY, np.int64)
    n_recent = np.zeros(n_users, np.int64)
    vectors = np.zeros((n_total, k), np.float32)
    columns = np.zeros((k, n_total), np.float32)  # vectors transposed, to score
    biases = np.zeros(n_total, np.float32)
    no_biases = np.zeros(n_total, np.float32)
    counts = np.zeros(n_total, np.int64)
    log_counts = np.zeros(n_total, np.float32)
    item_accums = np.zeros(n_total, np.float32)
    link_targets = np.full((n_total, max(cap, 1)), EMPTY, np.int64)
    link_weights = np.zeros((n_total, max(cap, 1)), np.float32)
    positives = np.zeros(memory_size, np.int64)
    head = np.zeros(max(n_head, 1), np.int64)
    in_head = np.zeros(n_total, np.bool_)
    head_state = np.zeros(2, np.int64)  # rows in the head; its fewest events

    # the protocol's bookkeeping: who met what
    met = np.zeros((n_users, n_total), np.bool_)
    active = np.zeros(n_users, np.bool_)
    ranks = np.full(len(users), -1, np.int64)
    n_items = 0
    # each shopper's latest list: the seeds of the next one (see top_rows)
    last_lists = np.full((n_users, max(list_length, 1)), EMPTY, np.int64)

    scores = np.zeros(n_total, np.float32)
    slot = np.full(n_total, -1, np.int64)
    candidates = np.zeros(n_sources * max(cap, 1) + max(n_head, 1), np.int64)
    sources = np.full(n_sources, EMPTY, np.int64)
    best_rows = np.full(list_length, -1, np.int64)
    best_scores = np.full(list_length, -np.inf, np.float32)
    positive_row = np.zeros(1, np.int64)
    one_accum = np.zeros(1, np.float32)
    no_bias = np.zeros(1, np.float32)
    no_bias_step = np.zeros(1, np.float32)
    # scratch of one event's step (bpr_batch and adagrad_steps of a batch of
    # one, without allocating their arrays at every event)
    n_slots = 1 + n_negatives
    slot_rows = np.zeros(n_slots, np.int64)
    slot_grads = np.zeros((n_slots, k), np.float32)
    slot_bias_grads = np.zeros(n_slots, np.float32)
    pulls = np.zeros(n_negatives, np.float32)
    user_grads = np.zeros((1, k), np.float32)
    user_steps = np.zeros((1, k), np.float32)
    user_added = np.zeros(1, np.float32)
    row_buffer = np.zeros(n_slots, np.int64)
    row_grads = np.zeros((n_slots, k), np.float32)
    row_bias_grads = np.zeros(n_slots, np.float32)
    row_counts = np.zeros(n_slots, np.float32)
    row_accums = np.zeros(n_slots, np.float32)
    row_steps = np.zeros((n_slots, k), np.float32)
    row_bias_steps = np.zeros(n_slots, np.float32)
    row_added = np.zeros(n_slots, np.float32)
    link_weight = np.ones(1, np.float64)
    history_starts = np.zeros(2, np.int64)
    link_sources = np.zeros(0, np.int64)
    link_targets_new = np.zeros(0, np.int64)
    link_amounts = np.zeros(0, np.float32)

    for e in range(len(users)):
        user, item = users[e], items[e]

        # test: the user's first meeting with the item, after an earlier event
        if active[user] and not met[user, item]:
            best_rows[:] = -1
            best_scores[:] = -np.inf
            length = min(list_length, n_items)
            if n_events[user] < min_history:
                _popular_list(
                    counts, n_items, met[user], best_rows[:length], best_scores[:length]
                )
            else:
                n_found = (
                    _latest_sources(recent[user], n_recent[user], sources)
                    if seq_on
                    else 0
                )
                share = (
                    pop_numerator / (pop_history + np.float32(n_events[user]))
                    if pop_on
                    else np.float32(0.0)
                )
                if n_head > 0 and n_items > catalogue:
                    _candidate_list(
                        user_vectors[user],
                        vectors,
                        biases if item_bias else no_biases,
                        log_counts,
                        share,
                        sources[:n_found],
                        source_weights,
                        link_targets,
                        link_weights,
                        head[: head_state[0]],
                        met[user],
                        slot,
                        candidates,
                        scores,
                        best_rows[:length],
                        best_scores[:length],
                    )
                else:
                    _dense_list(
                        user_vectors[user],
                        columns,
                        biases if item_bias else no_biases,
                        log_counts,
                        share,
                        sources[:n_found],
                        source_weights,
                        link_targets,
                        link_weights,
                        n_items,
                        met[user],
                        scores,
                        last_lists[user],
                        best_rows[:length],
                        best_scores[:length],
                    )
                    last_lists[user, :length] = best_rows[:length]
            ranks[e] = 0
            for r in range(length):
                if best_rows[r] == item:
                    ranks[e] = r + 1
                    break
        active[user] = True
        met[user, item] = True

        # learn: OnlineMF.learn_batch of this one event ...
        if item == n_items:  # first seen: ItemTable appends it
            vectors[item] = item_init[item]
            columns[:, item] = item_init[item]
            n_items += 1
        # every event is learned (ids unique): e positives remembered so far
        memory = positives[: min(e, memory_size)]
        if n_negatives <= negative_pool:
            negatives = draw_items(rng, n_items, n_negatives, popular_share, memory)
        else:
            pool = draw_items(rng, n_items, negative_pool, popular_share, memory)
            negatives = pool[rng.integers(0, len(pool), size=n_negatives)]
        positives[e % memory_size] = item
        slot_rows[0] = item
        slot_rows[1:] = negatives
        event_gradients(
            user_vectors[user],
            item,
            negatives,
            weights[e],
            vectors,
            biases if item_bias else no_biases,
            reg,
            clip,
            item_bias,
            0,
            1,
            slot_grads,
            slot_bias_grads,
            pulls,
            user_grads[0],
        )
        n_rows = _distinct_sorted(slot_rows, row_buffer)
        rows = row_buffer[:n_rows]
        row_grads[:] = 0.0
        row_bias_grads[:] = 0.0
        row_counts[:] = 0.0
        sum_slots(
            slot_rows, slot_grads, slot_bias_grads, 1, rows,
            row_grads, row_bias_grads, row_counts,
        )  # fmt: skip
        # bpr_batch sums a shopper's events onto zeros: 0 + x is x, but for
        # the sign of a zero
        for f in range(k):
            user_grads[0, f] = np.float32(0.0) + user_grads[0, f]
        one_accum[0] = user_accums[user]
        user_added[0] = 0.0
        adagrad_into(
            user_grads, no_bias, one_accum, lr, adagrad, np.inf,
            user_steps, no_bias_step, user_added,
        )  # fmt: skip
        if _add_if_finite(user_vectors[user], user_steps[0]):
            user_accums[user] = one_accum[0] + user_added[0]
        if seq_on:
            n_history = min(n_recent[user], seq_steps)
            history_starts[1] = n_history
            history = recent[user, n_recent[user] - n_history : n_recent[user]]
            positive_row[0] = item
            link_sources, link_targets_new, link_amounts = _batch_links(
                history, history_starts, positive_row, link_weight, backward
            )
        n_events[user] += 1
        _remember(recent[user], n_recent, user, item)

        # ... then apply_item_update: the item steps, the links
        for r in range(n_rows):
            row_accums[r] = item_accums[rows[r]]
        row_added[:] = 0.0
        adagrad_into(
            row_grads[:n_rows], row_bias_grads[:n_rows], row_accums[:n_rows], lr,
            adagrad, item_limit, row_steps, row_bias_steps, row_added,
        )  # fmt: skip
        for r in range(n_rows):
            row = rows[r]
            new_bias = biases[row] + row_bias_steps[r]
            if np.isfinite(new_bias) and _add_if_finite(vectors[row], row_steps[r]):
                columns[:, row] = vectors[row]
                biases[row] = new_bias
                item_accums[row] += row_added[r]
            if row_counts[r] > 0:
                counts[row] += np.int64(row_counts[r])
                log_counts[row] = log_table[counts[row]]
                _promote(head, in_head, head_state, counts, row, n_head)
        if seq_on and len(link_sources):
            _merge_unique_into(
                link_targets,
                link_weights,
                link_sources,
                link_targets_new,
                link_amounts,
                keys,
            )
    return ranks, user_vectors, vectors, biases, link_targets, link_weights


@numba.njit(cache=True)
def _distinct_sorted(values: np.ndarray, out: np.ndarray) -> int:
    """np.unique of a handful of values into ``out``: how many there are."""
    n = 0
    for value in values:
        at = n
        while at > 0 and out[at - 1] > value:
            at -= 1
        if at > 0 and out[at - 1] == value:
            continue
        for moved in range(n, at, -1):
            out[moved] = out[moved - 1]
        out[at] = value
        n += 1
    return n


@numba.njit(cache=True)
def _add_if_finite(vector: np.ndarray, step: np.ndarray) -> bool:
    """``vector += step`` unless a result would not be finite (then the
    vector keeps its value, as ItemTable.apply and the shopper step do)."""
    for f in range(len(vector)):
        if not np.isfinite(vector[f] + step[f]):
            return False
    for f in range(len(vector)):
        vector[f] += step[f]
    return True


@numba.njit(cache=True)
def _remember(row: np.ndarray, n_recent: np.ndarray, user: int, item: int) -> None:
    """Append to a shopper's latest items, the oldest dropped past the cap."""
    size = len(row)
    if n_recent[user] == size:
        row[: size - 1] = row[1:]
        row[size - 1] = item
    else:
        row[n_recent[user]] = item
        n_recent[user] += 1


@numba.njit(cache=True)
def _latest_sources(row: np.ndarray, n_recent: int, sources: np.ndarray) -> int:
    """The newest distinct items, newest first (models.sequence.latest_distinct)."""
    n = 0
    for at in range(n_recent - 1, -1, -1):
        item = row[at]
        seen = False
        for s in range(n):
            if sources[s] == item:
                seen = True
                break
        if not seen:
            sources[n] = item
            n += 1
            if n == len(sources):
                break
    return n


@numba.njit(cache=True)
def _promote(
    head: np.ndarray,
    in_head: np.ndarray,
    state: np.ndarray,
    counts: np.ndarray,
    row: int,
    n_head: int,
) -> None:
    """Keep ``head`` the ``n_head`` rows with the most events, ties to the
    earlier row (ItemTable.popular): ``row``'s count has just grown."""
    if n_head <= 0 or in_head[row]:
        return
    if state[0] < n_head:
        head[state[0]] = row
        state[0] += 1
        in_head[row] = True
        state[1] = 0
        return
    if counts[row] < state[1]:
        return  # fewer events than the head's fewest: it cannot enter
    weakest = 0
    for h in range(1, n_head):
        other, best = head[h], head[weakest]
        if counts[other] < counts[best] or (
            counts[other] == counts[best] and other > best
        ):
            weakest = h
    out = head[weakest]
    state[1] = counts[out]
    if counts[row] > counts[out] or (counts[row] == counts[out] and row < out):
        in_head[out] = False
        head[weakest] = row
        in_head[row] = True


@numba.njit(cache=True)
def _dense_list(
    user: np.ndarray,
    columns: np.ndarray,
    biases: np.ndarray,
    log_counts: np.ndarray,
    share: np.float32,
    sources: np.ndarray,
    source_weights: np.ndarray,
    link_targets: np.ndarray,
    link_weights: np.ndarray,
    n_items: int,
    met: np.ndarray,
    scores: np.ndarray,
    seeds: np.ndarray,
    best_rows: np.ndarray,
    best_scores: np.ndarray,
) -> None:
    """finish_lists for one shopper over every item learned so far, seeded
    with their previous list (``seeds``): the same list, found sooner."""
    _factor_scores(user, columns, biases, n_items, scores)
    for s in range(len(sources)):
        row = sources[s]
        add_links(scores, link_targets[row], link_weights[row], source_weights[s])
    if len(best_rows) == 0:
        return
    # popularity, then every item that may not be listed (the shopper's, or
    # not finite) to -inf: one pass the compiler vectorises
    for j in range(n_items):
        score = scores[j] + share * log_counts[j] if share != 0 else scores[j]
        scores[j] = score if -np.inf < score < np.inf and not met[j] else -np.inf
    top_rows(scores[:n_items], seeds, best_rows, best_scores)


@numba.njit(cache=True)
def _factor_scores(
    user: np.ndarray,
    columns: np.ndarray,
    biases: np.ndarray,
    n_items: int,
    scores: np.ndarray,
) -> None:
    """``scores[j] = user . vectors[j] + biases[j]`` for the first
    ``n_items`` items. The dot is summed factor by factor, in order, eight
    factors per pass over the items (the partial sums stay in registers);
    the bias is added last, as the worker adds it to its matrix product."""
    k = len(user)
    if k % 8:
        _factor_scores_any(user, columns, biases, n_items, scores)
        return
    for f in range(0, k, 8):
        w0, w1, w2, w3 = user[f], user[f + 1], user[f + 2], user[f + 3]
        w4, w5, w6, w7 = user[f + 4], user[f + 5], user[f + 6], user[f + 7]
        c0, c1, c2, c3 = columns[f], columns[f + 1], columns[f + 2], columns[f + 3]
        c4, c5, c6, c7 = columns[f + 4], columns[f + 5], columns[f + 6], columns[f + 7]
        if f == 0:
            for j in range(n_items):
                partial = ((w0 * c0[j] + w1 * c1[j]) + w2 * c2[j]) + w3 * c3[j]
                partial = ((partial + w4 * c4[j]) + w5 * c5[j]) + w6 * c6[j]
                scores[j] = partial + w7 * c7[j]
        else:
            for j in range(n_items):
                partial = ((scores[j] + w0 * c0[j]) + w1 * c1[j]) + w2 * c2[j]
                partial = ((partial + w3 * c3[j]) + w4 * c4[j]) + w5 * c5[j]
                scores[j] = (partial + w6 * c6[j]) + w7 * c7[j]
    for j in range(n_items):
        scores[j] += biases[j]


@numba.njit(cache=True)
def _factor_scores_any(
    user: np.ndarray,
    columns: np.ndarray,
    biases: np.ndarray,
    n_items: int,
    scores: np.ndarray,
) -> None:
    """:func:`_factor_scores` for a number of factors not in eights, one
    factor per pass."""
    scores[:n_items] = 0.0
    for f in range(len(user)):
        weight, column = user[f], columns[f]
        for j in range(n_items):
            scores[j] = scores[j] + weight * column[j] if f else weight * column[j]
    for j in range(n_items):
        scores[j] += biases[j]


@numba.njit(cache=True)
def _candidate_list(
    user: np.ndarray,
    vectors: np.ndarray,
    biases: np.ndarray,
    log_counts: np.ndarray,
    share: np.float32,
    sources: np.ndarray,
    source_weights: np.ndarray,
    link_targets: np.ndarray,
    link_weights: np.ndarray,
    head: np.ndarray,
    met: np.ndarray,
    slot: np.ndarray,
    candidates: np.ndarray,
    scores: np.ndarray,
    best_rows: np.ndarray,
    best_scores: np.ndarray,
) -> None:
    """candidate_lists for one shopper (its linked targets and the head)."""
    n = gather_candidates(
        user,
        vectors,
        biases,
        sources,
        source_weights,
        link_targets,
        link_weights,
        head,
        slot,
        candidates,
        scores,
    )
    for c in range(n):
        row = candidates[c]
        slot[row] = -1
        score = scores[c] + share * log_counts[row] if share != 0 else scores[c]
        if len(best_rows) and not met[row] and np.isfinite(score):
            _insert(best_rows, best_scores, row, score)


@numba.njit(cache=True)
def _popular_list(
    counts: np.ndarray,
    n_items: int,
    met: np.ndarray,
    best_rows: np.ndarray,
    best_scores: np.ndarray,
) -> None:
    """OnlineMF.popular_rows: the most events first, ties to the earlier row."""
    if len(best_rows) == 0:
        return
    for j in range(n_items):
        if not met[j]:
            _insert(best_rows, best_scores, j, np.float32(counts[j]))
