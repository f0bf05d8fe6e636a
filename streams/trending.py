"""The trending list: events per item in a windowed Faust table, published to Redis.

Agent ``count_trending`` reads the ``item-updates`` messages a second time
(beside the owner, ``own_items``): each message carries, for the items of one
partition, how many events of one learner batch hit each item. Those counts go
into a tumbling-window Faust table keyed by ``(item, bucket)``, relative to
the stream: a message's bucket is the one its Kafka timestamp falls in. As
for the other tables (``streams/sink.py``), the agent writes the store and
the changelog itself, once per item and bucket per second, in one Kafka batch
per partition, rather than through Faust's per-key ``send_soon`` for every
item of every message, which would cost more than the counting. A record goes
to the item's own partition, so the worker that owns the item restores its
buckets from the changelog after a restart or a rebalance.

Every ``trending_interval_s`` each worker scores the items of its partitions
(:func:`models.trending.trend_scores`) and publishes its best ones as its
part, a field of the Redis hash ``<app_id>:trending:parts``; it then merges
the fresh parts of all workers into the list at ``<app_id>:trending``, so a
reader needs one GET. Counts are at least once: a batch redelivered after a
crash is counted again, which nudges a score but never breaks a list.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable

import faust
import msgspec
import numpy as np
import redis.asyncio as aioredis
from faust.types import StreamT
from redis.exceptions import RedisError

from config.security import kafka_client_options
from config.settings import Settings
from models.trending import TrendConfig, merge_parts, top_trending, trend_scores
from streams.metrics import WorkerMetrics
from streams.owner import decode_update
from streams.sink import KafkaSink

log = logging.getLogger(__name__)

# How long the counter gathers item-updates messages before writing: an item
# hot in every learner batch is then written once a second, not per batch.
COUNT_WINDOW_S = 1.0

Bucket = tuple[str, tuple[float, float]]  # (item, (start, end)), Faust's form


class TrendingList(msgspec.Struct):
    """The record readers get from ``<app_id>:trending``."""

    items: list[str]
    scores: list[float]
    refreshed_at: float  # when it was merged (s)
    window_s: int
    half_life_s: float


class TrendingPart(msgspec.Struct, array_like=True):
    """One worker's best items, a field of the parts hash."""

    at: float
    items: list[tuple[str, float]]


# lists, parts, and the table's keys and values (JSON, as Faust's json codec)
_json = msgspec.json.Encoder()
_list_decoder = msgspec.json.Decoder(TrendingList)
_part_decoder = msgspec.json.Decoder(TrendingPart)


def decode_trending(payload: bytes) -> TrendingList:
    return _list_decoder.decode(payload)


