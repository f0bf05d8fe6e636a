"""What the benchmarks share: service checks, worker processes, metrics, lists.

Every benchmark talks to the Kafka and Redis named by ``STREAMREC_KAFKA_BOOTSTRAP``
and ``STREAMREC_REDIS_URL`` and starts its workers as subprocesses, each with
its log in a file, stopped in a ``finally`` (SIGTERM, then SIGKILL).

Run as a module this file is the bare Faust agent used as the framework's
ceiling: raw serializers, ``take_events`` micro-batches, concurrency 1, and a
``/count`` page that says how many events it has seen and when::

    python -m benchmarks.common count --bootstrap 127.0.0.1:9092 --topic events \\
        --app-id bare --data-dir /tmp/bare --web-port 6070
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from config.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES_HINT = (
    "run scripts/services.sh start, and point STREAMREC_KAFKA_BOOTSTRAP / "
    'STREAMREC_REDIS_URL at it (eval "$(scripts/services.sh env)")'
)


class BenchmarkError(RuntimeError):
    """A benchmark could not produce its figures; the message says why."""


class ServicesUnavailable(BenchmarkError):
    """Kafka or Redis does not answer."""


def unique_run_id() -> str:
    """A short id that no other run shares: time of day plus random hex."""
    return f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


# --- services ---------------------------------------------------------------------


async def check_services(bootstrap: str, redis_url: str, timeout_s: float = 15) -> None:
    """Raise :class:`ServicesUnavailable` unless Kafka and Redis both answer."""
    from config.settings import redact_url

    try:
        await asyncio.wait_for(list_topics(bootstrap), timeout_s)
    except Exception as exc:
        raise ServicesUnavailable(
            f"Kafka does not answer at {bootstrap} ({_describe(exc)}); {SERVICES_HINT}"
        ) from None
    try:
        await asyncio.to_thread(_redis_ping, redis_url, timeout_s)
    except Exception as exc:
        raise ServicesUnavailable(
            f"Redis does not answer at {redact_url(redis_url)} ({_describe(exc)}); "
            f"{SERVICES_HINT}"
        ) from None


async def list_topics(bootstrap: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="streamrec-bench",
        request_timeout_ms=5000,
    )
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def create_topic(
    bootstrap: str, name: str, partitions: int, configs: Mapping[str, str]
) -> None:
    """Create a topic with topic-level configs (one replica per broker, at most 3)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="streamrec-bench",
        request_timeout_ms=10_000,
    )
    await admin.start()
    try:
        brokers = (await admin.describe_cluster())["brokers"]
        replicas = max(1, min(3, len(brokers)))
        await admin.create_topics(
            [NewTopic(name, partitions, replicas, topic_configs=dict(configs))]
        )
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix``; return their names."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="streamrec-bench",
        request_timeout_ms=10_000,
    )
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


def _redis_client(url: str, timeout_s: float):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )


def _redis_ping(url: str, timeout_s: float) -> None:
    client = _redis_client(url, timeout_s)
    try:
        client.ping()
    finally:
        client.close()


def count_redis_keys(url: str, prefix: str, *, delete: bool = False) -> int:
    """Count the keys starting with ``prefix`` (a plain prefix, no glob
    characters), unlinking them when ``delete``."""
    client = _redis_client(url, 10)
    found = 0
    try:
        chunk: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=2000):
            found += 1
            if delete:
                chunk.append(key)
                if len(chunk) >= 2000:
                    client.unlink(*chunk)
                    chunk = []
        if chunk:
            client.unlink(*chunk)
        return found
    finally:
        client.close()


# --- worker processes -------------------------------------------------------------

_RUNNING: dict[int, WorkerProcess] = {}
_LOG_LEVEL = re.compile(r"\b(WARNING|WARN|ERROR|CRITICAL)\b")


@dataclass
class LogProblems:
    """Warnings and errors found in a worker's log."""

    warnings: int = 0
    errors: int = 0
    tracebacks: int = 0
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "warnings": self.warnings,
            "errors": self.errors,
            "tracebacks": self.tracebacks,
            "examples": self.examples,
        }


