"""Item ownership: routing a batch's item gradients, and applying them.

A learner never writes item factors. It splits the summed gradients of its
batch by the partition each item id hashes to (:func:`split_by_owner`), one
``item-updates`` message per partition; the worker holding that partition
owns those items and applies the steps (:func:`apply_updates`) to its table,
whose changelog every worker's replica follows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import msgspec
import numpy as np

from models.items import FLOAT
from models.mf import ItemUpdate, OnlineMF
from streams.sink import partition_of

ItemState = tuple[np.ndarray, float, float]  # factors, bias, event count


class ItemUpdateMessage(msgspec.Struct, array_like=True):
    """Summed gradients of one learner batch for the items of one partition."""

    item_ids: list[str]
    vector_grads: bytes  # float32 (n, n_factors)
    bias_grads: bytes  # float32 (n,)
    counts: bytes  # float32 (n,)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ItemUpdateMessage)


def split_by_owner(update: ItemUpdate, partitions: int) -> Iterator[tuple[int, bytes]]:
    """``(partition, message)`` for every partition owning items of the update."""
    if not len(update):
        return
    owners = np.fromiter(
        (partition_of(i.encode(), partitions) for i in update.item_ids), np.int64
    )
    for partition in np.unique(owners):
        rows = np.flatnonzero(owners == partition)
        message = ItemUpdateMessage(
            [update.item_ids[r] for r in rows],
            update.vector_grads[rows].tobytes(),
            update.bias_grads[rows].tobytes(),
            update.counts[rows].astype(FLOAT).tobytes(),
        )
        yield int(partition), _encoder.encode(message)


def decode_update(payload: bytes, n_factors: int) -> ItemUpdate:
    message = _decoder.decode(payload)
    return ItemUpdate(
        message.item_ids,
        np.frombuffer(message.vector_grads, FLOAT).reshape(-1, n_factors),
        np.frombuffer(message.bias_grads, FLOAT),
        np.frombuffer(message.counts, FLOAT),
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
    for payload in payloads:
        update = decode_update(payload, model.config.n_factors)
        vector_steps, bias_steps = model.item_steps(update)
        for n, item_id in enumerate(update.item_ids):
            vector, bias, count = current.get(item_id) or load(item_id)
            new_vector = vector + vector_steps[n]
            new_bias = bias + float(bias_steps[n])
            if not (np.isfinite(new_vector).all() and np.isfinite(new_bias)):
                # one bad step must not poison every list scored against it
                refused += 1
                new_vector, new_bias = vector, bias
            current[item_id] = (new_vector, new_bias, count + float(update.counts[n]))
    return current, refused
