"""The worker's HTTP API and operator commands, on the real broker and Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from models.events import Event
from producers.kafka import produce_events, produce_raw
from producers.synthetic import SyntheticShop
from tests.integration.conftest import ROOT, Namespace, WorkerProcess

# Short buckets, a short half-life and frequent publication, so that a test
# sees the trending list move within seconds.
FAST_TRENDING = {
    "STREAMREC_TRENDING_BUCKET_S": "2",
    "STREAMREC_TRENDING_WINDOW_S": "120",
    "STREAMREC_TRENDING_HALF_LIFE_S": "10",
    "STREAMREC_TRENDING_INTERVAL_S": "0.5",
}


def start_worker(ns: Namespace, name: str = "w1") -> WorkerProcess:
    worker = ns.worker(name)
    worker.env.update(FAST_TRENDING)
    return worker.start()


def get(worker: WorkerProcess, path: str, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{worker.port}{path}", method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("application/json")
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        assert error.headers["Content-Type"].startswith("application/json")
        return error.code, json.load(error)


def produce(ns: Namespace, events: list[Event]) -> None:
    s = ns.settings
    asyncio.run(
        produce_events(
            events, bootstrap=s.kafka_bootstrap, topic=s.events_topic, progress=False
        )
    )


def shop(n: int, seed: int = 3) -> list[Event]:
    return list(SyntheticShop(n_users=300, n_items=1500, seed=seed).events(n))


def learned(worker: WorkerProcess, n: int) -> bool:
    return worker.metrics().get("streamrec_events_consumed_total:sum", 0) >= n


def burst(item_id: str, n: int, start: int = 0) -> list[Event]:
    """``n`` events on one item from many shoppers, stamped now."""
    now = int(time.time() * 1000)
    return [
        Event(
            event_id=f"burst-{item_id}-{start + i}",
            user_id=f"fan{(start + i) % 150}",
            item_id=item_id,
            event_type="view" if i % 4 else "add_to_cart",
            timestamp=now,
        )
        for i in range(n)
    ]


def cli(ns: Namespace, *args: str, extra_env: dict[str, str] | None = None) -> str:
    env = dict(ns.env, **(extra_env or {}))
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_lists_similar_items_health_and_errors(namespace: Namespace) -> None:
    events = shop(3000)
    worker = start_worker(namespace)
    produce(namespace, events)
    worker.wait_for(lambda: learned(worker, len(events)), 60, "all learned")
    known = events[-1].user_id

    status, body = get(worker, f"/recommendations/{known}?k=5")
    assert status == 200
    assert body["user_id"] == known and body["source"] in ("personal", "popular")
    assert len(body["items"]) == len(body["scores"]) == 5
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert body["refreshed_at"] > time.time() - 120
    assert isinstance(body["model_version"], int)

    status, body = get(worker, "/recommendations/never-seen-shopper")
    assert status == 200 and body["source"] == "trending"
    assert body["model_version"] is None

    item = events[0].item_id
    status, body = get(worker, f"/items/{item}/similar?k=7&metric=dot")
    assert status == 200 and body["metric"] == "dot"
    assert len(body["items"]) == 7 and item not in body["items"]
    assert body["scores"] == sorted(body["scores"], reverse=True)

    status, body = get(worker, "/healthz")
    assert status == 200 and body["status"] == "ok"
    assert body["kafka"]["ok"] and body["redis"]["ok"] and body["replica_caught_up"]
    assert set(body["consumer_lag"]) == {"events", "item_updates"}
    assert all(lag >= 0 for lag in body["consumer_lag"].values())
    worker.wait_for(
        lambda: get(worker, "/healthz")[1]["consumer_lag"]["events"] == 0,
        30,
        "caught up (lag 0)",
    )

    refused = {
        "/trending?k=0": (400, "k"),
        "/trending?k=1001": (400, "k"),
        "/trending?k=ten": (400, "k"),
        f"/recommendations/{known}?k=-1": (400, "k"),
        f"/recommendations/{'u' * 129}": (400, "user_id"),
        f"/recommendations/{known}?top=3": (400, "top"),
        f"/items/{item}/similar?metric=l2": (400, "metric"),
        f"/items/{'i' * 129}/similar": (400, "item_id"),
        "/items/no-such-item/similar": (404, "item_id"),
        "/healthz?verbose=1": (400, "verbose"),
    }
    for path, (code, parameter) in refused.items():
        status, body = get(worker, path)
        assert status == code, path
        assert body["error"]["parameter"] == parameter, path
        assert body["error"]["message"], path
    assert get(worker, "/no/such/route")[0] == 404
    status, body = get(worker, "/trending", method="POST")
    assert status == 405 and "GET" in body["error"]["message"]

    metrics = worker.metrics()
    assert metrics['streamrec_http_requests_total{code="400",route="trending"}'] == 3
    assert metrics["streamrec_consumer_lag_messages:sum"] >= 0

    out = cli(
        namespace,
        "similar",
        item,
        "-k",
        "3",
        "--url",
        f"http://127.0.0.1:{worker.port}",
    )
    assert out.startswith(f"{item}: 3 nearest by cosine") and len(out.splitlines()) == 4


def test_trending_surfaces_a_new_item_with_a_fast_start(namespace: Namespace) -> None:
    events = shop(3000)
    worker = start_worker(namespace)
    produce(namespace, events)
    worker.wait_for(lambda: learned(worker, len(events)), 60, "all learned")

    def trending() -> list[str]:
        return get(worker, "/trending?k=10")[1]["items"]

    worker.wait_for(lambda: len(trending()) == 10, 30, "trending published")
    leaders = trending()
    assert "brand-new" not in leaders

    # a new item, never seen before, gets a burst: it must lead within seconds
    produce(namespace, burst("brand-new", 600))
    started = time.monotonic()
    worker.wait_for(lambda: trending()[:1] == ["brand-new"], 30, "new item first")
    assert time.monotonic() - started < 30

    status, body = get(worker, "/recommendations/someone-new?k=3")
    assert status == 200 and body["source"] == "trending"
    assert body["items"][0] == "brand-new"
    out = cli(namespace, "trending", "-k", "3")
    assert out.splitlines()[1].split()[1] == "brand-new"


def test_trending_counts_survive_a_restart(namespace: Namespace) -> None:
    worker = start_worker(namespace)
    produce(namespace, shop(1000) + burst("steady-hit", 400))
    worker.wait_for(lambda: learned(worker, 1400), 60, "all learned")
    worker.wait_for(
        lambda: get(worker, "/trending?k=1")[1]["items"] == ["steady-hit"],
        30,
        "the hit trending",
    )
    worker.stop()
    namespace.redis.delete(namespace.settings.trending_key)

    # the windowed table comes back from its changelog, not from Redis
    again = start_worker(namespace, "w2")
    again.wait_for(
        lambda: get(again, "/trending?k=1")[1]["items"] == ["steady-hit"],
        60,
        "the hit trending after the restart",
    )
    namespace.redis.delete(
        namespace.settings.trending_key, namespace.settings.trending_key + ":parts"
    )


def test_similar_items_follow_the_factors(namespace: Namespace) -> None:
    worker = start_worker(namespace)
    # 500 items at most, so that k=1000 below always ranks the whole catalogue
    produce(namespace, list(SyntheticShop(n_users=300, n_items=500).events(2000)))
    worker.wait_for(lambda: learned(worker, 2000), 60, "shop learned")
    anchor = "anchor"
    # the anchor and its partner first appear, each with its own audience
    produce(
        namespace,
        [
            Event(
                event_id=f"solo-{i}",
                user_id=f"solo{i % 40}",
                item_id=anchor if i % 2 else "partner",
                event_type="view",
                timestamp=int(time.time() * 1000),
            )
            for i in range(200)
        ],
    )
    worker.wait_for(lambda: learned(worker, 2200), 60, "anchor learned")
    worker.wait_for(
        lambda: get(worker, f"/items/{anchor}/similar")[0] == 200, 30, "anchor known"
    )
    before = get(worker, f"/items/{anchor}/similar?k=1000")[1]

    # then the same shoppers keep taking both together: their factors converge
    now = int(time.time() * 1000)
    together = [
        Event(
            event_id=f"pair-{i}-{item}",
            user_id=f"pair{i % 60}",
            item_id=item,
            event_type="view",
            timestamp=now,
        )
        for i in range(3000)
        for item in (anchor, "partner")
    ]
    produce(namespace, together)
    worker.wait_for(lambda: learned(worker, 2200 + len(together)), 90, "pairs learned")

    def partner(answer: dict[str, Any]) -> tuple[int, float]:
        """The partner's rank and cosine in the anchor's similar items."""
        rank = answer["items"].index("partner")
        return rank, answer["scores"][rank]

    base_rank, base_score = partner(before)
    latest: list[tuple[int, float]] = []

    def converged() -> bool:
        latest[:] = [partner(get(worker, f"/items/{anchor}/similar?k=1000")[1])]
        rank, score = latest[0]
        return score > base_score + 0.1 and (rank < 20 or rank <= base_rank // 3)

    worker.wait_for(
        converged,
        30,
        lambda: (
            f"the partner close to the anchor: (rank, cosine) went from "
            f"{(base_rank, base_score)} to {latest}"
        ),
    )
    after = get(worker, f"/items/{anchor}/similar?k=1000")[1]
    assert after["model_version"] > before["model_version"]
    assert after["items"] != before["items"]


def test_dead_letters_are_counted_by_reason(namespace: Namespace) -> None:
    worker = start_worker(namespace)
    s = namespace.settings
    bad = [(b"u1", b"not json at all")] * 3 + [(b"u2", b'{"user_id": "u2"}')] * 2
    asyncio.run(produce_raw(bad, bootstrap=s.kafka_bootstrap, topic=s.events_topic))
    worker.wait_for(
        lambda: worker.metrics().get("streamrec_events_invalid_total:sum") == 5,
        60,
        "dead letters",
    )
    out = cli(namespace, "dead-letters", "--samples", "1")
    lines = out.splitlines()
    assert lines[0] == f"{s.dead_letter_topic}: 5 dead letters"
    assert "  not_json: 3" in lines and "  schema: 2" in lines
    assert sum("not json at all" in line for line in lines) == 1  # one sample


def test_two_workers_publish_parts_that_merge_into_one_list(
    namespace: Namespace,
) -> None:
    from models.trending import merge_parts, top_trending
    from streams.trending import _part_decoder

    first = start_worker(namespace, "w1")
    second = start_worker(namespace, "w2")
    events = shop(3000, seed=5)
    produce(namespace, events)

    def learned_by_both() -> bool:
        consumed = "streamrec_events_consumed_total:sum"
        return sum(w.metrics().get(consumed, 0) for w in (first, second)) >= len(events)

    first.wait_for(learned_by_both, 90, "all learned by the two workers")
    parts_key = namespace.settings.trending_key + ":parts"

    def parts() -> list[list[tuple[str, float]]]:
        raw = namespace.redis.hgetall(parts_key).values()
        return [_part_decoder.decode(payload).items for payload in raw]

    first.wait_for(lambda: sum(bool(p) for p in parts()) == 2, 30, "two parts")
    merged = [item for item, _ in top_trending(merge_parts(parts()), 10)]
    for worker in (first, second):
        # each worker answers with the one list both published into
        worker.wait_for(
            lambda w=worker: get(w, "/trending?k=10")[1]["items"][:3] == merged[:3],
            30,
            "the merged list",
        )
    namespace.redis.delete(namespace.settings.trending_key, parts_key)
