"""The fault soak: every fault of the fault tests, longer, with figures.

    .venv/bin/python -m benchmarks.soak            # about 11 minutes
    .venv/bin/python -m benchmarks.soak --events 30000 --kills 5 --outage 8

Runs on a private Kafka and Redis (``scripts/services.sh`` on free ports, a
run folder under ``.run/``), never on the shared services, because it stops
and restarts them. Four phases, each with its own app id and topics:

1. worker killed: a replay of ``--events`` synthetic events at ``--rate``
   while the worker is SIGKILLed ``--kills`` times at random moments and
   restarted; audited against the users changelog.
2. Redis away: Redis stopped for ``--outage`` seconds while events flow.
3. broker restart: the Kafka broker restarted while events flow.
4. hostile input: ``--hostile`` malformed events among valid ones.

It prints one line per phase and a JSON summary (``--json-out`` writes it);
it exits 1 if any event was lost or any invalid one was not dead-lettered.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from models.events import Event
from producers.kafka import produce_raw
from producers.synthetic import SyntheticShop
from streams.publisher import decode_list
from tests.integration.conftest import consume_all
from tests.integration.faults import (
    PrivateNamespace,
    PrivateStack,
    audit,
    hostile_messages,
    kill_and_restart,
    produce_through_faults,
    wait_until_learned,
)

Figures = dict[str, Any]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # aiokafka reports every failed reconnect while the broker is away
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    stack = PrivateStack.create("soak")
    print(f"soak: private stack on kafka {stack.bootstrap}, redis :{stack.redis_port}")
    stack.start()
    figures: dict[str, Figures] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="soak-", dir=stack.run_dir) as tmp:
            phases: list[tuple[str, Callable[[PrivateNamespace], Figures]]] = [
                ("worker_killed", lambda ns: worker_killed(ns, args)),
                ("redis_away", lambda ns: redis_away(ns, stack, args)),
                ("broker_restart", lambda ns: broker_restart(ns, stack, args)),
                ("hostile_input", lambda ns: hostile_input(ns, args)),
            ]
            for name, phase in phases:
                if args.only and name not in args.only:
                    continue
                ns = stack.namespace(Path(tmp) / name)
                started = time.monotonic()
                try:
                    figures[name] = phase(ns)
                finally:
                    ns.close()
                figures[name]["seconds"] = round(time.monotonic() - started, 1)
                print(f"{name}: {json.dumps(figures[name])}", flush=True)
    finally:
        stack.stop()
    total = totals(figures)
    print(json.dumps({"phases": figures, "total": total}, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"phases": figures, "total": total}, indent=2)
        )
    return 0 if total["lost"] == 0 and total["not_dead_lettered"] == 0 else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument(
        "--events", type=int, default=100_000, help="at least this many, killing"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=300,
        help="events/s while killing; the stream goes on until the kills are "
        "done, and past --events",
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--outage", type=float, default=20.0, help="Redis away, s")
    parser.add_argument("--hostile", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--only", nargs="*", help="run only these phases")
    parser.add_argument("--json-out")
    return parser


def shop_events(n: int, users: int, seed: int, tag: str) -> list[Event]:
    events = SyntheticShop(n_users=users, n_items=5000, seed=seed).events(n)
    return [msgspec.structs.replace(e, event_id=tag + e.event_id) for e in events]


def in_background(work: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


class SteadyStream:
    """Shop events at a steady rate until stopped, and at least ``minimum``.

    The kills need events flowing through every restart (a restart with
    nothing to do publishes no list to time), however long the kills take.
    """

    def __init__(
        self, ns: PrivateNamespace, rate: float, minimum: int, seed: int
    ) -> None:
        self.ns, self.rate, self.minimum = ns, rate, minimum
        self.source = SyntheticShop(n_users=2000, n_items=5000, seed=seed).events(None)
        self.sent: list[Event] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while len(self.sent) < self.minimum or not self.stopping.is_set():
            chunk = [
                msgspec.structs.replace(e, event_id="k" + e.event_id)
                for e in itertools.islice(self.source, 1000)
            ]
            asyncio.run(produce_through_faults(chunk, self.ns.settings, rate=self.rate))
            self.sent.extend(chunk)


def worker_killed(ns: PrivateNamespace, args: argparse.Namespace) -> Figures:
    stream = SteadyStream(ns, args.rate, args.events, args.seed)
    producer = in_background(stream.run)
    worker, kills = kill_and_restart(ns, args.kills, seed=args.seed)
    stream.stopping.set()
    producer.join()
    events = stream.sent
    produced = Counter(e.user_id for e in events)
    wait_until_learned(worker, ns, len(events), 600)
    worker.wait_for(lambda: audit(ns, produced).ok(), 60, "every shopper listed")
    result = audit(ns, produced)
    return {
        "faults": kills.kills,
        "produced": len(events),
        "learned": result.learned,
        "lost": result.lost,
        "learned_twice": result.learned_twice,
        "duplicates_counted": int(
            kills.duplicates_seen
            + worker.metrics().get("streamrec_events_duplicate_total", 0)
        ),
        "shoppers_without_list": result.shoppers_without_list,
        **kills.summary(),
    }


def redis_away(
    ns: PrivateNamespace, stack: PrivateStack, args: argparse.Namespace
) -> Figures:
    before = shop_events(5000, 1000, args.seed + 1, "b")
    during = shop_events(int(500 * args.outage), 1000, args.seed + 2, "d")
    after = shop_events(5000, 1000, args.seed + 3, "a")
    events = before + during + after
    worker = ns.worker().start()
    asyncio.run(produce_through_faults(before, ns.settings))
    wait_until_learned(worker, ns, len(before), 120)

    stack.services("stop", "redis")
    began = time.monotonic()
    asyncio.run(
        produce_through_faults(during, ns.settings, rate=len(during) / args.outage)
    )
    time.sleep(max(0.0, args.outage - (time.monotonic() - began)))
    away_s = time.monotonic() - began
    errors = worker.metrics()["streamrec_redis_errors_total"]
    stack.services("start", "redis")
    back = time.monotonic()
    asyncio.run(produce_through_faults(after, ns.settings))
    last = {e.user_id: e.event_id for e in events}
    touched = {e.user_id for e in during}

    def current() -> bool:
        for user in touched:
            payload = ns.redis.get(ns.settings.key_prefix + user)
            if payload is None or decode_list(payload).event_id != last[user]:
                return False
        return True

    worker.wait_for(current, 120, "lists of the shoppers touched during the outage")
    lists_current_s = time.monotonic() - back
    wait_until_learned(worker, ns, len(events), 300)
    result = audit(ns, Counter(e.user_id for e in events))
    return {
        "faults": 1,
        "redis_away_s": round(away_s, 1),
        "produced": len(events),
        "learned": result.learned,
        "lost": result.lost,
        "learned_twice": result.learned_twice,
        "redis_errors_counted": int(errors),
        "worker_restarts": 0 if worker.alive() else 1,
        "shoppers_touched_during_outage": len(touched),
        "all_their_lists_current_after_s": round(lists_current_s, 2),
    }


def broker_restart(
    ns: PrivateNamespace, stack: PrivateStack, args: argparse.Namespace
) -> Figures:
    events = shop_events(30_000, 2000, args.seed + 4, "r")
    worker = ns.worker().start()
    pid = worker.process.pid  # type: ignore[union-attr]
    retried: list[int] = []
    producer = in_background(
        lambda: retried.append(
            asyncio.run(produce_through_faults(events, ns.settings, rate=1500))
        )
    )
    worker.wait_for(
        lambda: worker.metrics()["streamrec_events_consumed_total:sum"] > 5000,
        60,
        "under load",
    )
    began = time.monotonic()
    stack.services("restart", "kafka")
    broker_back_s = time.monotonic() - began
    consumed = worker.metrics()["streamrec_events_consumed_total:sum"]
    back = time.monotonic()
    worker.wait_for(
        lambda: worker.metrics()["streamrec_events_consumed_total:sum"] > consumed,
        120,
        "consuming again",
    )
    resumed_s = time.monotonic() - back
    producer.join()
    wait_until_learned(worker, ns, len(events), 300)
    result = audit(ns, Counter(e.user_id for e in events))
    return {
        "faults": 1,
        "broker_down_and_up_s": round(broker_back_s, 1),
        "worker_consuming_again_after_s": round(resumed_s, 2),
        "worker_restarts": 0 if worker.process.pid == pid and worker.alive() else 1,  # type: ignore[union-attr]
        "producer_chunks_retried": retried[0] if retried else None,
        "produced": len(events),
        "learned": result.learned,
        "lost": result.lost,
        "learned_twice": result.learned_twice,
        "duplicates_counted": int(worker.metrics()["streamrec_events_duplicate_total"]),
    }


def hostile_input(ns: PrivateNamespace, args: argparse.Namespace) -> Figures:
    s = ns.settings
    now_ms = int(time.time() * 1000)
    messages = hostile_messages(
        args.hostile, args.hostile, seed=args.seed, now_ms=now_ms
    )
    bad = [m for m in messages if m.reason is not None]
    good = Counter(m.user_id for m in messages if m.reason is None)
    worker = ns.worker().start()
    asyncio.run(
        produce_raw(
            [(m.key, m.value) for m in messages],
            bootstrap=s.kafka_bootstrap,
            topic=s.events_topic,
        )
    )
    worker.wait_for(
        lambda: worker.metrics()["streamrec_batch_size_events_sum"] == len(messages),
        300,
        "done",
    )
    dead = consume_all(s.kafka_bootstrap, s.dead_letter_topic, expected=len(bad))
    got = Counter((r.value, dict(r.headers)["reason"].decode()) for r in dead)
    want = Counter((m.value, m.reason) for m in bad)
    result = audit(ns, good)
    return {
        "faults": len(bad),
        "produced": len(messages),
        "valid": sum(good.values()),
        "learned": result.learned,
        "lost": result.lost,
        "dead_lettered": len(dead),
        "not_dead_lettered": sum((want - got).values()),
        "reasons": dict(Counter(r for _, r in got.elements())),
        "worker_restarts": 0 if worker.alive() else 1,
    }


def totals(figures: dict[str, Figures]) -> Figures:
    return {
        "faults_injected": sum(f.get("faults", 0) for f in figures.values()),
        "events_produced": sum(f.get("produced", 0) for f in figures.values()),
        "learned": sum(f.get("learned", 0) for f in figures.values()),
        "dead_lettered": sum(f.get("dead_lettered", 0) for f in figures.values()),
        "lost": sum(f.get("lost", 0) for f in figures.values()),
        "not_dead_lettered": sum(
            f.get("not_dead_lettered", 0) for f in figures.values()
        ),
        "worker_restarts_unplanned": sum(
            f.get("worker_restarts", 0) for f in figures.values()
        ),
    }


if __name__ == "__main__":
    sys.exit(main())
