"""The compiled kernels (models/kernels.py, models.sequence._batch_links) against
numpy statements of the same maths, written here from the numpy code they
replaced (git history: models/mf.py and models/sequence.py before the kernels).

Each reference is the plain formulation; the kernels must give the same rows
(exactly) and the same numbers (to float32 rounding) on random inputs with
fixed seeds, edge cases included. test_topk.py and test_candidates.py check
the lists' properties and the candidate path end to end; here each kernel is
checked on its own.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.events import EVENT_TYPES, Event
from models.kernels import (
    adagrad_steps,
    add_links,
    bpr_batch,
    candidate_lists,
    draw_items,
    finish_lists,
    top_rows,
)
from models.mf import MFConfig, bpr_gradients, clip_rows
from models.replay import Replayer, batches
from models.sequence import EMPTY, batch_links

F32 = np.float32
START_MS = 1_700_000_000_000


def assert_close(actual, expected) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


# --- references --------------------------------------------------------------


def bpr_reference(
    user_matrix, event_users, positive_rows, negative_rows, weights, vectors,
    biases, regularization, clip, use_bias,
):  # fmt: skip
    """The batch step before the kernel: bpr_gradients, each event's rows
    clipped, then summed per shopper and per distinct item row."""
    user, positive, negative, positive_bias, negative_bias = bpr_gradients(
        user_matrix[event_users],
        vectors[positive_rows],
        vectors[negative_rows],
        biases[positive_rows],
        biases[negative_rows],
        weights,
        regularization,
        negative_mask=negative_rows != positive_rows[:, None],
    )
    user, positive, negative = (clip_rows(g, clip) for g in (user, positive, negative))
    on = 1.0 if use_bias else 0.0
    positive_bias = on * np.clip(positive_bias, -clip, clip)
    negative_bias = on * np.clip(negative_bias, -clip, clip)

    user_sums = np.zeros_like(user_matrix)
    np.add.at(user_sums, event_users, user)
    k = user_matrix.shape[1]
    rows, inverse = np.unique(
        np.concatenate([positive_rows, negative_rows.ravel()]), return_inverse=True
    )
    vector_sums = np.zeros((len(rows), k), F32)
    np.add.at(vector_sums, inverse, np.concatenate([positive, negative.reshape(-1, k)]))
    bias_sums = np.zeros(len(rows), F32)
    np.add.at(
        bias_sums, inverse, np.concatenate([positive_bias, negative_bias.ravel()])
    )
    counts = np.zeros(len(rows), F32)
    np.add.at(counts, inverse[: len(positive_rows)], 1.0)
    return user_sums, rows, vector_sums, bias_sums, counts


def adagrad_reference(grads, bias_grads, accums, learning_rate, adagrad, limit):
    """item_steps / _row_scale before the kernel."""
    grads = clip_rows(grads, limit)
    bias_grads = np.clip(bias_grads, -limit, limit)
    if adagrad:
        added = (grads**2).sum(axis=1) + bias_grads**2
        scale = learning_rate / np.sqrt(1.0 + accums + added)
    else:
        added = np.zeros(len(grads), F32)
        scale = np.full(len(grads), learning_rate, F32)
    return -scale[:, None] * grads, -scale * bias_grads, added


def top_k(scores, hidden_starts, hidden_rows, k):
    """Per row: hidden rows (those inside the table) out, non-finite scores
    out, then the k best by score, ties to the smaller row; -1/-inf fill."""
    n_shoppers, n_items = scores.shape
    best_rows = np.full((n_shoppers, k), -1, np.int64)
    best_scores = np.full((n_shoppers, k), -np.inf, F32)
    for t in range(n_shoppers):
        row = scores[t].copy()
        hidden = hidden_rows[hidden_starts[t] : hidden_starts[t + 1]]
        row[hidden[hidden < n_items]] = -np.inf
        allowed = np.flatnonzero(np.isfinite(row))
        chosen = allowed[np.lexsort((allowed, -row[allowed]))][:k]
        best_rows[t, : len(chosen)] = chosen
        best_scores[t, : len(chosen)] = row[chosen]
    return best_rows, best_scores


def linked(sources, source_weights, link_targets, link_weights):
    """Shopper, target and amount of every link the sources add (the old
    add_sequence_scores: EMPTY sources and slots, and zero amounts, skipped)."""
    valid = sources != EMPTY
    safe = np.where(valid, sources, 0)
    targets = link_targets[safe]  # (T, S, cap)
    amounts = link_weights[safe] * (source_weights * valid)[:, :, None]
    present = (targets != EMPTY) & (amounts != 0)
    shopper = np.broadcast_to(np.arange(len(sources))[:, None, None], targets.shape)
    return shopper[present], targets[present], amounts[present]


def finish_reference(
    scores, biases, log_counts, shares, sources, source_weights, link_targets,
    link_weights, hidden_starts, hidden_rows, k,
):  # fmt: skip
    scores = scores + biases
    shopper, targets, amounts = linked(
        sources, source_weights, link_targets, link_weights
    )
    np.add.at(scores, (shopper, targets), amounts)
    scores += shares[:, None] * log_counts
    return top_k(scores, hidden_starts, hidden_rows, k)


def candidate_reference(
    users, vectors, biases, log_counts, shares, sources, source_weights,
    link_targets, link_weights, head, hidden_starts, hidden_rows, k,
):  # fmt: skip
    """finish_reference with every item but the candidates at -inf."""
    shopper, targets, amounts = linked(
        sources, source_weights, link_targets, link_weights
    )
    dense = np.full((len(users), len(vectors)), -np.inf, F32)
    for t in range(len(users)):
        mine, mine_amounts = targets[shopper == t], amounts[shopper == t]
        candidates = np.unique(np.concatenate([mine, head]))
        scores = vectors[candidates] @ users[t] + biases[candidates]
        np.add.at(scores, np.searchsorted(candidates, mine), mine_amounts)
        dense[t, candidates] = scores + shares[t] * log_counts[candidates]
    return top_k(dense, hidden_starts, hidden_rows, k)


def draw_reference(rng, n_items, shape, share, memory):
    """OnlineMF._draw_items before the kernel (memory: the filled part)."""
    rows = rng.integers(0, n_items, size=shape)
    if share > 0 and len(memory):
        popular = rng.random(shape) < share
        rows[popular] = memory[rng.integers(0, len(memory), popular.sum())]
    return rows


def batch_links_reference(histories, items, weights, steps, backward=0.0):
    """models.sequence.batch_links before the kernel, as it was."""
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
        return empty, empty, np.zeros(0, F32)
    pairs = np.asarray(sources, np.int64) << 31 | np.asarray(targets, np.int64)
    unique, inverse_index = np.unique(pairs, return_inverse=True)
    summed = np.bincount(inverse_index, weights=amounts, minlength=len(unique))
    return unique >> 31, unique & (2**31 - 1), summed.astype(F32)


# --- random inputs -----------------------------------------------------------


def bpr_case(rng, n_events, n_negatives, n_users, n_items, use_bias, k=6):
    # scales from tiny to large: some rows clipped, some margins past +-30
    scale = rng.choice([0.05, 0.5, 3.0])
    user_matrix = (rng.standard_normal((n_users, k)) * scale).astype(F32)
    event_users = rng.integers(0, n_users, n_events)
    positive_rows = rng.integers(0, n_items, n_events)
    negative_rows = rng.integers(0, n_items, (n_events, n_negatives))
    same = rng.random(negative_rows.shape) < 0.2  # a negative that is the positive
    negative_rows[same] = np.broadcast_to(positive_rows[:, None], same.shape)[same]
    weights = rng.choice([1.0, 1.5, 3.0, 5.0], n_events).astype(F32)
    vectors = (rng.standard_normal((n_items, k)) * scale).astype(F32)
    # the model passes zeros with item biases off
    biases = (rng.standard_normal(n_items) * scale).astype(F32) * use_bias
    return (
        user_matrix, event_users, positive_rows, negative_rows, weights, vectors,
        biases, float(rng.choice([0.0, 0.01, 0.5])), float(rng.choice([0.1, 1.0])),
        use_bias,
    )  # fmt: skip


def hidden_lists(rng, n_shoppers, n_items):
    """Flat hidden rows per shopper, some repeated, some past the table."""
    parts = [
        rng.integers(0, n_items + 3, rng.integers(0, 6)) for _ in range(n_shoppers)
    ]
    starts = np.zeros(n_shoppers + 1, np.int64)
    np.cumsum([len(p) for p in parts], out=starts[1:])
    return starts, np.concatenate(parts).astype(np.int64)


def links_case(rng, n_shoppers, n_items, n_sources, cap, exact):
    """Sources (EMPTY anywhere), link rows (EMPTY slots anywhere, zero
    weights), the source weights and the shares of popularity."""
    sources = rng.integers(-1, n_items, (n_shoppers, n_sources))
    link_targets = rng.integers(-1, n_items, (n_items, cap))
    if exact:  # binary fractions: every sum exact, ties kept
        link_weights = rng.choice([0.0, 0.5, 1.0, 2.0], (n_items, cap)).astype(F32)
        source_weights = rng.choice([0.0, 0.5, 1.0], n_sources).astype(F32)
        shares = rng.choice([0.0, 0.5, 1.0], n_shoppers).astype(F32)
        log_counts = rng.choice([0.0, 0.25, 1.0], n_items).astype(F32)
    else:
        link_weights = rng.exponential(1.0, (n_items, cap)).astype(F32)
        link_weights[rng.random((n_items, cap)) < 0.2] = 0.0
        source_weights = (0.85 ** np.arange(n_sources)).astype(F32)
        shares = rng.uniform(0.0, 1.0, n_shoppers).astype(F32)
        shares[rng.random(n_shoppers) < 0.3] = 0.0
        log_counts = np.log1p(rng.integers(0, 50, n_items)).astype(F32)
    return sources, source_weights, link_targets, link_weights, shares, log_counts


def spoil(rng, values, share=0.1):
    """Some values made nan, -inf or +inf: never listed."""
    bad = rng.random(values.shape) < share
    values[bad] = rng.choice([np.nan, -np.inf, np.inf], bad.sum())


# --- bpr_batch ---------------------------------------------------------------


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize(
    ("n_events", "n_negatives", "n_users", "n_items"),
    [
        (1, 4, 1, 5),  # micro-batch 1
        (1, 1, 1, 1),  # one item: the negative is always the positive
        (50, 4, 7, 12),  # shoppers and items repeated across the batch
        (50, 2, 50, 400),  # mostly distinct rows
    ],
)
def test_bpr_batch_is_the_clipped_gradients_summed_per_row(
    n_events, n_negatives, n_users, n_items, use_bias
):
    rng = np.random.default_rng(n_events * 1000 + n_items)
    for _ in range(30):
        case = bpr_case(rng, n_events, n_negatives, n_users, n_items, use_bias)

        got = bpr_batch(*case)

        expected = bpr_reference(*case)
        assert_close(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        for have, want in zip(got[2:], expected[2:], strict=True):
            assert_close(have, want)


def test_a_negative_equal_to_the_positive_adds_only_its_regularisation():
    rng = np.random.default_rng(11)
    user_matrix = (rng.standard_normal((1, 4)) * 0.1).astype(F32)
    vectors = (rng.standard_normal((3, 4)) * 0.1).astype(F32)
    biases = np.array([0.2, -0.3, 0.1], F32)
    reg = 0.01

    users, rows, grads, bias_grads, counts = bpr_batch(
        user_matrix, np.array([0]), np.array([1]), np.array([[1, 1, 1]]),
        np.array([3.0], F32), vectors, biases, reg, 1.0, True,
    )  # fmt: skip

    # no margin at all: the positive and its three copies only regularise
    np.testing.assert_array_equal(rows, [1])
    assert_close(users, reg * user_matrix)
    assert_close(grads, 4 * reg * vectors[[1]])
    assert_close(bias_grads, [4 * reg * biases[1]])
    np.testing.assert_array_equal(counts, [1.0])


# --- adagrad_steps -----------------------------------------------------------


@pytest.mark.parametrize("adagrad", [True, False])
@pytest.mark.parametrize("limit", [0.5, 4.0, np.inf])
def test_adagrad_steps_are_the_clipped_scaled_row_steps(adagrad, limit):
    rng = np.random.default_rng(5)
    for n_rows in [0, 1, 3, 40] * 5:
        grads = (rng.standard_normal((n_rows, 5)) * rng.choice([0.01, 1, 30])).astype(
            F32
        )
        grads[rng.random(n_rows) < 0.2] = 0.0  # zero rows: nothing to scale
        bias_grads = (rng.standard_normal(n_rows) * 3).astype(F32)
        accums = rng.exponential(5.0, n_rows).astype(F32)
        learning_rate = float(rng.choice([0.05, 0.5]))

        got = adagrad_steps(grads, bias_grads, accums, learning_rate, adagrad, limit)

        expected = adagrad_reference(
            grads, bias_grads, accums, learning_rate, adagrad, limit
        )
        for have, want in zip(got, expected, strict=True):
            assert_close(have, want)


def test_an_infinite_limit_leaves_a_long_row_unclipped():
    # the shoppers' path: summed steps are not clipped again
    grads = np.array([[300.0, 400.0]], F32)

    steps, bias_steps, added = adagrad_steps(
        grads, np.zeros(1, F32), np.zeros(1, F32), 0.1, False, np.inf
    )

    assert_close(steps, [[-30.0, -40.0]])
    np.testing.assert_array_equal(bias_steps, [0.0])
    np.testing.assert_array_equal(added, [0.0])


# --- finish_lists ------------------------------------------------------------


def finish_case(rng, n_shoppers, n_items, n_sources, cap, exact):
    if exact:  # integer scores: ties everywhere
        scores = rng.integers(-3, 4, (n_shoppers, n_items)).astype(F32)
        biases = rng.integers(-1, 2, n_items).astype(F32)
    else:
        scores = rng.standard_normal((n_shoppers, n_items)).astype(F32)
        biases = rng.standard_normal(n_items).astype(F32) * 0.1
    spoil(rng, scores)
    sources, source_weights, link_targets, link_weights, shares, log_counts = (
        links_case(rng, n_shoppers, n_items, n_sources, cap, exact)
    )
    hidden_starts, hidden_rows = hidden_lists(rng, n_shoppers, n_items)
    k = int(rng.choice([0, 1, 3, n_items, n_items + 4]))  # often past the allowed
    return (
        scores, biases, log_counts, shares, sources, source_weights,
        link_targets, link_weights, hidden_starts, hidden_rows, k,
    )  # fmt: skip


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize(
    ("n_shoppers", "n_items", "n_sources", "cap"),
    [(1, 1, 1, 1), (1, 8, 3, 2), (6, 15, 4, 3), (4, 60, 10, 5), (3, 10, 0, 0)],
)
def test_finish_lists_is_the_blended_score_ranked(
    n_shoppers, n_items, n_sources, cap, exact
):
    rng = np.random.default_rng(n_items * 10 + n_shoppers + exact)
    for _ in range(40):
        case = finish_case(rng, n_shoppers, n_items, n_sources, cap, exact)

        rows, scores = finish_lists(case[0].copy(), *case[1:])

        want_rows, want_scores = finish_reference(*case)
        np.testing.assert_array_equal(rows, want_rows)
        assert_close(scores, want_scores)


def test_finish_lists_breaks_ties_to_the_smaller_row_and_fills_short_lists():
    scores = np.array([[1.0, 2.0, 2.0, np.nan, 2.0, -np.inf, 1.0]], F32)
    no_links = np.zeros((7, 0), np.int64)

    rows, best = finish_lists(
        scores, np.zeros(7, F32), np.zeros(7, F32), np.zeros(1, F32),
        np.zeros((1, 0), np.int64), np.zeros(0, F32), no_links,
        no_links.astype(F32), np.array([0, 2]), np.array([2, 99]), 6,
    )  # fmt: skip

    # row 2 hidden (99 is past the table), rows 3 and 5 not finite
    assert rows.tolist() == [[1, 4, 0, 6, -1, -1]]
    assert best.tolist() == [[2.0, 2.0, 1.0, 1.0, -np.inf, -np.inf]]


# --- top_rows ----------------------------------------------------------------


def seeded_list(scores, seeds, k):
    rows = np.full(k, -1, np.int64)
    best = np.full(k, -np.inf, F32)
    top_rows(scores, np.asarray(seeds, np.int64), rows, best)
    return rows, best


def seeds_case(rng, scores, k):
    """Seeds as a caller may pass them: some of the true top (a previous
    list), other rows, unlisted (-inf) rows, -1, rows past the end, repeats."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    pool = [
        order[: rng.integers(0, k + 3)],
        rng.integers(0, len(scores), rng.integers(0, 6)),
        np.flatnonzero(scores == -np.inf)[:2],
        [-1, len(scores) + 3][: rng.integers(0, 3)],
    ]
    seeds = np.concatenate([np.asarray(p, np.int64) for p in pool])
    seeds = np.concatenate([seeds, seeds[: rng.integers(0, 3)]])  # repeats
    return rng.permutation(seeds)


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("n_items", [1, 5, 63, 64, 65, 200, 1000])
def test_top_rows_gives_the_same_list_with_any_seeds(n_items, exact):
    rng = np.random.default_rng(n_items * 2 + exact)
    for _ in range(30):
        if exact:  # few distinct values: ties at the bar, across blocks
            scores = rng.integers(-2, 3, n_items).astype(F32)
        else:
            scores = rng.standard_normal(n_items).astype(F32)
        scores[rng.random(n_items) < 0.2] = -np.inf
        k = int(rng.choice([1, 3, 20, n_items, n_items + 4]))
        want_rows, want_scores = top_k(
            scores[None, :], np.zeros(2, np.int64), np.zeros(0, np.int64), k
        )

        for seeds in ([], seeds_case(rng, scores, k), seeds_case(rng, scores, k)):
            rows, best = seeded_list(scores, seeds, k)

            np.testing.assert_array_equal(rows, want_rows[0])
            np.testing.assert_array_equal(best, want_scores[0])


