"""Item factors: a growing matrix indexed by item id.

The same table serves three roles: the whole model during an in-process replay,
the authoritative factors on the worker that owns an item, and the read-only
replica every worker scores against. Rows are appended in the order items first
appear, which is the tie rule of the popularity baseline.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgspec
import numpy as np

from models.kernels import normal_factors
from models.sequence import EMPTY, id_key, merge_links_into, merge_unique_into

FLOAT = np.float32


def initial_factors(key: str, n_factors: int, scale: float, seed: int) -> np.ndarray:
    """Deterministic start vector for an id.

    Seeded by a hash of the id so that every worker, and a worker after a
    restart, starts a new item (or shopper) from the same point before any
    update has reached it.
    """
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    # 63 bits: the kernel takes a signed 64-bit seed
    return normal_factors(int.from_bytes(digest, "little") >> 1, n_factors, scale)


class ItemTable:
    """Factors, biases, event counts, step sizes and outgoing links of every
    item seen so far."""

    def __init__(
        self,
        n_factors: int,
        *,
        init_scale: float = 0.1,
        seed: int = 0,
        link_cap: int = 0,
    ) -> None:
        self.n_factors = n_factors
        self.init_scale = init_scale
        self.seed = seed
        self.link_cap = link_cap
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        capacity = 1024
        self._vectors = np.zeros((capacity, n_factors), dtype=FLOAT)
        self._biases = np.zeros(capacity, dtype=FLOAT)
        self._counts = np.zeros(capacity, dtype=np.float64)
        self._log_counts = np.zeros(capacity, dtype=FLOAT)
        # Adagrad's sum of squared gradients per row (mean over the row)
        self._accums = np.zeros(capacity, dtype=FLOAT)
        self._keys = np.zeros(capacity, dtype=np.int64)  # id_key per row
        # strongest outgoing links: target rows (EMPTY unused) and weights
        self._link_targets = np.full((capacity, link_cap), EMPTY, dtype=np.int64)
        self._link_weights = np.zeros((capacity, link_cap), dtype=FLOAT)
        self.version = 0  # bumped on every change; a list records the version
        # the most popular rows (see popular()), and rows whose count changed
        self._head: list[int] = []
        self._in_head: set[int] = set()
        self._head_size = 0
        self._floor = 0.0  # at most the head's fewest events (counts only grow)
        self._recounted: list[int] = []

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def vectors(self) -> np.ndarray:
        """Factors of the known items, shape (n_items, n_factors)."""
        return self._vectors[: len(self.ids)]

    @property
    def biases(self) -> np.ndarray:
        return self._biases[: len(self.ids)]

    @property
    def counts(self) -> np.ndarray:
        """Events seen per item (all types count 1): the popularity signal."""
        return self._counts[: len(self.ids)]

    @property
    def log_counts(self) -> np.ndarray:
        """``log(1 + count)`` per item (float32), kept up to date with counts."""
        return self._log_counts[: len(self.ids)]

    @property
    def accums(self) -> np.ndarray:
        return self._accums[: len(self.ids)]

    @property
    def link_targets(self) -> np.ndarray:
        """Target rows of each item's links, shape (n_items, link_cap)."""
        return self._link_targets[: len(self.ids)]

    @property
    def link_weights(self) -> np.ndarray:
        return self._link_weights[: len(self.ids)]

    def links_of(self, row: int) -> tuple[list[str], np.ndarray]:
        """One item's links as (target ids, weights), strongest first."""
        targets = self._link_targets[row]
        used = targets != EMPTY
        return [self.ids[t] for t in targets[used]], self._link_weights[row][used]

    def add_links(
        self,
        sources: np.ndarray,
        targets: np.ndarray,
        weights: np.ndarray,
        *,
        unique: bool = False,
    ) -> None:
        """Merge summed links (source row -> target row) into the rows;
        ``unique``: the caller knows each (source, target) pair is there once."""
        if not len(sources) or not self.link_cap:
            return
        # in place on the table: only the sources' rows are read or written
        merge = merge_unique_into if unique else merge_links_into
        merge(
            self._link_targets,
            self._link_weights,
            sources,
            targets,
            weights,
            self._keys,
        )
        self.version += 1

    def popular(self, n: int) -> np.ndarray:
        """Rows of the ``n`` items with the most events (ties to the earlier
        row, the popularity baseline's rule; items never counted left out),
        in no particular order.

        Kept up to date from the rows whose count changed since the last call:
        counts only grow, so a row outside the head enters only by beating the
        head's weakest row, which then leaves.
        """
        counts = self._counts
        if n != self._head_size:
            order = np.lexsort((np.arange(len(self)), -self.counts))[:n]
            order = order[self.counts[order] > 0]  # items met at least once
            self._head, self._head_size = order.tolist(), n
            self._floor = 0.0
            self._in_head = set(self._head)
            self._recounted.clear()
        head, in_head = self._head, self._in_head
        for row in dict.fromkeys(self._recounted):
            if row in in_head:
                continue
            if len(head) < n:
                head.append(row)
                in_head.add(row)
                self._floor = 0.0
                continue
            if counts[row] < self._floor:
                continue  # below the head's fewest events: it cannot enter
            rows = np.asarray(head)
            # the weakest: the fewest events, then the latest row
            weakest = int(np.lexsort((-rows, counts[rows]))[0])
            out = head[weakest]
            self._floor = float(counts[out])
            if (counts[row], -row) > (counts[out], -out):
                in_head.discard(out)
                head[weakest] = row
                in_head.add(row)
        self._recounted.clear()
        return np.asarray(head, np.int64)

    def rows(self, item_ids: list[str]) -> np.ndarray:
        """Row of each id, adding the ones not seen yet with their start vector."""
        index = self.index
        rows = np.empty(len(item_ids), dtype=np.int64)
        for position, item_id in enumerate(item_ids):
            row = index.get(item_id)
            if row is None:
                row = self._append(item_id)
            rows[position] = row
        return rows

    def known_rows(self, item_ids: list[str]) -> np.ndarray:
        """Rows of the ids already in the table; unknown ids are skipped."""
        index = self.index
        return np.fromiter((index[i] for i in item_ids if i in index), dtype=np.int64)

    def _append(self, item_id: str) -> int:
        row = len(self.ids)
        if row == len(self._vectors):
            self._grow()
        self.ids.append(item_id)
        self.index[item_id] = row
        self._vectors[row] = initial_factors(
            item_id, self.n_factors, self.init_scale, self.seed
        )
        self._keys[row] = id_key(item_id)
        return row

    def _grow(self) -> None:
        capacity = 2 * len(self._vectors)
        for name in _COLUMNS:
            old = getattr(self, name)
            fill = EMPTY if name == "_link_targets" else 0
            new = np.full((capacity, *old.shape[1:]), fill, dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def apply(
        self,
        rows: np.ndarray,
        vector_steps: np.ndarray,
        bias_steps: np.ndarray,
        count_steps: np.ndarray,
        accum_steps: np.ndarray | None = None,
    ) -> int:
        """Add steps to rows (rows unique); return how many rows were refused.

        A row whose result would not be finite keeps its old value: one bad
        gradient must not poison every list that scores against the item.
        """
        new_vectors = self._vectors[rows] + vector_steps
        new_biases = self._biases[rows] + bias_steps
        finite = np.isfinite(new_vectors).all(axis=1) & np.isfinite(new_biases)
        good = rows[finite]
        self._vectors[good] = new_vectors[finite]
        self._biases[good] = new_biases[finite]
        self._counts[rows] += count_steps
        self._log_counts[rows] = np.log1p(self._counts[rows])
        if self._head_size:
            self._recounted += rows[np.asarray(count_steps) > 0].tolist()
        if accum_steps is not None:
            self._accums[good] += accum_steps[finite]
        self.version += 1
        return int((~finite).sum())

    def put(self, item_id: str, state: ItemState) -> int:
        """Overwrite one item's state (a replica applying its owner's update)."""
        row = self.index.get(item_id)
        if row is None:
            row = self._append(item_id)
        self._vectors[row] = state.vector
        self._biases[row] = state.bias
        if self._head_size and state.count != self._counts[row]:
            self._recounted.append(row)
        self._counts[row] = state.count
        self._log_counts[row] = np.log1p(state.count)
        self._accums[row] = state.accum
        if self.link_cap:
            # targets not met yet join with their start state; their own
            # record follows from their owner
            n = min(len(state.link_ids), self.link_cap)
            self._link_targets[row] = EMPTY
            self._link_weights[row] = 0.0
            self._link_targets[row, :n] = self.rows(state.link_ids[:n])
            self._link_weights[row, :n] = state.link_weights[:n]
        self.version += 1
        return row

    def state(self, row: int) -> ItemState:
        """One item's whole state, as its owner stores it."""
        link_ids, link_weights = self.links_of(row) if self.link_cap else ([], None)
        return ItemState(
            self._vectors[row].copy(),
            float(self._biases[row]),
            float(self._counts[row]),
            float(self._accums[row]),
            link_ids,
            np.zeros(0, FLOAT) if link_weights is None else link_weights.copy(),
        )

    def encode(self, row: int) -> bytes:
        """One item's state in the form :func:`encode_item` gives."""
        return encode_item(self.state(row))

    def decode_into(self, item_id: str, payload: bytes) -> int:
        """Store an item's state from :func:`encode_item` bytes."""
        return self.put(item_id, decode_item(payload, self.n_factors, item_id))


_COLUMNS = (
    "_vectors",
    "_biases",
    "_counts",
    "_log_counts",
    "_accums",
    "_keys",
    "_link_targets",
    "_link_weights",
)


@dataclass
class ItemState:
    """Everything an owner keeps about one item (its table record, decoded)."""

    vector: np.ndarray  # float32 (n_factors,)
    bias: float = 0.0
    count: float = 0.0
    accum: float = 0.0  # Adagrad's sum of squared gradients
    link_ids: list[str] = field(default_factory=list)  # strongest first
    link_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, FLOAT))


