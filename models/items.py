"""Item factors: a growing matrix indexed by item id.

The same table serves three roles: the whole model during an in-process replay,
the authoritative factors on the worker that owns an item, and the read-only
replica every worker scores against. Rows are appended in the order items first
appear, which is the tie rule of the popularity baseline.
"""

from __future__ import annotations

import hashlib

import numpy as np

FLOAT = np.float32


def initial_factors(key: str, n_factors: int, scale: float, seed: int) -> np.ndarray:
    """Deterministic start vector for an id.

    Seeded by a hash of the id so that every worker, and a worker after a
    restart, starts a new item (or shopper) from the same point before any
    update has reached it.
    """
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return (rng.standard_normal(n_factors) * scale).astype(FLOAT)


class ItemTable:
    """Factors, biases and event counts of every item seen so far."""

    def __init__(
        self, n_factors: int, *, init_scale: float = 0.1, seed: int = 0
    ) -> None:
        self.n_factors = n_factors
        self.init_scale = init_scale
        self.seed = seed
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        capacity = 1024
        self._vectors = np.zeros((capacity, n_factors), dtype=FLOAT)
        self._biases = np.zeros(capacity, dtype=FLOAT)
        self._counts = np.zeros(capacity, dtype=np.float64)
        self.version = 0  # bumped on every change; a list records the version

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
        return row

    def _grow(self) -> None:
        capacity = 2 * len(self._vectors)
        for name in ("_vectors", "_biases", "_counts"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def apply(
        self,
        rows: np.ndarray,
        vector_steps: np.ndarray,
        bias_steps: np.ndarray,
        count_steps: np.ndarray,
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
        self.version += 1
        return int((~finite).sum())

    def put(self, item_id: str, vector: np.ndarray, bias: float, count: float) -> int:
        """Overwrite one item's state (a replica applying its owner's update)."""
        row = self.index.get(item_id)
        if row is None:
            row = self._append(item_id)
        self._vectors[row] = vector
        self._biases[row] = bias
        self._counts[row] = count
        self.version += 1
        return row

    def encode(self, row: int) -> bytes:
        """One item's state in the form :func:`encode_item` gives."""
        return encode_item(self._vectors[row], self._biases[row], self._counts[row])

    def decode_into(self, item_id: str, payload: bytes) -> int:
        """Store an item's state from :func:`encode_item` bytes."""
        vector, bias, count = decode_item(payload, self.n_factors, item_id)
        return self.put(item_id, vector, bias, count)


def encode_item(vector: np.ndarray, bias: float, count: float) -> bytes:
    """An item's state as bytes: bias, count, then the factors (float32)."""
    head = np.array([bias, count], dtype=FLOAT)
    return head.tobytes() + np.asarray(vector, dtype=FLOAT).tobytes()


def decode_item(
    payload: bytes, n_factors: int, item_id: str = "?"
) -> tuple[np.ndarray, float, float]:
    """Inverse of :func:`encode_item`; raises ValueError on a wrong length."""
    values = np.frombuffer(payload, dtype=FLOAT)
    if len(values) != n_factors + 2:
        raise ValueError(
            f"item {item_id!r} has {len(values) - 2} factors, expected "
            f"{n_factors}; was the worker restarted with another "
            "STREAMREC_N_FACTORS over the same topics?"
        )
    return values[2:], float(values[0]), float(values[1])
