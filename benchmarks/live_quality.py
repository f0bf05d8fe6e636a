"""Quality on the running pipeline, beside the same figure in-process.

``python -m benchmarks.live_quality`` produces a dataset onto Kafka at a steady
rate (each event stamped with the time it is sent), while one ``streamrec
worker`` learns from it and publishes lists. Afterwards it reads back the
``events`` and ``recommendations`` topics and scores every test event of
``../shared/EVALUATION.md`` against the last list that was published for its
shopper before the event reached Kafka: the list the shop could have shown at
that moment. The items the shopper met before the event are cut from that
list, then its first 20 places count, as the protocol says. A shopper with no
list yet scores a miss.

Beside it, the in-process prequential figure of the same model at the micro-
batch size the worker ran at. The difference is what staleness costs: a list
published a few tens of milliseconds after the event before.

Needs the services (``scripts/services.sh start``); every run has its own
topics, app id and Redis prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from benchmarks.common import (
    BenchmarkError,
    ListReader,
    WorkerProcess,
    check_services,
    count_redis_keys,
    delete_topics,
    dumps,
    free_port,
    machine_notes,
    scrape,
    unique_run_id,
)
from config.settings import Settings, load_settings
from models.evaluation import CUTOFFS, LIST_LENGTH, metrics_at
from models.events import Event

DEFAULT_DATASET = "../shared/data/taobao-userbehavior/user_behavior_head.csv.gz"
# Lists are asked longer than the 20 places scored, so that cutting the items a
# shopper met after the list was written still leaves 20 to score.
LIST_K = 40


def note(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class ShownLists:
    """Every list published for each shopper, in the order written."""

    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    items: dict[str, list[list[str]]] = field(default_factory=lambda: defaultdict(list))
    count: int = 0

    def add(self, user_id: str, published_at: float, items: list[str]) -> None:
        times = self.times[user_id]
        at = bisect.bisect_right(times, published_at)
        times.insert(at, published_at)
        self.items[user_id].insert(at, items)
        self.count += 1

    def last_before(self, user_id: str, moment: float) -> list[str] | None:
        times = self.times.get(user_id)
        if not times:
            return None
        at = bisect.bisect_left(times, moment) - 1
        return self.items[user_id][at] if at >= 0 else None


def live_ranks(
    events: Sequence[Event], sent_at: dict[str, float], shown: ShownLists
) -> tuple[np.ndarray, int]:
    """Per test, the rank of its item in the list shown just before it.

    Returns the ranks (0: not in the first 20 places, or no list) and how many
    tests found no list at all.
    """
    met: dict[str, set[str]] = defaultdict(set)
    ranks: list[int] = []
    without_list = 0
    for event in events:
        seen = met[event.user_id]
        if seen and event.item_id not in seen:
            listed = shown.last_before(event.user_id, sent_at[event.event_id])
            if listed is None:
                without_list += 1
                ranks.append(0)
            else:
                allowed = [item for item in listed if item not in seen]
                top = allowed[:LIST_LENGTH]
                ranks.append(
                    top.index(event.item_id) + 1 if event.item_id in top else 0
                )
        seen.add(event.item_id)
    return np.array(ranks, dtype=np.int32), without_list


class _Sent(msgspec.Struct):
    event_id: str


async def read_sent_times(bootstrap: str, topic: str, partitions: int, n: int) -> dict:
    """event_id -> when the record reached Kafka (its timestamp, seconds)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    decoder = msgspec.json.Decoder(_Sent)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        sent: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while len(sent) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for records in batch.values():
                for record in records:
                    sent[decoder.decode(record.value).event_id] = record.timestamp / 1e3
        return sent
    finally:
        await consumer.stop()