class _ItemRecord(msgspec.Struct, array_like=True):
    factors: bytes  # float32
    bias: float
    count: float
    accum: float = 0.0
    link_ids: list[str] = msgspec.field(default_factory=list)
    link_weights: bytes = b""  # float32, one per link id


_record_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(_ItemRecord)


def encode_item(state: ItemState) -> bytes:
    """An item's state as one msgpack record (factors and weights float32)."""
    return _record_encoder.encode(
        _ItemRecord(
            np.asarray(state.vector, dtype=FLOAT).tobytes(),
            float(state.bias),
            float(state.count),
            float(state.accum),
            list(state.link_ids),
            np.asarray(state.link_weights, dtype=FLOAT).tobytes(),
        )
    )


def decode_item(payload: bytes, n_factors: int, item_id: str = "?") -> ItemState:
    """Inverse of :func:`encode_item`; raises ValueError on a bad record."""
    try:
        record = _record_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ValueError(f"item {item_id!r}: not an item record ({exc})") from None
    vector = np.frombuffer(record.factors, dtype=FLOAT)
    weights = np.frombuffer(record.link_weights, dtype=FLOAT)
    if len(vector) != n_factors:
        raise ValueError(
            f"item {item_id!r} has {len(vector)} factors, expected "
            f"{n_factors}; was the worker restarted with another "
            "STREAMREC_N_FACTORS over the same topics?"
        )
    if len(weights) != len(record.link_ids):
        raise ValueError(f"item {item_id!r}: link ids and weights differ in length")
    return ItemState(
        vector, record.bias, record.count, record.accum, record.link_ids, weights
    )
