"""The sequence part: links, their capped rows, their scores, and the owner's
copy of them (routing, merging, the table record, the replica)."""

from __future__ import annotations

import numpy as np
import pytest

from models import sequence
from models.events import Event
from models.items import ItemState, ItemTable, decode_item, encode_item
from models.mf import MFConfig, OnlineMF
from models.profiles import UserProfile
from models.sequence import (
    EMPTY,
    batch_links,
    latest_distinct,
    merge_links,
    merge_rows,
    merge_unique_rows,
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
        tie=lambda t: -t,  # the larger target wins a tie here
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


@pytest.mark.parametrize("few_links", [64, 0])  # placed, or rows sorted again
def test_the_merge_of_unique_links_is_the_general_merge(monkeypatch, few_links):
    monkeypatch.setattr(sequence, "_FEW_LINKS", few_links)
    rng = np.random.default_rng(7)
    keys = rng.permutation(50)
    for _ in range(200):
        n_rows, cap = int(rng.integers(1, 6)), int(rng.integers(1, 8))
        row_targets = np.full((n_rows, cap), EMPTY)
        row_weights = np.zeros((n_rows, cap), np.float32)
        for row in range(n_rows):
            used = int(rng.integers(0, cap + 1))
            targets = rng.choice(50, used, replace=False)
            # few distinct weights, so that ties are common
            weights = rng.choice([0.5, 1.0, 2.0], used).astype(np.float32)
            order = np.lexsort((keys[targets], -weights))
            row_targets[row, :used] = targets[order]
            row_weights[row, :used] = weights[order]
        pairs = {
            (int(rng.integers(0, n_rows)), int(rng.integers(0, 50)))
            for _ in range(int(rng.integers(1, 12)))
        }
        new_rows, new_targets = np.array(sorted(pairs)).T
        new_weights = rng.choice([0.25, 0.5, 1.0], len(pairs)).astype(np.float32)
        args = (row_targets, row_weights, new_rows, new_targets, new_weights)

        expected = merge_rows(*args, tie=lambda t: keys[t])
        for merge in (merge_unique_rows, merge_links):
            got = merge(*args, tie=lambda t: keys[t])
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])


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
