"""``streamrec forget``: a shopper gone everywhere within 5 s, and for good."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter

from producers.synthetic import SyntheticShop
from tests.integration.conftest import ROOT, Namespace, consume_all
from tests.integration.faults import changelog_state, produce_through_faults


def test_a_forgotten_shopper_is_gone_everywhere_and_stays_gone(
    namespace: Namespace,
) -> None:
    s = namespace.settings
    events = list(SyntheticShop(n_users=60, n_items=500, seed=8).events(2000))
    per_user = Counter(e.user_id for e in events)
    forgotten = sorted(per_user)[:5]
    kept = set(per_user) - set(forgotten)
    worker = namespace.worker().start()
    asyncio.run(produce_through_faults(events, s))
    worker.wait_for(lambda: len(namespace.list_keys()) == len(per_user), 60, "listed")

    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "forget", *forgotten, "--wait", "5"],
        env=namespace.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    def gone() -> bool:
        state = changelog_state(namespace, timeout=2)
        return all(state.get(user, b"") is None for user in forgotten)

    worker.wait_for(gone, 5, "tombstones in the users changelog")
    assert time.monotonic() - started < 5 + 3  # the CLI's own start is ~2 s
    assert worker.metrics()["streamrec_shoppers_forgotten_total"] == len(forgotten)
    assert worker.metrics()["streamrec_users_known"] == len(kept)
    assert_gone(namespace, forgotten, kept)

    # SIGKILL right away: the forget's offsets may not be committed yet
    worker.kill()
    again = namespace.worker("w2").start()
    # more events of the others, so the restarted worker surely owns and has
    # restored every partition before the check
    more = [e for e in SyntheticShop(60, 500, seed=9).events(600) if e.user_id in kept]
    asyncio.run(produce_through_faults(more, s))
    again.wait_for(
        lambda: again.metrics()["streamrec_events_consumed_total:sum"] >= len(more),
        60,
        "the new events learned",
    )
    assert again.metrics()["streamrec_users_known"] == len(kept)
    assert_gone(namespace, forgotten, kept)
    profiles = changelog_state(namespace)
    assert all(profiles[user] is None for user in forgotten)
    assert all(profiles[user] is not None for user in kept)


def assert_gone(ns: Namespace, forgotten: list[str], kept: set[str]) -> None:
    s = ns.settings
    listed = {k.decode().removeprefix(s.key_prefix) for k in ns.list_keys()}
    assert listed == kept
    latest: dict[str, bytes | None] = {}
    for record in consume_all(s.kafka_bootstrap, s.recommendations_topic):
        latest[record.key.decode()] = record.value
    assert all(latest[user] is None for user in forgotten)
    assert all(latest[user] is not None for user in kept)