class WorkerProcess:
    """One subprocess with its output in a log file; stopped by pid only."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.started_at = 0.0
        self.stop_seconds: float | None = None
        self.stopped_by: str | None = None
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.started_at = time.time()
        # Its own session: a Ctrl-C at the terminal reaches only us, and we
        # stop it ourselves, by pid, in the caller's finally.
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _RUNNING[self._proc.pid] = self
        return self

    def check_alive(self) -> None:
        """Raise :class:`BenchmarkError`, with the log's tail, if it exited."""
        if self._proc is None:
            raise BenchmarkError(f"{self.name} was never started")
        code = self._proc.poll()
        if code is not None:
            raise BenchmarkError(
                f"{self.name} (pid {self._proc.pid}) exited with code {code}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def stop(self, term_timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``term_timeout_s``; idempotent."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            self.stopped_by = "SIGTERM"
            try:
                proc.wait(term_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                self.stopped_by = "SIGKILL"
                proc.wait(10)
            self.stop_seconds = time.monotonic() - began
        self.returncode = proc.returncode
        _RUNNING.pop(proc.pid, None)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.returncode

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(cannot read the log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self, examples: int = 6) -> LogProblems:
        """Count WARNING/ERROR/CRITICAL lines and tracebacks in the log."""
        found = LogProblems()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return found
        for line in text.splitlines():
            if line.startswith("Traceback"):
                found.tracebacks += 1
                continue
            match = _LOG_LEVEL.search(line)
            if match is None:
                continue
            if match.group(1) in ("WARNING", "WARN"):
                found.warnings += 1
            else:
                found.errors += 1
            if len(found.examples) < examples:
                found.examples.append(line.strip()[:300])
        return found


def stop_all_workers() -> None:
    """Stop every worker this process started and has not stopped yet."""
    for worker in list(_RUNNING.values()):
        worker.stop()


# --- metrics ----------------------------------------------------------------------


@dataclass
class Metrics:
    """One scrape of a Prometheus /metrics page, as flat samples."""

    samples: list[tuple[str, dict[str, str], float]]
    at: float = 0.0

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == name
            and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def buckets(self, histogram: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of a histogram, by upper bound."""
        rows = [
            (float(labels["le"]), value)
            for sample, labels, value in self.samples
            if sample == histogram + "_bucket"
        ]
        return sorted(rows)


def parse_metrics(text: str, at: float = 0.0) -> Metrics:
    from prometheus_client.parser import text_string_to_metric_families

    samples = [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]
    return Metrics(samples, at)


def _http_get(url: str, timeout_s: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read()


async def http_get(url: str, timeout_s: float = 3.0) -> bytes:
    return await asyncio.to_thread(_http_get, url, timeout_s)


async def scrape(url: str, timeout_s: float = 3.0) -> Metrics:
    at = time.time()
    body = await http_get(url, timeout_s)
    return parse_metrics(body.decode(), at)


def bucket_difference(
    after: list[tuple[float, float]], before: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Cumulative buckets observed between two scrapes of one histogram."""
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile: linear inside the bucket holding rank q.

    A rank in the +Inf bucket gives the largest finite bound (a lower bound).
    """
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def summary(values: Sequence[float]) -> dict[str, float]:
    """count, mean, p50, p90, p99 and max of ``values`` (nan when empty)."""
    import numpy as np  # not at the top: the bare agent should not load it

    array = np.asarray(values, dtype=np.float64)
    if not array.size:
        return {k: math.nan for k in ("count", "mean", "p50", "p90", "p99", "max")}
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return {
        "count": float(array.size),
        "mean": float(array.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(array.max()),
    }


# --- the recommendations topic ------------------------------------------------------


class ListReader:
    """Reads every partition of a list topic from its start, outside any group."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self._consumer = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="streamrec-bench-reader",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        self._consumer = consumer
        partitions = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)

    async def read(self, timeout_s: float = 0.2) -> list:  # list[PublishedList]
        """The lists that arrived, waiting at most ``timeout_s`` for some."""
        from streams.publisher import decode_list

        if self._consumer is None:
            raise BenchmarkError("ListReader.read before start")
        batch = await self._consumer.getmany(
            timeout_ms=int(timeout_s * 1000), max_records=20_000
        )
        return [
            decode_list(record.value)
            for records in batch.values()
            for record in records
            if record.value is not None
        ]

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


# --- the machine ----------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int | None) -> float:
    """User plus system CPU seconds of a live process (nan when gone)."""
    if pid is None:
        return math.nan
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def thread_cpu_seconds(pid: int | None) -> dict[int, float]:
    """CPU seconds of each thread of a live process, by thread id."""
    if pid is None:
        return {}
    seconds = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / _TICKS
    return seconds


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuWindow:
    """CPU used by one process and by the whole machine over a wall-clock window."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._start: tuple[float, float, tuple[int, int]] | None = None
        self._threads: dict[int, float] = {}
        self.figures: dict[str, float] = {}

    def start(self) -> None:
        self._start = (
            time.monotonic(),
            process_cpu_seconds(self.pid),
            machine_cpu_ticks(),
        )
        self._threads = thread_cpu_seconds(self.pid)

    @property
    def started(self) -> bool:
        return self._start is not None

    def stop(self) -> dict[str, float]:
        if self._start is None:
            return {}
        began, cpu, (busy, total) = self._start
        wall = time.monotonic() - began
        now_busy, now_total = machine_cpu_ticks()
        ticks = now_total - total
        threads = thread_cpu_seconds(self.pid)
        main = threads.get(self.pid or 0, math.nan) - self._threads.get(
            self.pid or 0, math.nan
        )
        busy_threads = sum(
            1
            for tid, cpu_s in threads.items()
            if cpu_s - self._threads.get(tid, 0.0) > 0.05 * wall
        )
        self.figures = {
            "main_thread_cpu_percent": 100 * main / wall if wall > 0 else math.nan,
            "threads": len(threads),
            "threads_over_5_percent": busy_threads,
            "wall_s": wall,
            "process_cpu_percent": 100 * (process_cpu_seconds(self.pid) - cpu) / wall
            if wall > 0
            else math.nan,
            "machine_busy_percent": 100 * (now_busy - busy) / ticks
            if ticks > 0
            else math.nan,
        }
        return self.figures


def machine_notes() -> dict[str, object]:
    """What a reader needs to judge the figures: CPUs, memory, load, versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = math.nan
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    versions = {}
    for package in ("faust-streaming", "aiokafka", "numpy", "msgspec", "redis"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    return {
        "git": _git_state(),
        "cpu": cpu,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": memory_gib,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def _git_state() -> dict[str, object]:
    """The checkout's commit and how many files differ from it (read-only)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = [line for line in git("status", "--porcelain").splitlines() if line]
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "changed_files": None}
    return {"commit": commit or "unknown", "changed_files": len(changed)}


# --- the bare Faust agent -------------------------------------------------------------


def _count_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.common count",
        description="A bare Faust agent that only counts the events of a topic.",
    )
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--web-port", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch-max", type=int, default=1000)
    parser.add_argument("--within", type=float, default=0.05)
    parser.add_argument("--loglevel", default="info")
    args = parser.parse_args(argv)

    import faust

    # The app settings that matter for consuming are streamrec's (streams/worker.py).
    app = faust.App(
        args.app_id,
        broker=[f"kafka://{server}" for server in args.bootstrap.split(",")],
        store="memory://",
        datadir=args.data_dir,
        autodiscover=False,
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(4096, 2 * args.batch_max),
        web_enabled=True,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=args.web_port,
    )
    topic = app.topic(
        args.topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=args.partitions,
    )
    state: dict[str, object] = {
        "count": 0,
        "batches": 0,
        "first_batch": 0,
        "first_at": None,
        "last_at": None,
    }

    async def count(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(args.batch_max, within=args.within):
            now = time.time()
            state["count"] = int(state["count"]) + len(batch)  # type: ignore[call-overload]
            state["batches"] = int(state["batches"]) + 1  # type: ignore[call-overload]
            if state["first_at"] is None:
                state["first_at"] = now
                state["first_batch"] = len(batch)
            state["last_at"] = now

    async def count_view(self, request):  # type: ignore[no-untyped-def]
        return self.json(dict(state))

    app.agent(topic, name="count", concurrency=1)(count)
    app.page("/count")(count_view)
    faust.Worker(app, loglevel=args.loglevel).execute_from_commandline()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "count":
        print("usage: python -m benchmarks.common count --help", file=sys.stderr)
        return 2
    return _count_main(argv[1:])


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_with_services(
    benchmark: Callable[[Settings], Awaitable[dict[str, object]]],
) -> tuple[int, dict[str, object] | None]:
    """Run a benchmark's coroutine on the configured Kafka and Redis.

    Returns ``(exit code, result)``: 2 for bad settings, 3 when the services
    do not answer, 1 when the benchmark failed, 130 when interrupted (SIGTERM
    too), each with its reason on stderr and no result; workers are stopped
    however it ends.
    """
    from config.settings import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2, None
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return 0, asyncio.run(benchmark(settings))
    except ServicesUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3, None
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1, None
    except KeyboardInterrupt:
        print("interrupted; workers stopped", file=sys.stderr)
        return 130, None
    finally:
        stop_all_workers()


def dumps(value: object) -> str:
    """JSON with nan as null, for the result line."""

    def clean(item: object) -> object:
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {k: clean(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [clean(v) for v in item]
        return item

    return json.dumps(clean(value), separators=(",", ":"))


if __name__ == "__main__":
    raise SystemExit(main())
