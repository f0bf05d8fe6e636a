"""End-to-end benchmark of the streamrec pipeline: throughput and freshness.

Needs Kafka and Redis (``scripts/services.sh start``), found through
``STREAMREC_KAFKA_BOOTSTRAP`` and ``STREAMREC_REDIS_URL``. Every run uses its
own topics, app ids and Redis key prefix (``bench-<run id>-...``), deleted at
the end unless ``--keep``; worker logs stay in the run's folder.

throughput
    N events of a synthetic shop are produced onto a fresh events topic first.
    Then, on that same topic, one after the other: the in-process replay
    (models.replay, no Kafka), a bare Faust agent that only counts events (the
    framework's ceiling on this machine), and one streamrec worker. The
    worker's figure is N over the time from its first list written to the
    list for the last event of every shopper written (``published_at`` in
    the lists read back from the recommendations topic); the bare agent's is
    N over its first to its last micro-batch, the same definition.
freshness
    A fresh worker, fresh topics; once a probe event has come back as a list,
    the shop is produced at ``--rate`` for ``--seconds`` while the benchmark
    reads the recommendations topic. Per list, freshness is ``published_at -
    produced_at`` (list written minus the causing event's Kafka timestamp; one
    machine, one clock). Lists caused by events of the first ``--warmup``
    seconds are left out. The worker's own streamrec_freshness_seconds
    histogram over the same window is shown beside it.

The figures are printed as a table and as one JSON line (last on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    BenchmarkError,
    CpuWindow,
    ListReader,
    Metrics,
    WorkerProcess,
    bucket_difference,
    check_services,
    count_redis_keys,
    create_topic,
    delete_topics,
    dumps,
    free_port,
    histogram_quantile,
    http_get,
    machine_notes,
    run_with_services,
    scrape,
    stop_all_workers,
    summary,
    unique_run_id,
)
from config.settings import Settings, redact_url

TARGET_EVENTS_PER_S = 5_000.0
TARGET_FRESHNESS_P99_S = 1.0
PHASES = ("throughput", "freshness")


def note(message: str) -> None:
    """Progress on stderr, so that stdout holds only the figures."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- one run ------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseNames:
    """Topic names, app id and Redis key prefix of one phase of one run."""

    prefix: str
    key_prefix: str

    @property
    def events(self) -> str:
        return f"{self.prefix}-events"

    @property
    def recommendations(self) -> str:
        return f"{self.prefix}-recommendations"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}-dead-letter"

    @property
    def item_updates(self) -> str:
        return f"{self.prefix}-item-updates"

    @property
    def app_id(self) -> str:
        return f"{self.prefix}-streamrec"

    @property
    def topics(self) -> tuple[str, ...]:
        return (self.events, self.recommendations, self.dead_letter, self.item_updates)