def test_a_seed_does_not_keep_out_an_equal_earlier_row():
    scores = np.array([1.0, 1.0, 1.0, 1.0, 1.0], F32)

    # seeded with the later rows, the list must still end with the earlier
    # ones: the scan has to let a score equal to the bar in
    rows, _ = seeded_list(scores, [4, 3], 2)

    assert rows.tolist() == [0, 1]


def test_a_list_the_seeds_leave_short_is_filled_from_every_row():
    scores = np.full(130, -np.inf, F32)
    scores[[5, 70, 129]] = [0.5, 3.0, 0.25]

    # the seed (3.0) sets a bar no other row reaches: the rest come after
    rows, best = seeded_list(scores, [70], 4)

    assert rows.tolist() == [70, 5, 129, -1]
    assert best.tolist() == [3.0, 0.5, 0.25, -np.inf]


def test_add_links_adds_a_row_s_used_slots_times_the_source_weight():
    rng = np.random.default_rng(5)
    for used in (0, 1, 7, 8):
        targets = np.full(8, EMPTY, np.int64)
        targets[:used] = rng.permutation(12)[:used]  # the merges: unused last
        weights = np.zeros(8, F32)
        weights[:used] = rng.choice([0.0, 0.5, 1.5], used)
        scores = rng.standard_normal(12).astype(F32)
        want = scores.copy()
        np.add.at(want, targets[:used], weights[:used] * F32(0.75))

        add_links(scores, targets, weights, F32(0.75))

        np.testing.assert_array_equal(scores, want)


