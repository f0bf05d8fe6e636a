"""Fixtures for tests against the real Kafka broker and Redis.

The services come from ``scripts/services.sh start`` (``.ci/run`` and
``scripts/test.sh`` start them); their addresses from ``STREAMREC_KAFKA_BOOTSTRAP``
and ``STREAMREC_REDIS_URL``. These tests never skip: without the services they
fail and say how to start them. Every test gets its own app id, topics and
Redis key prefix, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from config.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
HOW_TO_START = (
    "start them with: scripts/services.sh start && eval $(scripts/services.sh env)"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    settings = load_settings()
    _check_kafka(settings.kafka_bootstrap)
    _check_redis(settings.redis_url)
    return settings


def _check_kafka(bootstrap: str) -> None:
    async def probe() -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=5000
        )
        await admin.start()
        try:
            await admin.list_topics()
        finally:
            await admin.close()

    try:
        asyncio.run(asyncio.wait_for(probe(), 20))
    except Exception as exc:
        pytest.fail(f"Kafka at {bootstrap} does not answer ({exc!r}); {HOW_TO_START}")


def _check_redis(url: str) -> None:
    try:
        redis.Redis.from_url(url, socket_timeout=5).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis does not answer ({type(exc).__name__}); {HOW_TO_START}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Namespace:
    """One test's private app id, topics and Redis prefix."""

    settings: Settings
    env: dict[str, str]
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def worker(self, name: str = "w1") -> WorkerProcess:
        env = dict(self.env)
        env["STREAMREC_WEB_PORT"] = str(free_port())
        env["STREAMREC_DATA_DIR"] = str(self.tmp / name)
        process = WorkerProcess(name, env, self.tmp / f"{name}.log")
        self.workers.append(process)
        return process

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url)

    def list_keys(self) -> list[bytes]:
        return list(self.redis.scan_iter(match=self.settings.key_prefix + "*"))


def namespace_overrides(tag: str, bootstrap: str, redis_url: str) -> dict[str, str]:
    """Settings giving one test its own app id, topics and Redis prefix."""
    return {
        "STREAMREC_APP_ID": f"test-{tag}",
        "STREAMREC_EVENTS_TOPIC": f"events-{tag}",
        "STREAMREC_RECOMMENDATIONS_TOPIC": f"recommendations-{tag}",
        "STREAMREC_DEAD_LETTER_TOPIC": f"dead-letter-{tag}",
        "STREAMREC_ITEM_UPDATES_TOPIC": f"item-updates-{tag}",
        "STREAMREC_CONTROL_TOPIC": f"control-{tag}",
        "STREAMREC_KEY_PREFIX": f"rec:{tag}:",
        "STREAMREC_KAFKA_BOOTSTRAP": bootstrap,
        "STREAMREC_REDIS_URL": redis_url,
    }


@pytest.fixture
def namespace(base_settings: Settings, tmp_path: Path) -> Iterator[Namespace]:
    tag = uuid.uuid4().hex[:10]
    overrides = namespace_overrides(
        tag, base_settings.kafka_bootstrap, base_settings.redis_url
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(overrides)
    settings = Settings(
        **{k.removeprefix("STREAMREC_").lower(): v for k, v in overrides.items()}
    )
    ns = Namespace(settings, env, tmp_path)
    yield ns
    for worker in ns.workers:
        worker.stop()
    keys = ns.list_keys()
    if keys:
        ns.redis.delete(*keys)


class WorkerProcess:
    """A ``streamrec worker`` subprocess with its own web port and log."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_path
        self.port = int(env["STREAMREC_WEB_PORT"])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 90.0) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait_for(lambda: "replica caught up" in self.log(), ready_timeout, "ready")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit, no flush."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def metrics(self) -> dict[str, float]:
        """The worker's metrics as {'name{label="v"}': value}, summed per name too."""
        import urllib.request

        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.port}/metrics", timeout=5
        ) as r:
            text = r.read().decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(
                    f'{k}="{v}"' for k, v in sorted(sample.labels.items())
                )
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = (
                    sample.value
                )
                values[sample.name + ":sum"] = (
                    values.get(sample.name + ":sum", 0.0) + sample.value
                )
        return values

    def scrape(self) -> str:
        import urllib.request

        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.port}/metrics", timeout=5
        ) as r:
            return r.read().decode()

    def wait_for(
        self,
        condition: Callable[[], bool],
        timeout: float,
        what: str | Callable[[], str],
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(
                    f"worker {self.name} exited; log:\n{self.log()[-4000:]}"
                )
            try:
                if condition():
                    return
            except OSError:
                pass  # the web server is not up yet
            time.sleep(0.2)
        tail = self.log()[-4000:]
        what = what() if callable(what) else what
        raise AssertionError(
            f"worker {self.name}: not {what} after {timeout} s:\n{tail}"
        )


def consume_all(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    timeout: float = 60.0,
    partitions: int = 8,
) -> list:
    """Read a topic from the start: until ``expected`` records, or (None) until
    the end offsets it had when reading began; at most ``timeout`` seconds."""

    async def run() -> list:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout
            while topic not in await consumer.topics():
                if time.monotonic() > deadline:
                    return []
                await asyncio.sleep(0.2)
            assigned = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            end = await consumer.end_offsets(assigned)
            records: list = []

            async def done() -> bool:
                if expected is not None:
                    return len(records) >= expected
                for partition in assigned:
                    if await consumer.position(partition) < end[partition]:
                        return False
                return True

            while not await done() and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for part in batch.values():
                    records.extend(part)
            return records
        finally:
            await consumer.stop()

    return asyncio.run(run())


@pytest.fixture(scope="session")
def private_stack() -> Iterator[object]:
    """A Kafka broker and a Redis (with requirepass) of the fault tests' own.

    Started by scripts/services.sh on free ports in a run folder under
    .run/, so tests may stop and restart them; the shared services are never
    touched. Stopped (only its own pids) and removed at the end; the run
    folder, with its logs, is kept when the start failed.
    """
    from tests.integration.faults import PrivateStack

    stack = PrivateStack.create("fault-stack")
    try:
        stack.start()
    except Exception as exc:
        stack.stop(remove=False)
        pytest.fail(f"the private stack did not start: {exc}")
    yield stack
    stack.stop()


@pytest.fixture
def private_namespace(private_stack: object, tmp_path: Path) -> Iterator[Namespace]:
    """A namespace (app id, topics, key prefix) on the private stack."""
    namespace = private_stack.namespace(tmp_path)  # type: ignore[attr-defined]
    yield namespace
    namespace.close()
