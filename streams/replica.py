"""A worker's read-only replica of every item's factors.

Each item has one owner (the worker holding its partition of the item table);
the owner's table writes a changelog record per item change. Every worker tails
all partitions of that changelog, outside any consumer group, into the
:class:`~models.items.ItemTable` it scores against. The replica trails the
owners by the round trip through Kafka: that is the staleness the design
accepts (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from models.items import ItemTable
from streams.metrics import WorkerMetrics

log = logging.getLogger(__name__)

# Changelog records applied between two turns of the event loop: one fetch
# of a busy changelog applied at once held the loop for over 20 ms.
APPLY_CHUNK = 128


class ItemReplica:
    """Tails the item table's changelog into an ItemTable."""

    def __init__(
        self,
        items: ItemTable,
        *,
        bootstrap: str,
        topic: str,
        partitions: int,
        metrics: WorkerMetrics,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.items = items
        self.client_options = dict(client_options or {})
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.metrics = metrics
        self.caught_up = asyncio.Event()
        self.bad_records = 0
        self._consumer: AIOKafkaConsumer | None = None

    async def run(self) -> None:
        """Read the changelog from its start, then follow it until cancelled."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **self.client_options,
        )
        self._consumer = consumer
        await consumer.start()
        try:
            partitions = await self._partitions(consumer)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            end = await consumer.end_offsets(partitions)
            log.info("replica reading %s: %d partitions", self.topic, len(partitions))
            while True:
                batch = await consumer.getmany(timeout_ms=100, max_records=20_000)
                for records in batch.values():
                    for start in range(0, len(records), APPLY_CHUNK):
                        self._apply(records[start : start + APPLY_CHUNK])
                        # the loop serves the API and the learner meanwhile
                        await asyncio.sleep(0)
                if not self.caught_up.is_set() and await self._reached(consumer, end):
                    self.caught_up.set()
                    log.info("replica caught up: items=%d", len(self.items))
        finally:
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        # The owner's table creates the changelog; wait for it to exist.
        # The worker's Faust app creates it with ``partitions`` partitions.
        for _ in range(600):
            if self.topic in await consumer.topics():
                return [TopicPartition(self.topic, p) for p in range(self.partitions)]
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {self.topic!r} did not appear within 60 s")

    async def _reached(
        self, consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]
    ) -> bool:
        for partition, offset in end.items():
            if await consumer.position(partition) < offset:
                return False
        return True

    def _apply(self, records: list) -> None:
        items = self.items
        for record in records:
            if record.value is None or record.key is None:
                continue  # a tombstone: items are never deleted today
            try:
                items.decode_into(record.key.decode(), record.value)
            except ValueError:
                self.bad_records += 1
                log.exception("replica skipped a bad item record")
        self.metrics.replica_updates.inc(len(records))
        self.metrics.items_known.set(len(items))