# --- candidate_lists ---------------------------------------------------------


def candidate_case(rng, n_shoppers, n_items, n_sources, cap, exact, n_head):
    k_factors = 4
    if exact:  # small integers: exact dot products, ties everywhere
        users = rng.integers(-1, 2, (n_shoppers, k_factors)).astype(F32)
        vectors = rng.integers(-1, 2, (n_items, k_factors)).astype(F32)
        biases = rng.integers(-1, 2, n_items).astype(F32)
    else:
        users = rng.standard_normal((n_shoppers, k_factors)).astype(F32)
        vectors = rng.standard_normal((n_items, k_factors)).astype(F32)
        biases = rng.standard_normal(n_items).astype(F32) * 0.1
    spoil(rng, biases, 0.05)
    sources, source_weights, link_targets, link_weights, shares, log_counts = (
        links_case(rng, n_shoppers, n_items, n_sources, cap, exact)
    )
    head = rng.permutation(n_items)[:n_head].astype(np.int64)  # in no order
    hidden_starts, hidden_rows = hidden_lists(rng, n_shoppers, n_items)
    k = int(rng.choice([0, 1, 3, n_items + 4]))
    return (
        users, vectors, biases, log_counts, shares, sources, source_weights,
        link_targets, link_weights, head, hidden_starts, hidden_rows, k,
    )  # fmt: skip


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize(
    ("n_shoppers", "n_items", "n_sources", "cap", "n_head"),
    [(1, 1, 1, 1, 0), (1, 12, 3, 2, 0), (5, 30, 4, 3, 4), (4, 80, 10, 5, 10)],
)
def test_candidate_lists_rank_the_linked_and_head_items_only(
    n_shoppers, n_items, n_sources, cap, n_head, exact
):
    rng = np.random.default_rng(n_items * 10 + n_head + exact)
    slot = np.full(n_items + 5, -1, np.int64)
    for _ in range(40):
        case = candidate_case(rng, n_shoppers, n_items, n_sources, cap, exact, n_head)

        rows, scores = candidate_lists(*case, slot)

        want_rows, want_scores = candidate_reference(*case)
        np.testing.assert_array_equal(rows, want_rows)
        assert_close(scores, want_scores)
        assert (slot == -1).all()  # the scratch is clean for the next call


