"""Routing item gradients to owners gives the same factors as in-process."""

from __future__ import annotations

import numpy as np

from models.events import Event
from models.items import ItemState, initial_factors
from models.mf import MFConfig, OnlineMF
from streams.owner import apply_updates, decode_update, split_by_owner
from streams.sink import partition_of


def learned_update(model: OnlineMF, profiles: dict) -> object:
    events = [
        Event(f"e{n}", f"u{n % 7}", f"i{n % 23}", "purchase" if n % 5 else "view", n)
        for n in range(120)
    ]
    return model.learn_batch(events, profiles).item_update


def test_each_item_goes_to_the_partition_its_id_hashes_to() -> None:
    model = OnlineMF(MFConfig(n_factors=4, seed=1))
    update = learned_update(model, {})

    routed = list(split_by_owner(update, 8))

    seen = []
    for partition, payload in routed:
        part = decode_update(payload, 4)
        for item_id in part.item_ids:
            assert partition_of(item_id.encode(), 8) == partition
        seen += part.item_ids
    assert sorted(seen) == sorted(update.item_ids)
    assert len({p for p, _ in routed}) == len(routed)


def test_owners_reach_the_factors_the_in_process_model_reaches() -> None:
    config = MFConfig(n_factors=4, seed=3)
    in_process = OnlineMF(config)
    learner = OnlineMF(config)
    owned: dict[str, ItemState] = {}

    def load(item_id: str) -> ItemState:
        if item_id in owned:
            return owned[item_id]
        return ItemState(initial_factors(item_id, 4, config.init_scale, config.seed))

    for _ in range(3):
        update = learned_update(in_process, {})
        in_process.apply_item_update(update)
        payloads = [payload for _, payload in split_by_owner(update, 8)]
        new_states, refused = apply_updates(learner, payloads, load)
        owned.update(new_states)
        assert refused == 0

    for item_id, state in owned.items():
        row = in_process.items.index[item_id]
        items = in_process.items
        np.testing.assert_allclose(state.vector, items.vectors[row], rtol=1e-5)
        assert np.isclose(state.bias, items.biases[row], rtol=1e-5)
        assert state.count == items.counts[row]
        assert np.isclose(state.accum, items.accums[row], rtol=1e-5)


def test_a_non_finite_step_is_refused_and_counted() -> None:
    config = MFConfig(n_factors=4, seed=3)
    model = OnlineMF(config)
    update = learned_update(model, {})
    update.vector_grads[0, 0] = np.nan
    payloads = [payload for _, payload in split_by_owner(update, 1)]

    states, refused = apply_updates(
        model, payloads, lambda i: ItemState(np.zeros(4, np.float32))
    )

    assert refused == 1
    assert all(np.isfinite(s.vector).all() for s in states.values())


def test_a_batch_applied_in_chunks_ends_where_one_pass_ends() -> None:
    # the worker applies an owner batch a few messages at a time, each chunk
    # loading what the earlier ones changed (StreamrecWorker.apply_item_updates)
    config = MFConfig(n_factors=4, seed=5)
    learner = OnlineMF(config)
    payloads = []
    for _ in range(6):
        update = learned_update(learner, {})  # new shoppers: nothing is a duplicate
        learner.apply_item_update(update)
        payloads += [payload for _, payload in split_by_owner(update, 1)]

    def fresh(item_id: str) -> ItemState:
        return ItemState(initial_factors(item_id, 4, config.init_scale, config.seed))

    whole, _ = apply_updates(OnlineMF(config), payloads, fresh)
    chunked: dict[str, ItemState] = {}
    owner = OnlineMF(config)
    for start in range(0, len(payloads), 2):
        part, _ = apply_updates(
            owner,
            payloads[start : start + 2],
            lambda i: chunked[i] if i in chunked else fresh(i),
        )
        chunked.update(part)

    assert len(payloads) == 6 and set(chunked) == set(whole)
    assert any(state.link_ids for state in whole.values())
    for item_id, state in whole.items():
        other = chunked[item_id]
        np.testing.assert_array_equal(other.vector, state.vector)
        assert (other.bias, other.count, other.accum) == (
            state.bias,
            state.count,
            state.accum,
        )
        assert other.link_ids == state.link_ids
        np.testing.assert_array_equal(other.link_weights, state.link_weights)
