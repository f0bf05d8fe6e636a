"""While Redis refuses writes the publisher holds the batch, then writes it."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from streams import publisher as publisher_module
from streams.metrics import WorkerMetrics
from streams.publisher import ListPublisher, PublishedList


class FlakyPipeline:
    def __init__(self, redis: FlakyRedis) -> None:
        self.redis = redis
        self.commands: list[tuple] = []

    async def __aenter__(self) -> FlakyPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def set(self, key: str, value: bytes, ex: int) -> None:
        self.commands.append(("set", key, value))

    def delete(self, *keys: str) -> None:
        self.commands.append(("delete", *keys))

    async def execute(self) -> None:
        if self.redis.failures_left > 0:
            self.redis.failures_left -= 1
            raise RedisConnectionError("Connection refused")
        self.redis.executed.extend(self.commands)


class FlakyRedis:
    def __init__(self, failures: int) -> None:
        self.failures_left = failures
        self.executed: list[tuple] = []

    def pipeline(self, transaction: bool) -> FlakyPipeline:
        return FlakyPipeline(self)


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple] = []

    def add(self, topic, partition, key, value, headers=None) -> None:  # type: ignore[no-untyped-def]
        self.records.append((topic, key, value))


def make(failures: int) -> tuple[ListPublisher, FlakyRedis, Sink, WorkerMetrics]:
    redis, sink = FlakyRedis(failures), Sink()
    metrics = WorkerMetrics(CollectorRegistry())
    publisher = ListPublisher(
        redis,  # type: ignore[arg-type]
        sink,  # type: ignore[arg-type]
        topic="recs",
        partitions=8,
        key_prefix="rec:",
        ttl_s=60,
        metrics=metrics,
    )
    return publisher, redis, sink, metrics


def a_list(user: str) -> PublishedList:
    return PublishedList(user, ["i1"], [1.0], True, 1, "e1", 0, 0.0)


def test_lists_wait_for_redis_with_capped_back_off(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    monkeypatch.setattr(publisher_module.asyncio, "sleep", no_sleep)
    publisher, redis, sink, metrics = make(failures=12)
    asyncio.run(publisher.publish([a_list("u1"), a_list("u2")]))

    assert [c[1] for c in redis.executed] == ["rec:u1", "rec:u2"]
    assert len(sleeps) == 12
    assert sleeps[0] == publisher_module.FIRST_RETRY_S
    assert max(sleeps) == publisher_module.MAX_RETRY_S
    assert sleeps == sorted(sleeps)
    assert metrics.redis_errors._value.get() == 12
    assert metrics.redis_waiting._value.get() == 0
    assert [r[1] for r in sink.records] == [b"u1", b"u2"]  # only once written


def test_forget_deletes_the_list_and_sends_a_tombstone() -> None:
    publisher, redis, sink, _ = make(failures=1)
    asyncio.run(publisher.forget(["u1", "u2"]))
    assert redis.executed == [("delete", "rec:u1", "rec:u2")]
    assert sink.records == [("recs", b"u1", None), ("recs", b"u2", None)]
