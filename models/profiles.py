"""What streamrec remembers about one shopper, and how it is stored.

A profile is small and self-contained so that the worker can keep it in a
changelog-backed table keyed by user (one msgpack record per shopper) and the
in-process replay can keep it in a dict: the model code sees the same object.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from models.events import Event
from models.items import FLOAT, initial_factors

# A shopper's remembered items are capped so that a bot or a very long-lived
# shopper cannot grow a record without bound; the oldest are forgotten first.
MAX_ITEMS = 1000
MAX_EVENT_IDS = 512


class UserProfile(msgspec.Struct):
    """Factors and history of one shopper."""

    factors: bytes  # float32, n_factors values
    n_events: int = 0
    last_timestamp: int = 0
    recent: list[str] = msgspec.field(default_factory=list)  # newest last
    items: list[str] = msgspec.field(default_factory=list)  # distinct, in order
    bought: list[str] = msgspec.field(default_factory=list)
    event_ids: list[str] = msgspec.field(default_factory=list)  # for dedup
    event_times: list[int] = msgspec.field(default_factory=list)
    accum: float = 0.0  # Adagrad's sum of squared gradients of the factors

    @classmethod
    def new(
        cls, user_id: str, n_factors: int, init_scale: float, seed: int
    ) -> UserProfile:
        vector = initial_factors("user:" + user_id, n_factors, init_scale, seed)
        return cls(factors=vector.tobytes())

    @property
    def vector(self) -> np.ndarray:
        return np.frombuffer(self.factors, dtype=FLOAT)

    def remember(
        self,
        events: Sequence[Event],
        *,
        recent_items: int,
        dedup_window_ms: int,
    ) -> None:
        """Record learned events of this shopper (oldest first) in the history."""
        # one event (the common case at small batches): a scan of the lists
        # costs less than building their sets
        many = len(events) > 1
        known: set[str] | list[str] = set(self.items) if many else self.items
        bought: set[str] | list[str] = set(self.bought) if many else self.bought
        for event in events:
            item_id = event.item_id
            self.n_events += 1
            self.last_timestamp = max(self.last_timestamp, event.timestamp)
            self.recent.append(item_id)
            if item_id not in known:
                self.items.append(item_id)
                if isinstance(known, set):
                    known.add(item_id)
            if event.event_type == "purchase" and item_id not in bought:
                self.bought.append(item_id)
                if isinstance(bought, set):
                    bought.add(item_id)
            self.event_ids.append(event.event_id)
            self.event_times.append(event.timestamp)
        _keep_last(self.recent, recent_items)
        _keep_last(self.items, MAX_ITEMS)
        _keep_last(self.bought, MAX_ITEMS)
        self._forget_old_event_ids(dedup_window_ms)

    def _forget_old_event_ids(self, window_ms: int) -> None:
        horizon = self.last_timestamp - window_ms
        drop = 0
        for stamp in self.event_times:
            if stamp >= horizon:
                break
            drop += 1
        drop = max(drop, len(self.event_ids) - MAX_EVENT_IDS)
        if drop > 0:
            del self.event_ids[:drop]
            del self.event_times[:drop]


def _keep_last(values: list, n: int) -> None:
    if len(values) > n:
        del values[: len(values) - n]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(UserProfile)


def encode_profile(profile: UserProfile) -> bytes:
    return _encoder.encode(profile)


def decode_profile(payload: bytes) -> UserProfile:
    return _decoder.decode(payload)
