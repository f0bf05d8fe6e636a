"""Prequential (test-then-train) evaluation, as ``../shared/EVALUATION.md`` says.

Every event, in time order, first tests the model as it stood before the event,
then trains it:

- an event ``(u, i)`` is a **test** when ``u`` has an earlier event and has
  never met ``i`` before (any event type);
- the list asked for excludes **every** item ``u`` met before;
- HR, MRR and NDCG at 10 and 20 are taken over all tests, with the number of
  tests and the events per second of the whole loop.

Micro-batches. The worker learns micro-batches and scores each of its events
with the state from before the batch. With ``batch_size`` B > 1 the tests of a
batch are therefore all answered from the pre-batch state, while the protocol's
bookkeeping stays per event: an earlier event of the same batch does count as
an earlier interaction, for the test definition and for the exclusions. The
candidates are the items the model has learned, so an item first seen earlier
in the same batch cannot be recommended yet (with B = 1 that is exactly the
protocol's "items seen so far").

Ids. :func:`encode` numbers users and items by first appearance in the stream;
:class:`Recommender` s work on those indices (a list is an array of item
indices) so that exclusions and ranks stay vectorised. The numbering carries
no information beyond what an online system knows at each event.

This module is numpy only; ``models`` imports no Kafka, Redis or Prometheus.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

import numpy as np

from models.events import Event
from models.mf import MFConfig
from models.replay import Replayer

CUTOFFS = (10, 20)
LIST_LENGTH = max(CUTOFFS)
# Tests scored per matrix product: bounds the (tests x items) score matrix.
SCORE_CHUNK = 256
_NO_ITEMS = np.zeros(0, dtype=np.int64)


# --- the stream -----------------------------------------------------------------------


@dataclass(frozen=True)
class EventBatch:
    """Consecutive events, as contract events and as dense indices."""

    events: Sequence[Event]
    users: np.ndarray  # int64 user index per event
    items: np.ndarray  # int64 item index per event

    def __len__(self) -> int:
        return len(self.events)


@dataclass(frozen=True)
class Stream:
    """A dataset in time order, users and items numbered by first appearance."""

    events: list[Event]
    users: np.ndarray
    items: np.ndarray
    user_ids: list[str]
    item_ids: list[str]

    def __len__(self) -> int:
        return len(self.events)

    def head(self, n: int) -> Stream:
        """The first ``n`` events, with the ids they number."""
        users, items = self.users[:n], self.items[:n]
        n_users = int(users.max()) + 1 if len(users) else 0
        n_items = int(items.max()) + 1 if len(items) else 0
        return Stream(
            self.events[:n],
            users,
            items,
            self.user_ids[:n_users],
            self.item_ids[:n_items],
        )

    def batch(self, start: int, stop: int) -> EventBatch:
        return EventBatch(
            self.events[start:stop], self.users[start:stop], self.items[start:stop]
        )


def encode(events: Sequence[Event]) -> Stream:
    """Number the users and items of a time-ordered stream by first appearance.

    Raises ValueError when the timestamps go backwards: the protocol replays a
    stable sort by timestamp (``producers.datasets.read_events`` gives one).
    """
    events = list(events)
    stamps = np.fromiter((e.timestamp for e in events), np.int64, len(events))
    if len(stamps) > 1 and (np.diff(stamps) < 0).any():
        raise ValueError("events must be sorted by timestamp (a stable sort)")
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users = np.fromiter(
        (user_index.setdefault(e.user_id, len(user_index)) for e in events),
        np.int64,
        len(events),
    )
    items = np.fromiter(
        (item_index.setdefault(e.item_id, len(item_index)) for e in events),
        np.int64,
        len(events),
    )
    return Stream(events, users, items, list(user_index), list(item_index))


# --- what a recommender answers -------------------------------------------------------


@dataclass(frozen=True)
class ListRequest:
    """The tests of one micro-batch, all to be answered from the current state."""

    users: np.ndarray  # user index per test
    user_ids: list[str]
    # Per test, every item the user met before the test's event: the items its
    # list must leave out (views of the harness's history; do not modify).
    exclude: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.user_ids)


class Recommender(Protocol):
    """What the harness drives: lists from the current state, then learning."""

    name: str

    def recommend(self, request: ListRequest, n: int) -> np.ndarray:
        """Top-``n`` item indices per test, best first, shape (tests, n);
        -1 fills a list that has fewer than ``n`` items."""
        ...

    def learn(self, batch: EventBatch) -> None:
        """Train on the events of one batch, in order."""
        ...


def top_n(scores: np.ndarray, exclude: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Best ``n`` columns per row of a (tests x items) score matrix, best first.

    Excluded items (indices past the matrix are ignored) and non-finite scores
    never appear; -1 fills the rest. ``scores`` is overwritten.
    """
    tests, n_items = scores.shape
    out = np.full((tests, n), -1, dtype=np.int64)
    if n_items == 0 or n <= 0:
        return out
    scores[np.isnan(scores)] = -np.inf
    lengths = [len(e) for e in exclude]
    if sum(lengths):
        rows = np.repeat(np.arange(tests), lengths)
        cols = np.concatenate(exclude)
        keep = cols < n_items
        scores[rows[keep], cols[keep]] = -np.inf
    k = min(n, n_items)
    # partial sort to the k best, then sort only those
    best = (
        np.argpartition(-scores, k - 1, axis=1)[:, :k]
        if k < n_items
        else np.broadcast_to(np.arange(n_items), (tests, n_items))
    )
    best_scores = np.take_along_axis(scores, best, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    best = np.take_along_axis(best, order, axis=1)
    finite = np.isfinite(np.take_along_axis(best_scores, order, axis=1))
    out[:, :k] = np.where(finite, best, -1)
    return out


def top_n_chunked(
    score_rows: Callable[[slice], np.ndarray],
    exclude: Sequence[np.ndarray],
    n: int,
) -> np.ndarray:
    """:func:`top_n` over ``score_rows(rows)`` computed :data:`SCORE_CHUNK`
    tests at a time, so a big batch never holds all its scores at once."""
    parts = [
        top_n(score_rows(slice(s, s + SCORE_CHUNK)), exclude[s : s + SCORE_CHUNK], n)
        for s in range(0, len(exclude), SCORE_CHUNK)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, n), dtype=np.int64)


