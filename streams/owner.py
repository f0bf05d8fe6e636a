"""Item ownership: routing a batch's item gradients, and applying them.

A learner never writes item factors. It splits the summed gradients of its
batch by the partition each item id hashes to (:func:`split_by_owner`), one
``item-updates`` message per partition; the worker holding that partition
owns those items and applies the steps (:func:`apply_updates`) to its table,
whose changelog every worker's replica follows. A batch's item-to-item links
go to the owner of their source item, which merges them into that item's
capped link row (``models/sequence.py``), as the in-process replay does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import msgspec
import numpy as np

from models.items import FLOAT, ItemState
from models.mf import ItemUpdate, OnlineMF
from models.sequence import EMPTY, id_key, merge_rows
from streams.sink import partition_of

__all__ = ["ItemState", "apply_updates", "decode_update", "split_by_owner"]


class ItemUpdateMessage(msgspec.Struct, array_like=True):
    """Summed gradients of one learner batch for the items of one partition,
    and the batch's links whose source item lives there."""

    item_ids: list[str]
    vector_grads: bytes  # float32 (n, n_factors)
    bias_grads: bytes  # float32 (n,)
    counts: bytes  # float32 (n,)
    link_sources: list[str] = []
    link_targets: list[str] = []
    link_weights: bytes = b""  # float32, one per link


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ItemUpdateMessage)


def split_by_owner(update: ItemUpdate, partitions: int) -> Iterator[tuple[int, bytes]]:
    """``(partition, message)`` for every partition owning items of the update."""
    if not len(update):
        return
    owners = _owners(update.item_ids, partitions)
    link_owners = _owners(update.link_sources, partitions)
    for partition in np.union1d(owners, link_owners):
        rows = np.flatnonzero(owners == partition)
        links = np.flatnonzero(link_owners == partition)
        message = ItemUpdateMessage(
            [update.item_ids[r] for r in rows],
            update.vector_grads[rows].tobytes(),
            update.bias_grads[rows].tobytes(),
            update.counts[rows].astype(FLOAT).tobytes(),
            [update.link_sources[r] for r in links],
            [update.link_targets[r] for r in links],
            update.link_weights[links].astype(FLOAT).tobytes(),
        )
        yield int(partition), _encoder.encode(message)


def _owners(item_ids: list[str], partitions: int) -> np.ndarray:
    return np.fromiter(
        (partition_of(i.encode(), partitions) for i in item_ids),
        np.int64,
        len(item_ids),
    )


def decode_update(payload: bytes, n_factors: int) -> ItemUpdate:
    message = _decoder.decode(payload)
    return ItemUpdate(
        message.item_ids,
        np.frombuffer(message.vector_grads, FLOAT).reshape(-1, n_factors),
        np.frombuffer(message.bias_grads, FLOAT),
        np.frombuffer(message.counts, FLOAT),
        message.link_sources,
        message.link_targets,
        np.frombuffer(message.link_weights, FLOAT),
    )


def apply_updates(
    model: OnlineMF,
    payloads: list[bytes],
    load: Callable[[str], ItemState],
) -> tuple[dict[str, ItemState], int]:
    """Apply ``item-updates`` messages in order; return the new item states
    and how many steps were refused as non-finite.

    Each message is one learner batch and gets its own step, as in the
    in-process replay; ``load`` gives an item's current state the first time
    it is met, and each item appears once in the result, to be written once.
    """
    current: dict[str, ItemState] = {}
    refused = 0

    def state_of(item_id: str) -> ItemState:
        state = current.get(item_id)
        if state is None:
            state = current[item_id] = load(item_id)
        return state

    for payload in payloads:
        update = decode_update(payload, model.config.n_factors)
        refused += _apply_steps(model, update, state_of)
        if update.link_sources and model.config.link_cap:
            _merge_links(update, state_of, model.config.link_cap)
    return current, refused


def _apply_steps(
    model: OnlineMF, update: ItemUpdate, state_of: Callable[[str], ItemState]
) -> int:
    states = [state_of(item_id) for item_id in update.item_ids]
    accums = np.fromiter((s.accum for s in states), FLOAT, len(states))
    vector_steps, bias_steps, added = model.item_steps(update, accums)
    refused = 0
    for n, state in enumerate(states):
        new_vector = state.vector + vector_steps[n]
        new_bias = np.float32(state.bias) + bias_steps[n]
        state.count += float(update.counts[n])
        if not (np.isfinite(new_vector).all() and np.isfinite(new_bias)):
            # one bad step must not poison every list scored against it
            refused += 1
            continue
        state.vector, state.bias = new_vector, float(new_bias)
        state.accum = float(np.float32(state.accum) + added[n])
    return refused


def _merge_links(
    update: ItemUpdate, state_of: Callable[[str], ItemState], cap: int
) -> None:
    """Merge one message's links into its source items' rows, as
    :meth:`models.items.ItemTable.add_links` does in-process."""
    # Python per message: an owner batch of 1,000 messages holds the event
    # loop for about a second under load, a pause in every list (#3: merge
    # a whole batch's links at once; docs/BENCHMARKS.md has the profile).
    sources = list(dict.fromkeys(update.link_sources))
    states = [state_of(item_id) for item_id in sources]
    # number every target id met here; ties are broken by id_key, as in-process
    number: dict[str, int] = {}
    for state in states:
        for item_id in state.link_ids:
            number.setdefault(item_id, len(number))
    for item_id in update.link_targets:
        number.setdefault(item_id, len(number))
    names = list(number)
    keys = np.fromiter((id_key(i) for i in names), np.int64, len(names))
    row_targets = np.full((len(states), cap), EMPTY, np.int64)
    row_weights = np.zeros((len(states), cap), FLOAT)
    for row, state in enumerate(states):
        n = min(len(state.link_ids), cap)
        row_targets[row, :n] = [number[i] for i in state.link_ids[:n]]
        row_weights[row, :n] = state.link_weights[:n]
    source_row = {item_id: row for row, item_id in enumerate(sources)}
    new_targets, new_weights = merge_rows(
        row_targets,
        row_weights,
        np.fromiter((source_row[i] for i in update.link_sources), np.int64),
        np.fromiter((number[i] for i in update.link_targets), np.int64),
        update.link_weights,
        lambda targets: keys[targets],
    )
    for row, state in enumerate(states):
        used = new_targets[row] != EMPTY
        state.link_ids = [names[t] for t in new_targets[row][used]]
        state.link_weights = new_weights[row][used].copy()