async def collect_lists(
    reader: ListReader, shown: ShownLists, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        for entry in await reader.read(0.2):
            shown.add(entry.user_id, entry.published_at, entry.items)


async def run_rate(
    events: list[Event], rate: float, settings: Settings, workdir: Path
) -> dict[str, Any]:
    """One live run at ``rate`` events/s; the figures it measured."""
    from producers.kafka import produce_events

    run = f"bench-{unique_run_id()}"
    topics = {
        "STREAMREC_EVENTS_TOPIC": f"{run}-events",
        "STREAMREC_RECOMMENDATIONS_TOPIC": f"{run}-recommendations",
        "STREAMREC_DEAD_LETTER_TOPIC": f"{run}-dead-letter",
        "STREAMREC_ITEM_UPDATES_TOPIC": f"{run}-item-updates",
    }
    port = free_port()
    env = dict(
        os.environ,
        **topics,
        STREAMREC_APP_ID=run,
        STREAMREC_KEY_PREFIX=f"{run}:rec:",
        STREAMREC_DATA_DIR=str(workdir / run),
        STREAMREC_WEB_PORT=str(port),
        STREAMREC_TOP_K=str(LIST_K),
        # the protocol hides every item the shopper met, not only purchases
        STREAMREC_EXCLUDE_VIEWED="true",
        PYTHONUNBUFFERED="1",
    )
    worker = WorkerProcess(
        f"worker at {rate:,.0f} events/s",
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        log_path=workdir / f"{run}.log",
    ).start()
    reader = ListReader(
        settings.kafka_bootstrap, topics["STREAMREC_RECOMMENDATIONS_TOPIC"], 8
    )
    shown, stop = ShownLists(), asyncio.Event()
    collecting: asyncio.Task | None = None
    try:
        await _wait_ready(worker)
        await reader.start()
        collecting = asyncio.create_task(collect_lists(reader, shown, stop))
        note(f"producing {len(events):,} events at {rate:,.0f} events/s")
        produced = await produce_events(
            events,
            bootstrap=settings.kafka_bootstrap,
            topic=topics["STREAMREC_EVENTS_TOPIC"],
            rate=rate,
            retime=True,
        )
        metrics = await _wait_learned(worker, port, len(events))
        await asyncio.sleep(2)  # the last batch's lists
        stop.set()
        await collecting
        sent = await read_sent_times(
            settings.kafka_bootstrap, topics["STREAMREC_EVENTS_TOPIC"], 8, len(events)
        )
    finally:
        stop.set()
        if collecting is not None and not collecting.done():
            collecting.cancel()
        await reader.stop()
        worker.stop()
        await delete_topics(settings.kafka_bootstrap, run)
        count_redis_keys(settings.redis_url, f"{run}:", delete=True)
    ranks, without_list = live_ranks(events, sent, shown)
    batches = metrics.total("streamrec_batch_size_events_count")
    freshness_mean = metrics.total("streamrec_freshness_seconds_sum") / max(
        1.0, metrics.total("streamrec_freshness_seconds_count")
    )
    return {
        "rate_asked": rate,
        "rate_achieved": produced.events_per_second,
        "lists": shown.count,
        "tests": len(ranks),
        "tests_without_list": without_list,
        "mean_batch": len(events) / batches if batches else float("nan"),
        "freshness_mean_s": freshness_mean,
        "live_hit_rate_20_gauge": metrics.total("streamrec_live_hit_rate_20"),
        **{k: v for n in CUTOFFS for k, v in metrics_at(ranks, n).items()},
    }


async def _wait_ready(worker: WorkerProcess, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while "replica caught up" not in worker.log_path.read_text(errors="replace"):
        worker.check_alive()
        if time.monotonic() > deadline:
            raise BenchmarkError(f"{worker.name} not ready after {timeout_s} s")
        await asyncio.sleep(0.2)


async def _wait_learned(worker: WorkerProcess, port: int, n: int):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 300
    while True:
        worker.check_alive()
        metrics = await scrape(f"http://127.0.0.1:{port}/metrics")
        if metrics.total("streamrec_batch_size_events_sum") >= n:
            return metrics
        if time.monotonic() > deadline:
            raise BenchmarkError(f"{worker.name} had not taken all {n} events")
        await asyncio.sleep(0.5)


def in_process(events: list[Event], settings: Settings, batch_size: int) -> dict:
    """The prequential figure of the same model, no Kafka, at ``batch_size``."""
    from models.evaluation import StreamrecRecommender, encode, prequential
    from streams.worker import mf_config

    result = prequential(
        encode(events),
        StreamrecRecommender(mf_config(settings)),
        batch_size=batch_size,
    )
    return result.summary()


def format_rows(dataset: str, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"live quality, {dataset}: each test scored against the list shown before it",
        f"{'rate (events/s)':>16} {'B':>5} {'HR@20 live':>11} {'HR@20 in-proc':>14}"
        f" {'live/in-proc':>13} {'NDCG@20 live':>13} {'no list':>8} {'tests':>7}",
    ]
    for row in rows:
        live, offline = row["live"], row["in_process"]
        ratio = live["hr@20"] / offline["hr@20"] if offline["hr@20"] else float("nan")
        lines.append(
            f"{live['rate_achieved']:>16,.0f} {row['batch_size']:>5} "
            f"{live['hr@20']:>11.6f} {offline['hr@20']:>14.6f} {ratio:>13.3f} "
            f"{live['ndcg@20']:>13.6f} {live['tests_without_list']:>8,} "
            f"{live['tests']:>7,}"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from producers.datasets import read_events

    settings = load_settings()
    await check_services(settings.kafka_bootstrap, settings.redis_url)
    events = read_events(args.dataset, limit=args.limit, fav_as="click")
    note(f"{len(events):,} events from {args.dataset}")
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-live-quality-"))
    rows = []
    for rate in args.rates:
        live = await run_rate(events, rate, settings, workdir)
        batch_size = max(1, round(live["mean_batch"]))
        note(f"in-process at B = {batch_size}")
        offline = in_process(events, settings, batch_size)
        rows.append({"batch_size": batch_size, "live": live, "in_process": offline})
        note(f"rate {rate:,.0f}: live HR@20 {live['hr@20']:.6f}")
    return {
        "dataset": args.dataset,
        "events": len(events),
        "machine": machine_notes(),
        "rows": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.live_quality", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--rates", type=float, nargs="+", default=[500.0, 2000.0])
    parser.add_argument("--limit", type=int, help="only the first N events")
    parser.add_argument("--json-out", help="also write the result here")
    args = parser.parse_args(argv)
    result = asyncio.run(main_async(args))
    print(format_rows(args.dataset, result["rows"]))
    print(dumps(result))
    if args.json_out:
        Path(args.json_out).write_text(dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
