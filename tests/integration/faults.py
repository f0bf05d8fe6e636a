"""Fault injection for the fault tests and ``python -m benchmarks.soak``.

- :class:`PrivateStack`: a Kafka broker and a Redis of one's own, started by
  ``scripts/services.sh`` on free ports in a run folder under ``.run/``, so a
  test can stop and restart them without touching the shared services.
- :func:`hostile_messages`: a seeded fuzzer of malformed events (random
  bytes, wrong types, missing and extra fields, huge ids, NaN and infinities,
  negative and far-future timestamps, broken and odd Unicode).
- :func:`kill_and_restart`: SIGKILL a worker at random moments and measure
  the time from each restart to its first refreshed list.
- :func:`audit`: what the users changelog says was learned, against what was
  produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from aiokafka.errors import KafkaError

from config.security import sync_redis
from config.settings import Settings
from models.events import Event, InvalidEvent, decode_event, encode_event
from models.profiles import decode_profile
from producers.kafka import produce_events
from tests.integration.conftest import (
    ROOT,
    Namespace,
    WorkerProcess,
    consume_all,
    free_port,
    namespace_overrides,
)

SERVICES = ROOT / "scripts" / "services.sh"


# --- a private Kafka and Redis -------------------------------------------------------


@dataclass
class PrivateStack:
    """Kafka + Redis on their own ports and run folder, via scripts/services.sh."""

    run_dir: Path
    redis_password: str = field(default_factory=lambda: "pw-" + uuid.uuid4().hex)
    kafka_port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)
    kafka_heap: str = "512m"

    @classmethod
    def create(cls, name: str) -> PrivateStack:
        return cls(ROOT / ".run" / f"{name}-{uuid.uuid4().hex[:8]}")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        """The URL without the password (it goes in STREAMREC_REDIS_PASSWORD)."""
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def service_env(self) -> dict[str, str]:
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        env.update(
            STREAMREC_KAFKA_PORT=str(self.kafka_port),
            STREAMREC_KAFKA_CONTROLLER_PORT=str(self.controller_port),
            STREAMREC_REDIS_PORT=str(self.redis_port),
            STREAMREC_REDIS_PASSWORD=self.redis_password,
            STREAMREC_RUN_DIR=str(self.run_dir),
            STREAMREC_KAFKA_HEAP=self.kafka_heap,
        )
        return env

    def services(self, *args: str, timeout: float = 180) -> None:
        """Run scripts/services.sh with this stack's ports and run folder."""
        result = subprocess.run(
            [str(SERVICES), *args],
            env=self.service_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"services.sh {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stderr[-3000:]}"
            )

    def start(self) -> PrivateStack:
        self.services("start")
        return self

    def stop(self, *, remove: bool = True) -> None:
        """Stop both (only this stack's pids) and drop the run folder."""
        self.services("stop")
        if remove:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def namespace(self, tmp: Path) -> PrivateNamespace:
        """A fresh app id, topics and key prefix on this stack."""
        return PrivateNamespace.on(self, tmp)


class PrivateNamespace(Namespace):
    """A :class:`Namespace` on a private stack, whose Redis needs a password."""

    @classmethod
    def on(cls, stack: PrivateStack, tmp: Path) -> PrivateNamespace:
        import os

        tag = uuid.uuid4().hex[:10]
        overrides = namespace_overrides(tag, stack.bootstrap, stack.redis_url)
        overrides["STREAMREC_REDIS_PASSWORD"] = stack.redis_password
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        env.update(overrides)
        settings = Settings(
            **{k.removeprefix("STREAMREC_").lower(): v for k, v in overrides.items()}
        )
        tmp.mkdir(parents=True, exist_ok=True)
        return cls(settings, env, tmp)

    @property
    def redis(self) -> redis.Redis:
        return sync_redis(self.settings)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()


# --- producing through faults --------------------------------------------------------


async def produce_through_faults(
    events: Sequence[Event],
    settings: Settings,
    *,
    rate: float | None = None,
    chunk: int = 1000,
    max_tries: int = 20,
) -> int:
    """Produce events in chunks, retrying a chunk the broker refused.

    A retried chunk may be written twice; the worker's event-id dedup makes
    that harmless, which is the at-least-once contract producers get. Returns
    how many chunks had to be retried.
    """
    retried = 0
    for start in range(0, len(events), chunk):
        part = events[start : start + chunk]
        for attempt in range(max_tries):
            try:
                await produce_events(
                    part,
                    bootstrap=settings.kafka_bootstrap,
                    topic=settings.events_topic,
                    partitions=settings.partitions,
                    rate=rate,
                    progress=False,
                )
                break
            except (KafkaError, OSError):
                if attempt == max_tries - 1:
                    raise
                retried += 1
                await asyncio.sleep(1.0)
    return retried


# --- hostile input -------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One message of a hostile stream and what the worker must make of it."""

    key: bytes | None
    value: bytes
    reason: str | None  # None: valid, must be learned
    user_id: str | None = None  # of a valid one


