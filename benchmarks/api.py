"""Latency of the list endpoint, ``GET /recommendations/{user_id}``, under load.

Needs Kafka and Redis (``scripts/services.sh start``), found through
``STREAMREC_KAFKA_BOOTSTRAP`` and ``STREAMREC_REDIS_URL``. The benchmark starts
one streamrec worker on its own topics, app id and Redis key prefix
(``bench-<run id>-api...``), seeds ``--users`` lists of ``--k`` items in Redis,
and drives the endpoint from this process with an open-loop load generator on
127.0.0.1: request ``i`` is due at ``start + i / rate`` whether or not earlier
answers have come back, and its latency counts from when it was due, so a
stall in the worker shows in the figures instead of slowing the load down
(no coordinated omission). ``--events-rate`` adds a synthetic shop streaming
into the same worker while it answers, as in production.

Bounded: at most ``--rate`` x ``--seconds`` requests (5,000/s and 120 s at
most), after a one-second warm-up that is not counted. Prints a table and one
JSON line (last on stdout); the target is p99 <= 5 ms at 1,000 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO_ROOT,
    BenchmarkError,
    WorkerProcess,
    check_services,
    count_redis_keys,
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
from config.settings import Settings

TARGET_P99_S = 0.005
TARGET_RATE = 1000.0
MAX_RATE = 5000.0
MAX_SECONDS = 120.0
HOST = "127.0.0.1"  # loopback only, never anything else


def note(message: str) -> None:
    """Progress on stderr, so that stdout holds only the figures."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class LoadResult:
    """What the load generator measured."""

    latencies: list[float] = field(default_factory=list)  # from due time, s
    service: list[float] = field(default_factory=list)  # from send time, s
    statuses: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    late_sends: int = 0  # requests sent more than 1 ms after they were due

    @property
    def completed(self) -> int:
        return len(self.latencies)


# --- the load generator -------------------------------------------------------------

# A minimal HTTP/1.1 client on asyncio streams: one pre-built request per
# URL, keep-alive connections, the body read by Content-Length. It costs a
# fraction of aiohttp's client per request, so that on a small machine the
# load generator does not compete with the worker for the figures.


async def drive(
    host: str,
    port: int,
    paths: list[str],
    rate: float,
    seconds: float,
    connections: int,
    timeout_s: float,
) -> LoadResult:
    """Send ``rate`` x ``seconds`` GETs on an open-loop schedule; wait for all.

    A dispatcher queues each request when it is due; ``connections`` senders
    take them in order. A request that waits for a free connection is late,
    and its latency, counted from when it was due, says so.
    """
    result = LoadResult()
    total = int(rate * seconds)
    requests = [
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode() for path in paths
    ]
    due: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    senders = [
        asyncio.create_task(_sender(host, port, due, timeout_s, result))
        for _ in range(connections)
    ]
    start = time.perf_counter()
    sent = 0
    while sent < total:
        # queue everything that is due, then sleep until the next one is
        now_due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while sent < now_due:
            due.put_nowait((start + sent / rate, requests[sent % len(requests)]))
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    for _ in senders:
        due.put_nowait(None)
    await asyncio.gather(*senders)
    result.seconds = time.perf_counter() - start
    return result


