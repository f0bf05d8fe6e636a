"""Publish events on the ``events`` topic, fast or at a steady rate.

Every message is keyed by the shopper's ``user_id`` (UTF-8), so Kafka's
default murmur2 partitioner keeps one shopper on one partition and the worker
sees each shopper's events in order. Values are :func:`encode_event` JSON.

For throughput the producer fills one record batch per partition for a chunk
of events and hands it over with ``send_batch``: no per-message future, no
await per event. The partition is computed here with the same murmur2 as the
default partitioner (memoised, since the pure-Python hash is the slowest step
and shoppers repeat). Delivery is checked per batch; the first failed batch
raises.

The producer is idempotent with ``acks=all``: a retried batch is not written
twice and order within a partition holds. Record timestamps are the send time,
not the event time, so that replaying a 1996 dataset does not fall straight
out of the topic's time-based retention.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from itertools import islice
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from tqdm import tqdm

from models.events import Event, encode_event

log = logging.getLogger(__name__)

# A record batch of up to 256 KiB holds about a thousand ~200-byte events;
# the broker's default message.max.bytes (1 MiB) is far above it.
MAX_BATCH_BYTES = 256 * 1024
LINGER_MS = 5
# Events pulled from the source per round when unpaced.
CHUNK_EVENTS = 4096
# Paced runs wake up about this often; a chunk is one tick's worth of events.
TICKS_PER_SECOND = 20
# A paced run this far behind its schedule restarts it instead of bursting.
MAX_LAG_S = 1.0

Record = tuple[bytes | None, bytes]


@dataclass(frozen=True)
class ProduceReport:
    """What one run of a producer did.

    ``events`` counts the messages sent; a report is only returned once all
    of them were acknowledged by every in-sync replica.
    """

    topic: str
    events: int
    seconds: float
    events_per_second: float


@functools.lru_cache(maxsize=1 << 17)
def partition_for(key: bytes, n_partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % n_partitions


async def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int = 8,
    *,
    replication_factor: int | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> bool:
    """Create ``topic`` unless it exists; return whether it was created.

    The replication factor defaults to the number of brokers, at most 3. An
    existing topic is left as it is, with a warning when its partition count
    differs from ``partitions``.
    """
    if partitions < 1:
        raise ValueError(f"a topic needs at least 1 partition, got {partitions}")
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="streamrec-admin",
        **(client_options or {}),
    )
    await admin.start()
    try:
        # list_topics asks for all topics; a metadata request naming the topic
        # could make a broker with auto.create.topics.enable create it with
        # its default partition count.
        if topic in await admin.list_topics():
            (meta,) = await admin.describe_topics([topic])
            if len(meta["partitions"]) != partitions:
                log.warning(
                    "topic exists with another partition count topic=%s "
                    "partitions=%d wanted=%d",
                    topic,
                    len(meta["partitions"]),
                    partitions,
                )
            return False
        if replication_factor is None:
            brokers = (await admin.describe_cluster())["brokers"]
            replication_factor = max(1, min(3, len(brokers)))
        response = await admin.create_topics(
            [NewTopic(topic, partitions, replication_factor)]
        )
        for name, code, *message in response.topic_errors:
            error = for_code(code) if code else None
            if error is TopicAlreadyExistsError:
                return False  # someone else created it meanwhile
            if error is not None:
                detail = message[0] if message and message[0] else error.description
                raise error(f"cannot create topic {name!r}: {detail}")
        log.info(
            "topic created topic=%s partitions=%d replication_factor=%d",
            topic,
            partitions,
            replication_factor,
        )
        return True
    finally:
        await admin.close()


async def produce_events(
    events: Iterable[Event],
    *,
    bootstrap: str,
    topic: str,
    partitions: int = 8,
    rate: float | None = None,
    progress: bool = True,
    total: int | None = None,
    retime: bool = False,
    client_options: Mapping[str, Any] | None = None,
) -> ProduceReport:
    """Send events to ``topic``, keyed by ``user_id``, creating the topic if needed.

    Parameters
    ----------
    events
        Any iterable, consumed lazily (an endless generator is fine).
    bootstrap, topic, partitions
        Where to send; ``partitions`` is used only to create a missing topic.
    rate
        Events per second, paced on a monotonic schedule; None is unpaced.
    progress, total
        Draw a tqdm bar on stderr; ``total`` defaults to ``len(events)``.
    retime
        Stamp each event with the wall clock when it is sent (never going
        backwards), for replaying historical data as live traffic.
    client_options
        Security options for aiokafka (config.security.kafka_client_options).
    """
    if total is None and isinstance(events, Sized):
        total = len(events)
    return await _produce(
        _event_records(events, retime),
        bootstrap=bootstrap,
        topic=topic,
        partitions=partitions,
        rate=rate,
        progress=progress,
        total=total,
        client_options=client_options,
    )


async def produce_raw(
    values: list[Record],
    *,
    bootstrap: str,
    topic: str,
    partitions: int = 8,
    rate: float | None = None,
    progress: bool = False,
    client_options: Mapping[str, Any] | None = None,
) -> ProduceReport:
    """Send ``(key, value)`` byte pairs as they are, e.g. malformed messages.

    A None key is spread round-robin over the partitions.
    """
    return await _produce(
        iter(values),
        bootstrap=bootstrap,
        topic=topic,
        partitions=partitions,
        rate=rate,
        progress=progress,
        total=len(values),
        client_options=client_options,
    )


# --- internals ----------------------------------------------------------------


def _event_records(events: Iterable[Event], retime: bool) -> Iterator[Record]:
    """Key and encode events lazily; with ``retime``, stamp them as they go."""
    if not retime:
        for event in events:
            yield event.user_id.encode(), encode_event(event)
        return
    last_ms = 0
    replace = msgspec.structs.replace
    for event in events:
        # Pulled right before sending, so the stamp is the send time.
        last_ms = max(last_ms, time.time_ns() // 1_000_000)
        yield event.user_id.encode(), encode_event(replace(event, timestamp=last_ms))


def _new_producer(
    bootstrap: str, client_options: Mapping[str, Any] | None
) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="streamrec-producer",
        acks="all",
        enable_idempotence=True,
        linger_ms=LINGER_MS,
        max_batch_size=MAX_BATCH_BYTES,
        compression_type=None,
        **(client_options or {}),
    )


async def _produce(
    records: Iterator[Record],
    *,
    bootstrap: str,
    topic: str,
    partitions: int,
    rate: float | None,
    progress: bool,
    total: int | None,
    client_options: Mapping[str, Any] | None = None,
) -> ProduceReport:
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be None or a positive events/s, got {rate}")
    chunk_events = (
        CHUNK_EVENTS
        if rate is None
        else max(1, min(CHUNK_EVENTS, int(rate / TICKS_PER_SECOND)))
    )

    await ensure_topic(bootstrap, topic, partitions, client_options=client_options)
    producer = _new_producer(bootstrap, client_options)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise

    bar = tqdm(
        total=total,
        unit="ev",
        unit_scale=True,
        desc=topic,
        file=sys.stderr,
        disable=not progress,
        mininterval=0.5,
    )
    in_flight: deque[asyncio.Future] = deque()
    sent = 0
    started = schedule = time.monotonic()
    try:
        topic_partitions = sorted(await producer.partitions_for(topic))
        while True:
            if rate is not None:
                delay = schedule - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -MAX_LAG_S:
                    log.debug("producer behind schedule lag_s=%.2f", -delay)
                    schedule = time.monotonic()
            chunk = list(islice(records, chunk_events))
            if not chunk:
                break
            in_flight.extend(
                await _send_chunk(producer, topic, topic_partitions, chunk, sent)
            )
            sent += len(chunk)
            bar.update(len(chunk))
            _raise_failed(in_flight)
            if rate is not None:
                schedule += len(chunk) / rate
        # Raises the first failed batch's error.
        await asyncio.gather(*in_flight)
    except (asyncio.CancelledError, KeyboardInterrupt):
        seconds = time.monotonic() - started
        log.info(
            "producer interrupted topic=%s sent=%d seconds=%.1f", topic, sent, seconds
        )
        raise
    finally:
        bar.close()
        # stop() flushes what is queued, so an interrupted run loses nothing
        # it already handed over.
        await producer.stop()

    seconds = time.monotonic() - started
    report = ProduceReport(
        topic=topic,
        events=sent,
        seconds=seconds,
        events_per_second=sent / seconds if seconds > 0 else 0.0,
    )
    log.info(
        "producer done topic=%s events=%d seconds=%.2f events_per_second=%.0f",
        topic,
        report.events,
        report.seconds,
        report.events_per_second,
    )
    return report


async def _send_chunk(
    producer: AIOKafkaProducer,
    topic: str,
    topic_partitions: list[int],
    chunk: list[Record],
    offset: int,
) -> list[asyncio.Future]:
    """Hand a chunk over as one batch per partition (more when one fills up).

    ``offset`` (records sent before) drives the round-robin of unkeyed records.
    """
    n_partitions = len(topic_partitions)
    builders: dict[int, BatchBuilder] = {}
    futures: list[asyncio.Future] = []
    for position, (key, value) in enumerate(chunk, start=offset):
        index = (
            position % n_partitions if key is None else partition_for(key, n_partitions)
        )
        partition = topic_partitions[index]
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is None:
            # Full: ship it and start another; a lone record always fits.
            futures.append(await _submit(producer, topic, partition, builder))
            builder = builders[partition] = producer.create_batch()
            builder.append(key=key, value=value, timestamp=None)
    for partition, builder in builders.items():
        futures.append(await _submit(producer, topic, partition, builder))
    return futures


async def _submit(
    producer: AIOKafkaProducer, topic: str, partition: int, builder: BatchBuilder
) -> asyncio.Future:
    # Closed, so that nothing but this chunk's records ever lands in it.
    builder.close()
    return await producer.send_batch(builder, topic, partition=partition)


def _raise_failed(in_flight: deque[asyncio.Future]) -> None:
    """Drop delivered batches from the left; raise the error of a failed one."""
    while in_flight and in_flight[0].done():
        in_flight.popleft().result()
