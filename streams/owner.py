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
from models.sequence import EMPTY, id_key, merge_links_into
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

    links = _LinkRows(model.config.link_cap, state_of)
    for payload in payloads:
        update = decode_update(payload, model.config.n_factors)
        refused += _apply_steps(model, update, state_of)
        if update.link_sources and model.config.link_cap:
            links.merge(update)
    links.write_back()
    return current, refused


def _apply_steps(
    model: OnlineMF, update: ItemUpdate, state_of: Callable[[str], ItemState]
) -> int:
    states = [state_of(item_id) for item_id in update.item_ids]
    if not states:
        return 0
    accums = np.fromiter((s.accum for s in states), FLOAT, len(states))
    vector_steps, bias_steps, added = model.item_steps(update, accums)
    # the same float32 sums as one item at a time, in a few array calls
    new_vectors = np.stack([s.vector for s in states]) + vector_steps
    new_biases = np.fromiter((s.bias for s in states), FLOAT, len(states)) + bias_steps
    new_accums = (accums + added).tolist()
    # one bad step must not poison every list scored against the item
    finite = (np.isfinite(new_vectors).all(axis=1) & np.isfinite(new_biases)).tolist()
    biases = new_biases.tolist()
    for n, (state, count) in enumerate(
        zip(states, update.counts.tolist(), strict=True)
    ):
        state.count += count
        if finite[n]:
            state.vector, state.bias = new_vectors[n], biases[n]
            state.accum = new_accums[n]
    return len(states) - sum(finite)


class _LinkRows:
    """The link rows of the source items an owner batch touches, held as
    arrays of numbered target ids from the first message that touches an item
    to the end of the batch, then written back to the items' states once.

    Each message is merged on its own, in order, by the same cut as
    :meth:`models.items.ItemTable.add_links` (ties to the smaller
    :func:`id_key`, computed once per id met), so the states end as they
    would after a merge per message, and as in-process.

    A message's merge is one compiled call on these arrays
    (:func:`models.sequence.merge_links_into`, in place, only the message's
    rows touched); what stays in Python per message is numbering its ids.
    """

    def __init__(self, cap: int, state_of: Callable[[str], ItemState]) -> None:
        self.cap = cap
        self.state_of = state_of
        self.number: dict[str, int] = {}  # target id -> number
        self.names: list[str] = []
        self.keys = np.zeros(256, np.int64)  # id_key per number
        self.keyed = 0  # numbers whose key is computed
        self.slot: dict[str, int] = {}  # source id -> row below
        self.sources: list[str] = []
        self.targets = np.full((16, cap), EMPTY, np.int64)
        self.weights = np.zeros((16, cap), FLOAT)

    def numbers(self, item_ids: list[str]) -> np.ndarray:
        number, names = self.number, self.names
        for item_id in item_ids:
            if item_id not in number:
                number[item_id] = len(names)
                names.append(item_id)
        if len(names) > len(self.keys):
            keys = np.zeros(2 * len(names), np.int64)
            keys[: len(self.keys)] = self.keys
            self.keys = keys
        for n in range(self.keyed, len(names)):
            self.keys[n] = id_key(names[n])
        self.keyed = len(names)
        return np.fromiter((number[i] for i in item_ids), np.int64, len(item_ids))

    def row(self, source: str) -> int:
        """This source's row, loaded from its state the first time."""
        row = self.slot.get(source)
        if row is not None:
            return row
        row = self.slot[source] = len(self.sources)
        self.sources.append(source)
        if row == len(self.targets):
            grow = len(self.targets)
            self.targets = np.concatenate(
                [self.targets, np.full((grow, self.cap), EMPTY, np.int64)]
            )
            self.weights = np.concatenate(
                [self.weights, np.zeros((grow, self.cap), FLOAT)]
            )
        state = self.state_of(source)
        n = min(len(state.link_ids), self.cap)
        self.targets[row, :n] = self.numbers(state.link_ids[:n])
        self.weights[row, :n] = state.link_weights[:n]
        return row

    def merge(self, update: ItemUpdate) -> None:
        """Merge one message's links into its sources' rows."""
        sources = update.link_sources
        # rows first: loading a source may grow self.targets, and numbering
        # a target self.keys
        rows = np.fromiter((self.row(i) for i in sources), np.int64, len(sources))
        targets = self.numbers(update.link_targets)
        merge_links_into(
            self.targets, self.weights, rows, targets, update.link_weights, self.keys
        )

    def write_back(self) -> None:
        names = self.names
        for row, source in enumerate(self.sources):
            state = self.state_of(source)
            targets = self.targets[row]
            used = targets != EMPTY
            state.link_ids = [names[t] for t in targets[used].tolist()]
            state.link_weights = self.weights[row][used].copy()
