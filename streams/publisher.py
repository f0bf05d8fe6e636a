"""Writes shoppers' lists to Redis and to the recommendations topic.

One Redis round trip per micro-batch: a non-transactional pipeline of ``SET
key value EX ttl``, each SET replacing a shopper's list atomically. The same
JSON goes to the ``recommendations`` topic, keyed by user.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streams.metrics import WorkerMetrics
from streams.sink import KafkaSink, partition_of

log = logging.getLogger(__name__)

# Bounded retries inside one batch; a batch whose lists still fail is counted
# and the worker moves on (the next event of each shopper rewrites the list).
# Pausing consumption while Redis is away is issue #4.
RETRY_DELAYS_S = (0.05, 0.2, 0.5)


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

    async def publish(self, lists: list[PublishedList]) -> bool:
        """Write every list to Redis and queue it on the sink's topic.

        Returns False if Redis refused the lists on every retry. The caller
        flushes the sink.
        """
        if not lists:
            return True
        now = time.time()
        payloads = []
        for entry in lists:
            entry.published_at = now
            payloads.append(_encoder.encode(entry))
        written = await self._write_redis(lists, payloads)
        for entry, payload in zip(lists, payloads, strict=True):
            key = entry.user_id.encode()
            self.sink.add(self.topic, partition_of(key, self.partitions), key, payload)
        if written:
            done = time.time()
            for entry in lists:
                self.metrics.freshness_seconds.observe(done - entry.produced_at)
                kind = "personal" if entry.personal else "popular"
                self.metrics.lists_published.labels(kind).inc()
        return written

    async def _write_redis(
        self, lists: list[PublishedList], payloads: list[bytes]
    ) -> bool:
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS_S)):
            if delay:
                await asyncio.sleep(delay)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for entry, payload in zip(lists, payloads, strict=True):
                        pipe.set(
                            self.key_prefix + entry.user_id, payload, ex=self.ttl_s
                        )
                    await pipe.execute()
                return True
            except (RedisError, OSError) as exc:
                self.metrics.redis_errors.inc()
                log.warning(
                    "redis write failed: lists=%d attempt=%d error=%s",
                    len(lists),
                    attempt + 1,
                    type(exc).__name__,
                )
        return False