@dataclass
class Run:
    args: argparse.Namespace
    settings: Settings
    run_id: str
    workdir: Path

    @property
    def prefix(self) -> str:
        return f"bench-{self.run_id}"

    @property
    def key_prefix(self) -> str:
        return f"bench:{self.run_id}:"

    def names(self, phase: str) -> PhaseNames:
        return PhaseNames(f"{self.prefix}-{phase}", f"{self.key_prefix}{phase}:rec:")

    def worker_env(self, names: PhaseNames, web_port: int, data_dir: Path) -> dict:
        s, args = self.settings, self.args
        env = dict(os.environ)
        env.update(
            {
                "STREAMREC_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
                "STREAMREC_REDIS_URL": s.redis_url,
                "STREAMREC_APP_ID": names.app_id,
                "STREAMREC_DATA_DIR": str(data_dir),
                "STREAMREC_WEB_PORT": str(web_port),
                "STREAMREC_EVENTS_TOPIC": names.events,
                "STREAMREC_RECOMMENDATIONS_TOPIC": names.recommendations,
                "STREAMREC_DEAD_LETTER_TOPIC": names.dead_letter,
                "STREAMREC_ITEM_UPDATES_TOPIC": names.item_updates,
                "STREAMREC_PARTITIONS": str(args.partitions),
                "STREAMREC_TOP_K": str(args.k),
                "STREAMREC_KEY_PREFIX": names.key_prefix,
                "STREAMREC_LIST_TTL_S": "3600",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(args.worker_env)
        return env

    def start_worker(self, names: PhaseNames, phase: str) -> tuple[WorkerProcess, str]:
        """Start one streamrec worker; return it and its /metrics URL."""
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "streams.cli",
            "--loglevel",
            self.args.worker_loglevel,
            "worker",
        ]
        worker = WorkerProcess(
            f"streamrec worker ({phase})",
            argv,
            env=self.worker_env(names, port, self.workdir / f"{phase}-worker-data"),
            log_path=self.workdir / f"{phase}-worker.log",
        ).start()
        note(f"started {worker.name}, pid {worker.pid}, log {worker.log_path}")
        return worker, f"http://127.0.0.1:{port}/metrics"


async def create_topics(
    bootstrap: str, names: PhaseNames, partitions: int, append_time: bool = False
) -> None:
    """Create the phase's topics; with ``append_time`` the events topic stamps
    records with the broker's clock (LogAppendTime) instead of the producer's."""
    from producers.kafka import ensure_topic

    if append_time:
        configs = {"message.timestamp.type": "LogAppendTime"}
        await asyncio.wait_for(
            create_topic(bootstrap, names.events, partitions, configs), 30
        )
    for topic in names.topics:
        await asyncio.wait_for(ensure_topic(bootstrap, topic, partitions), 30)


# --- waiting ----------------------------------------------------------------------


async def wait_until_consumed(
    worker: WorkerProcess,
    probe: Callable[[], Awaitable[float | None]],
    target: int,
    *,
    startup_timeout_s: float,
    stall_timeout_s: float,
    timeout_s: float,
    interval_s: float = 0.5,
    cpu: CpuWindow | None = None,
) -> float:
    """Poll ``probe`` (events consumed, None while it does not answer) until it
    reaches ``target``; raise on exit, no start, a stall or the overall limit.

    ``cpu``, when given, is started at the first progress and stopped at the end.
    """
    began = time.monotonic()
    last_value = 0.0
    last_change: float | None = None
    while True:
        worker.check_alive()
        try:
            value = await probe()
        except OSError:
            value = None
        now = time.monotonic()
        if value is not None and value > last_value:
            last_value, last_change = value, now
            if cpu is not None and not cpu.started:
                cpu.start()
        if value is not None and value >= target:
            if cpu is not None:
                cpu.stop()
            return value
        if last_change is None and now - began > startup_timeout_s:
            raise BenchmarkError(
                f"{worker.name} consumed nothing within {startup_timeout_s:.0f} s; "
                f"last lines of {worker.log_path}:\n{worker.log_tail()}"
            )
        if last_change is not None and now - last_change > stall_timeout_s:
            raise BenchmarkError(
                f"{worker.name} stalled: {last_value:.0f} of {target} events "
                f"consumed and no progress for {stall_timeout_s:.0f} s; last lines "
                f"of {worker.log_path}:\n{worker.log_tail()}"
            )
        if now - began > timeout_s:
            raise BenchmarkError(
                f"{worker.name} consumed {last_value:.0f} of {target} events "
                f"in {timeout_s:.0f} s (--timeout)"
            )
        await asyncio.sleep(interval_s)


@dataclass
class ListCollector:
    """Lists read back from the recommendations topic, and which are awaited."""

    last_event: dict[str, str]
    probe_user: str | None = None
    pending: dict[str, str] = field(default_factory=dict)
    produced_at: list[float] = field(default_factory=list)
    published_at: list[float] = field(default_factory=list)
    lists: int = 0
    personal: int = 0
    short: int = 0
    foreign: int = 0
    k: int = 20
    probe_seen: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.pending = dict(self.last_event)

    def add(self, entries: list) -> None:
        for entry in entries:
            if entry.user_id == self.probe_user:
                self.probe_seen.set()
                continue
            if entry.user_id not in self.last_event:
                self.foreign += 1
                continue
            self.lists += 1
            self.produced_at.append(entry.produced_at)
            self.published_at.append(entry.published_at)
            self.personal += entry.personal
            self.short += len(entry.items) < self.k
            if self.pending.get(entry.user_id) == entry.event_id:
                del self.pending[entry.user_id]


async def pump(reader: ListReader, collector: ListCollector) -> None:
    """Feed the collector until cancelled."""
    while True:
        collector.add(await reader.read(0.2))


async def wait_for(
    condition: Callable[[], bool],
    worker: WorkerProcess,
    timeout_s: float,
    what: str,
    *,
    required: bool = True,
) -> float:
    """Wait until ``condition()``; return the seconds it took.

    At ``timeout_s`` raise, or when not ``required`` return the time waited.
    """
    began = time.monotonic()
    while not condition():
        worker.check_alive()
        if time.monotonic() - began > timeout_s:
            if not required:
                note(f"{what} did not arrive within {timeout_s:.0f} s")
                break
            raise BenchmarkError(f"{what} did not arrive within {timeout_s:.0f} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - began


def pump_failed(pumping: asyncio.Task) -> None:
    """Raise the list reader's error, if it stopped with one."""
    if pumping.done() and not pumping.cancelled():
        pumping.result()


def max_gap(times: list[float] | np.ndarray) -> float:
    """Longest pause between consecutive list writes."""
    moments = np.unique(np.asarray(times, dtype=np.float64))
    return float(np.diff(moments).max()) if moments.size > 1 else 0.0


def long_pauses(
    times: list[float] | np.ndarray, origin: float, threshold_s: float = 0.5
) -> dict[str, Any]:
    """Pauses between consecutive list writes longer than ``threshold_s``: how
    many, and the five longest as [seconds after ``origin``, length]."""
    moments = np.unique(np.asarray(times, dtype=np.float64))
    if moments.size < 2:
        return {"threshold_s": threshold_s, "count": 0, "longest": []}
    gaps = np.diff(moments)
    long = np.flatnonzero(gaps > threshold_s)
    top = long[np.argsort(-gaps[long])][:5]
    return {
        "threshold_s": threshold_s,
        "count": int(long.size),
        "total_s": round(float(gaps[long].sum()), 3),
        "longest": [
            [round(float(moments[i] - origin), 2), round(float(gaps[i]), 3)]
            for i in top
        ],
    }


def worker_counters(metrics: Metrics) -> dict[str, float]:
    """The worker's counters that tell whether the run was clean."""
    batches = metrics.total("streamrec_batch_size_events_count")
    consumed = metrics.total("streamrec_batch_size_events_sum")
    return {
        "events_in_batches": consumed,
        "batches": batches,
        "mean_batch": consumed / batches if batches else float("nan"),
        "events_valid": metrics.total("streamrec_events_consumed_total"),
        "events_invalid": metrics.total("streamrec_events_invalid_total"),
        "events_duplicate": metrics.total("streamrec_events_duplicate_total"),
        "lists_published": metrics.total("streamrec_lists_published_total"),
        "redis_errors": metrics.total("streamrec_redis_errors_total"),
        "nonfinite_updates": metrics.total("streamrec_nonfinite_updates_total"),
        "item_updates_applied": metrics.total("streamrec_item_updates_applied_total"),
        "replica_updates": metrics.total("streamrec_replica_updates_total"),
        "items_known": metrics.total("streamrec_items_known"),
        "learn_seconds": metrics.total("streamrec_update_seconds_sum"),
        "topk_seconds": metrics.total("streamrec_topk_seconds_sum"),
        # Redis write plus Kafka flush per batch; absent from older workers
        "publish_seconds": metrics.total("streamrec_publish_seconds_sum"),
    }


def stop_worker(worker: WorkerProcess) -> dict[str, Any]:
    code = worker.stop()
    stopped = {
        "pid": worker.pid,
        "exit_code": code,
        "stopped_by": worker.stopped_by,
        "stop_seconds": worker.stop_seconds,
        "log": str(worker.log_path),
        "log_problems": worker.log_problems().as_dict(),
    }
    note(
        f"stopped {worker.name} ({worker.stopped_by or 'already exited'}, "
        f"exit code {code})"
    )
    return stopped


# --- throughput -------------------------------------------------------------------


async def measure_throughput(run: Run) -> dict[str, Any]:
    from producers.kafka import produce_events
    from producers.synthetic import SyntheticShop

    args, s = run.args, run.settings
    names = run.names("tp")
    await create_topics(s.kafka_bootstrap, names, args.partitions)
    shop = SyntheticShop(n_users=args.users, n_items=args.items, seed=args.seed)
    events = list(shop.events(args.events))
    last_event = {event.user_id: event.event_id for event in events}
    note(f"throughput: producing {len(events):,} events onto {names.events}")
    produced = await produce_events(
        events,
        bootstrap=s.kafka_bootstrap,
        topic=names.events,
        partitions=args.partitions,
        progress=False,
        retime=True,
    )
    result: dict[str, Any] = {
        "events": len(events),
        "shoppers_active": len(last_event),
        "items_seen": len({event.item_id for event in events}),
        "produce_events_per_s": produced.events_per_second,
    }
    if not args.no_replay:
        note("throughput: in-process replay")
        result["replay"] = run_replay(events, run)
    if not args.no_baseline:
        note("throughput: bare Faust agent")
        result["baseline"] = await run_baseline(run, names, len(events))
    note("throughput: streamrec worker")
    result["streamrec"] = await run_streamrec_throughput(run, names, events, last_event)
    if "baseline" in result:
        result["ratio_to_baseline"] = (
            result["streamrec"]["events_per_s"] / result["baseline"]["events_per_s"]
        )
    return result


def run_replay(events: list, run: Run) -> dict[str, Any]:
    from models.replay import replay
    from streams.worker import mf_config

    batch_size = run.args.replay_batch or run.settings.batch_max
    _, report = replay(
        events, mf_config(run.settings), batch_size=batch_size, k=run.args.k
    )
    return {
        "events_per_s": report.events_per_second,
        "seconds": report.seconds,
        "batch_size": batch_size,
        "lists": report.lists,
    }


async def run_baseline(run: Run, names: PhaseNames, n: int) -> dict[str, Any]:
    args, s = run.args, run.settings
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "benchmarks.common",
        "count",
        "--bootstrap",
        s.kafka_bootstrap,
        "--topic",
        names.events,
        "--app-id",
        f"{names.prefix}-bare",
        "--data-dir",
        str(run.workdir / "bare-data"),
        "--web-port",
        str(port),
        "--partitions",
        str(args.partitions),
        "--batch-max",
        str(s.batch_max),
        "--within",
        str(s.batch_within_s),
        "--loglevel",
        args.worker_loglevel,
    ]
    worker = WorkerProcess(
        "bare Faust agent",
        argv,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        log_path=run.workdir / "bare-agent.log",
    ).start()
    note(f"started {worker.name}, pid {worker.pid}, log {worker.log_path}")
    url = f"http://127.0.0.1:{port}/count"
    state: dict[str, Any] = {}

    async def probe() -> float | None:
        import json

        state.update(json.loads(await http_get(url)))
        return float(state["count"])

    cpu = CpuWindow(worker.pid)
    try:
        await wait_until_consumed(
            worker,
            probe,
            n,
            startup_timeout_s=args.startup_timeout,
            stall_timeout_s=args.stall_timeout,
            timeout_s=args.timeout,
            cpu=cpu,
        )
    finally:
        stopped = stop_worker(worker)
    span = state["last_at"] - state["first_at"]
    return {
        "events_per_s": state["count"] / span if span > 0 else float("nan"),
        "seconds": span,
        "events": state["count"],
        "batches": state["batches"],
        "mean_batch": state["count"] / state["batches"],
        "startup_seconds": state["first_at"] - worker.started_at,
        "batch_max": s.batch_max,
        "within_s": s.batch_within_s,
        "cpu": cpu.figures,
        "worker": stopped,
    }


async def run_streamrec_throughput(
    run: Run, names: PhaseNames, events: list, last_event: dict[str, str]
) -> dict[str, Any]:
    args, s = run.args, run.settings
    worker, url = run.start_worker(names, "throughput")
    collector = ListCollector(last_event, k=args.k)
    reader = ListReader(s.kafka_bootstrap, names.recommendations, args.partitions)

    async def probe() -> float | None:
        return (await scrape(url)).total("streamrec_batch_size_events_sum")

    cpu = CpuWindow(worker.pid)
    try:
        await wait_until_consumed(
            worker,
            probe,
            len(events),
            startup_timeout_s=args.startup_timeout,
            stall_timeout_s=args.stall_timeout,
            timeout_s=args.timeout,
            cpu=cpu,
        )
        # Read the lists only now, so that the reader takes no CPU from the
        # worker while it is measured; the times come from the lists.
        await reader.start()
        pumping = asyncio.create_task(pump(reader, collector))
        try:
            drain_s = await wait_for(
                lambda: not collector.pending or pumping.done(),
                worker,
                args.drain_timeout,
                f"the lists of all {len(last_event)} shoppers' last events",
                required=False,
            )
            pump_failed(pumping)
        finally:
            pumping.cancel()
            await asyncio.gather(pumping, return_exceptions=True)
        # The item owner and the replica run behind the learner; give them a
        # moment before reading their counters.
        await asyncio.sleep(args.settle)
        final = await scrape(url)
    finally:
        await reader.stop()
        stopped = stop_worker(worker)
    if not collector.lists:
        raise BenchmarkError(
            f"no list came back on {names.recommendations}; see {worker.log_path}"
        )
    published = np.asarray(collector.published_at)
    first, last = float(published.min()), float(published.max())
    span = last - first
    counters = worker_counters(final)
    keys = count_redis_keys(s.redis_url, names.key_prefix)
    return {
        "events_per_s": len(events) / span if span > 0 else float("nan"),
        "seconds": span,
        "startup_seconds": first - worker.started_at,
        "seconds_from_spawn": last - worker.started_at,
        "lists": collector.lists,
        "lists_personal": collector.personal,
        "lists_short": collector.short,
        "missing_last_lists": len(collector.pending),
        "missing_examples": sorted(collector.pending.items())[:5],
        "drain_seconds": drain_s,
        "max_gap_s": max_gap(published),
        "pauses": long_pauses(published, first),
        "cpu": cpu.figures,
        "redis_keys": keys,
        "learn_share": counters["learn_seconds"] / span if span > 0 else None,
        "topk_share": counters["topk_seconds"] / span if span > 0 else None,
        "publish_share": counters["publish_seconds"] / span if span > 0 else None,
        "counters": counters,
        "worker": stopped,
    }


# --- freshness --------------------------------------------------------------------


async def measure_freshness(run: Run) -> dict[str, Any]:
    from models.events import Event
    from producers.kafka import produce_events
    from producers.synthetic import SyntheticShop

    args, s = run.args, run.settings
    names = run.names("fr")
    await create_topics(
        s.kafka_bootstrap, names, args.partitions, append_time=args.log_append_time
    )
    shop = SyntheticShop(n_users=args.users, n_items=args.items, seed=args.seed)
    events = list(shop.events(int(args.rate * args.seconds)))
    last_event = {event.user_id: event.event_id for event in events}
    probe_user = f"probe-{run.run_id}"
    collector = ListCollector(last_event, probe_user=probe_user, k=args.k)
    reader = ListReader(s.kafka_bootstrap, names.recommendations, args.partitions)
    await reader.start()
    pumping = asyncio.create_task(pump(reader, collector))
    worker, url = run.start_worker(names, "freshness")
    warm: asyncio.Task | None = None
    try:
        # Ready means a probe event went all the way through.
        probe = Event(
            f"probe-{run.run_id}", probe_user, shop.item_ids[0], "view", 0, None
        )
        await produce_events(
            [probe],
            bootstrap=s.kafka_bootstrap,
            topic=names.events,
            partitions=args.partitions,
            progress=False,
            retime=True,
        )
        ready_s = await wait_for(
            lambda: collector.probe_seen.is_set() or pumping.done(),
            worker,
            args.startup_timeout,
            "the probe event's list",
        )
        pump_failed(pumping)
        note(
            f"freshness: worker ready after {ready_s:.1f} s; producing "
            f"{len(events):,} events at {args.rate:,.0f}/s"
        )
        began = time.time()

        cpu = CpuWindow(worker.pid)
        own_cpu = CpuWindow(os.getpid())

        async def snapshot() -> Metrics:
            await asyncio.sleep(args.warmup)
            cpu.start()
            own_cpu.start()
            return await scrape(url)

        warm = asyncio.create_task(snapshot())
        produced = await produce_events(
            events,
            bootstrap=s.kafka_bootstrap,
            topic=names.events,
            partitions=args.partitions,
            rate=args.rate,
            progress=False,
            retime=True,
        )
        cpu.stop()
        own_cpu.stop()
        worker.check_alive()
        drain_s = await wait_for(
            lambda: not collector.pending or pumping.done(),
            worker,
            args.drain_timeout,
            f"the lists of all {len(last_event)} shoppers' last events",
            required=False,
        )
        pump_failed(pumping)
        final = await scrape(url)
        at_warmup = await warm
    finally:
        if warm is not None and not warm.done():
            warm.cancel()
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        await reader.stop()
        stopped = stop_worker(worker)

    produced_at = np.asarray(collector.produced_at)
    published_at = np.asarray(collector.published_at)
    kept = produced_at >= began + args.warmup
    freshness = published_at[kept] - produced_at[kept]
    histogram = bucket_difference(
        final.buckets("streamrec_freshness_seconds"),
        at_warmup.buckets("streamrec_freshness_seconds"),
    )
    observed = histogram[-1][1] if histogram else 0.0
    sum_s = final.total("streamrec_freshness_seconds_sum") - at_warmup.total(
        "streamrec_freshness_seconds_sum"
    )
    return {
        "rate_asked": args.rate,
        "seconds_asked": args.seconds,
        "warmup_s": args.warmup,
        "events": len(events),
        "shoppers_active": len(last_event),
        "produced_events_per_s": produced.events_per_second,
        "produce_seconds": produced.seconds,
        "ready_seconds": ready_s,
        "lists": int(kept.sum()),
        "lists_total": collector.lists,
        "lists_short": collector.short,
        "missing_last_lists": len(collector.pending),
        "missing_examples": sorted(collector.pending.items())[:5],
        "drain_seconds": drain_s,
        "freshness_s": summary(freshness),
        "per_second": per_second(produced_at[kept] - began, freshness),
        "max_gap_s": max_gap(published_at[kept]),
        "pauses": long_pauses(published_at[kept], began),
        "cpu": cpu.figures,
        "benchmark_cpu_percent": own_cpu.figures.get("process_cpu_percent"),
        "worker_histogram": {
            "count": observed,
            "mean": sum_s / observed if observed else float("nan"),
            "p50": histogram_quantile(0.50, histogram),
            "p99": histogram_quantile(0.99, histogram),
            "buckets": histogram,
        },
        "counters": worker_counters(final),
        "per_batch_ms": per_batch_ms(final, at_warmup),
        "worker": stopped,
    }


def per_batch_ms(final: Metrics, before: Metrics) -> dict[str, float]:
    """Mean milliseconds per micro-batch of learning, top-K and publishing
    between two scrapes, and the mean batch size."""
    batches = final.total("streamrec_batch_size_events_count") - before.total(
        "streamrec_batch_size_events_count"
    )
    if batches <= 0:
        return {}
    figures = {
        "batches": batches,
        "mean_batch": (
            final.total("streamrec_batch_size_events_sum")
            - before.total("streamrec_batch_size_events_sum")
        )
        / batches,
    }
    for part in ("update", "topk", "publish"):
        name = f"streamrec_{part}_seconds_sum"
        spent = final.total(name) - before.total(name)
        figures[part] = 1000 * spent / batches
    return figures


def per_second(offsets: np.ndarray, freshness: np.ndarray) -> list[list[float]]:
    """[second, lists, p99, max] for every second of production."""
    rows = []
    if not offsets.size:
        return rows
    seconds = np.floor(offsets).astype(np.int64)
    for second in np.unique(seconds):
        values = freshness[seconds == second]
        rows.append(
            [
                int(second),
                int(values.size),
                round(float(np.percentile(values, 99)), 4),
                round(float(values.max()), 4),
            ]
        )
    return rows


# --- the report ---------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def render(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"streamrec pipeline benchmark, run {result['run_id']}: K={config['k']}, "
        f"{config['items']:,} items, {config['users']:,} users, "
        f"{config['partitions']} partitions, batch_max {config['batch_max']}, "
        f"within {config['batch_within_s']} s",
        f"{'figure':<46}{'value':>16}  target",
    ]
    git = result["machine"].get("git") or {}
    machine = result["machine"]
    lines.insert(
        1,
        f"code {git.get('commit')} ({git.get('changed_files')} files changed), "
        f"{machine['cpus_usable']} CPUs, load {machine['load_average'][0]} at start",
    )
    if config["worker_env"]:
        extra = " ".join(f"{k}={v}" for k, v in config["worker_env"].items())
        lines.insert(1, f"worker environment adds: {extra}")

    def row(name: str, value: str, target: str = "") -> None:
        lines.append(f"{name:<46}{value:>16}  {target}".rstrip())

    tp = result.get("throughput")
    if tp:
        sr = tp["streamrec"]
        row(
            "end to end, one worker (events/s)",
            f"{sr['events_per_s']:,.0f}",
            f">= {TARGET_EVENTS_PER_S:,.0f}: "
            f"{_verdict(sr['events_per_s'] >= TARGET_EVENTS_PER_S)}",
        )
        row("  events / seconds", f"{tp['events']:,} / {sr['seconds']:.1f}")
        row("  lists written", f"{sr['lists']:,}")
        row("  worker start to first list (s)", f"{sr['startup_seconds']:.1f}")
        row("  longest pause between list writes (s)", f"{sr['max_gap_s']:.2f}")
        row("  pauses over 0.5 s: count / total (s)", _pauses(sr["pauses"]))
        row("  CPU: worker / whole machine", _cpu(sr["cpu"]))
        row("  mean micro-batch (events)", f"{sr['counters']['mean_batch']:.0f}")
        if sr["missing_last_lists"]:
            row("  shoppers without their last list", f"{sr['missing_last_lists']:,}")
        row("  share of time learning / top-K / publishing", _shares(sr))
        if "baseline" in tp:
            row("bare Faust agent, same topic (events/s)", _rate(tp["baseline"]))
            row("  streamrec / bare agent", f"{tp['ratio_to_baseline']:.2f}")
            row("  bare agent mean micro-batch", f"{tp['baseline']['mean_batch']:.0f}")
            row("  bare agent CPU: agent / whole machine", _cpu(tp["baseline"]["cpu"]))
        if "replay" in tp:
            row(
                f"in-process replay, batch {tp['replay']['batch_size']} (events/s)",
                _rate(tp["replay"]),
            )
        row("producer, unpaced (events/s)", f"{tp['produce_events_per_s']:,.0f}")
    fr = result.get("freshness")
    if fr:
        f = fr["freshness_s"]
        row(
            f"freshness at {fr['rate_asked']:,.0f} events/s: lists",
            f"{fr['lists']:,}",
        )
        row("  p50 (s)", f"{f['p50']:.3f}")
        row(
            "  p99 (s)",
            f"{f['p99']:.3f}",
            f"<= {TARGET_FRESHNESS_P99_S:.1f}: "
            f"{_verdict(f['p99'] <= TARGET_FRESHNESS_P99_S)}",
        )
        row("  max (s)", f"{f['max']:.3f}")
        worst = max(fr["per_second"], key=lambda r: r[2], default=None)
        if worst:
            row(f"  worst second ({worst[0]} s in): p99 (s)", f"{worst[2]:.3f}")
        row("  longest pause between list writes (s)", f"{fr['max_gap_s']:.2f}")
        row("  pauses over 0.5 s: count / total (s)", _pauses(fr["pauses"]))
        row("  CPU: worker / whole machine", _cpu(fr["cpu"]))
        row("  CPU: this benchmark (producer + reader)", _percent(fr))
        row("  per batch: events; learn/top-K/publish ms", _per_batch(fr))
        hist = fr["worker_histogram"]
        row(
            "  worker histogram p50 / p99 (s)",
            f"{hist['p50']:.3f} / {hist['p99']:.3f}",
        )
        row(
            "  produced rate achieved (events/s)", f"{fr['produced_events_per_s']:,.0f}"
        )
        if fr["missing_last_lists"]:
            row("  shoppers without their last list", f"{fr['missing_last_lists']:,}")
    for phase in PHASES:
        for figures in (result.get(phase) or {}).values():
            if isinstance(figures, dict) and "worker" in figures:
                _log_row(row, figures["worker"])
        if phase in result and "worker" in result[phase]:
            _log_row(row, result[phase]["worker"])
    for phase, error in result["errors"].items():
        lines.append(f"{phase}: FAILED: {error.splitlines()[0]}")
    return "\n".join(lines)


