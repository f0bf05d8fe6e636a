"""The streaming worker: shop events in, fresh top-K lists out.

Two agents, each with concurrency 1 (faust-streaming issue #606: concurrent
agents can lose messages when a worker crashes):

``learn``
    takes micro-batches from ``events`` (keyed by user, so a shopper's events
    reach one worker in order), validates them, learns the shoppers' factors
    (kept in the ``users`` table), routes the summed item gradients to each
    item's owner through ``item-updates``, and publishes the lists of every
    shopper the batch touched to Redis and to ``recommendations``.
``own_items``
    applies the item gradients for the items of its partitions to the
    ``items`` table. That table's changelog is the stream every worker's
    :class:`~streams.replica.ItemReplica` follows to score against.

Both tables are changelog-backed, so a restarted worker recovers its shoppers
and items and carries on. docs/ARCHITECTURE.md has the full picture.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import NoReturn

import faust
import redis.asyncio as aioredis
from faust.types import EventT, StreamT
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from config.settings import Settings
from models.events import Event, InvalidEvent, decode_event
from models.items import decode_item, encode_item, initial_factors
from models.mf import MFConfig, OnlineMF, Recommendation
from models.profiles import UserProfile, decode_profile, encode_profile
from producers.kafka import ensure_topic
from streams import faust_patches
from streams.metrics import WorkerMetrics
from streams.owner import ItemState, apply_updates, split_by_owner
from streams.publisher import ListPublisher, PublishedList
from streams.replica import ItemReplica
from streams.sink import KafkaSink, partition_of

log = logging.getLogger(__name__)


def mf_config(settings: Settings) -> MFConfig:
    """The model's hyper-parameters from the settings."""
    return MFConfig(
        n_factors=settings.n_factors,
        learning_rate=settings.learning_rate,
        regularization=settings.regularization,
        n_negatives=settings.n_negatives,
        negative_pool=settings.negative_pool,
        grad_clip=settings.grad_clip,
        batch_clip=settings.batch_clip,
        init_scale=settings.init_scale,
        event_weights=settings.event_weights,
        seed=settings.seed,
        min_history=settings.min_history,
        exclude_viewed=settings.exclude_viewed,
        recent_items=settings.recent_items,
        dedup_window_ms=settings.dedup_window_s * 1000,
    )


# How long the item owner gathers update messages before applying them.
OWNER_WINDOW_S = 0.1


def die(reason: str) -> NoReturn:
    """Exit at once, without committing the offsets of the failed batch.

    Faust's take_events acknowledges a batch even when its body raises, and a
    restarted agent would then skip it. Invalid input never gets here (it
    goes to the dead-letter topic); this is for failures of our own or of
    Kafka, where the only safe move is to let a restart redeliver the batch.
    """
    log.critical("%s; exiting so that the batch is redelivered", reason, exc_info=True)
    logging.shutdown()
    os._exit(70)


