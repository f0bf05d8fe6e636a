"""Faults injected for real: a SIGKILLed worker, Redis away, the broker
restarted, hostile input. Sized for CI; ``python -m benchmarks.soak`` runs
the long version and prints the figures.

The Redis and broker tests stop services, so they run on the private stack
(``private_stack`` in conftest.py), never on the shared one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import msgspec

from models.events import REASONS
from producers.kafka import produce_raw
from producers.synthetic import SyntheticShop
from streams.publisher import decode_list
from tests.integration.conftest import Namespace, consume_all
from tests.integration.faults import (
    PrivateNamespace,
    PrivateStack,
    audit,
    hostile_messages,
    kill_and_restart,
    produce_through_faults,
    wait_until_learned,
)


def shop(n: int, users: int, seed: int) -> list:
    return list(SyntheticShop(n_users=users, n_items=2000, seed=seed).events(n))


def in_background(target, *args) -> threading.Thread:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:  # re-raised by joined()
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def joined(thread: threading.Thread, timeout: float) -> None:
    thread.join(timeout)
    assert not thread.is_alive(), "the producer did not finish"
    if thread.errors:  # type: ignore[attr-defined]
        raise thread.errors[0]  # type: ignore[attr-defined]


def test_a_worker_killed_again_and_again_loses_nothing(namespace: Namespace) -> None:
    events = shop(24_000, users=1500, seed=11)
    produced = Counter(e.user_id for e in events)
    producer = in_background(
        lambda: asyncio.run(
            produce_through_faults(events, namespace.settings, rate=450)
        )
    )

    # about 53 s of stream for 3 kills of about 14 s each
    worker, report = kill_and_restart(
        namespace, kills=3, seed=4, keep_going=producer.is_alive
    )
    joined(producer, 120)
    wait_until_learned(worker, namespace, len(events), 180)

    result = audit(namespace, produced)
    print(f"\nkills: {report.summary()} audit: {result}")
    assert report.kills == 3
    assert result.lost == 0 and result.learned_twice == 0
    assert result.learned == len(events)
    worker.wait_for(lambda: audit(namespace, produced).ok(), 30, "every shopper listed")
    assert max(report.recovery_s) < 60


def test_redis_away_holds_batches_and_every_touched_shopper_gets_a_list(
    private_stack: PrivateStack, private_namespace: PrivateNamespace
) -> None:
    ns, outage_s = private_namespace, 8.0
    before, during, after = (
        tagged(shop(n, 400, seed), tag)
        for n, seed, tag in ((2000, 1, "b"), (4000, 2, "d"), (1000, 3, "a"))
    )
    worker = ns.worker().start()
    asyncio.run(produce_through_faults(before, ns.settings))
    wait_until_learned(worker, ns, len(before), 60)

    private_stack.services("stop", "redis")
    began = time.monotonic()
    asyncio.run(
        produce_through_faults(during, ns.settings, rate=len(during) / outage_s)
    )
    worker.wait_for(
        lambda: worker.metrics()["streamrec_redis_waiting"] == 1, 10, "waiting"
    )
    time.sleep(max(0.0, outage_s - (time.monotonic() - began)))
    assert worker.alive()
    errors_during = worker.metrics()["streamrec_redis_errors_total"]
    private_stack.services("start", "redis")  # back, empty: Redis has no disk here

    asyncio.run(produce_through_faults(after, ns.settings))
    events = before + during + after
    wait_until_learned(worker, ns, len(events), 120)
    assert errors_during >= 3  # retried with back-off, every failure counted
    assert worker.metrics()["streamrec_redis_waiting"] == 0
    last = {e.user_id: e.event_id for e in events}
    touched = {e.user_id for e in during + after}

    def all_current() -> bool:
        for user in touched:
            payload = ns.redis.get(ns.settings.key_prefix + user)
            if payload is None or decode_list(payload).event_id != last[user]:
                return False
        return True

    worker.wait_for(all_current, 30, "every shopper touched since the outage listed")
    result = audit(ns, Counter(e.user_id for e in events))
    assert result.lost == 0 and result.learned_twice == 0
    assert worker.alive()


def tagged(events: list, tag: str) -> list:
    """Events with ids of their own: each shop's ids start again from zero."""
    return [msgspec.structs.replace(e, event_id=tag + e.event_id) for e in events]


def test_a_broker_restart_under_load_loses_nothing(
    private_stack: PrivateStack, private_namespace: PrivateNamespace
) -> None:
    ns = private_namespace
    events = shop(20_000, users=1000, seed=21)
    worker = ns.worker().start()
    producer = in_background(
        lambda: asyncio.run(produce_through_faults(events, ns.settings, rate=1000))
    )
    worker.wait_for(
        lambda: worker.metrics()["streamrec_events_consumed_total:sum"] > 3000,
        60,
        "under load",
    )
    pid = worker.process.pid  # type: ignore[union-attr]
    private_stack.services("restart", "kafka")
    joined(producer, 180)
    wait_until_learned(worker, ns, len(events), 180)

    assert worker.alive() and worker.process.pid == pid  # type: ignore[union-attr]
    result = audit(ns, Counter(e.user_id for e in events))
    print(f"\nbroker restart audit: {result}")
    assert result.lost == 0 and result.learned_twice == 0
    worker.wait_for(
        lambda: audit(ns, Counter(e.user_id for e in events)).ok(), 30, "all listed"
    )


def test_hostile_input_is_dead_lettered_and_valid_events_learned(
    namespace: Namespace,
) -> None:
    s = namespace.settings
    now_ms = int(time.time() * 1000)
    messages = hostile_messages(10_000, 4000, seed=17, now_ms=now_ms)
    bad = [m for m in messages if m.reason is not None]
    good = [m for m in messages if m.reason is None]
    worker = namespace.worker().start()

    asyncio.run(
        produce_raw(
            [(m.key, m.value) for m in messages],
            bootstrap=s.kafka_bootstrap,
            topic=s.events_topic,
        )
    )
    worker.wait_for(
        lambda: (
            worker.metrics().get("streamrec_batch_size_events_sum") == len(messages)
        ),
        120,
        "done",
    )

    assert worker.alive()
    dead = consume_all(s.kafka_bootstrap, s.dead_letter_topic, expected=len(bad))
    assert len(dead) == len(bad)
    got = Counter((r.value, dict(r.headers)["reason"].decode()) for r in dead)
    assert got == Counter((m.value, m.reason) for m in bad)
    for record in dead:
        headers = dict(record.headers)
        assert headers["reason"].decode() in REASONS
        assert headers["detail"] and headers["source"].startswith(
            s.events_topic.encode()
        )
    metrics = worker.metrics()
    assert metrics["streamrec_events_invalid_total:sum"] == len(bad)
    assert metrics["streamrec_events_consumed_total:sum"] == len(good)
    result = audit(namespace, Counter(m.user_id for m in good))
    assert result.lost == 0 and result.learned_twice == 0
    worker.wait_for(
        lambda: audit(namespace, Counter(m.user_id for m in good)).ok(),
        30,
        "every valid shopper listed",
    )