@pytest.mark.parametrize("exact", [True, False])
def test_with_every_item_a_candidate_the_lists_are_finish_lists(exact):
    rng = np.random.default_rng(17 + exact)
    n_items = 25
    slot = np.full(2 * n_items, -1, np.int64)
    for _ in range(40):
        case = candidate_case(rng, 4, n_items, 5, 3, exact, n_head=n_items)
        # the same arguments but the head; the factor scores as the model's
        users, vectors, *blend, _head, hidden_starts, hidden_rows, k = case

        rows, scores = candidate_lists(*case, slot)

        want_rows, want_scores = finish_lists(
            users @ vectors.T, *blend, hidden_starts, hidden_rows, k
        )
        np.testing.assert_array_equal(rows, want_rows)
        assert_close(scores, want_scores)
        assert (slot == -1).all()


# --- draw_items --------------------------------------------------------------


@pytest.mark.parametrize("popular_share", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("memory_size", [0, 1, 7])
@pytest.mark.parametrize("shape", [(1,), (13,), (6, 4)])
def test_draw_items_draws_what_the_numpy_lines_drew(popular_share, memory_size, shape):
    for seed in range(10):
        kernel_rng, numpy_rng = (np.random.default_rng(seed) for _ in range(2))
        # an odd number of 32-bit draws first: the generator holds half a word
        kernel_rng.integers(0, 10, 3)
        numpy_rng.integers(0, 10, 3)
        for n_items in (1, 2, 50):
            memory = np.arange(1000, 1000 + memory_size, dtype=np.int64)
            size = int(np.prod(shape))

            got = draw_items(kernel_rng, n_items, size, popular_share, memory)

            want = draw_reference(numpy_rng, n_items, shape, popular_share, memory)
            np.testing.assert_array_equal(got.reshape(shape), want)
        # and both generators are left in the same state
        assert kernel_rng.random() == numpy_rng.random()
        assert kernel_rng.bit_generator.state == numpy_rng.bit_generator.state


# --- batch_links -------------------------------------------------------------


@pytest.mark.parametrize("backward", [0.0, 0.75])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_batch_links_are_the_python_loop_s(steps, backward):
    rng = np.random.default_rng(steps * 10 + int(backward * 4))
    for _ in range(100):
        n_events = int(rng.integers(0, 8))  # empty batches included
        # few distinct rows: items repeat and equal earlier ones (no self-link)
        offset = int(rng.choice([0, 2**31 - 10]))  # rows up to 2**31 - 1
        histories = [
            (offset + rng.integers(0, 6, rng.integers(0, 15))).tolist()
            for _ in range(n_events)
        ]
        items = (offset + rng.integers(0, 6, n_events)).tolist()
        weights = rng.choice([1.0, 0.3, 2.5], n_events).tolist()

        got = batch_links(histories, items, weights, steps, backward)

        want = batch_links_reference(histories, items, weights, steps, backward)
        for have, expected in zip(got, want, strict=True):
            assert have.dtype == expected.dtype
            np.testing.assert_array_equal(have, expected)


def test_an_empty_batch_has_no_links():
    sources, targets, weights = batch_links([], [], [], 10, 0.75)

    assert len(sources) == len(targets) == len(weights) == 0
    assert sources.dtype == targets.dtype == np.int64
    assert weights.dtype == F32


# --- end to end --------------------------------------------------------------


@pytest.mark.parametrize("exclude_viewed", [False, True])
def test_top_rows_rank_the_model_scores_without_hidden_items(exclude_viewed):
    rng = np.random.default_rng(23)
    config = MFConfig(n_factors=8, seed=4, exclude_viewed=exclude_viewed)
    replayer = Replayer(config)
    events = [
        Event(
            f"e{n}",
            f"u{rng.integers(0, 12)}",
            f"i{rng.integers(0, 30)}",
            str(rng.choice(EVENT_TYPES, p=[0.5, 0.2, 0.1, 0.2])),
            START_MS + n,
        )
        for n in range(400)
    ]
    for batch in batches(events, int(rng.integers(1, 12))):
        replayer.learn(batch)
    model, items = replayer.model, replayer.model.items
    profiles = [replayer.profiles[u] for u in sorted(replayer.profiles)]
    exclude = [
        rng.choice(len(items), rng.integers(0, 4), replace=False) for _ in profiles
    ]
    hidden = [
        np.concatenate(
            [items.known_rows(p.items if exclude_viewed else p.bought), e]
        ).astype(np.int64)
        for p, e in zip(profiles, exclude, strict=True)
    ]
    starts = np.cumsum([0] + [len(h) for h in hidden])
    assert any(len(p.bought) for p in profiles)  # exclusion is exercised

    for k in (1, 10, len(items) + 5):
        rows, scores = model.top_rows(profiles, k, exclude)

        want_rows, want_scores = top_k(
            model.scores(profiles), starts, np.concatenate(hidden), min(k, len(items))
        )
        np.testing.assert_array_equal(rows, want_rows)
        assert_close(scores, want_scores)
