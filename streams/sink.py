"""Batched writes to Kafka for everything the worker produces.

Faust's ``send_soon`` costs a future and a task per message, which on this
hot path (a list, a changelog record and item gradients per shopper per
micro-batch) cost more than the learning. The sink collects a micro-batch's
records and sends one Kafka batch per topic partition with aiokafka's batch
API; :meth:`KafkaSink.flush` returns once the broker has them all, so a
batch's offsets are committed only after its output is durable.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

Headers = list[tuple[str, bytes]]
_Record = tuple[bytes | None, bytes | None, Headers]


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) gives a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class KafkaSink:
    """Collects records per topic partition and sends them in batches."""

    def __init__(
        self, bootstrap: str, client_options: Mapping[str, Any] | None = None
    ) -> None:
        self.bootstrap = bootstrap
        # security settings (config.security.kafka_client_options)
        self.client_options = dict(client_options or {})
        self._producer: AIOKafkaProducer | None = None
        self._pending: dict[tuple[str, int], list[_Record]] = defaultdict(list)

    async def start(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                linger_ms=0,
                max_batch_size=1024 * 1024,
                max_request_size=8 * 1024 * 1024,
                **self.client_options,
            )
            await producer.start()
            self._producer = producer
        return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
    ) -> None:
        """Queue one record; nothing is sent before :meth:`flush`."""
        self._pending[(topic, partition)].append((key, value, headers or []))

    async def flush(self) -> int:
        """Send every queued record; return how many were sent."""
        if not self._pending:
            return 0
        producer = await self.start()
        pending, self._pending = self._pending, defaultdict(list)
        sends = []
        sent = 0
        for (topic, partition), records in pending.items():
            batch = producer.create_batch()
            for key, value, headers in records:
                record = {"key": key, "value": value, "timestamp": None}
                if batch.append(**record, headers=headers) is None:
                    # full: send it and start the next one with this record
                    sends.append(
                        await producer.send_batch(batch, topic, partition=partition)
                    )
                    batch = producer.create_batch()
                    batch.append(**record, headers=headers)
            sends.append(await producer.send_batch(batch, topic, partition=partition))
            sent += len(records)
        await asyncio.gather(*sends)
        return sent