def _log_row(row: Callable[[str, str], None], worker: dict[str, Any]) -> None:
    problems = worker["log_problems"]
    row(
        f"log of pid {worker['pid']}: warnings / errors",
        f"{problems['warnings']} / {problems['errors'] + problems['tracebacks']}",
    )


def _pauses(pauses: dict[str, Any]) -> str:
    return f"{pauses['count']} / {pauses.get('total_s', 0.0):.1f}"


def _cpu(cpu: dict[str, float]) -> str:
    if not cpu:
        return "n/a"
    return (
        f"{cpu['process_cpu_percent']:.0f}% (main thread "
        f"{cpu['main_thread_cpu_percent']:.0f}%) / {cpu['machine_busy_percent']:.0f}%"
    )


def _per_batch(figures: dict[str, Any]) -> str:
    batch = figures.get("per_batch_ms") or {}
    if not batch:
        return "n/a"
    return (
        f"{batch['mean_batch']:.0f}; {batch['update']:.1f}/{batch['topk']:.1f}/"
        f"{batch['publish']:.1f}"
    )


def _percent(figures: dict[str, Any]) -> str:
    value = figures.get("benchmark_cpu_percent")
    return "n/a" if value is None else f"{value:.0f}%"


def _rate(figures: dict[str, Any]) -> str:
    return f"{figures['events_per_s']:,.0f}"


