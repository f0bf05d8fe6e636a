"""Operator commands of ``streamrec``: similar items, trending, dead letters.

``streamrec similar ITEM`` asks a running worker's API (only a worker holds the
item factors); ``streamrec trending`` reads the list the workers publish to
Redis; ``streamrec dead-letters`` reads the dead-letter topic from its start,
outside any consumer group (it moves no offsets), and prints the counts by
reason and a few samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from config.security import kafka_client_options, sync_redis
from config.settings import Settings


def add_operator_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``similar``, ``trending`` and ``dead-letters`` on the CLI."""
    similar = commands.add_parser(
        "similar", help="items close to an item, from a running worker's API"
    )
    similar.add_argument("item", help="item id")
    similar.add_argument("-k", type=int, default=10, help="how many (default 10)")
    similar.add_argument("--metric", choices=["cosine", "dot"], default="cosine")
    similar.add_argument(
        "--url",
        help="the worker's API (default http://127.0.0.1:STREAMREC_WEB_PORT)",
    )
    similar.set_defaults(run=run_similar)

    trending = commands.add_parser("trending", help="print the trending list")
    trending.add_argument("-k", type=int, default=20, help="how many (default 20)")
    trending.set_defaults(run=run_trending)

    dead = commands.add_parser(
        "dead-letters",
        help="count the dead-letter topic's events by reason, show samples",
    )
    dead.add_argument(
        "--samples", type=int, default=3, help="samples shown per reason (default 3)"
    )
    dead.add_argument(
        "--max",
        type=int,
        default=1_000_000,
        help="read at most this many records (default 1,000,000)",
    )
    dead.set_defaults(run=run_dead_letters)


# --- similar ---------------------------------------------------------------------


def run_similar(settings: Settings, args: argparse.Namespace) -> int:
    base = args.url or f"http://127.0.0.1:{settings.web_port}"
    query = urllib.parse.urlencode({"k": args.k, "metric": args.metric})
    item = urllib.parse.quote(args.item, safe="")
    url = f"{base.rstrip('/')}/items/{item}/similar?{query}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        print(f"{args.item}: {_error_message(exc)}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(
            f"no worker answers at {base} ({exc}); start one with "
            "`streamrec worker` or pass --url",
            file=sys.stderr,
        )
        return 2
    print(
        f"{args.item}: {len(body['items'])} nearest by {body['metric']} "
        f"(replica v{body['model_version']}, {body['items_known']} items)"
    )
    _print_ranked(body["items"], body["scores"])
    return 0


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(error)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {error.code}"


# --- trending --------------------------------------------------------------------


def run_trending(settings: Settings, args: argparse.Namespace) -> int:
    from streams.trending import decode_trending

    payload = sync_redis(settings).get(settings.trending_key)
    if payload is None:
        print(
            f"no trending list at {settings.trending_key} yet: is a worker of app "
            f"{settings.app_id!r} running?"
        )
        return 1
    trending = decode_trending(payload)
    print(
        f"trending ({settings.trending_key}, window {trending.window_s} s, "
        f"half-life {trending.half_life_s:g} s):"
    )
    _print_ranked(trending.items[: args.k], trending.scores[: args.k])
    return 0


def _print_ranked(items: list[str], scores: list[float]) -> None:
    for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1):
        print(f"  {rank:>3}. {item}  {score:.4f}")


# --- dead letters ----------------------------------------------------------------


@dataclass
class DeadLetterReport:
    """Counts by reason of a dead-letter topic, with a few samples each."""

    total: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def add(self, headers: dict[str, str], value: bytes | None, keep: int) -> None:
        reason = headers.get("reason", "(no reason header)")
        self.total += 1
        self.by_reason[reason] += 1
        kept = self.samples.setdefault(reason, [])
        if len(kept) < keep:
            text = (value or b"").decode("utf-8", errors="replace")
            kept.append(
                {
                    "source": headers.get("source", "?"),
                    "detail": headers.get("detail", ""),
                    "value": text[:200] + ("..." if len(text) > 200 else ""),
                }
            )


def run_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(read_dead_letters(settings, args.samples, args.max))
    except Exception as exc:
        print(
            f"could not read {settings.dead_letter_topic} from "
            f"{settings.kafka_bootstrap}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 2
    print(f"{settings.dead_letter_topic}: {report.total} dead letters")
    for reason, count in report.by_reason.most_common():
        print(f"  {reason}: {count}")
        for sample in report.samples[reason]:
            print(f"      at {sample['source']}: {sample['detail']}")
            print(f"        {sample['value']}")
    return 0


async def read_dead_letters(
    settings: Settings, samples: int, max_records: int
) -> DeadLetterReport:
    """Read the dead-letter topic from its start to the end it had at the start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=10_000,
        **kafka_client_options(settings),
    )
    await consumer.start()
    report = DeadLetterReport()
    try:
        if settings.dead_letter_topic not in await consumer.topics():
            return report  # no topic yet: nothing was ever invalid
        # the worker creates the topic with STREAMREC_PARTITIONS partitions
        topic = settings.dead_letter_topic
        assigned = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        end = await consumer.end_offsets(assigned)
        pending = {tp for tp in assigned if end[tp] > 0}
        while pending and report.total < max_records:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < end[tp] and report.total < max_records:
                        headers = {
                            k: v.decode("utf-8", "replace") for k, v in record.headers
                        }
                        report.add(headers, record.value, samples)
            pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
        return report
    finally:
        await consumer.stop()