_ODD_IDS = [
    "ü-ß-ø",
    "用户-十七",
    "emoji-😀-🛒",
    "rtl-\u202ename",
    "zero\u200bwidth",
    "nul\u0000inside",
    "tab\tand\nnewline",
    "combining-e\u0301",
    'quote"and\\backslash',
    "\ufeffbom",
]


def hostile_messages(
    n_bad: int, n_good: int, *, seed: int, now_ms: int, max_id_length: int = 128
) -> list[Hostile]:
    """``n_bad`` malformed events interleaved with ``n_good`` valid ones.

    Each malformed one is checked against :func:`decode_event` here, so the
    expected reason is the contract's, and a generator slip (a "malformed"
    event that is in fact valid) fails loudly instead of skewing the test.
    """
    rng = random.Random(seed)
    makers = _MALFORMED
    bad: list[Hostile] = []
    while len(bad) < n_bad:
        value = rng.choice(makers)(rng, now_ms)
        try:
            decode_event(value, max_id_length=max_id_length, now_ms=now_ms)
        except InvalidEvent as exc:
            key = rng.choice([None, b"", b"u-bad", rng.randbytes(8)])
            bad.append(Hostile(key, value, exc.reason))
    good = [_valid(rng, n, now_ms) for n in range(n_good)]
    messages = bad + good
    rng.shuffle(messages)
    return messages


def _valid(rng: random.Random, n: int, now_ms: int) -> Hostile:
    user = f"u{n % 500}" if n % 10 else f"{rng.choice(_ODD_IDS)}-{n % 37}"
    body = {
        "event_id": f"h{n}",
        "user_id": user,
        "item_id": f"i{rng.randrange(400)}",
        "event_type": rng.choice(["view", "click", "add_to_cart", "purchase"]),
        "timestamp": now_ms - rng.randrange(10**6),
    }
    if n % 3 == 0:
        body["unknown_field"] = {"nested": [1, 2, 3]}  # extra fields are allowed
    if n % 5 == 0:
        body.update(price=round(rng.random() * 100, 2), quantity=rng.randrange(1, 5))
    value = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode()
    return Hostile(user.encode(), value, None, user)


def _base(rng: random.Random, now_ms: int) -> dict:
    return {
        "event_id": f"x{rng.randrange(10**9)}",
        "user_id": f"u{rng.randrange(500)}",
        "item_id": f"i{rng.randrange(400)}",
        "event_type": "view",
        "timestamp": now_ms,
    }


def _dump(body: object) -> bytes:
    return json.dumps(body).encode()


def _random_bytes(rng: random.Random, now_ms: int) -> bytes:
    return rng.randbytes(rng.randrange(0, 300))


def _truncated(rng: random.Random, now_ms: int) -> bytes:
    raw = _dump(_base(rng, now_ms))
    return raw[: rng.randrange(0, len(raw) - 1)]


def _wrong_type(rng: random.Random, now_ms: int) -> bytes:
    body = _base(rng, now_ms)
    name = rng.choice([*list(body), "price", "quantity", "session_id"])
    body[name] = rng.choice(
        [7, -1, 3.5, True, None, [], {}, "12", {"$gt": ""}, [1, "a"], 2**70]
    )
    return _dump(body)


def _missing(rng: random.Random, now_ms: int) -> bytes:
    body = _base(rng, now_ms)
    for name in rng.sample(list(body), rng.randrange(1, len(body) + 1)):
        del body[name]
    body[f"extra_{rng.randrange(100)}"] = "x" * rng.randrange(100)
    return _dump(body)


def _huge(rng: random.Random, now_ms: int) -> bytes:
    body = _base(rng, now_ms)
    name = rng.choice(["event_id", "user_id", "item_id", "session_id"])
    body[name] = rng.choice(["9", "ä", "😀", "x"]) * rng.choice([129, 1025, 20_000])
    return _dump(body)


def _not_finite(rng: random.Random, now_ms: int) -> bytes:
    name = rng.choice(["price", "timestamp", "quantity"])
    token = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "nan"])
    body = _base(rng, now_ms)
    body[name] = "@@"
    return _dump(body).replace(b'"@@"', token.encode())


def _bad_timestamp(rng: random.Random, now_ms: int) -> bytes:
    body = _base(rng, now_ms)
    body["timestamp"] = rng.choice(
        [-1, -(2**63), now_ms + 10**9, 2**63, 2**64 + 5, 10**30, now_ms + 3_600_000]
    )
    return _dump(body)


def _bad_event_type(rng: random.Random, now_ms: int) -> bytes:
    body = _base(rng, now_ms)
    body["event_type"] = rng.choice(["like", "VIEW", "", "view ", "purchase\u0000"])
    return _dump(body)