def _shares(figures: dict[str, Any]) -> str:
    shares = [figures.get(f"{part}_share") for part in ("learn", "topk", "publish")]
    if None in shares:
        return "n/a"
    return " / ".join(f"{share:.0%}" for share in shares)


# --- main ---------------------------------------------------------------------------


async def run_benchmark(args: argparse.Namespace, settings: Settings) -> dict:
    await check_services(settings.kafka_bootstrap, settings.redis_url)
    run_id = unique_run_id()
    workdir = Path(
        args.workdir or tempfile.mkdtemp(prefix=f"streamrec-bench-{run_id}-")
    )
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(args, settings, run_id, workdir)
    note(
        f"run {run_id}: kafka {settings.kafka_bootstrap}, redis "
        f"{redact_url(settings.redis_url)}, logs in {workdir}"
    )
    result: dict[str, Any] = {
        "run_id": run_id,
        "command": shlex.join(["python", "-m", "benchmarks.pipeline", *args.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workdir": str(workdir),
        "config": {
            "events": args.events,
            "users": args.users,
            "items": args.items,
            "seed": args.seed,
            "k": args.k,
            "partitions": args.partitions,
            "batch_max": settings.batch_max,
            "batch_within_s": settings.batch_within_s,
            "n_factors": settings.n_factors,
            "rate": args.rate,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "log_append_time": args.log_append_time,
            "worker_env": args.worker_env,
        },
        "targets": {
            "events_per_s": TARGET_EVENTS_PER_S,
            "freshness_p99_s": TARGET_FRESHNESS_P99_S,
        },
        "machine": machine_notes(),
        "errors": {},
    }
    measures = {"throughput": measure_throughput, "freshness": measure_freshness}
    phases = PHASES if args.phase == "all" else (args.phase,)
    try:
        for phase in phases:
            try:
                result[phase] = await measures[phase](run)
            except BenchmarkError as exc:
                note(f"{phase} failed: {exc}")
                result["errors"][phase] = str(exc)
            except Exception as exc:  # keep the other phase's figures
                traceback.print_exc()
                note(f"{phase} failed: {type(exc).__name__}: {exc}")
                result["errors"][phase] = f"{type(exc).__name__}: {exc}"
    finally:
        stop_all_workers()
        if not args.keep:
            await cleanup(run)
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


async def cleanup(run: Run) -> None:
    s = run.settings
    try:
        topics = await asyncio.wait_for(
            delete_topics(s.kafka_bootstrap, run.prefix), 60
        )
        keys = await asyncio.to_thread(
            count_redis_keys, s.redis_url, run.key_prefix, delete=True
        )
        note(f"deleted {len(topics)} topics and {keys:,} Redis keys of this run")
    except Exception as exc:
        note(f"cleanup failed ({type(exc).__name__}: {exc}); --keep names stay")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description="End-to-end throughput and freshness of the streamrec pipeline "
        "against a running Kafka and Redis (scripts/services.sh start).",
        epilog="Kafka and Redis come from STREAMREC_KAFKA_BOOTSTRAP and "
        "STREAMREC_REDIS_URL; other STREAMREC_* settings reach the workers as "
        f"they are. Targets: >= {TARGET_EVENTS_PER_S:,.0f} events/s end to end "
        f"with K=20 and 10,000 items; freshness p99 <= {TARGET_FRESHNESS_P99_S} s "
        "at 2,000 events/s.",
    )
    add = parser.add_argument
    add("--phase", choices=["all", *PHASES], default="all", help="what to measure")
    add("--events", type=int, default=100_000, help="events of the throughput run")
    add("--users", type=int, default=20_000, help="shoppers in the synthetic shop")
    add("--items", type=int, default=10_000, help="items in the catalogue")
    add("--seed", type=int, default=7, help="seed of the synthetic shop")
    add("--k", type=int, default=20, help="list length (STREAMREC_TOP_K)")
    add("--partitions", type=int, default=8, help="partitions of every topic")
    add("--rate", type=float, default=2000.0, help="events/s of the freshness run")
    add("--seconds", type=float, default=30.0, help="length of the freshness run")
    add("--warmup", type=float, default=5.0, help="seconds left out of freshness")
    add(
        "--log-append-time",
        action="store_true",
        help="freshness: stamp events with the broker's append time, so that "
        "produced_at excludes any delay in the benchmark's producer",
    )
    add("--no-baseline", action="store_true", help="skip the bare Faust agent")
    add("--no-replay", action="store_true", help="skip the in-process replay")
    add(
        "--replay-batch",
        type=int,
        help="micro-batch of the replay (default: STREAMREC_BATCH_MAX)",
    )
    add("--startup-timeout", type=float, default=120.0, help="s to first event")
    add("--stall-timeout", type=float, default=60.0, help="s without progress")
    add("--drain-timeout", type=float, default=60.0, help="s to wait for last lists")
    add("--timeout", type=float, default=900.0, help="s for a worker to consume all")
    add("--settle", type=float, default=2.0, help="s before the final metrics")
    add("--worker-loglevel", default="info", choices=["debug", "info", "warning"])
    add(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the streamrec workers (repeatable), e.g. "
        "OPENBLAS_NUM_THREADS=1",
    )
    add("--workdir", help="folder for logs and worker state (default: a temp one)")
    add("--json-out", help="also write the JSON result to this file")
    add("--keep", action="store_true", help="keep this run's topics and Redis keys")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    pairs = [item.partition("=") for item in args.worker_env]
    if any(not name or not sep for name, sep, _ in pairs):
        print("error: --worker-env takes NAME=VALUE", file=sys.stderr)
        return 2
    args.worker_env = {name: value for name, _, value in pairs}
    if args.events < 1 or args.rate <= 0 or args.seconds <= 0 or args.warmup < 0:
        print("error: --events, --rate and --seconds must be positive", file=sys.stderr)
        return 2
    code, result = run_with_services(lambda settings: run_benchmark(args, settings))
    if result is None:
        return code
    print(render(result))
    line = dumps(result)
    print(line, flush=True)
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(line + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