async def _sender(
    host: str,
    port: int,
    due: asyncio.Queue[tuple[float, bytes] | None],
    timeout_s: float,
    result: LoadResult,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (job := await due.get()) is not None:
            scheduled, request = job
            sent = time.perf_counter()
            if sent - scheduled > 0.001:
                result.late_sends += 1
            try:
                writer.write(request)
                status = await asyncio.wait_for(_response(reader), timeout_s)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                result.statuses[type(exc).__name__] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            done = time.perf_counter()
            result.statuses[status] += 1
            if status == "200":
                result.latencies.append(done - scheduled)
                result.service.append(done - sent)
    finally:
        writer.close()


async def _response(reader: asyncio.StreamReader) -> str:
    """Read one response; return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12].decode()
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


# --- vegeta, the load tool ------------------------------------------------------------

# vegeta (github.com/tsenart/vegeta) attacks at a constant rate whatever the
# answers do, the open loop this benchmark wants, from compiled Go: at
# 1,000 requests/s it uses a few percent of a core, where the Python generator
# above needed most of one and sent a fifth of its requests late on 2 cores.
# It is installed from the Go module proxy into .run/tools on first use.
VEGETA_MODULE = "github.com/tsenart/vegeta/v12@v12.12.0"
TOOLS_BIN = REPO_ROOT / ".run" / "tools" / "bin"


def vegeta_path() -> Path:
    """The vegeta binary, built with ``go install`` when it is not there yet."""
    binary = TOOLS_BIN / "vegeta"
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        raise BenchmarkError(
            "vegeta is not installed and there is no Go toolchain to build it; "
            "install Go, or run with --load-tool python"
        )
    note(f"installing {VEGETA_MODULE} into {TOOLS_BIN}")
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(TOOLS_BIN), "GOFLAGS": "-modcacherw"}
    done = subprocess.run(
        ["go", "install", VEGETA_MODULE],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode or not binary.exists():
        raise BenchmarkError(f"go install {VEGETA_MODULE} failed:\n{done.stderr}")
    return binary


async def drive_vegeta(
    host: str,
    port: int,
    paths: list[str],
    rate: float,
    seconds: float,
    connections: int,
    timeout_s: float,
) -> LoadResult:
    """The same open-loop run as :func:`drive`, sent by vegeta."""
    binary = vegeta_path()
    with tempfile.TemporaryDirectory(prefix="streamrec-vegeta-") as folder:
        targets = Path(folder) / "targets.txt"
        targets.write_text(
            "".join(f"GET http://{host}:{port}{path}\n" for path in paths)
        )
        attack = [
            str(binary),
            "attack",
            f"-targets={targets}",
            f"-rate={rate:g}/1s",
            f"-duration={seconds:g}s",
            f"-connections={connections}",
            f"-workers={connections}",
            f"-timeout={timeout_s:g}s",
            "-keepalive=true",
        ]
        encode = [str(binary), "encode", "--to=csv"]
        started = time.perf_counter()
        attacker = await asyncio.create_subprocess_exec(
            *attack, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        raw, errors = await attacker.communicate()
        elapsed = time.perf_counter() - started
        if attacker.returncode:
            raise BenchmarkError(f"vegeta attack failed: {errors.decode()[-2000:]}")
        encoder = await asyncio.create_subprocess_exec(
            *encode, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        rows, _ = await encoder.communicate(raw)
    return _vegeta_result(rows.decode(), rate, elapsed)


def _vegeta_result(csv_text: str, rate: float, elapsed: float) -> LoadResult:
    """Per-request rows of ``vegeta encode --to=csv``: send time (ns), status,
    latency (ns), ... Latency counts from the send, which vegeta's pacer
    makes at the due time; a send over 1 ms after ``first + n / rate`` is
    counted late, as the Python generator counts it."""
    result = LoadResult(seconds=elapsed)
    sends = []
    for row in csv.reader(io.StringIO(csv_text)):
        status, latency = row[1], int(row[2]) / 1e9
        sends.append(int(row[0]) / 1e9)
        result.statuses[status if status != "0" else "error"] += 1
        if status == "200":
            result.latencies.append(latency)
            result.service.append(latency)
    sends.sort()
    if sends:
        result.late_sends = sum(
            1 for n, sent in enumerate(sends) if sent - sends[0] - n / rate > 0.001
        )
    return result


# --- the run ------------------------------------------------------------------------


def worker_env(
    settings: Settings,
    prefix: str,
    port: int,
    data_dir: Path,
    web_in_thread: bool = False,
) -> dict[str, str]:
    """The worker's environment: this run's names on the caller's services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(
        {
            "STREAMREC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "STREAMREC_REDIS_URL": settings.redis_url,
            "STREAMREC_APP_ID": f"{prefix}-streamrec",
            "STREAMREC_EVENTS_TOPIC": f"{prefix}-events",
            "STREAMREC_RECOMMENDATIONS_TOPIC": f"{prefix}-recommendations",
            "STREAMREC_DEAD_LETTER_TOPIC": f"{prefix}-dead-letter",
            "STREAMREC_ITEM_UPDATES_TOPIC": f"{prefix}-item-updates",
            "STREAMREC_CONTROL_TOPIC": f"{prefix}-control",
            "STREAMREC_KEY_PREFIX": f"{prefix}:rec:",
            "STREAMREC_WEB_PORT": str(port),
            "STREAMREC_WEB_BIND": HOST,
            "STREAMREC_DATA_DIR": str(data_dir),
            "STREAMREC_WEB_IN_THREAD": "true" if web_in_thread else "false",
            "OPENBLAS_NUM_THREADS": "1",
        }
    )
    return env


