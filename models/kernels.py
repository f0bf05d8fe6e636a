"""Compiled inner loops of the model (numba), for small batches.

At micro-batch 1 a numpy step is a hundred calls on arrays of a few dozen
numbers, and each call costs more than its arithmetic. These kernels do the
same arithmetic in one compiled loop each: the BPR step of a batch
(:func:`bpr_batch`) and the end of a list (:func:`finish_lists`: bias,
links, popularity, exclusions and the top ``k``). They are the only code
path, on the worker and in the in-process replay alike; the numpy
formulation they replace stays in ``models/mf.py`` (``bpr_gradients``) as
the readable statement of the maths that the tests check them against.

Every array is float32 or int64, as the model keeps them; ``cache=True``
compiles once per machine and keeps the machine code beside this file.
"""

from __future__ import annotations

import numba
import numpy as np

from models.sequence import EMPTY, used_slots


@numba.njit(cache=True)
def _clip(vector: np.ndarray, limit: np.float32) -> None:
    """Scale a vector down to norm ``limit`` at most, in place."""
    total = np.float32(0.0)
    for f in range(len(vector)):
        total += vector[f] * vector[f]
    norm = max(np.sqrt(total), np.float32(1e-12))
    if norm > limit:
        scale = limit / norm
        for f in range(len(vector)):
            vector[f] *= scale


@numba.njit(cache=True)
def _dot(a: np.ndarray, b: np.ndarray) -> np.float32:
    total = np.float32(0.0)
    for f in range(len(a)):
        total += a[f] * b[f]
    return total


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _dot_fast(a: np.ndarray, b: np.ndarray) -> np.float32:
    """A dot product the compiler may sum in any order (vectorised): for
    ranking candidates, where the last bit of a score does not matter."""
    total = np.float32(0.0)
    for f in range(len(a)):
        total += a[f] * b[f]
    return total


