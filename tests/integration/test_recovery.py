"""State survives a SIGKILL, and several workers share the work."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from producers.kafka import produce_events
from producers.synthetic import SyntheticShop
from tests.integration.conftest import Namespace
from tests.integration.test_pipeline import latest_profiles


def test_a_killed_worker_restarts_with_its_state(namespace: Namespace) -> None:
    shop = SyntheticShop(n_users=400, n_items=3000, seed=5)
    events = list(shop.events(6000))
    per_user = Counter(e.user_id for e in events)
    s = namespace.settings
    worker = namespace.worker().start()

    async def stream() -> None:
        # a steady stream, so that the kill lands mid-stream
        await produce_events(
            events,
            bootstrap=s.kafka_bootstrap,
            topic=s.events_topic,
            rate=1500,
            progress=False,
        )

    async def kill_midway() -> None:
        producing = asyncio.create_task(stream())
        while not producing.done():
            consumed = await asyncio.to_thread(
                lambda: worker.metrics().get("streamrec_batch_size_events_sum", 0)
            )
            if consumed > len(events) / 3:
                break
            await asyncio.sleep(0.1)
        worker.kill()
        await producing

    asyncio.run(kill_midway())
    before_restart = Counter()
    for user, profile in latest_profiles(namespace).items():
        before_restart[user] = profile.n_events
    assert 0 < sum(before_restart.values()) < len(events)

    restarted = namespace.worker("w1-again").start()
    restarted.wait_for(
        lambda: (
            sum(p.n_events for p in latest_profiles(namespace).values()) >= len(events)
        ),
        120,
        "caught up",
    )
    time.sleep(1)

    # no shopper lost and every event learned exactly once: the profiles
    # recovered from the changelog dedup the batches redelivered after the kill
    profiles = latest_profiles(namespace)
    assert {u: p.n_events for u, p in profiles.items()} == dict(per_user)
    for user, count in before_restart.items():
        assert profiles[user].n_events >= count
    keys = {k.decode().removeprefix(s.key_prefix) for k in namespace.list_keys()}
    assert keys == set(per_user)
    metrics = restarted.metrics()
    redelivered = metrics["streamrec_batch_size_events_sum"] - (
        len(events) - sum(before_restart.values())
    )
    assert metrics["streamrec_events_duplicate_total"] == redelivered
    assert metrics["streamrec_users_known"] == len(per_user)


def test_two_workers_share_the_partitions_and_both_serve_lists(
    namespace: Namespace,
) -> None:
    shop = SyntheticShop(n_users=800, n_items=3000, seed=9)
    events = list(shop.events(5000))
    users = {e.user_id for e in events}
    s = namespace.settings
    assert s.partitions == 8
    first = namespace.worker("w1").start()
    second = namespace.worker("w2").start()
    # both have joined when each holds some of the 8 partitions of events
    for worker in (first, second):
        worker.wait_for(
            lambda w=worker: (
                "events-" in w.log() and "Setting newly assigned" in w.log()
            ),
            60,
            "assigned",
        )
    time.sleep(3)

    asyncio.run(
        produce_events(
            events, bootstrap=s.kafka_bootstrap, topic=s.events_topic, progress=False
        )
    )
    first.wait_for(
        lambda: (
            sum(w.metrics()["streamrec_batch_size_events_sum"] for w in (first, second))
            >= len(events)
        ),
        90,
        "done",
    )

    consumed = [
        w.metrics()["streamrec_events_consumed_total:sum"] for w in (first, second)
    ]
    published = [
        w.metrics()["streamrec_lists_published_total:sum"] for w in (first, second)
    ]
    assert all(c > 0 for c in consumed), consumed
    assert all(p > 0 for p in published), published
    duplicates = sum(
        w.metrics()["streamrec_events_duplicate_total"] for w in (first, second)
    )
    assert sum(consumed) - duplicates == len(events)
    first.wait_for(lambda: len(namespace.list_keys()) == len(users), 30, "all listed")
    # every item, whichever worker owns it, reaches both workers' replicas
    items = len({e.item_id for e in events})
    for worker in (first, second):
        worker.wait_for(
            lambda w=worker: w.metrics()["streamrec_items_known"] == items,
            30,
            lambda w=worker: (
                f"all {items} items known ({w.metrics()['streamrec_items_known']})"
            ),
        )
