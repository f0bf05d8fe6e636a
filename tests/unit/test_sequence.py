"""The sequence part: links, their capped rows, their scores, and the owner's
copy of them (routing, merging, the table record, the replica)."""

from __future__ import annotations

import numpy as np
import pytest

from models.events import Event
from models.items import ItemState, ItemTable, decode_item, encode_item
from models.mf import MFConfig, OnlineMF
from models.profiles import UserProfile
from models.sequence import (
    EMPTY,
    batch_links,
    latest_distinct,
    merge_links_into,
    merge_rows,
    merge_unique_into,
    sequence_scores,
)
from streams.owner import apply_updates, split_by_owner

START_MS = 1_700_000_000_000


def event(n: int, user: str, item: str) -> Event:
    return Event(f"e{n}", user, item, "view", START_MS + n)


def as_dict(sources, targets, weights) -> dict[tuple[int, int], float]:  # type: ignore[no-untyped-def]
    pairs = zip(sources.tolist(), targets.tolist(), strict=True)
    return dict(zip(pairs, weights.tolist(), strict=True))


def test_links_weigh_one_over_the_distance_and_never_loop():
    sources, targets, weights = batch_links([[1, 2, 3]], [2], [1.0], steps=10)

    links = as_dict(sources, targets, weights)
    # 3 is one step back, 2 (the item itself) is skipped, 1 is three back
    assert links == {(3, 2): 1.0, (1, 2): np.float32(1 / 3)}


def test_links_of_a_batch_are_summed_per_pair_within_the_window():
    sources, targets, weights = batch_links(
        [[5], [5], [9, 8, 7, 5]], [6, 6, 6], [1.0, 2.0, 1.0], steps=2
    )
    links = as_dict(sources, targets, weights)
    assert links == {(5, 6): 3.0 + 1.0, (7, 6): 0.5}


def test_a_full_row_keeps_the_strongest_links_ties_to_the_smaller_key():
    row_targets = np.array([[0, 1, EMPTY]])
    row_weights = np.array([[2.0, 1.0, 0.0]], np.float32)

    targets, weights = merge_rows(
        row_targets,
        row_weights,
        np.array([0, 0, 0]),
        np.array([1, 2, 3]),
        np.array([0.5, 1.5, 1.5], np.float32),
        keys=-np.arange(4),  # the larger target wins a tie here
    )

    assert targets.tolist() == [[0, 3, 2]]
    np.testing.assert_allclose(weights, [[2.0, 1.5, 1.5]])  # 1 + 0.5 cut out


def test_sequence_scores_sum_the_weighted_links_of_the_sources():
    link_targets = np.array([[1, 2], [2, EMPTY], [EMPTY, EMPTY]])
    link_weights = np.array([[1.0, 0.5], [2.0, 0.0], [0.0, 0.0]], np.float32)

    scores = sequence_scores(
        link_targets,
        link_weights,
        np.array([[0, 1], [2, EMPTY]]),
        np.array([[1.0, 0.5], [1.0, 1.0]], np.float32),
        3,
    )

    np.testing.assert_allclose(scores, [[0.0, 1.0, 0.5 + 1.0], [0.0, 0.0, 0.0]])


def test_latest_distinct_items_come_newest_first():
    assert latest_distinct(["a", "b", "a", "c", "c"], 3) == ["c", "a", "b"]
    assert latest_distinct(["a"], 3) == ["a"]


def planted_chains(shoppers: int, catalogue: int) -> list[Event]:
    """Every shopper walks the same chain i0 -> i1 -> ... from a random start,
    each step to the next item: the next item is all the sequence says."""
    rng = np.random.default_rng(4)
    events, n = [], 0
    for user in range(shoppers):
        start = int(rng.integers(0, catalogue))
        for step in range(6):
            events.append(event(n, f"u{user}", f"i{(start + step) % catalogue}"))
            n += 1
    return events


def test_a_planted_sequence_comes_back_first():
    config = MFConfig(n_factors=4, seed=2, min_history=1)
    model = OnlineMF(config)
    profiles: dict[str, UserProfile] = {}
    for start in range(0, 1200, 50):
        events = planted_chains(200, 30)[start : start + 50]
        result = model.learn_batch(events, profiles)
        model.apply_item_update(result.item_update)

    shopper = UserProfile.new("new", 4, 0.1, 2)
    shopper.remember([event(0, "new", "i7")], recent_items=20, dedup_window_ms=1)
    rec = model.recommend([shopper], ["new"], 3)[0]

    assert rec.personal
    assert rec.items[0] == "i8"


def test_with_the_sequence_switched_off_items_have_no_links():
    model = OnlineMF(MFConfig(n_factors=4, seq_weight=0.0))
    result = model.learn_batch(planted_chains(5, 10), {})
    assert result.item_update.link_sources == []
    assert model.items.link_cap == 0