def _broken_unicode(rng: random.Random, now_ms: int) -> bytes:
    raw = _dump(_base(rng, now_ms))
    junk = rng.choice(
        [b"\\ud800", b"\\udfff", b"\\ud83d", b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80"]
    )
    return raw.replace(b'"u', b'"u' + junk, 1)


def _not_an_object(rng: random.Random, now_ms: int) -> bytes:
    return _dump(
        rng.choice([[], [1, 2], "event", 17, None, True, 1.5, [_base(rng, 0)]])
    )


def _empty_id(rng: random.Random, now_ms: int) -> bytes:
    body = _base(rng, now_ms)
    body[rng.choice(["event_id", "user_id", "item_id"])] = ""
    return _dump(body)


_MALFORMED: list[Callable[[random.Random, int], bytes]] = [
    _random_bytes,
    _truncated,
    _wrong_type,
    _missing,
    _huge,
    _not_finite,
    _bad_timestamp,
    _bad_event_type,
    _broken_unicode,
    _not_an_object,
    _empty_id,
]


# --- killing a worker ----------------------------------------------------------------


@dataclass
class KillReport:
    kills: int = 0
    recovery_s: list[float] = field(default_factory=list)
    duplicates_seen: float = 0.0  # summed over incarnations, scraped before each kill

    def summary(self) -> dict[str, float]:
        values = sorted(self.recovery_s)
        if not values:
            return {"kills": self.kills}
        return {
            "kills": self.kills,
            "recovery_p50_s": round(values[len(values) // 2], 2),
            "recovery_max_s": round(values[-1], 2),
        }


def start_and_time_first_list(
    ns: Namespace, name: str, timeout: float = 120
) -> tuple[WorkerProcess, float]:
    """Start a worker; return it with the seconds to its first published list."""
    started = time.monotonic()
    worker = ns.worker(name).start(ready_timeout=timeout)
    worker.wait_for(
        lambda: worker.metrics().get("streamrec_lists_published_total:sum", 0) > 0,
        timeout,
        "publishing",
    )
    return worker, time.monotonic() - started


def kill_and_restart(
    ns: Namespace,
    kills: int,
    *,
    seed: int,
    keep_going: Callable[[], bool] = lambda: True,
    alive_s: tuple[float, float] = (0.5, 3.0),
) -> tuple[WorkerProcess, KillReport]:
    """SIGKILL the worker ``kills`` times, each after a random time alive.

    Returns the last (running) worker and the recovery times: from starting a
    process to its first refreshed list.
    """
    rng = random.Random(seed)
    report = KillReport()
    worker, _ = start_and_time_first_list(ns, "k0")
    for n in range(1, kills + 1):
        if not keep_going():
            break
        time.sleep(rng.uniform(*alive_s))
        with contextlib.suppress(OSError):
            report.duplicates_seen += worker.metrics().get(
                "streamrec_events_duplicate_total", 0
            )
        worker.kill()
        report.kills += 1
        worker, seconds = start_and_time_first_list(ns, f"k{n}")
        report.recovery_s.append(seconds)
    return worker, report


# --- auditing ------------------------------------------------------------------------


def changelog_state(ns: Namespace, timeout: float = 30) -> dict[str, bytes | None]:
    """Each key's last record in the users changelog (None: a tombstone)."""
    topic = f"{ns.settings.app_id}-users-changelog"
    records = consume_all(ns.settings.kafka_bootstrap, topic, timeout=timeout)
    state: dict[str, bytes | None] = {}
    for record in records:
        state[record.key.decode()] = record.value
    return state


def learned_counts(ns: Namespace) -> dict[str, int]:
    """Events learned per shopper, from the profiles in the users changelog."""
    return {
        user: decode_profile(value).n_events
        for user, value in changelog_state(ns).items()
        if value is not None
    }


@dataclass
class Audit:
    produced: int
    learned: int
    lost: int  # events produced but not in any profile
    learned_twice: int  # events counted more than once (redelivered, not deduped)
    shoppers: int
    shoppers_without_list: int

    def ok(self) -> bool:
        return self.lost == 0 and self.shoppers_without_list == 0


def audit(ns: Namespace, produced: Counter[str]) -> Audit:
    learned = learned_counts(ns)
    lost = sum(max(0, n - learned.get(user, 0)) for user, n in produced.items())
    twice = sum(max(0, learned.get(user, 0) - n) for user, n in produced.items())
    prefix = ns.settings.key_prefix
    listed = {
        key.decode(errors="replace").removeprefix(prefix) for key in ns.list_keys()
    }
    return Audit(
        produced=sum(produced.values()),
        learned=sum(learned.values()),
        lost=lost,
        learned_twice=twice,
        shoppers=len(produced),
        shoppers_without_list=len(set(produced) - listed),
    )


def wait_until_learned(
    worker: WorkerProcess, ns: Namespace, expected: int, timeout: float
) -> None:
    """Wait until the users changelog holds ``expected`` learned events."""

    def done() -> bool:
        worker.metrics()  # raises (and so retries) until the worker answers
        return sum(learned_counts(ns).values()) >= expected

    worker.wait_for(done, timeout, f"{expected} events learned")


def chunks(values: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def event_values(events: Sequence[Event]) -> list[tuple[bytes | None, bytes]]:
    return [(e.user_id.encode(), encode_event(e)) for e in events]