@numba.njit(cache=True)
def bpr_batch(
    user_matrix: np.ndarray,
    event_users: np.ndarray,
    positive_rows: np.ndarray,
    negative_rows: np.ndarray,
    weights: np.ndarray,
    vectors: np.ndarray,
    biases: np.ndarray,
    regularization: float,
    clip: float,
    use_bias: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clipped weighted-BPR gradients of a batch, summed per shopper and item.

    Shapes: ``user_matrix`` (U, k) the batch's shoppers; per event
    ``event_users`` (B,) a row of it, ``positive_rows`` (B,),
    ``negative_rows`` (B, n), ``weights`` (B,); ``vectors``/``biases`` the
    item table. Every gradient is taken at the state passed in (the state
    from before the batch) and clipped to norm ``clip`` per event, as
    ``models.mf.bpr_gradients`` and ``clip_rows`` define them; a negative
    that is the event's positive contributes only its regularisation.

    Returns the shoppers' summed gradients (U, k), the distinct item rows
    (sorted), and per distinct row the summed vector gradient, the summed
    bias gradient (zero with ``use_bias`` off) and the number of events it
    was the positive of.
    """
    n_events, n_negatives = negative_rows.shape
    k = user_matrix.shape[1]
    user_grads = np.zeros(user_matrix.shape, np.float32)
    item_grads = np.zeros((n_events * (1 + n_negatives), k), np.float32)
    bias_grads = np.zeros(n_events * (1 + n_negatives), np.float32)
    pulls = np.zeros(n_negatives, np.float32)
    grad = np.zeros(k, np.float32)
    for e in range(n_events):
        event_gradients(
            user_matrix[event_users[e]],
            positive_rows[e],
            negative_rows[e],
            weights[e],
            vectors,
            biases,
            regularization,
            clip,
            use_bias,
            e,
            n_events + e * n_negatives,
            item_grads,
            bias_grads,
            pulls,
            grad,
        )
        for f in range(k):
            user_grads[event_users[e], f] += grad[f]

    # sum per item: positives first, then negatives, as the slots are laid out
    slot_rows = np.concatenate((positive_rows, negative_rows.ravel()))
    rows = np.unique(slot_rows)
    vector_sums = np.zeros((len(rows), k), np.float32)
    bias_sums = np.zeros(len(rows), np.float32)
    counts = np.zeros(len(rows), np.float32)
    sum_slots(
        slot_rows,
        item_grads,
        bias_grads,
        n_events,
        rows,
        vector_sums,
        bias_sums,
        counts,
    )
    return user_grads, rows, vector_sums, bias_sums, counts


@numba.njit(cache=True)
def event_gradients(
    user: np.ndarray,
    positive_row: int,
    negative_rows: np.ndarray,
    weight: np.float32,
    vectors: np.ndarray,
    biases: np.ndarray,
    regularization: float,
    clip: float,
    use_bias: bool,
    positive_slot: int,
    first_negative_slot: int,
    item_grads: np.ndarray,
    bias_grads: np.ndarray,
    pulls: np.ndarray,
    grad: np.ndarray,
) -> None:
    """One event's part of :func:`bpr_batch`: the shopper's clipped gradient
    into ``grad``; the positive's into slot ``positive_slot`` of
    ``item_grads``/``bias_grads``, the negatives' into the slots from
    ``first_negative_slot`` on (``pulls`` is scratch, one per negative)."""
    n_negatives = len(negative_rows)
    k = len(user)
    reg = np.float32(regularization)
    limit = np.float32(clip)
    positive = vectors[positive_row]

    # predict: the positive's margin over each negative, and its pull
    positive_score = _dot(user, positive) + biases[positive_row]
    total = np.float32(0.0)
    for n in range(n_negatives):
        j = negative_rows[n]
        pulls[n] = 0.0
        if j != positive_row:
            margin = positive_score - _dot(user, vectors[j]) - biases[j]
            margin = min(max(margin, np.float32(-30.0)), np.float32(30.0))
            pulls[n] = weight / (np.float32(1.0) + np.exp(margin))
            total += pulls[n]

    # gradient, regularise, clip: the shopper's ...
    for f in range(k):
        grad[f] = reg * user[f]
    for n in range(n_negatives):
        negative = vectors[negative_rows[n]]
        for f in range(k):
            grad[f] -= pulls[n] * (positive[f] - negative[f])
    _clip(grad, limit)

    # ... the positive's and the negatives'
    for f in range(k):
        item_grads[positive_slot, f] = -total * user[f] + reg * positive[f]
    _clip(item_grads[positive_slot], limit)
    bias_grads[positive_slot] = 0.0
    if use_bias:
        step = -total + reg * biases[positive_row]
        bias_grads[positive_slot] = min(max(step, -limit), limit)
    for n in range(n_negatives):
        j = negative_rows[n]
        slot = first_negative_slot + n
        for f in range(k):
            item_grads[slot, f] = pulls[n] * user[f] + reg * vectors[j, f]
        _clip(item_grads[slot], limit)
        bias_grads[slot] = 0.0
        if use_bias:
            step = pulls[n] + reg * biases[j]
            bias_grads[slot] = min(max(step, -limit), limit)


@numba.njit(cache=True)
def sum_slots(
    slot_rows: np.ndarray,
    item_grads: np.ndarray,
    bias_grads: np.ndarray,
    n_events: int,
    rows: np.ndarray,
    vector_sums: np.ndarray,
    bias_sums: np.ndarray,
    counts: np.ndarray,
) -> None:
    """The slots' gradients summed per row of ``rows`` (their distinct rows,
    sorted) in slot order, into the zeroed ``vector_sums``/``bias_sums``;
    ``counts`` the events each row was the positive of (the first
    ``n_events`` slots)."""
    k = item_grads.shape[1]
    for slot in range(len(slot_rows)):
        at = np.searchsorted(rows, slot_rows[slot])
        for f in range(k):
            vector_sums[at, f] += item_grads[slot, f]
        bias_sums[at] += bias_grads[slot]
        if slot < n_events:
            counts[at] += 1.0


@numba.njit(cache=True)
def _insert(
    best_rows: np.ndarray, best_scores: np.ndarray, row: int, score: np.float32
) -> None:
    """Put ``row`` into a top list kept best first, if it beats the last
    entry: a higher score, or an equal one and a smaller row."""
    k = len(best_rows)
    if not _before(score, row, best_scores[k - 1], best_rows[k - 1]):
        return
    at = k - 1
    while at > 0 and _before(score, row, best_scores[at - 1], best_rows[at - 1]):
        best_rows[at] = best_rows[at - 1]
        best_scores[at] = best_scores[at - 1]
        at -= 1
    best_rows[at] = row
    best_scores[at] = score


@numba.njit(cache=True)
def _before(score: np.float32, row: int, other_score: np.float32, other: int) -> bool:
    # an empty slot (-1, -inf) comes after every finite score
    if other < 0:
        return True
    return score > other_score or (score == other_score and row < other)


# The scan of :func:`top_rows` tests this many scores at a time: a count the
# compiler vectorises (a fixed trip count over a view; an offset index or a
# variable bound makes it gather), after which most blocks are skipped whole.
SCAN_BLOCK = 64
_NO_SEEDS = np.zeros(0, np.int64)


@numba.njit(cache=True)
def top_rows(
    scores: np.ndarray,
    seeds: np.ndarray,
    best_rows: np.ndarray,
    best_scores: np.ndarray,
) -> None:
    """The best entries of ``scores`` into ``best_rows``/``best_scores``
    (filled with -1 and -inf on entry), best first, ties to the smaller row;
    -inf marks a row that may not be listed.

    ``seeds`` are rows likely to be near the top (a shopper's previous list;
    -1 for none): entered first, they raise the bar that every other row
    must reach, so that the scan skips most blocks and inserts little. The
    list is the same with any seeds, or none.
    """
    last = len(best_rows) - 1
    if last < 0:
        return
    n_seeded = 0
    for s in range(len(seeds)):
        row = seeds[s]
        listable = 0 <= row < len(scores) and scores[row] > -np.inf
        if listable and not _listed(best_rows, row):
            _insert(best_rows, best_scores, row, scores[row])
            n_seeded += 1
    reaching = np.empty(SCAN_BLOCK, np.int64)
    if n_seeded == 0 or best_rows[last] >= 0:
        _scan(scores, best_rows, best_scores, best_scores[last], reaching)
        return
    # a list the seeds left short (one of them was just bought, say): first
    # only the rows that reach the weakest seed, which most often fill it;
    # the rest of the rows only if they do not
    _scan(scores, best_rows, best_scores, best_scores[n_seeded - 1], reaching)
    if best_rows[last] < 0:
        _scan(scores, best_rows, best_scores, np.float32(-np.inf), reaching)


@numba.njit(cache=True)
def _scan(
    scores: np.ndarray,
    best_rows: np.ndarray,
    best_scores: np.ndarray,
    bar: np.float32,
    reaching: np.ndarray,
) -> None:
    """Enter every row of ``scores`` that reaches ``bar`` and is not listed
    yet; once the list is full, its last entry is the bar. ``reaching`` is
    scratch, one entry per row of a block."""
    last = len(best_rows) - 1
    n_items = len(scores)
    full = n_items - n_items % SCAN_BLOCK
    floor = best_scores[last] if best_rows[last] >= 0 else bar
    for start in range(0, n_items, SCAN_BLOCK):
        if start < full:
            # the block's rows that reach the floor, without a branch per
            # row: a count first (vectorised), then their offsets gathered
            block = scores[start : start + SCAN_BLOCK]
            n_reaching = 0
            for j in range(SCAN_BLOCK):
                n_reaching += block[j] >= floor
            if n_reaching == 0:
                continue
            n_reaching = 0
            for j in range(SCAN_BLOCK):
                reaching[n_reaching] = start + j
                n_reaching += block[j] >= floor
        else:
            n_reaching = n_items - start
            for j in range(n_reaching):
                reaching[j] = start + j
        for r in range(n_reaching):
            row = reaching[r]
            score = scores[row]
            # an equal score may still enter: a seed can be a later row
            if score >= floor and score > -np.inf and not _listed(best_rows, row):
                _insert(best_rows, best_scores, row, score)
                if best_rows[last] >= 0:
                    floor = best_scores[last]


@numba.njit(cache=True)
def _listed(best_rows: np.ndarray, row: int) -> bool:
    count = 0  # a count, not a search: no branch per entry
    for r in range(len(best_rows)):
        count += best_rows[r] == row
    return count > 0


@numba.njit(cache=True)
def add_links(
    scores: np.ndarray, targets: np.ndarray, weights: np.ndarray, weight: np.float32
) -> None:
    """``scores[target] += link weight * weight`` over a link row's used
    slots, which must come first, as the merges of ``models.sequence`` keep
    them (:func:`finish_lists` takes rows in any order). No test per slot: a
    loop without branches runs 2-3x faster on rows in cache, and adding a
    zero changes no score (at most -0.0 to 0.0, which rank alike)."""
    for c in range(used_slots(targets)):
        scores[targets[c]] += weights[c] * weight


@numba.njit(cache=True)
def add_popularity(
    scores: np.ndarray, share: np.float32, log_counts: np.ndarray
) -> None:
    """``scores += share * log_counts`` (skipped when ``share`` is 0), each
    score that is not finite then set to -inf, so that it is never listed:
    one pass the compiler vectorises."""
    for j in range(len(scores)):
        score = scores[j] + share * log_counts[j] if share != 0 else scores[j]
        scores[j] = score if -np.inf < score < np.inf else -np.inf


@numba.njit(cache=True)
def finish_lists(
    scores: np.ndarray,
    biases: np.ndarray,
    log_counts: np.ndarray,
    shares: np.ndarray,
    sources: np.ndarray,
    source_weights: np.ndarray,
    link_targets: np.ndarray,
    link_weights: np.ndarray,
    hidden_starts: np.ndarray,
    hidden_rows: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The rest of each shopper's blended score, then their top ``k``.

    ``scores`` (T, n_items) holds the factor scores ``p_u . q_j`` and is
    overwritten. Added to it: ``biases`` (zeros to leave them out), the links
    of the shopper's ``sources`` (T, S; EMPTY where fewer) times
    ``source_weights`` (S,), and ``shares[t] * log_counts`` (popularity), in
    that order. The rows ``hidden_rows[hidden_starts[t]:hidden_starts[t+1]]``
    are left out (rows past the table are ignored), as are non-finite scores.

    Returns the best rows (T, k), best first (ties to the smaller row), and
    their scores; -1 and -inf fill a short list.
    """
    n_shoppers, n_items = scores.shape
    n_sources = sources.shape[1]
    best_rows = np.full((n_shoppers, k), -1, np.int64)
    best_scores = np.full((n_shoppers, k), -np.inf, np.float32)
    for t in range(n_shoppers):
        row = scores[t]
        for j in range(n_items):
            row[j] += biases[j]
        for s in range(n_sources):
            source = sources[t, s]
            if source == EMPTY:
                continue
            weight = source_weights[s]
            for c in range(link_targets.shape[1]):
                target = link_targets[source, c]
                amount = link_weights[source, c] * weight
                if target != EMPTY and amount != 0:
                    row[target] += amount
        # hidden last but popularity: adding to -inf leaves it there
        for h in range(hidden_starts[t], hidden_starts[t + 1]):
            if hidden_rows[h] < n_items:
                row[hidden_rows[h]] = -np.inf
        add_popularity(row, shares[t], log_counts)
        top_rows(row, _NO_SEEDS, best_rows[t], best_scores[t])
    return best_rows, best_scores