class TrendingTracker:
    """Counts item events in a windowed table and publishes the trending list."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        source: faust.TopicT,
        redis: aioredis.Redis,
        metrics: WorkerMetrics,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.metrics = metrics
        self.config = TrendConfig(
            bucket_s=settings.trending_bucket_s,
            window_s=settings.trending_window_s,
            half_life_s=settings.trending_half_life_s,
        )
        self.key = settings.trending_key
        self.parts_key = f"{self.key}:parts"
        # a fresh id per process: a restarted worker's old part simply ages out
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        # parts older than this belong to workers that stopped or lost the
        # partitions; they are left out of the merge and deleted
        self.stale_after_s = max(10.0, 3 * settings.trending_interval_s)
        # the list outlives its workers by a window, so a shop's home page
        # still has something to show while the stack restarts
        self.ttl_s = int(settings.trending_window_s + self.stale_after_s)
        self.table = app.Table(
            "trending",
            default=float,
            # Windowed keys are (item, (start, end)). No key type: the JSON
            # codec then round-trips them and recovery rebuilds the tuples
            # (a str key type would turn them into strings).
            key_type=None,
            value_type=None,
            partitions=settings.partitions,
        )
        # expires: the changelog keeps a bucket as long as it can count
        self.windowed = self.table.tumbling(
            settings.trending_bucket_s,
            expires=settings.trending_window_s + settings.trending_bucket_s,
        ).relative_to_stream()
        self.sink = KafkaSink(settings.kafka_bootstrap, kafka_client_options(settings))
        self._changelog: str | None = None  # its name, once the app has made it
        app.agent(source, name="count_trending", concurrency=1)(self._count)

    # --- counting -----------------------------------------------------------

    async def _count(self, stream: StreamT) -> None:
        await self.sink.start()
        try:
            async for batch in stream.take_events(10_000, within=COUNT_WINDOW_S):
                try:
                    stamp = self.windowed.get_timestamp
                    self.count(
                        [(r.value, stamp(r), r.message.partition) for r in batch]
                    )
                    await self.sink.flush()
                except Exception:
                    # Trending is a popularity signal, not a ledger: a lost
                    # second of counts is logged, and counting goes on.
                    log.exception("trending counts of a batch were lost")
        finally:
            await self.sink.stop()

    def count(self, messages: list[tuple[bytes, float, int]]) -> int:
        """Add ``(item-updates payload, Kafka timestamp, partition)`` messages
        to the buckets and queue their changelog records on the sink; return
        how many buckets were written.

        A message holds the items of its own partition (``split_by_owner``),
        so its partition is each item's changelog partition too.
        """
        totals = self._bucket_totals(messages)
        data = self.table.data
        if self._changelog is None:
            self._changelog = self.table.changelog_topic.get_topic_name()
        for (item_id, (start, end)), (count, partition) in totals.items():
            value = data.get((item_id, (start, end)), 0.0) + count
            data[(item_id, (start, end))] = value
            self.sink.add(
                self._changelog,
                partition,
                _json.encode([item_id, [start, end]]),
                _json.encode(value),
            )
        self.metrics.trending_updates.inc(len(totals))
        return len(totals)

    def _bucket_totals(
        self, messages: list[tuple[bytes, float, int]]
    ) -> dict[Bucket, tuple[float, int]]:
        window = self.table.window
        n_factors = self.settings.n_factors
        totals: dict[Bucket, tuple[float, int]] = {}
        for payload, timestamp, partition in messages:
            update = decode_update(payload, n_factors)
            (start, end), *_ = window.ranges(timestamp)  # tumbling: one range
            span = (float(start), float(end))
            ids, counts = update.item_ids, update.counts
            # a batch's negatives are in the message too, with a count of 0
            for row in np.flatnonzero(counts > 0).tolist():
                bucket = (ids[row], span)
                before = totals.get(bucket, (0.0, partition))[0]
                totals[bucket] = (before + float(counts[row]), partition)
        return totals

    def scores(self, now: float | None = None) -> dict[str, float]:
        """Trend score of every item with events in the window, in this
        worker's partitions; buckets that left the window are dropped."""
        now = time.time() if now is None else now
        data = self.table.data
        expired = now - self.config.window_s - self.config.bucket_s
        old = [key for key in data if key[1][1] < expired]
        for key in old:  # the changelog's retention drops them there
            del data[key]
        return trend_scores(data.items(), now, self.config)

    # --- publishing ---------------------------------------------------------

    async def run(self) -> None:
        """Publish every ``trending_interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.trending_interval_s)
            try:
                await self.publish()
            except (RedisError, OSError) as exc:
                self.metrics.redis_errors.inc()
                log.warning("trending not published: error=%s", type(exc).__name__)

    async def publish(self) -> TrendingList:
        """Publish this worker's part, then the merged list; return the list."""
        started = time.perf_counter()
        now = time.time()
        scores = self.scores(now)
        self.metrics.trending_items.set(len(scores))
        part = TrendingPart(now, top_trending(scores, self.settings.trending_size))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.parts_key, self.worker_id, _json.encode(part))
            pipe.expire(self.parts_key, self.ttl_s)
            pipe.hgetall(self.parts_key)
            *_, raw_parts = await pipe.execute()
        fresh, stale = self._split_parts(raw_parts, now)
        merged = top_trending(merge_parts(fresh), self.settings.trending_size)
        trending = TrendingList(
            items=[item for item, _ in merged],
            scores=[round(score, 4) for _, score in merged],
            refreshed_at=now,
            window_s=self.settings.trending_window_s,
            half_life_s=self.settings.trending_half_life_s,
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.key, _json.encode(trending), ex=self.ttl_s)
            if stale:
                pipe.hdel(self.parts_key, *stale)
            await pipe.execute()
        self.metrics.trending_publish_seconds.observe(time.perf_counter() - started)
        return trending

    def _split_parts(
        self, raw_parts: dict[bytes, bytes], now: float
    ) -> tuple[list[Iterable[tuple[str, float]]], list[bytes]]:
        fresh: list[Iterable[tuple[str, float]]] = []
        stale: list[bytes] = []
        for worker_id, payload in raw_parts.items():
            try:
                part = _part_decoder.decode(payload)
            except msgspec.DecodeError:
                stale.append(worker_id)  # not ours to read: drop it
                continue
            if now - part.at > self.stale_after_s:
                stale.append(worker_id)
            else:
                fresh.append(part.items)
        return fresh, stale