# --- the harness ----------------------------------------------------------------------


class _History:
    """What each user met so far.

    A set answers "met before?"; an array keeps the distinct items in order,
    so that the exclusion list of a test is a view of its prefix, which later
    appends (written past it, or into a new buffer) never change.
    """

    def __init__(self, n_users: int) -> None:
        self.sets: list[set[int] | None] = [None] * n_users
        self.arrays: list[np.ndarray] = [_NO_ITEMS] * n_users
        self.lengths = [0] * n_users

    def meet(self, user: int, item: int) -> np.ndarray | None:
        """Record one event; return its exclusion list if it is a test."""
        met = self.sets[user]
        if met is None:
            self.sets[user] = {item}
            self._append(user, item)
            return None
        if item in met:
            return None
        before = self.arrays[user][: self.lengths[user]]
        met.add(item)
        self._append(user, item)
        return before

    def _append(self, user: int, item: int) -> None:
        array, length = self.arrays[user], self.lengths[user]
        if length == len(array):
            grown = np.empty(max(8, 2 * length), dtype=np.int64)
            grown[:length] = array
            self.arrays[user] = array = grown
        array[length] = item
        self.lengths[user] = length + 1


def ranks_of(lists: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target in its row's list, 0 where it is absent."""
    match = lists == targets[:, None]
    return np.where(match.any(axis=1), match.argmax(axis=1) + 1, 0).astype(np.int32)


@dataclass
class EvaluationResult:
    """Per-test ranks of one prequential run, and its speed."""

    name: str
    events: int
    batch_size: int
    seconds: float
    ranks: np.ndarray  # per test: rank in the top-LIST_LENGTH list, 0 if absent
    positions: np.ndarray  # per test: index of its event in the stream

    @property
    def tests(self) -> int:
        return len(self.ranks)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")

    def hits(self, n: int = LIST_LENGTH) -> np.ndarray:
        """Per-test hit flags at cutoff ``n`` (for bootstraps and plots)."""
        return (self.ranks > 0) & (self.ranks <= n)

    def metrics(self) -> dict[str, float]:
        """HR, MRR and NDCG at each of :data:`CUTOFFS`."""
        figures: dict[str, float] = {}
        for n in CUTOFFS:
            figures.update(metrics_at(self.ranks, n))
        return figures

    def summary(self) -> dict[str, object]:
        """The figures as plain JSON-able values."""
        return {
            "name": self.name,
            "events": self.events,
            "tests": self.tests,
            "batch_size": self.batch_size,
            "seconds": self.seconds,
            "events_per_second": self.events_per_second,
            **self.metrics(),
        }


def metrics_at(ranks: np.ndarray, n: int) -> dict[str, float]:
    """``hr@n``, ``mrr@n``, ``ndcg@n`` from 1-based ranks (0 = not in the list)."""
    tests = len(ranks)
    if not tests:
        return {f"{m}@{n}": float("nan") for m in ("hr", "mrr", "ndcg")}
    ranked = ranks[(ranks > 0) & (ranks <= n)].astype(np.float64)
    return {
        f"hr@{n}": len(ranked) / tests,
        f"mrr@{n}": float((1.0 / ranked).sum()) / tests,
        f"ndcg@{n}": float((1.0 / np.log2(ranked + 1.0)).sum()) / tests,
    }


def prequential(
    stream: Stream,
    model: Recommender,
    *,
    batch_size: int = 1,
    n: int = LIST_LENGTH,
    progress: Callable[[int], None] | None = None,
) -> EvaluationResult:
    """Test then train ``model`` on every event of ``stream``, B events a step.

    The clock covers the whole loop: the protocol's bookkeeping, the lists
    and the learning (reading and numbering the file are left out).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    whole = getattr(model, "whole_stream", None)
    if batch_size == 1 and whole is not None:
        result = whole(stream, n)
        if result is not None:
            if progress is not None:
                progress(len(stream))
            return result
    history = _History(len(stream.user_ids))
    users, items = stream.users.tolist(), stream.items.tolist()
    rank_parts: list[np.ndarray] = []
    position_parts: list[np.ndarray] = []
    started = time.perf_counter()
    for start in range(0, len(stream), batch_size):
        stop = min(start + batch_size, len(stream))
        positions, exclude = [], []
        for k in range(start, stop):
            before = history.meet(users[k], items[k])
            if before is not None:
                positions.append(k)
                exclude.append(before)
        if positions:
            tested = np.array(positions, dtype=np.int64)
            test_users = stream.users[tested]
            request = ListRequest(
                test_users, [stream.user_ids[u] for u in test_users.tolist()], exclude
            )
            lists = model.recommend(request, n)
            rank_parts.append(ranks_of(lists, stream.items[tested]))
            position_parts.append(tested)
        model.learn(stream.batch(start, stop))
        if progress is not None:
            progress(stop - start)
    seconds = time.perf_counter() - started
    return EvaluationResult(
        name=model.name,
        events=len(stream),
        batch_size=batch_size,
        seconds=seconds,
        ranks=np.concatenate(rank_parts) if rank_parts else np.zeros(0, np.int32),
        positions=(
            np.concatenate(position_parts) if position_parts else np.zeros(0, np.int64)
        ),
    )


# --- halves: choose on the first, confirm on the second ------------------------------

HALVES = ("first", "second")


def first_half(stream: Stream) -> Stream:
    """The stream's first half of events: all that tuning may look at."""
    return stream.head(len(stream) // 2)


def second_half(result: EvaluationResult, events: int) -> EvaluationResult:
    """Only the tests in the second half of a run over the whole stream: the
    systems come to it warm from the first half, as they would in service."""
    keep = result.positions >= events // 2
    return EvaluationResult(
        result.name,
        result.events,
        result.batch_size,
        result.seconds,
        result.ranks[keep],
        result.positions[keep],
    )


# --- the reference baseline: popularity -----------------------------------------------


class Popularity:
    """Most events so far (all types count 1), ties to the earlier first
    appearance, the user's own items left out: EVALUATION.md's baseline.

    A full sort per test would cost O(items log items). Counts only grow, one
    at a time, so the best ``leaders`` items are kept sorted incrementally: an
    item that gains an event either is a leader already (it moves up), or
    replaces the last leader if it now beats it; nobody else moves. A list is
    read off the leaders; only a user who has met nearly all of them needs the
    full order.
    """

    def __init__(self, leaders: int = 256, name: str = "popularity") -> None:
        self.name = name
        self.counts: list[int] = []
        self._size = leaders
        self._leaders: list[int] = []
        self._is_leader: set[int] = set()

    def _key(self, item: int) -> tuple[int, int]:
        # item indices number items by first appearance: the tie rule
        return (-self.counts[item], item)

    def learn(self, batch: EventBatch) -> None:
        counts = self.counts
        for item in batch.items.tolist():
            while len(counts) <= item:
                counts.append(0)
            counts[item] += 1
            self._promote(item)

    def _promote(self, item: int) -> None:
        leaders, key = self._leaders, self._key
        if item in self._is_leader:
            leaders.remove(item)
        elif len(leaders) < self._size:
            self._is_leader.add(item)
        elif key(item) < key(leaders[-1]):
            self._is_leader.discard(leaders.pop())
            self._is_leader.add(item)
        else:
            return
        bisect.insort(leaders, item, key=key)

    def ranked(self, skip: set[int], n: int) -> list[int]:
        """The ``n`` most popular items not in ``skip``, most popular first."""
        chosen = list(islice((i for i in self._leaders if i not in skip), n))
        if len(chosen) < n and len(self._leaders) < len(self.counts):
            counts = np.asarray(self.counts)
            order = np.lexsort((np.arange(len(counts)), -counts))
            order = order[counts[order] > 0].tolist()  # only items seen
            chosen = list(islice((i for i in order if i not in skip), n))
        return chosen

    def recommend(self, request: ListRequest, n: int) -> np.ndarray:
        out = np.full((len(request), n), -1, dtype=np.int64)
        for row, before in enumerate(request.exclude):
            chosen = self.ranked(set(before.tolist()), n)
            out[row, : len(chosen)] = chosen
        return out


# --- streamrec ------------------------------------------------------------------------


class StreamrecRecommender:
    """streamrec's model through the in-process replay: the worker's code.

    Learning is :meth:`Replayer.learn` (the worker's batch step, item updates
    applied at once). Lists are the model's own ranking
    (:meth:`OnlineMF.top_rows`, what its ``recommend`` lists are cut from:
    personal scores, or its popularity fallback for short histories), told to
    leave out the items of the protocol's exclusion as well as those the model
    hides itself (bought, or all met with ``exclude_viewed``): that is exactly
    its top ``n`` among the items the protocol allows. The harness's item
    indices and the model's rows are mapped by arrays, with no ids on the way.
    A shopper's tests in one batch are scored from the same state, as the
    worker scores each shopper of a batch once.

    With ``compiled``, a whole stream at micro-batch 1 is replayed instead by
    :func:`models.compiled_replay.prequential_compiled` (the same learning,
    kernel for kernel, in one compiled loop; see that module for what differs
    and how it is checked); the replayer then stays untrained.
    """

    def __init__(
        self, config: MFConfig, name: str = "streamrec", *, compiled: bool = False
    ) -> None:
        self.name = name
        self.config = config
        self.compiled = compiled
        self.replayer = Replayer(config)
        self._index: dict[str, int] = {}
        # model row -> harness index, and harness index -> model row (-1: the
        # model has not learned the item yet)
        self._index_of_row = np.zeros(0, np.int64)
        self._row_of_index = np.zeros(0, np.int64)

    def learn(self, batch: EventBatch) -> None:
        self.replayer.learn(batch.events)
        index = self._index
        for event, item in zip(batch.events, batch.items.tolist(), strict=True):
            if item >= len(index):
                index.setdefault(event.item_id, item)
        items = self.replayer.model.items
        known = len(self._index_of_row)
        if len(items) > known:
            new = np.fromiter(
                (index[i] for i in items.ids[known:]), np.int64, len(items) - known
            )
            self._index_of_row = np.concatenate((self._index_of_row, new))
            size = max(len(self._row_of_index), int(new.max()) + 1)
            rows = np.full(size, -1, np.int64)
            rows[: len(self._row_of_index)] = self._row_of_index
            rows[new] = np.arange(known, len(items))
            self._row_of_index = rows

    def whole_stream(self, stream: Stream, n: int) -> EvaluationResult | None:
        """The compiled replay of ``stream`` when asked for and it applies
        (a fresh model; see :func:`models.compiled_replay.supports`)."""
        from models import compiled_replay  # it imports this module

        if not self.compiled or self.replayer.profiles:
            return None
        if not compiled_replay.supports(stream, self.config):
            return None
        return compiled_replay.prequential_compiled(
            stream, self.config, n=n, name=self.name
        )

    def _rows(self, before: np.ndarray) -> np.ndarray:
        inside = before[before < len(self._row_of_index)]
        rows = self._row_of_index[inside]
        return rows[rows >= 0]

    def recommend(self, request: ListRequest, n: int) -> np.ndarray:
        out = np.full((len(request), n), -1, dtype=np.int64)
        replayer = self.replayer
        model = replayer.model
        if not len(model.items):
            return out
        profiles = [
            replayer.profiles.get(u) or model.new_profile(u) for u in request.user_ids
        ]
        personal = [p.n_events >= model.config.min_history for p in profiles]
        chosen = [t for t, is_personal in enumerate(personal) if is_personal]
        for start in range(0, len(chosen), SCORE_CHUNK):
            tests = chosen[start : start + SCORE_CHUNK]
            rows, _ = model.top_rows(
                [profiles[t] for t in tests],
                n,
                [self._rows(request.exclude[t]) for t in tests],
            )
            out[tests, : rows.shape[1]] = np.where(
                rows >= 0, self._index_of_row[rows], -1
            )
        rest = [t for t, is_personal in enumerate(personal) if not is_personal]
        if rest:
            order = model.popularity_order()
            for test in rest:
                picked = model.popular_rows(
                    profiles[test], order, n, self._rows(request.exclude[test])
                )
                out[test, : len(picked)] = self._index_of_row[picked]
        return out


# --- uncertainty and plots ------------------------------------------------------------


@dataclass(frozen=True)
class RatioInterval:
    """A ratio of two hit counts with its bootstrap interval."""

    ratio: float
    low: float
    high: float
    confidence: float
    resamples: int

    def as_dict(self) -> dict[str, float]:
        return {
            "ratio": self.ratio,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "resamples": self.resamples,
        }


def bootstrap_ratio(
    hits_a: np.ndarray,
    hits_b: np.ndarray,
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> RatioInterval:
    """Paired bootstrap of ``sum(a) / sum(b)`` over the same test events.

    Each resample draws the tests with replacement and counts both systems'
    hits on that same draw. Only four kinds of test exist (hit by both, by a
    only, by b only, by neither), and the kinds' counts in a draw of n tests
    are multinomial with their shares, so drawing those four counts is the
    same distribution as drawing n indices, at a cost that does not grow
    with n. The interval is the percentile interval; a resample in which
    neither system hits has no ratio and is left out.
    """
    a, b = np.asarray(hits_a, bool), np.asarray(hits_b, bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError("hits_a and hits_b must be equally long, non-empty 1-d")
    cells = np.array([(a & b).sum(), (a & ~b).sum(), (~a & b).sum(), (~a & ~b).sum()])
    draws = np.random.default_rng(seed).multinomial(
        len(a), cells / len(a), size=resamples
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (draws[:, 0] + draws[:, 1]) / (draws[:, 0] + draws[:, 2])
        ratio = float(a.sum() / b.sum()) if b.any() else float("inf")
    ratios = ratios[~np.isnan(ratios)]
    if not len(ratios):
        return RatioInterval(ratio, math.nan, math.nan, confidence, resamples)
    tail = (1.0 - confidence) / 2
    # no interpolation: an infinite resample (b missed everything) stays one
    low, high = np.quantile(ratios, [tail, 1.0 - tail], method="inverted_cdf")
    return RatioInterval(ratio, float(low), float(high), confidence, resamples)


def rolling_rate(flags: np.ndarray, window: int) -> np.ndarray:
    """Mean of each run of ``window`` consecutive flags (fewer if short)."""
    flags = np.asarray(flags, dtype=np.float64)
    window = max(1, min(window, len(flags)))
    if not len(flags):
        return flags
    sums = np.cumsum(np.concatenate([[0.0], flags]))
    return (sums[window:] - sums[:-window]) / window