@numba.njit(cache=True)
def adagrad_steps(
    grads: np.ndarray,
    bias_grads: np.ndarray,
    accums: np.ndarray,
    learning_rate: float,
    adagrad: bool,
    limit: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps for rows of summed gradients (R, k) and their biases (R,).

    Each row's gradient is clipped to norm ``limit`` (the bias to
    ``[-limit, limit]``), then scaled by ``learning_rate / sqrt(1 + G)``
    with Adagrad, ``G`` the row's ``accums`` plus the squared norm added
    now, or by ``learning_rate`` alone. Returns the vector steps, the bias
    steps (both already negated: add them) and what each row adds to G.
    """
    n_rows, k = grads.shape
    vector_steps = np.empty((n_rows, k), np.float32)
    bias_steps = np.empty(n_rows, np.float32)
    added = np.zeros(n_rows, np.float32)
    adagrad_into(
        grads, bias_grads, accums, learning_rate, adagrad, limit,
        vector_steps, bias_steps, added,
    )  # fmt: skip
    return vector_steps, bias_steps, added


@numba.njit(cache=True)
def adagrad_into(
    grads: np.ndarray,
    bias_grads: np.ndarray,
    accums: np.ndarray,
    learning_rate: float,
    adagrad: bool,
    limit: float,
    vector_steps: np.ndarray,
    bias_steps: np.ndarray,
    added: np.ndarray,
) -> None:
    """:func:`adagrad_steps` into arrays the caller holds (``added`` zeroed)."""
    n_rows, k = grads.shape
    cut = np.float32(limit)
    rate = np.float32(learning_rate)
    for r in range(n_rows):
        vector_steps[r] = grads[r]
        _clip(vector_steps[r], cut)
        bias = min(max(bias_grads[r], -cut), cut)
        scale = rate
        if adagrad:
            total = bias * bias
            for f in range(k):
                total += vector_steps[r, f] * vector_steps[r, f]
            added[r] = total
            scale = rate / np.sqrt(np.float32(1.0) + accums[r] + total)
        for f in range(k):
            vector_steps[r, f] *= -scale
        bias_steps[r] = -scale * bias


@numba.njit(cache=True)
def gather_candidates(
    user: np.ndarray,
    vectors: np.ndarray,
    biases: np.ndarray,
    sources: np.ndarray,
    source_weights: np.ndarray,
    link_targets: np.ndarray,
    link_weights: np.ndarray,
    head: np.ndarray,
    slot: np.ndarray,
    rows: np.ndarray,
    scores: np.ndarray,
) -> int:
    """One shopper's candidates into ``rows``/``scores``; returns how many.

    The targets of the links of ``sources`` (EMPTY entries skipped), then
    the ``head`` rows, each once (``slot[row]`` is its place; the caller
    sets it back to -1): factor score plus bias, then every link into it in
    source order, as the dense path adds them.
    """
    n = 0
    for s in range(len(sources)):
        source = sources[s]
        if source == EMPTY:
            continue
        for c in range(link_targets.shape[1]):
            target = link_targets[source, c]
            amount = link_weights[source, c] * source_weights[s]
            if target == EMPTY or amount == 0:
                continue
            n = _enter_candidate(user, vectors, biases, target, slot, rows, scores, n)
            scores[slot[target]] += amount
    for target in head:
        n = _enter_candidate(user, vectors, biases, target, slot, rows, scores, n)
    return n


@numba.njit(cache=True)
def _enter_candidate(
    user: np.ndarray,
    vectors: np.ndarray,
    biases: np.ndarray,
    target: int,
    slot: np.ndarray,
    rows: np.ndarray,
    scores: np.ndarray,
    n: int,
) -> int:
    """Give ``target`` the next place among the candidates (factor score
    plus bias) unless it has one; returns how many there are now."""
    if slot[target] >= 0:
        return n
    slot[target] = n
    rows[n] = target
    scores[n] = _dot_fast(user, vectors[target]) + biases[target]
    return n + 1


@numba.njit(cache=True)
def candidate_lists(
    users: np.ndarray,
    vectors: np.ndarray,
    biases: np.ndarray,
    log_counts: np.ndarray,
    shares: np.ndarray,
    sources: np.ndarray,
    source_weights: np.ndarray,
    link_targets: np.ndarray,
    link_weights: np.ndarray,
    head: np.ndarray,
    hidden_starts: np.ndarray,
    hidden_rows: np.ndarray,
    k: int,
    slot: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`finish_lists` among each shopper's candidates only: the targets
    of their sources' links and the ``head`` rows (the most popular items).

    ``users`` (T, k_factors) are the shoppers' factors; a candidate scores
    its factor score plus bias, then the links into it, then popularity, as
    the dense path adds them. ``slot`` is scratch, one entry per item row,
    all -1 on entry and on return (a candidate's place in this shopper's
    list of candidates).
    """
    n_shoppers = len(users)
    n_items = len(vectors)
    best_rows = np.full((n_shoppers, k), -1, np.int64)
    best_scores = np.full((n_shoppers, k), -np.inf, np.float32)
    rows = np.empty(sources.shape[1] * link_targets.shape[1] + len(head), np.int64)
    scores = np.empty(len(rows), np.float32)
    for t in range(n_shoppers):
        n = gather_candidates(
            users[t],
            vectors,
            biases,
            sources[t],
            source_weights,
            link_targets,
            link_weights,
            head,
            slot,
            rows,
            scores,
        )

        # blend, exclude, rank
        share = shares[t]
        if share != 0:
            for c in range(n):
                scores[c] += share * log_counts[rows[c]]
        for h in range(hidden_starts[t], hidden_starts[t + 1]):
            row = hidden_rows[h]
            if row < n_items and slot[row] >= 0:
                scores[slot[row]] = -np.inf
        for c in range(n):
            if k > 0 and np.isfinite(scores[c]):
                _insert(best_rows[t], best_scores[t], rows[c], scores[c])
            slot[rows[c]] = -1
    return best_rows, best_scores