def learn_in_batches(config: MFConfig, events: list[Event], size: int):
    model, profiles, updates = OnlineMF(config), {}, []
    for start in range(0, len(events), size):
        result = model.learn_batch(events[start : start + size], profiles)
        model.apply_item_update(result.item_update)
        updates.append(result.item_update)
    return model, updates


def test_owners_and_the_replica_reach_the_links_of_the_in_process_model():
    # a small cap so that rows fill up and the cut (and its ties) matter
    config = MFConfig(n_factors=4, seed=3, link_cap=3)
    in_process, updates = learn_in_batches(config, planted_chains(40, 12), 25)
    learner = OnlineMF(config)  # the owner's copy of the settings
    owned: dict[str, ItemState] = {}

    def load(item_id: str) -> ItemState:
        vector = np.zeros(4, np.float32)
        return owned.get(item_id) or ItemState(vector)

    for update in updates:
        payloads = [payload for _, payload in split_by_owner(update, 4)]
        states, _ = apply_updates(learner, payloads, load)
        owned.update(states)

    replica = ItemTable(4, link_cap=3)
    for item_id, state in owned.items():
        replica.decode_into(item_id, encode_item(state))
    items = in_process.items
    for item_id, state in owned.items():
        row = items.index[item_id]
        ids, weights = items.links_of(row)
        assert state.link_ids == ids
        np.testing.assert_array_equal(state.link_weights, weights)
        copied_ids, copied_weights = replica.links_of(replica.index[item_id])
        assert copied_ids == ids
        np.testing.assert_array_equal(copied_weights, weights)
    assert any(len(s.link_ids) == 3 for s in owned.values())


def test_an_owner_batch_of_many_messages_merges_each_in_turn():
    # every learner batch of a stream reaches the owner in one call, as a
    # busy owner takes up to 1,000 messages at once: the rows must still be
    # those of a merge per message, the cut after each
    config = MFConfig(n_factors=4, seed=5, link_cap=4)
    in_process, updates = learn_in_batches(config, planted_chains(60, 15), 7)
    learner = OnlineMF(config)
    payloads = [p for update in updates for _, p in split_by_owner(update, 3)]

    states, _ = apply_updates(
        learner, payloads, lambda item_id: ItemState(np.zeros(4, np.float32))
    )

    items = in_process.items
    assert any(len(s.link_ids) == 4 for s in states.values())
    for item_id, state in states.items():
        ids, weights = items.links_of(items.index[item_id])
        assert state.link_ids == ids
        np.testing.assert_array_equal(state.link_weights, weights)


