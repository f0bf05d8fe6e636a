"""Replay a stream of events through the model in-process, without Kafka.

The loop is the worker's loop with the transport taken out: cut the stream into
micro-batches, learn each batch, apply the item gradients (here at once; on the
worker after a trip through the item owner), and refresh the lists of the
shoppers the batch touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

from models.events import Event
from models.mf import BatchResult, MFConfig, OnlineMF, Recommendation
from models.profiles import UserProfile


@dataclass
class ReplayReport:
    """Counts and speed of one replay."""

    events: int = 0
    learned: int = 0
    duplicates: int = 0
    lists: int = 0
    seconds: float = 0.0
    users: int = 0
    items: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def batches(events: Iterable[Event], size: int) -> Iterator[list[Event]]:
    """Consecutive micro-batches of at most ``size`` events."""
    iterator = iter(events)
    while batch := list(islice(iterator, size)):
        yield batch


class Replayer:
    """The model plus the shopper profiles it learns, driven batch by batch."""

    def __init__(self, config: MFConfig, k: int = 20) -> None:
        self.model = OnlineMF(config)
        self.profiles: dict[str, UserProfile] = {}
        self.k = k

    def step(self, batch: Sequence[Event]) -> list[Recommendation]:
        """Learn one batch and return the refreshed lists of its shoppers."""
        result = self.learn(batch)
        profiles = [self.profiles[u] for u in result.users]
        return self.model.recommend(profiles, result.users, self.k)

    def learn(self, batch: Sequence[Event]) -> BatchResult:
        """Learn one batch, item updates applied at once (the learning half of
        :meth:`step`; the prequential evaluation asks for lists itself)."""
        result = self.model.learn_batch(batch, self.profiles)
        self.model.apply_item_update(result.item_update)
        return result

    def lists_for(
        self, user_ids: Sequence[str], k: int | None = None
    ) -> list[Recommendation]:
        """Lists of these shoppers from the current state (``k`` defaults to
        the replayer's); unknown shoppers get a fresh profile's list."""
        profiles = [self.profiles.get(u) or self.model.new_profile(u) for u in user_ids]
        return self.model.recommend(profiles, user_ids, self.k if k is None else k)


def replay(
    events: Iterable[Event],
    config: MFConfig,
    *,
    batch_size: int = 256,
    k: int = 20,
    on_lists: Callable[[list[Recommendation]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[Replayer, ReplayReport]:
    """Learn every event in order; return the trained state and a report."""
    replayer = Replayer(config, k)
    report = ReplayReport()
    started = time.perf_counter()
    for batch in batches(events, batch_size):
        lists = replayer.step(batch)
        report.events += len(batch)
        report.lists += len(lists)
        if on_lists is not None:
            on_lists(lists)
        if progress is not None:
            progress(len(batch))
    report.seconds = time.perf_counter() - started
    report.users = len(replayer.profiles)
    report.items = len(replayer.model.items)
    report.learned = sum(p.n_events for p in replayer.profiles.values())
    report.duplicates = report.events - report.learned
    return replayer, report