class StreamrecWorker:
    """The Faust app with its topics, tables, agents and model."""

    def __init__(
        self, settings: Settings, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.metrics = WorkerMetrics(registry)
        self.model = OnlineMF(mf_config(settings))
        self.app = self._make_app()
        self._declare_streams()
        self.replica = ItemReplica(
            self.model.items,
            bootstrap=settings.kafka_bootstrap,
            topic=self.items_table.changelog_topic.get_topic_name(),
            partitions=settings.partitions,
            metrics=self.metrics,
        )
        # one sink per agent: a flush then covers exactly that agent's batch
        self.sink = KafkaSink(settings.kafka_bootstrap)
        self.owner_sink = KafkaSink(settings.kafka_bootstrap)
        self.publisher = ListPublisher(
            aioredis.from_url(settings.redis_url),
            self.sink,
            topic=settings.recommendations_topic,
            partitions=settings.partitions,
            key_prefix=settings.key_prefix,
            ttl_s=settings.list_ttl_s,
            metrics=self.metrics,
        )
        self.app.task(self._run_replica)
        self.app.page("/metrics")(self._metrics_view())

    async def create_topics(self) -> None:
        """Create the worker's topics when missing, with ``partitions`` each."""
        s = self.settings
        for topic in (
            s.events_topic,
            s.item_updates_topic,
            s.recommendations_topic,
            s.dead_letter_topic,
        ):
            await ensure_topic(s.kafka_bootstrap, topic, s.partitions)

    # --- wiring -------------------------------------------------------------

    def _make_app(self) -> faust.App:
        s = self.settings
        faust_patches.apply(s.fetch_max_wait_ms)
        return faust.App(
            s.app_id,
            broker=[f"kafka://{server}" for server in s.kafka_bootstrap.split(",")],
            # memory stores, rebuilt from the changelogs at start; see
            # docs/ARCHITECTURE.md, "Known limits", for why not RocksDB
            store="memory://",
            datadir=s.data_dir,
            autodiscover=False,
            topic_partitions=s.partitions,
            topic_replication_factor=1,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=1.0,
            producer_linger=0.005,
            stream_buffer_maxsize=max(4096, 2 * s.batch_max),
            web_enabled=True,
            web_bind=s.web_bind,
            web_host="127.0.0.1",
            web_port=s.web_port,
        )

    def _declare_streams(self) -> None:
        s, app = self.settings, self.app

        def raw_topic(name: str) -> faust.TopicT:
            return app.topic(
                name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=s.partitions,
            )

        self.events_topic = raw_topic(s.events_topic)
        self.item_updates_topic = raw_topic(s.item_updates_topic)
        self.recommendations_topic = raw_topic(s.recommendations_topic)
        self.dead_letter_topic = raw_topic(s.dead_letter_topic)

        def table(name: str) -> faust.Table:
            # use_partitioner: a key's changelog partition is its murmur2
            # partition, the same one the producers' keys land on, even when a
            # micro-batch mixes events from several partitions.
            return app.Table(
                name,
                key_type=bytes,  # bytes keys and values take the raw codec
                value_type=bytes,
                partitions=s.partitions,
                use_partitioner=True,
            )

        self.users_table = table("users")
        self.items_table = table("items")
        app.agent(self.events_topic, name="learn", concurrency=1)(self._learn)
        app.agent(self.item_updates_topic, name="own_items", concurrency=1)(
            self._own_items
        )

    def _metrics_view(self):  # type: ignore[no-untyped-def]
        registry = self.metrics.registry

        class MetricsView(faust.web.View):
            async def get(self, request: faust.web.Request) -> faust.web.Response:
                # aiohttp refuses a charset in content_type=, so pass a header
                return self.bytes(
                    generate_latest(registry),
                    headers={"Content-Type": CONTENT_TYPE_LATEST},
                )

        return MetricsView

    async def _run_replica(self) -> None:
        await self.replica.run()

    # --- learning -----------------------------------------------------------

    async def _learn(self, stream: StreamT) -> None:
        # connect before the first batch, so that it pays no set-up time
        await self.sink.start()
        await self.publisher.connect()
        await self._wait_for_replica()
        try:
            async for batch in stream.take_events(
                self.settings.batch_max, within=self.settings.batch_within_s
            ):
                try:
                    await self.process(batch)
                except Exception:
                    die("learning a batch failed")
        finally:
            await self.sink.stop()
            await self.publisher.close()

    async def _wait_for_replica(self) -> None:
        # Scoring against an empty replica after a restart would publish
        # lists from start vectors; wait (bounded) until it has caught up.
        try:
            await asyncio.wait_for(self.replica.caught_up.wait(), timeout=60)
        except TimeoutError:
            log.warning("replica not caught up after 60 s; starting anyway")

    async def process(self, batch: Sequence[EventT]) -> None:
        """Learn one micro-batch and publish the lists it changed."""
        self.metrics.batch_size.observe(len(batch))
        events, causes = self._decode(batch)
        if not events:
            return
        started = time.perf_counter()
        profiles = self._load_profiles(events)
        result = self.model.learn_batch(events, profiles)
        for user_id in result.users:
            value = encode_profile(profiles[user_id])
            self._store(self.users_table, user_id, value, self.sink)
        for partition, message in split_by_owner(
            result.item_update, self.settings.partitions
        ):
            self.sink.add(self.settings.item_updates_topic, partition, None, message)
        self.metrics.update_seconds.observe(time.perf_counter() - started)
        self.metrics.events_duplicate.inc(result.duplicates)
        self.metrics.nonfinite.labels("user").inc(self._take_nonfinite_users())
        self.metrics.users_known.set(len(self.users_table))

        started = time.perf_counter()
        lists = self.model.recommend(
            [profiles[u] for u in result.users], result.users, self.settings.top_k
        )
        self.metrics.topk_seconds.observe(time.perf_counter() - started)

        started = time.perf_counter()
        await self.publisher.publish(
            [self._published(rec, causes[rec.user_id]) for rec in lists]
        )
        await self.sink.flush()
        self.metrics.publish_seconds.observe(time.perf_counter() - started)

    def _store(
        self, table: faust.Table, key: str, value: bytes, sink: KafkaSink
    ) -> None:
        """Set a table entry, its changelog record going out with the batch.

        The store is written directly and the changelog record goes through
        the sink, to the partition the key's hash gives (as use_partitioner
        does), so that recovery finds it beside the key's source partition.
        """
        raw_key = key.encode()
        table.data[raw_key] = value
        topic = table.changelog_topic.get_topic_name()
        sink.add(topic, partition_of(raw_key, self.settings.partitions), raw_key, value)

    def _decode(
        self, batch: Sequence[EventT]
    ) -> tuple[list[Event], dict[str, tuple[Event, float]]]:
        s = self.settings
        now_ms = int(time.time() * 1000)
        events: list[Event] = []
        causes: dict[str, tuple[Event, float]] = {}
        for record in batch:
            try:
                event = decode_event(
                    record.value,
                    max_id_length=s.max_id_length,
                    max_future_ms=s.max_future_s * 1000,
                    now_ms=now_ms,
                )
            except InvalidEvent as exc:
                self._dead_letter(record, exc)
                continue
            events.append(event)
            causes[event.user_id] = (event, record.message.timestamp)
        for event_type, count in Counter(e.event_type for e in events).items():
            self.metrics.events_consumed.labels(event_type).inc(count)
        return events, causes

    def _dead_letter(self, record: EventT, error: InvalidEvent) -> None:
        message = record.message
        self.metrics.events_invalid.labels(error.reason).inc()
        self.sink.add(
            self.settings.dead_letter_topic,
            message.partition,
            message.key,
            message.value,
            [
                ("reason", error.reason.encode()),
                ("detail", error.detail[:1000].encode()),
                (
                    "source",
                    f"{message.topic}/{message.partition}/{message.offset}".encode(),
                ),
            ],
        )

    def _load_profiles(self, events: list[Event]) -> dict[str, UserProfile]:
        profiles: dict[str, UserProfile] = {}
        for user_id in {e.user_id for e in events}:
            payload = self.users_table.get(user_id.encode())
            if payload is not None:
                profiles[user_id] = decode_profile(payload)
        return profiles

    def _take_nonfinite_users(self) -> int:
        count, self.model.nonfinite_users = self.model.nonfinite_users, 0
        return count

    def _published(
        self, rec: Recommendation, cause: tuple[Event, float]
    ) -> PublishedList:
        event, record_timestamp = cause
        return PublishedList(
            user_id=rec.user_id,
            items=rec.items,
            scores=[round(score, 6) for score in rec.scores],
            personal=rec.personal,
            model_version=self.model.items.version,
            event_id=event.event_id,
            event_timestamp=event.timestamp,
            produced_at=record_timestamp,
        )

    # --- item ownership -----------------------------------------------------

    async def _own_items(self, stream: StreamT) -> None:
        await self.owner_sink.start()
        try:
            # A longer window than the learner's: an item touched by several
            # learner batches within it is written (and replicated) once.
            async for batch in stream.take_events(1000, within=OWNER_WINDOW_S):
                try:
                    self.apply_item_updates([record.value for record in batch])
                    await self.owner_sink.flush()
                except Exception:
                    die("applying item updates failed")
        finally:
            await self.owner_sink.stop()

    def apply_item_updates(self, payloads: list[bytes]) -> None:
        """Apply ``item-updates`` messages to the items this worker owns."""
        items, refused = apply_updates(self.model, payloads, self._owned_item)
        for item_id, (vector, bias, count) in items.items():
            value = encode_item(vector, bias, count)
            self._store(self.items_table, item_id, value, self.owner_sink)
        self.metrics.item_updates.inc(len(items))
        self.metrics.nonfinite.labels("item").inc(refused)

    def _owned_item(self, item_id: str) -> ItemState:
        payload = self.items_table.get(item_id.encode())
        if payload is None:
            s = self.settings
            vector = initial_factors(item_id, s.n_factors, s.init_scale, s.seed)
            return vector, 0.0, 0.0
        return decode_item(payload, self.settings.n_factors, item_id)