def sorted_rows(
    rng: np.random.Generator, keys: np.ndarray, n_rows: int, cap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random link rows in the cut order: empty, part full or full."""
    row_targets = np.full((n_rows, cap), EMPTY, np.int64)
    row_weights = np.zeros((n_rows, cap), np.float32)
    for row in range(n_rows):
        used = int(rng.integers(0, cap + 1))
        targets = rng.choice(len(keys), used, replace=False)
        # few distinct weights, so that ties are common
        weights = rng.choice([0.5, 1.0, 2.0, 1 / 3], used).astype(np.float32)
        order = np.lexsort((targets, keys[targets], -weights))
        row_targets[row, :used] = targets[order]
        row_weights[row, :used] = weights[order]
    return row_targets, row_weights


def merged_in_place(merge, row_targets, row_weights, *links):
    targets, weights = row_targets.copy(), row_weights.copy()
    merge(targets, weights, *links)
    return targets, weights


@pytest.mark.parametrize("links_per_row", [2, 12])  # micro-batch 1, a batch
def test_the_in_place_merge_of_unique_links_is_the_general_merge(links_per_row):
    rng = np.random.default_rng(7)
    keys = rng.permutation(50)
    keys[[3, 4]] = keys[5]  # equal keys: the tie goes to the smaller target
    seen = {"cut": 0, "hit and fresh": 0, "empty": 0, "key tie": 0}
    for _ in range(400):
        n_rows, cap = int(rng.integers(1, 6)), int(rng.integers(1, 9))
        row_targets, row_weights = sorted_rows(rng, keys, n_rows, cap)
        pairs = list(
            {
                (int(rng.integers(0, n_rows)), int(rng.integers(0, 50)))
                for _ in range(int(rng.integers(1, links_per_row * n_rows + 1)))
            }
        )
        rng.shuffle(pairs)  # the kernel takes the links in any order
        new_rows, new_targets = np.array(pairs).T
        # a negative amount moves an entry down its row
        amounts = [0.25, 0.5, 1.0, 2 / 3, -0.5]
        new_weights = rng.choice(amounts, len(pairs)).astype(np.float32)
        links = (new_rows, new_targets, new_weights, keys)

        expected = merge_rows(row_targets, row_weights, *links)
        for merge in (merge_unique_into, merge_links_into):
            got = merged_in_place(merge, row_targets, row_weights, *links)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])

        hit = (row_targets[new_rows] == new_targets[:, None]).any(axis=1)
        fresh_rows = set(new_rows[~hit].tolist())
        seen["hit and fresh"] += bool(fresh_rows & set(new_rows[hit].tolist()))
        in_rows = np.bincount(new_rows, minlength=n_rows)
        seen["cut"] += bool(((row_targets != EMPTY).sum(1) + in_rows > cap).any())
        seen["empty"] += bool((row_targets[new_rows, 0] == EMPTY).any())
        kept = expected[0][expected[0] != EMPTY]
        seen["key tie"] += bool(np.isin(kept, [3, 4, 5]).sum() > 1)
    # the cases the kernel must get right all came up
    assert min(seen.values()) >= 20, seen


def test_an_entry_a_fresh_link_would_push_out_first_gains_its_weight():
    # the fresh link comes first, but the sums go first: b gains 1 and beats
    # c, so c is cut, not b
    keys = np.arange(3)
    row_targets = np.array([[0, 1]])  # a: 2.0, b: 1.0
    row_weights = np.array([[2.0, 1.0]], np.float32)
    links = (np.array([0, 0]), np.array([2, 1]), np.array([1.5, 1.0]), keys)

    for merge in (merge_unique_into, merge_links_into):
        targets, weights = merged_in_place(merge, row_targets, row_weights, *links)

        assert targets.tolist() == [[0, 1]]
        assert weights.tolist() == [[2.0, 2.0]]


def test_the_in_place_merge_touches_only_the_rows_of_its_links():
    rng = np.random.default_rng(3)
    keys = rng.permutation(40)
    row_targets, row_weights = sorted_rows(rng, keys, 30, 6)
    new_rows = np.array([4, 4, 17, 29])
    new_targets = np.array([1, 2, 3, 1])
    new_weights = np.array([1.0, 0.5, 2.0, 1 / 3])  # float64: rounded first

    for merge in (merge_unique_into, merge_links_into):
        got = merged_in_place(
            merge, row_targets, row_weights, new_rows, new_targets, new_weights, keys
        )

        rows = np.unique(new_rows)
        position = np.searchsorted(rows, new_rows)
        expected = merge_rows(
            row_targets[rows],
            row_weights[rows],
            position,
            new_targets,
            new_weights,
            keys,
        )
        np.testing.assert_array_equal(got[0][rows], expected[0])
        np.testing.assert_array_equal(got[1][rows], expected[1])
        others = np.setdiff1d(np.arange(30), rows)
        np.testing.assert_array_equal(got[0][others], row_targets[others])
        np.testing.assert_array_equal(got[1][others], row_weights[others])


def test_links_repeated_in_one_call_are_summed_as_by_the_general_merge():
    rng = np.random.default_rng(11)
    keys = rng.permutation(20)
    for _ in range(100):
        row_targets, row_weights = sorted_rows(rng, keys, 3, 4)
        n_links = int(rng.integers(2, 15))
        new_rows = rng.integers(0, 3, n_links)
        new_targets = rng.integers(0, 6, n_links)  # few targets: repeats
        new_weights = rng.choice([0.25, 0.5, 1 / 3], n_links).astype(np.float32)
        links = (new_rows, new_targets, new_weights, keys)

        got = merged_in_place(merge_links_into, row_targets, row_weights, *links)

        expected = merge_rows(row_targets, row_weights, *links)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_a_link_out_of_range_is_refused_before_any_row_changes():
    row_targets = np.array([[0, EMPTY]])
    row_weights = np.array([[1.0, 0.0]], np.float32)
    keys = np.arange(2)

    with pytest.raises(IndexError):
        merge_unique_into(
            row_targets, row_weights, np.array([0, 1]), np.array([1, 0]), [1, 1], keys
        )
    with pytest.raises(IndexError):
        merge_unique_into(
            row_targets, row_weights, np.array([0, 0]), np.array([1, 2]), [1, 1], keys
        )
    with pytest.raises(TypeError):  # a converted copy would lose the merge
        merge_unique_into(
            row_targets.astype(np.int32), row_weights, [0], [1], [1], keys
        )
    assert row_targets.tolist() == [[0, EMPTY]]
    assert row_weights.tolist() == [[1.0, 0.0]]


def test_an_item_record_round_trips_with_its_links():
    state = ItemState(
        np.arange(4, dtype=np.float32),
        0.5,
        3.0,
        1.25,
        ["b", "c"],
        np.array([2.0, 1.0], np.float32),
    )

    back = decode_item(encode_item(state), 4, "a")

    np.testing.assert_array_equal(back.vector, state.vector)
    assert (back.bias, back.count, back.accum) == (0.5, 3.0, 1.25)
    assert back.link_ids == ["b", "c"]
    np.testing.assert_array_equal(back.link_weights, [2.0, 1.0])
