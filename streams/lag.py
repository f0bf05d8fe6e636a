"""How far behind a worker is: consumer lag of the partitions it holds.

Lag here is what ``kafka-consumer-groups.sh --describe`` shows, restricted to
the partitions assigned to this worker: the log end offset minus the group's
committed offset. Commits follow processing by up to the commit interval
(1 s), so an idle, healthy worker reads 0 and a busy one a second's worth of
events at most; a growing figure means the worker cannot keep up.

The same call tells ``/healthz`` whether Kafka answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.metrics import WorkerMetrics

log = logging.getLogger(__name__)


@dataclass
class LagReading:
    """One measurement: messages behind per input, or why there is none."""

    lag: dict[str, int] = field(default_factory=dict)
    partitions: int = 0  # partitions of the inputs held by this worker
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class LagProbe:
    """Measures consumer lag for this worker's partitions of each input topic."""

    def __init__(
        self,
        app: faust.App,
        *,
        bootstrap: str,
        group_id: str,
        topics: Mapping[str, str],
        metrics: WorkerMetrics,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.sources = {topic: source for source, topic in topics.items()}
        self.metrics = metrics
        self.client_options = dict(client_options or {})
        self.last = LagReading(error="not measured yet")
        self._admin: AIOKafkaAdminClient | None = None

    async def measure(self, timeout_s: float = 3.0) -> LagReading:
        """Measure now; a failure is returned as a reading, never raised."""
        try:
            reading = await asyncio.wait_for(self._measure(), timeout_s)
        except Exception as exc:  # any failure means "Kafka did not answer"
            reading = LagReading(error=f"{type(exc).__name__}: {exc}"[:300])
            await self._drop_admin()
        self.last = reading
        for source, lag in reading.lag.items():
            self.metrics.consumer_lag.labels(source).set(lag)
        return reading

    async def run(self, interval_s: float) -> None:
        """Measure every ``interval_s`` seconds until cancelled."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                reading = await self.measure()
                if not reading.ok:
                    log.warning("consumer lag not measured: error=%s", reading.error)
        finally:
            await self._drop_admin()

    async def _measure(self) -> LagReading:
        admin = await self._admin_client()
        held = [
            TopicPartition(tp.topic, tp.partition)
            for tp in self.app.consumer.assignment()
            if tp.topic in self.sources
        ]
        lag = dict.fromkeys(self.sources.values(), 0)
        if not held:
            # the round trip still proves Kafka answers
            await admin.describe_cluster()
            return LagReading(lag, 0)
        committed = await admin.list_consumer_group_offsets(
            self.group_id, partitions=held
        )
        for tp in held:
            end = self.app.consumer.highwater(tp)
            if end is None:
                continue  # nothing fetched from it yet
            done = committed.get(tp)
            offset = done.offset if done is not None and done.offset >= 0 else 0
            lag[self.sources[tp.topic]] += max(0, end - offset)
        return LagReading(lag, len(held))

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id=f"{self.group_id}-lag",
                request_timeout_ms=3000,
                **self.client_options,
            )
            await admin.start()
            self._admin = admin
        return self._admin

    async def _drop_admin(self) -> None:
        # a fresh client next time: the old one may hold a dead connection
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                await admin.close()
            except Exception:
                log.debug("closing the lag admin client failed", exc_info=True)