def seed_lists(settings: Settings, key_prefix: str, users: int, k: int) -> list[str]:
    """Write ``users`` lists of ``k`` items, as the worker writes them."""
    import msgspec

    from config.security import sync_redis
    from streams.publisher import PublishedList

    client = sync_redis(settings)
    encoder = msgspec.json.Encoder()
    rng = random.Random(7)
    now = time.time()
    user_ids = [f"bench-u{n}" for n in range(users)]
    pipe = client.pipeline(transaction=False)
    for n, user_id in enumerate(user_ids):
        items = [f"i{rng.randrange(10_000)}" for _ in range(k)]
        scores = sorted((round(rng.random() * 5, 6) for _ in range(k)), reverse=True)
        entry = PublishedList(user_id, items, scores, True, 1, f"e{n}", 0, now, now)
        pipe.set(key_prefix + user_id, encoder.encode(entry), ex=3600)
        if n % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    client.close()
    return user_ids


async def wait_healthy(base: str, worker: WorkerProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.check_alive()
        try:
            await http_get(f"{base}/healthz", 2.0)
            return
        except OSError:  # not listening yet, or not healthy yet (HTTPError)
            await asyncio.sleep(0.5)
    raise BenchmarkError(
        f"worker not healthy after {timeout_s} s:\n{worker.log_tail()}"
    )


async def run_benchmark(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    await check_services(settings.kafka_bootstrap, settings.redis_url)
    prefix = f"bench-{unique_run_id()}-api"
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="streamrec-api-"))
    port = free_port()
    env = worker_env(settings, prefix, port, workdir / "worker", args.web_in_thread)
    base = f"http://{HOST}:{port}"
    result: dict[str, Any] = {"benchmark": "api", "run": prefix, "errors": {}}
    worker = WorkerProcess(
        "worker",
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        log_path=workdir / "worker.log",
    )
    producer: WorkerProcess | None = None
    try:
        note(f"starting a worker on {base} (log {workdir / 'worker.log'})")
        worker.start()
        if args.nice is not None:
            _prioritise(args.nice, worker.pid)
        await wait_healthy(base, worker, args.startup_timeout)
        key_prefix = env["STREAMREC_KEY_PREFIX"]
        users = await asyncio.to_thread(
            seed_lists, settings, key_prefix, args.users, args.k
        )
        note(f"seeded {len(users):,} lists of {args.k} items")
        if args.events_rate:
            producer = _start_producer(env, args, workdir)
            await asyncio.sleep(3)  # let the learner reach its steady state
        result.update(await _measure(args, port, users, worker))
    finally:
        if producer is not None:
            producer.stop()
        stop_all_workers()
        if not args.keep:
            await _cleanup(settings, prefix)
    result["machine"] = machine_notes()
    return result


