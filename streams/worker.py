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
import gc
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import NoReturn

import faust
from faust.types import EventT, StreamT
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from config.security import async_redis, faust_broker_credentials, kafka_client_options
from config.settings import Settings
from models.events import Event, InvalidEvent, decode_event
from models.items import decode_item, encode_item, initial_factors
from models.live_quality import LiveHitRate
from models.mf import MFConfig, OnlineMF, Recommendation
from models.profiles import UserProfile, decode_profile, encode_profile
from producers.kafka import ensure_topic
from streams import faust_patches
from streams.api import StreamrecApi
from streams.control import decode_command
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
        item_bias=settings.item_bias,
        adagrad=settings.adagrad,
        popular_negatives=settings.popular_negatives,
        negative_memory=settings.negative_memory,
        seq_weight=settings.seq_weight,
        seq_steps=settings.seq_steps,
        seq_sources=settings.seq_sources,
        seq_recency=settings.seq_recency,
        seq_backward=settings.seq_backward,
        link_cap=settings.link_cap,
        pop_weight=settings.pop_weight,
        pop_history=settings.pop_history,
        candidate_popular=settings.candidate_popular,
    )


# The live quality gauge: HR@20 over the last 10,000 test events.
LIVE_K = 20
LIVE_WINDOW = 10_000

# How long the item owner gathers update messages before applying them.
OWNER_WINDOW_S = 0.1
# Longest dead-letter value kept whole: under the broker's default 1 MiB
# message.max.bytes with room for the headers.
MAX_DEAD_LETTER_BYTES = 900_000
# How often a thread holding the GIL is asked to hand it over (Python: 5 ms).
GIL_SWITCH_INTERVAL_S = 0.0001
# Shoppers whose lists are scored between two turns of the event loop.
# Known shortcoming (#5): while learning 1,000 events/s, steps of 10-35 ms
# remain (a batch's learning, aiokafka's fetch parsing), and the API's p99
# is 40-140 ms against 2-5 ms idle (docs/BENCHMARKS.md, "API").
LIST_CHUNK = 64
# Item-update messages an owner applies between two turns of the loop.
OWNER_CHUNK = 4
# Python's collector thresholds (700, 10, 10) made a full collection of the
# worker's millions of long-lived objects every few seconds, 40-95 ms each
# with the loop held. Fewer young collections, full ones rarely: garbage
# here is freed by reference counts, cycles are few (a few thousand objects
# per full collection).
GC_THRESHOLDS = (50_000, 50, 1000)


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


def _runs(batch: Sequence[EventT], control_topic: str) -> list[tuple[int, int, bool]]:
    """Split a batch into runs of events and of commands: (start, end, is_control)."""
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for index in range(1, len(batch) + 1):
        at_end = index == len(batch)
        is_control = batch[start].message.topic == control_topic
        if at_end or (batch[index].message.topic == control_topic) != is_control:
            runs.append((start, index, is_control))
            start = index
    return runs