@numba.njit(cache=True)
def draw_items(
    rng: np.random.Generator,
    n_items: int,
    size: int,
    popular_share: float,
    memory: np.ndarray,
) -> np.ndarray:
    """``size`` item rows drawn uniformly, a ``popular_share`` of them
    replaced by draws from ``memory`` (rows of recent positives). The draws
    are numpy's own, in numpy's order: the same ``rng`` gives the same rows
    as ``models.mf`` drew them in numpy."""
    rows = rng.integers(0, n_items, size=size)
    if popular_share > 0 and len(memory):
        popular = rng.random(size) < popular_share
        picks = rng.integers(0, len(memory), size=popular.sum())
        n = 0
        for at in range(size):
            if popular[at]:
                rows[at] = memory[picks[n]]
                n += 1
    return rows


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


@numba.njit(cache=True)
def _uniform(state: np.uint64) -> tuple[np.uint64, float]:
    """One step of splitmix64: the next state and a uniform in (0, 1]."""
    state = state + _GOLDEN
    z = state
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    z = z ^ (z >> np.uint64(31))
    return state, (float(z >> np.uint64(11)) + 1.0) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True)
def normal_factors(seed: int, n_factors: int, scale: float) -> np.ndarray:
    """``n_factors`` draws of N(0, scale^2) determined by ``seed`` alone
    (splitmix64, then Box-Muller), as float32.

    An id's start vector must depend on nothing but the id, so every worker
    draws it alike; a numpy Generator per id gave that at ~30 us an id
    (most of a new item's cost), this stream at well under one.
    """
    out = np.empty(n_factors, np.float32)
    state = np.uint64(seed)
    for f in range(0, n_factors, 2):
        state, first = _uniform(state)
        state, second = _uniform(state)
        radius = np.sqrt(-2.0 * np.log(first)) * scale
        out[f] = radius * np.cos(2.0 * np.pi * second)
        if f + 1 < n_factors:
            out[f + 1] = radius * np.sin(2.0 * np.pi * second)
    return out