def _start_producer(
    env: dict[str, str], args: argparse.Namespace, workdir: Path
) -> WorkerProcess:
    note(f"streaming a synthetic shop at {args.events_rate:,.0f} events/s")
    events = int(args.events_rate * (args.seconds + 10))
    return WorkerProcess(
        "producer",
        [
            sys.executable,
            "-m",
            "streams.cli",
            "generate",
            "--rate",
            str(args.events_rate),
            "--events",
            str(events),
        ],
        env=env,
        log_path=workdir / "producer.log",
    ).start()


async def _measure(
    args: argparse.Namespace, port: int, users: list[str], worker: WorkerProcess
) -> dict[str, Any]:
    rng = random.Random(11)
    paths = [f"/recommendations/{rng.choice(users)}?k={args.k}" for _ in range(5000)]
    base = f"http://{HOST}:{port}"

    driver = drive_vegeta if args.load_tool == "vegeta" else drive

    def load(seconds: float) -> Any:
        return driver(
            HOST,
            port,
            paths,
            args.rate,
            seconds,
            args.connections,
            args.request_timeout,
        )

    note("warming up for 1 s")
    await load(1.0)
    before = await scrape(f"{base}/metrics")
    note(f"driving {args.rate:,.0f} requests/s for {args.seconds:g} s")
    measured = await load(args.seconds)
    after = await scrape(f"{base}/metrics")
    worker.check_alive()
    latency = summary(measured.latencies)
    answered = measured.statuses.get("200", 0) == sum(measured.statuses.values())
    return {
        "target": {"rate": TARGET_RATE, "p99_s": TARGET_P99_S},
        "rate_asked": args.rate,
        "seconds": measured.seconds,
        "requests_per_s": measured.completed / measured.seconds,
        "completed": measured.completed,
        "statuses": dict(measured.statuses),
        "late_sends": measured.late_sends,
        "latency_s": latency,
        "service_s": summary(measured.service),
        "server_s": _server_quantiles(before, after),
        "events_rate": args.events_rate,
        "load_tool": args.load_tool,
        "web_in_thread": args.web_in_thread,
        "niceness": args.nice,
        "met": bool(
            answered and latency["p99"] <= TARGET_P99_S and args.rate >= TARGET_RATE
        ),
    }


def _server_quantiles(before: Any, after: Any) -> dict[str, float]:
    from benchmarks.common import bucket_difference

    name = "streamrec_http_request_seconds"
    buckets = bucket_difference(
        _route_buckets(after, name), _route_buckets(before, name)
    )
    return {
        "p50": histogram_quantile(0.5, buckets),
        "p99": histogram_quantile(0.99, buckets),
    }


def _route_buckets(metrics: Any, name: str) -> list[tuple[float, float]]:
    return sorted(
        (float(labels["le"]), value)
        for sample, labels, value in metrics.samples
        if sample == name + "_bucket" and labels.get("route") == "recommendations"
    )


def _prioritise(niceness: int, worker_pid: int | None) -> None:
    """Run the worker and this load generator at ``niceness``: a diagnostic
    that tells the machine's other load apart from stalls of the worker."""
    for pid in (worker_pid, os.getpid()):
        if pid is not None:
            os.setpriority(os.PRIO_PROCESS, pid, niceness)
    note(f"worker and load generator at niceness {niceness}")


async def _cleanup(settings: Settings, prefix: str) -> None:
    try:
        topics = await asyncio.wait_for(
            delete_topics(settings.kafka_bootstrap, prefix), 60
        )
        # the lists (<prefix>:rec:) and the trending keys (<prefix>-streamrec:)
        keys = await asyncio.to_thread(
            count_redis_keys, settings.redis_url, prefix, delete=True
        )
        note(f"deleted {len(topics)} topics and {keys:,} Redis keys of this run")
    except Exception as exc:
        note(f"cleanup failed ({type(exc).__name__}: {exc}); names start {prefix}")


