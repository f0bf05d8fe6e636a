"""Writes shoppers' lists to Redis and to the recommendations topic.

One Redis round trip per micro-batch: a non-transactional pipeline of ``SET
key value EX ttl``, each SET replacing a shopper's list atomically. The same
JSON goes to the ``recommendations`` topic, keyed by user.

While Redis refuses writes the publisher holds the batch: it retries with
capped exponential back-off until Redis takes the lists, so the learner
stops taking batches and no offset past them is committed (see "Delivery" in
docs/ARCHITECTURE.md for why this rather than skipping and republishing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from streams.metrics import WorkerMetrics
from streams.sink import KafkaSink, partition_of

log = logging.getLogger(__name__)

# Back-off between Redis attempts: doubling from the first delay up to the
# cap, for as long as Redis refuses. The cap bounds how late a list is once
# Redis is back; the floor keeps a blip from costing more than a few ms.
FIRST_RETRY_S = 0.05
MAX_RETRY_S = 2.0
# While waiting, a warning on the first failure and then every this many.
LOG_EVERY_ATTEMPTS = 10


class PublishedList(msgspec.Struct):
    """The record readers get from ``rec:<user>`` and the recommendations topic."""

    user_id: str
    items: list[str]
    scores: list[float]
    personal: bool
    model_version: int
    event_id: str  # the event whose arrival caused this list
    event_timestamp: int  # that event's own timestamp (ms)
    produced_at: float  # when that event reached Kafka (s, record timestamp)
    published_at: float = 0.0  # when this list was written (s)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(PublishedList)


def decode_list(payload: bytes) -> PublishedList:
    return _decoder.decode(payload)


class ListPublisher:
    """Pipelines lists to Redis and sends them to the output topic."""

    def __init__(
        self,
        redis: aioredis.Redis,
        sink: KafkaSink,
        *,
        topic: str,
        partitions: int,
        key_prefix: str,
        ttl_s: int,
        metrics: WorkerMetrics,
    ) -> None:
        self.redis = redis
        self.sink = sink
        self.topic = topic
        self.partitions = partitions
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s
        self.metrics = metrics

    async def connect(self) -> None:
        """Open the Redis connection early; a failure here is only logged."""
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.inc()
            log.warning("redis not reachable yet: error=%s", type(exc).__name__)

    async def close(self) -> None:
        await self.redis.aclose()

    async def publish(self, lists: list[PublishedList]) -> None:
        """Write every list to Redis and queue it on the sink's topic.

        Returns once Redis has taken them all, however long that takes; the
        caller flushes the sink.
        """
        if not lists:
            return
        now = time.time()
        payloads = []
        for entry in lists:
            entry.published_at = now
            payloads.append(_encoder.encode(entry))
        await self._until_written(
            "write", lambda pipe: self._set_lists(pipe, lists, payloads)
        )
        for entry, payload in zip(lists, payloads, strict=True):
            key = entry.user_id.encode()
            self.sink.add(self.topic, partition_of(key, self.partitions), key, payload)
        done = time.time()
        for entry in lists:
            self.metrics.freshness_seconds.observe(done - entry.produced_at)
            kind = "personal" if entry.personal else "popular"
            self.metrics.lists_published.labels(kind).inc()

    async def forget(self, user_ids: list[str]) -> None:
        """Delete the shoppers' lists and queue tombstones for their keys."""
        if not user_ids:
            return
        keys = [self.key_prefix + user_id for user_id in user_ids]
        await self._until_written("delete", lambda pipe: pipe.delete(*keys))
        for user_id in user_ids:
            key = user_id.encode()
            self.sink.add(self.topic, partition_of(key, self.partitions), key, None)

    def _set_lists(
        self, pipe: Pipeline, lists: list[PublishedList], payloads: list[bytes]
    ) -> None:
        for entry, payload in zip(lists, payloads, strict=True):
            pipe.set(self.key_prefix + entry.user_id, payload, ex=self.ttl_s)

    async def _until_written(
        self, what: str, fill: Callable[[Pipeline], object]
    ) -> None:
        """Run one pipeline until Redis takes it, backing off between tries."""
        delay, attempt, started = FIRST_RETRY_S, 0, time.monotonic()
        while True:
            attempt += 1
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    fill(pipe)
                    await pipe.execute()
                break
            except (RedisError, OSError) as exc:
                self.metrics.redis_errors.inc()
                self.metrics.redis_waiting.set(1)
                if attempt % LOG_EVERY_ATTEMPTS == 1:
                    # the error's type only: a message could carry the URL
                    log.warning(
                        "redis %s failed, holding the batch: attempt=%d error=%s",
                        what,
                        attempt,
                        type(exc).__name__,
                    )
            await asyncio.sleep(delay)
            delay = min(MAX_RETRY_S, delay * 2)
        if attempt > 1:
            self.metrics.redis_waiting.set(0)
            log.warning(
                "redis %s succeeded after %d attempts and %.1f s",
                what,
                attempt,
                time.monotonic() - started,
            )
