"""The corrections streams.faust_patches makes to faust-streaming."""

from __future__ import annotations

from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from streams import faust_patches

CHANGELOG = "app-users-changelog"


class FakeApp:
    def __init__(self) -> None:
        self.flow_control = FlowControlEvent()


class FakeConsumer:
    """Just what Consumer.resume_partitions touches."""

    def __init__(self) -> None:
        self.app = FakeApp()
        self._active: set[TP] = set()
        self._paused_partitions: set[TP] = set()

    def _get_active_partitions(self) -> set[TP]:
        return self._active

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic == CHANGELOG


def test_resuming_stream_partitions_holds_deliveries_until_the_queues_are_cleared():
    faust_patches.apply(20)
    consumer = FakeConsumer()
    consumer.app.flow_control.resume()
    stream = {TP("events", 0), TP("events", 1)}

    Consumer.resume_partitions(consumer, stream)  # type: ignore[arg-type]

    assert consumer._active == stream
    # closed: the conductor waits in acquire() until recovery resumes (and so
    # empties) the queues, instead of filling queues about to be emptied
    assert not consumer.app.flow_control.is_active()


def test_resuming_changelog_partitions_leaves_the_flow_open():
    faust_patches.apply(20)
    consumer = FakeConsumer()
    consumer.app.flow_control.resume()

    Consumer.resume_partitions(consumer, {TP(CHANGELOG, 0)})  # type: ignore[arg-type]

    assert consumer._active == {TP(CHANGELOG, 0)}
    assert consumer.app.flow_control.is_active()


def test_applying_twice_wraps_faust_once_and_the_last_wait_wins():
    faust_patches.apply(20)
    first = Consumer.resume_partitions
    faust_patches.apply(35)
    assert Consumer.resume_partitions.__code__ is first.__code__

    class Transport:
        pass

    created = []

    def fake_original(self, transport):  # type: ignore[no-untyped-def]
        created.append(transport)
        return type("Client", (), {"_fetch_max_wait_ms": 1500})()

    saved = AIOKafkaConsumerThread._streamrec_original_create_worker_consumer
    try:
        AIOKafkaConsumerThread._streamrec_original_create_worker_consumer = (
            fake_original
        )
        faust_patches.apply(35)
        client = AIOKafkaConsumerThread._create_worker_consumer(None, Transport())
    finally:
        AIOKafkaConsumerThread._streamrec_original_create_worker_consumer = saved
        faust_patches.apply(20)
    assert client._fetch_max_wait_ms == 35
    assert len(created) == 1