class StreamrecWorker:
    """The Faust app with its topics, tables, agents and model."""

    def __init__(
        self, settings: Settings, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.metrics = WorkerMetrics(registry)
        self.model = OnlineMF(mf_config(settings))
        self.live = LiveHitRate(k=min(LIVE_K, settings.top_k), window=LIVE_WINDOW)
        self.app = self._make_app()
        self._declare_streams()
        self.replica = ItemReplica(
            self.model.items,
            bootstrap=settings.kafka_bootstrap,
            topic=self.items_table.changelog_topic.get_topic_name(),
            partitions=settings.partitions,
            metrics=self.metrics,
            client_options=kafka_client_options(settings),
        )
        # one sink per agent: a flush then covers exactly that agent's batch
        self.sink = KafkaSink(settings.kafka_bootstrap, kafka_client_options(settings))
        self.owner_sink = KafkaSink(
            settings.kafka_bootstrap, kafka_client_options(settings)
        )
        self.publisher = ListPublisher(
            async_redis(settings),
            self.sink,
            topic=settings.recommendations_topic,
            partitions=settings.partitions,
            key_prefix=settings.key_prefix,
            ttl_s=settings.list_ttl_s,
            metrics=self.metrics,
        )
        self.app.task(self._run_replica)
        self.app.page("/metrics")(self._metrics_view())
        # the HTTP API, the trending table and the lag probe (streams/api.py)
        self.api = StreamrecApi(self)
        self.api.register(self.app)

    async def create_topics(self) -> None:
        """Create the worker's topics when missing, with ``partitions`` each."""
        s = self.settings
        for topic in (
            s.events_topic,
            s.item_updates_topic,
            s.recommendations_topic,
            s.dead_letter_topic,
            s.control_topic,
        ):
            await ensure_topic(
                s.kafka_bootstrap,
                topic,
                s.partitions,
                client_options=kafka_client_options(s),
            )

    # --- wiring -------------------------------------------------------------

    def _make_app(self) -> faust.App:
        s = self.settings
        faust_patches.apply(s.fetch_max_wait_ms)
        gc.set_threshold(*GC_THRESHOLDS)
        if s.web_in_thread:
            # The web thread gives up the GIL at every socket call and must
            # win it back from the learner; at the default 5 ms interval
            # that costs it up to 5 ms a time, several times per request.
            sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        return faust.App(
            s.app_id,
            broker=[f"kafka://{server}" for server in s.kafka_bootstrap.split(",")],
            broker_credentials=faust_broker_credentials(s),
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
            # Faust's 60 s default kept a SIGKILLed worker's partitions
            # unassigned for a minute: the group waits that long for it.
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=min(3.0, s.session_timeout_s / 3),
            producer_linger=0.005,
            stream_buffer_maxsize=max(4096, 2 * s.batch_max),
            web_enabled=True,
            # off by default: streams/api.py, "Threads"
            web_in_thread=s.web_in_thread,
            web_bind=s.web_bind,
            web_host="127.0.0.1",
            web_port=s.web_port,
            # Faust's own pages would expose every table's contents and its
            # internals; the worker serves only its API and /metrics.
            web_router_enabled=False,
            web_tables_enabled=False,
            web_stats_enabled=False,
            web_graph_enabled=False,
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
        # The learner takes the control topic too: a forget then runs between
        # two batches, never beside one learning the same shopper, and the
        # assignor gives partition p of both topics to the same worker.
        self.learn_topic = app.topic(
            s.events_topic,
            s.control_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=s.partitions,
        )
        app.agent(self.learn_topic, name="learn", concurrency=1)(self._learn)
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
                    await self._handle(batch)
                except Exception:
                    die("learning a batch failed")
                except asyncio.CancelledError:
                    # take_events acks a batch even when cancelled; exiting
                    # here keeps a half-done batch (lists waiting for Redis,
                    # records not flushed) from being committed at shutdown.
                    die("stopped in the middle of a batch")
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
        # what start-up made (tables, replica, Faust) lives as long as the
        # worker: no collection needs to look at it again
        gc.freeze()

    async def _handle(self, batch: Sequence[EventT]) -> None:
        """Learn the batch's events and run its commands, in arrival order."""
        control_topic = self.settings.control_topic
        done = 0
        for start, end, is_control in _runs(batch, control_topic):
            if not is_control:
                await self.process(batch[start:end])
                continue
            # Commit what came before, so that no event learned before the
            # forget can be redelivered after it and bring the shopper back.
            await self._commit_through(batch[done:start])
            await self.run_commands(batch[start:end])
            done = end

    async def _commit_through(self, records: Sequence[EventT]) -> None:
        for record in records:
            record.ack()  # take_events acks them again later: a no-op
        for _ in range(3):
            # False when it only waited for a commit already under way
            if await self.app.consumer.commit():
                return
        log.warning("could not commit before a control command")

    async def run_commands(self, records: Sequence[EventT]) -> None:
        """Apply control commands (forget) and flush their effects."""
        forget: list[str] = []
        for record in records:
            try:
                command = decode_command(
                    record.value, max_id_length=self.settings.max_id_length
                )
            except InvalidEvent as exc:
                self._dead_letter(record, exc)
                continue
            forget.append(command.user_id)
        await self.forget(list(dict.fromkeys(forget)))
        await self.sink.flush()

    async def forget(self, user_ids: list[str]) -> None:
        """Remove shoppers everywhere: table (tombstone), Redis, list topic."""
        if not user_ids:
            return
        topic = self.users_table.changelog_topic.get_topic_name()
        for user_id in user_ids:
            raw_key = user_id.encode()
            self.users_table.data.pop(raw_key, None)
            self.live.forget(user_id)  # the last list it was shown
            partition = partition_of(raw_key, self.settings.partitions)
            self.sink.add(topic, partition, raw_key, None)
        await self.publisher.forget(user_ids)
        self.metrics.shoppers_forgotten.inc(len(user_ids))
        self.metrics.users_known.set(len(self.users_table))
        # counts only: user ids are personal data and stay out of the logs
        log.info("forgot shoppers: n=%d", len(user_ids))

    async def process(self, batch: Sequence[EventT]) -> None:
        """Learn one micro-batch and publish the lists it changed."""
        self.metrics.batch_size.observe(len(batch))
        events, causes = self._decode(batch)
        if not events:
            # only dead letters: they too must reach Kafka before the batch
            # is acknowledged, or a crash after the commit would lose them
            await self.sink.flush()
            return
        await asyncio.sleep(0)  # a turn of the loop between steps (LIST_CHUNK)
        started = time.perf_counter()
        profiles = self._load_profiles(events)
        self._check_live(events, profiles)  # before learning changes them
        result = self.model.learn_batch(events, profiles)
        seconds = time.perf_counter() - started
        await asyncio.sleep(0)
        started = time.perf_counter()
        for user_id in result.users:
            value = encode_profile(profiles[user_id])
            self._store(self.users_table, user_id, value, self.sink)
        for partition, message in split_by_owner(
            result.item_update, self.settings.partitions
        ):
            self.sink.add(self.settings.item_updates_topic, partition, None, message)
        self.metrics.update_seconds.observe(seconds + time.perf_counter() - started)
        self.metrics.events_duplicate.inc(result.duplicates)
        self.metrics.nonfinite.labels("user").inc(self._take_nonfinite_users())
        self.metrics.users_known.set(len(self.users_table))

        lists = await self._lists(result.users, profiles)

        started = time.perf_counter()
        await self.publisher.publish(
            [self._published(rec, causes[rec.user_id]) for rec in lists]
        )
        await self.sink.flush()
        self.metrics.publish_seconds.observe(time.perf_counter() - started)
        for rec in lists:
            self.live.shown(rec.user_id, rec.items)

    async def _lists(
        self, user_ids: list[str], profiles: dict[str, UserProfile]
    ) -> list[Recommendation]:
        """Top-K lists of a batch's shoppers, :data:`LIST_CHUNK` at a time.

        Between chunks the loop may serve an API request or an owner step:
        one batch's lists in one go held it for tens of milliseconds.
        """
        lists: list[Recommendation] = []
        seconds = 0.0
        for start in range(0, len(user_ids), LIST_CHUNK):
            await asyncio.sleep(0)
            started = time.perf_counter()
            chunk = user_ids[start : start + LIST_CHUNK]
            lists += self.model.recommend(
                [profiles[u] for u in chunk], chunk, self.settings.top_k
            )
            seconds += time.perf_counter() - started
        self.metrics.topk_seconds.observe(seconds)
        return lists

    def _check_live(
        self, events: list[Event], profiles: dict[str, UserProfile]
    ) -> None:
        checked = self.live.check(events, profiles)
        self.metrics.live_tests.inc(checked.tests)
        self.metrics.live_hits.inc(checked.hits)
        self.metrics.live_untested.inc(checked.untested)
        if self.live.value is not None:
            self.metrics.live_hit_rate.set(self.live.value)

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
        value = message.value
        headers = [
            ("reason", error.reason.encode()),
            ("detail", error.detail[:1000].encode()),
            (
                "source",
                f"{message.topic}/{message.partition}/{message.offset}".encode(),
            ),
        ]
        if value is not None and len(value) > MAX_DEAD_LETTER_BYTES:
            # A message near the broker's size limit would exceed it with our
            # headers, and a refused write makes the worker exit: keep a
            # prefix and say how long the original was.
            headers.append(("truncated_from", str(len(value)).encode()))
            value = value[:MAX_DEAD_LETTER_BYTES]
        self.sink.add(
            self.settings.dead_letter_topic,
            message.partition,
            message.key,
            value,
            headers,
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
                    await self.apply_item_updates([record.value for record in batch])
                    await self.owner_sink.flush()
                except Exception:
                    die("applying item updates failed")
                except asyncio.CancelledError:
                    # as in _learn: a cancelled batch would be acked with
                    # its applied chunks never flushed
                    die("stopped in the middle of an owner batch")
        finally:
            await self.owner_sink.stop()

    async def apply_item_updates(self, payloads: list[bytes]) -> None:
        """Apply ``item-updates`` messages to the items this worker owns,
        :data:`OWNER_CHUNK` at a time with a turn of the loop between (see
        LIST_CHUNK); each item changed is written once for the whole batch."""
        changed: dict[str, ItemState] = {}

        def load(item_id: str) -> ItemState:
            state = changed.get(item_id)  # an earlier chunk's result
            return self._owned_item(item_id) if state is None else state

        refused = 0
        for start in range(0, len(payloads), OWNER_CHUNK):
            await asyncio.sleep(0)
            items, chunk_refused = apply_updates(
                self.model, payloads[start : start + OWNER_CHUNK], load
            )
            changed.update(items)
            refused += chunk_refused
        for item_id, state in changed.items():
            value = encode_item(state)
            self._store(self.items_table, item_id, value, self.owner_sink)
        self.metrics.item_updates.inc(len(changed))
        self.metrics.nonfinite.labels("item").inc(refused)

    def _owned_item(self, item_id: str) -> ItemState:
        payload = self.items_table.get(item_id.encode())
        if payload is None:
            s = self.settings
            vector = initial_factors(item_id, s.n_factors, s.init_scale, s.seed)
            return ItemState(vector)
        return decode_item(payload, self.settings.n_factors, item_id)
