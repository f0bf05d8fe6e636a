"""Two corrections to faust-streaming 0.15, applied before the app starts.

Both are class-level and idempotent; :func:`apply` installs them.

Fetch wait
    faust-streaming hard-codes ``fetch_max_wait_ms=1500`` for the consumer it
    runs in its own thread. When one fetch covers only partitions with no new
    data (``item-updates`` between two batches, say), events that arrive
    meanwhile wait for the next fetch, and lists trailed their events by up to
    1.5 s at 2,000 events/s (docs/BENCHMARKS.md).

Events lost at the end of recovery (faust-streaming issue #596)
    Faust reads the changelogs with its flow control open, then resumes the
    stream partitions, seeks them to their committed offsets and finally
    calls ``flow_control.resume()``, which empties every stream queue. Events
    fetched between the first and the last step are in a queue when it is
    emptied, and the fetch position is already past them: after a restart
    with a backlog, about one fetch per partition (8-9 events each in the
    recovery test) was never learned. Closing the flow control when the
    stream partitions are resumed makes those fetches wait in the conductor
    until the queues have been emptied; the one event held there is then
    delivered again after the seek, which the shopper's event-id dedup
    absorbs.
"""

from __future__ import annotations

from collections.abc import Iterable

from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_driver
from faust.types import TP

_MARK = "_streamrec_original"


def apply(fetch_max_wait_ms: int) -> None:
    """Install both corrections (again with a new wait: the last one wins)."""
    _limit_fetch_wait(fetch_max_wait_ms)
    _hold_streams_until_queues_cleared()


def _original(cls: type, name: str):  # type: ignore[no-untyped-def]
    """The method as faust defines it, even after we replaced it."""
    saved = getattr(cls, _MARK + name, None)
    if saved is None:
        saved = getattr(cls, name)
        setattr(cls, _MARK + name, saved)
    return saved


def _limit_fetch_wait(wait_ms: int) -> None:
    thread_class = faust_driver.AIOKafkaConsumerThread
    original = _original(thread_class, "_create_worker_consumer")

    def create(self, transport):  # type: ignore[no-untyped-def]
        consumer = original(self, transport)
        # the attribute aiokafka reads when the consumer starts
        consumer._fetch_max_wait_ms = wait_ms
        return consumer

    thread_class._create_worker_consumer = create  # type: ignore[method-assign]


def _hold_streams_until_queues_cleared() -> None:
    consumer_class = faust_consumer.Consumer
    original = _original(consumer_class, "resume_partitions")

    def resume_partitions(self, tps: Iterable[TP]) -> None:  # type: ignore[no-untyped-def]
        tps = set(tps)
        if any(not self._is_changelog_tp(tp) for tp in tps):
            # Recovery calls this for the stream partitions just before it
            # seeks them and resumes (and so empties) the queues.
            self.app.flow_control.suspend()
        original(self, tps)

    consumer_class.resume_partitions = resume_partitions  # type: ignore[method-assign]