# --- output -------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    def ms(figures: dict[str, float], *names: str) -> str:
        return "   ".join(f"{n} {figures[n] * 1000:.2f} ms" for n in names)

    met = "met" if result["met"] else "missed"
    return "\n".join(
        [
            f"list endpoint, GET /recommendations/{{user_id}} on {HOST}, open loop "
            f"({result['load_tool']})",
            f"  asked      {result['rate_asked']:,.0f} requests/s for "
            f"{result['seconds']:.1f} s; events streaming at "
            f"{result['events_rate']:,.0f}/s; served from the "
            + ("web thread" if result["web_in_thread"] else "main loop"),
            f"  answered   {result['requests_per_s']:,.0f} requests/s "
            f"(statuses {result['statuses']}; "
            f"{result['late_sends']:,} sent over 1 ms late)",
            "  latency    "
            + ms(result["latency_s"], "p50", "p90", "p99", "max")
            + (
                "   (from each send; vegeta sends when due)"
                if result["load_tool"] == "vegeta"
                else "   (from when each was due)"
            ),
            *(
                []
                if result["load_tool"] == "vegeta"
                else [
                    "  service    "
                    + ms(result["service_s"], "p50", "p99")
                    + "   (from when each was sent)"
                ]
            ),
            "  in worker  "
            + ms(result["server_s"], "p50", "p99")
            + "   (streamrec_http_request_seconds)",
            f"  target     p99 <= {TARGET_P99_S * 1000:.0f} ms at "
            f"{TARGET_RATE:,.0f} requests/s: {met}",
        ]
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.api",
        description="Requests/s and latency of a worker's list endpoint on "
        "loopback, against a running Kafka and Redis (scripts/services.sh start).",
        epilog=f"Target: p99 <= {TARGET_P99_S * 1000:.0f} ms at "
        f"{TARGET_RATE:,.0f} requests/s.",
    )
    add = parser.add_argument
    add("--rate", type=float, default=TARGET_RATE, help="requests per second")
    add("--seconds", type=float, default=20.0, help="length of the measured run")
    add("--users", type=int, default=10_000, help="shoppers whose lists are seeded")
    add("--k", type=int, default=20, help="items per list and per request")
    add("--connections", type=int, default=32, help="keep-alive connections")
    add("--request-timeout", type=float, default=2.0, help="s before a request fails")
    add("--events-rate", type=float, default=0.0, help="events/s streamed meanwhile")
    add(
        "--web-in-thread",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="serve from a web thread of the worker's (STREAMREC_WEB_IN_THREAD) "
        "instead of its main loop (the default), to compare",
    )
    add(
        "--load-tool",
        choices=("vegeta", "python"),
        default="vegeta",
        help="vegeta (built with Go on first use) or this file's asyncio generator",
    )
    add("--startup-timeout", type=float, default=120.0, help="s for the worker")
    add(
        "--nice",
        type=int,
        help="diagnostic: run the worker and the load generator at this "
        "niceness (negative needs root), to tell other load on the machine "
        "apart from stalls of the worker",
    )
    add("--workdir", help="folder for logs and worker state (default: a temp one)")
    add("--keep", action="store_true", help="keep this run's topics and Redis keys")
    return parser


def _check_bounds(args: argparse.Namespace) -> str | None:
    if not 0 < args.rate <= MAX_RATE:
        return f"--rate must be in (0, {MAX_RATE:,.0f}]"
    if not 0 < args.seconds <= MAX_SECONDS:
        return f"--seconds must be in (0, {MAX_SECONDS:g}]"
    if args.users < 1 or not 1 <= args.k <= 1000 or args.connections < 1:
        return "--users and --connections must be positive, --k from 1 to 1000"
    if args.events_rate < 0:
        return "--events-rate must not be negative"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = _check_bounds(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    code, result = run_with_services(lambda settings: run_benchmark(args, settings))
    if result is None:
        return code
    print(render(result))
    print(dumps(result), flush=True)
    return 0 if result["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
