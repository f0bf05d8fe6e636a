"""``streamrec``: one command line for the worker, the producers, the in-process
replay and reading a shopper's list back.

Settings come from ``STREAMREC_*`` environment variables (README.md,
"Configuration"); flags here only choose what to run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from config.security import kafka_client_options, sync_redis
from config.settings import ConfigError, Settings, load_settings
from streams.ops import add_operator_commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.loglevel.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        overrides = {
            name: getattr(args, name)
            for name in ("web_port", "data_dir", "app_id")
            if getattr(args, name, None) is not None
        }
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return int(args.run(settings, args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrec",
        description="Real-time shop recommendations: Kafka events in, "
        "fresh top-K lists in Redis out.",
        epilog="Settings are read from STREAMREC_* environment variables; "
        "see README.md#configuration.",
    )
    parser.add_argument(
        "--loglevel", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run a streaming worker")
    worker.add_argument("--web-port", type=int, help="port of /metrics (default 6066)")
    worker.add_argument("--data-dir", help="folder for this worker's state")
    worker.add_argument("--app-id", help="Faust app id (consumer group)")
    worker.set_defaults(run=_run_worker)

    produce = commands.add_parser(
        "produce", help="replay a dataset file onto the events topic"
    )
    produce.add_argument("path", help="dataset file (.csv, .jsonl, .gz)")
    _add_format(produce)
    produce.add_argument("--rate", type=float, help="events per second (default: max)")
    produce.add_argument("--limit", type=int, help="stop after this many events")
    produce.add_argument(
        "--retime",
        action="store_true",
        help="stamp events with the time they are sent (keeps their order)",
    )
    produce.set_defaults(run=_run_produce)

    generate = commands.add_parser(
        "generate", help="stream a synthetic shop onto the events topic"
    )
    generate.add_argument("--events", type=int, help="how many (default: endless)")
    generate.add_argument("--rate", type=float, help="events per second (default: max)")
    generate.add_argument("--users", type=int, default=5000)
    generate.add_argument("--items", type=int, default=10_000)
    generate.add_argument("--seed", type=int, default=7)
    generate.set_defaults(run=_run_generate)

    replay = commands.add_parser(
        "replay", help="learn a dataset in-process (no Kafka) and report speed"
    )
    replay.add_argument("path", help="dataset file (.csv, .jsonl, .gz)")
    _add_format(replay)
    replay.add_argument("--batch-size", type=int, default=256)
    replay.add_argument("--limit", type=int, help="stop after this many events")
    replay.add_argument("--show", type=int, default=3, help="lists to print at the end")
    replay.set_defaults(run=_run_replay)

    _add_evaluate(commands)

    forget = commands.add_parser(
        "forget",
        help="remove shoppers everywhere: profile, Redis list, list topic",
        description="Send a forget command per shopper on the control topic; "
        "the worker owning each shopper deletes the profile (a tombstone in the "
        "users changelog), the Redis list and the list on the recommendations "
        "topic (a tombstone).",
    )
    forget.add_argument("users", nargs="+", help="user ids")
    forget.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="then wait up to S seconds for their Redis lists to be gone",
    )
    forget.set_defaults(run=_run_forget)

    show = commands.add_parser("show", help="print shoppers' lists from Redis")
    show.add_argument("users", nargs="+", help="user ids")
    show.set_defaults(run=_run_show)
    add_operator_commands(commands)  # similar, trending, dead-letters
    return parser


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=["movielens", "otto", "otto-jsonl", "taobao", "csv"],
        help="file format (default: detected)",
    )


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="prequential quality (HR/MRR/NDCG) of streamrec and popularity",
        description="Replay a dataset in-process through the worker's model, "
        "test-then-train as ../shared/EVALUATION.md says, beside the popularity "
        "baseline.",
    )
    evaluate.add_argument("path", help="dataset file (.csv, .jsonl, .gz)")
    _add_format(evaluate)
    evaluate.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="micro-batch B: tests of a batch see the state before it (default 1)",
    )
    evaluate.add_argument("--limit", type=int, help="read only this many events")
    evaluate.add_argument(
        "--half",
        choices=["first", "second"],
        help="first: the stream's first half only (tune here); second: the "
        "whole stream, tests of its second half only (confirm here)",
    )
    evaluate.add_argument(
        "--fav-as",
        default="click",
        choices=["drop", "view", "click", "add_to_cart", "purchase"],
        help="Taobao 'fav' lines: the event type they become, or drop "
        "(default click; the data README's check values count them)",
    )
    evaluate.add_argument("--json-out", help="write the figures to this JSON file")
    evaluate.add_argument("--plot", help="write a PNG of rolling HR@20 here")
    evaluate.add_argument(
        "--window",
        type=int,
        help="tests per rolling-HR point (default: a twentieth of them, at least 100)",
    )
    evaluate.add_argument(
        "--python-loop",
        action="store_true",
        help="at micro-batch 1, replay through the worker's Python objects "
        "instead of the compiled loop (the same learning, ~10x slower)",
    )
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(run=_run_evaluate)


def _run_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    if args.batch_size < 1 or (args.window is not None and args.window < 1):
        print("--batch-size and --window must be at least 1", file=sys.stderr)
        return 2
    # One BLAS thread, as the worker runs (set before numpy loads).
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    from streams.evaluate import run_evaluate
    from streams.worker import mf_config

    return run_evaluate(args, mf_config(settings))


def _run_worker(settings: Settings, args: argparse.Namespace) -> int:
    # One BLAS thread: a worker is one event loop, and a second BLAS thread
    # only competes with Kafka and Redis for the cores (set before numpy loads).
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    import faust

    from streams.worker import StreamrecWorker

    worker = StreamrecWorker(settings)
    asyncio.run(worker.create_topics())
    logging.getLogger(__name__).info(
        "worker starting: kafka=%s redis=%s app_id=%s",
        settings.kafka_bootstrap,
        settings.redis_url_redacted,
        settings.app_id,
    )
    faust.Worker(worker.app, loglevel=args.loglevel).execute_from_commandline()
    return 0


def _run_produce(settings: Settings, args: argparse.Namespace) -> int:
    from producers.datasets import read_events
    from producers.kafka import produce_events

    events = read_events(args.path, args.format, limit=args.limit)
    report = asyncio.run(
        produce_events(
            events,
            bootstrap=settings.kafka_bootstrap,
            topic=settings.events_topic,
            partitions=settings.partitions,
            rate=args.rate,
            total=len(events),
            retime=args.retime,
            client_options=kafka_client_options(settings),
        )
    )
    print(
        f"produced {report.events} events in {report.seconds:.1f} s "
        f"({report.events_per_second:,.0f} events/s) to {settings.events_topic}"
    )
    return 0


def _run_generate(settings: Settings, args: argparse.Namespace) -> int:
    from producers.kafka import produce_events
    from producers.synthetic import SyntheticShop

    shop = SyntheticShop(n_users=args.users, n_items=args.items, seed=args.seed)
    report = asyncio.run(
        produce_events(
            shop.events(args.events),
            bootstrap=settings.kafka_bootstrap,
            topic=settings.events_topic,
            partitions=settings.partitions,
            rate=args.rate,
            total=args.events,
            retime=True,
            client_options=kafka_client_options(settings),
        )
    )
    print(
        f"produced {report.events} events in {report.seconds:.1f} s "
        f"({report.events_per_second:,.0f} events/s) to {settings.events_topic}"
    )
    return 0


def _run_replay(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models.replay import replay
    from producers.datasets import read_events
    from streams.worker import mf_config

    events = read_events(args.path, args.format, limit=args.limit)
    with tqdm(total=len(events), unit="ev", desc="replay", file=sys.stderr) as bar:
        replayer, report = replay(
            events,
            mf_config(settings),
            batch_size=args.batch_size,
            k=settings.top_k,
            progress=bar.update,
        )
    print(
        f"events={report.events} learned={report.learned} "
        f"duplicates={report.duplicates} users={report.users} items={report.items} "
        f"seconds={report.seconds:.2f} events_per_s={report.events_per_second:,.0f}"
    )
    users = list(replayer.profiles)[: args.show]
    for rec in replayer.lists_for(users):
        print(f"{rec.user_id}: {' '.join(rec.items[:10])}")
    return 0


def _run_forget(settings: Settings, args: argparse.Namespace) -> int:
    import time

    from streams.control import send_forget

    asyncio.run(
        send_forget(
            args.users,
            bootstrap=settings.kafka_bootstrap,
            topic=settings.control_topic,
            partitions=settings.partitions,
            client_options=kafka_client_options(settings),
        )
    )
    print(f"sent forget for {len(args.users)} shoppers to {settings.control_topic}")
    if args.wait <= 0:
        return 0
    client = sync_redis(settings)
    keys = [settings.key_prefix + user_id for user_id in args.users]
    deadline = time.monotonic() + args.wait
    while (left := client.exists(*keys)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left:
        print(f"{left} lists still in Redis after {args.wait:g} s", file=sys.stderr)
        return 1
    print("their lists are gone from Redis")
    return 0


def _run_show(settings: Settings, args: argparse.Namespace) -> int:
    from streams.publisher import decode_list

    client = sync_redis(settings)
    missing = 0
    for user_id in args.users:
        payload = client.get(settings.key_prefix + user_id)
        if payload is None:
            print(f"{user_id}: no list (unknown shopper, or expired)")
            missing += 1
            continue
        entry = decode_list(payload)
        kind = "personal" if entry.personal else "popular"
        print(
            f"{user_id} ({kind}, model v{entry.model_version}, "
            f"after event {entry.event_id}):"
        )
        for rank, (item, score) in enumerate(
            zip(entry.items, entry.scores, strict=True), start=1
        ):
            print(f"  {rank:>3}. {item}  {score:.4f}")
    return 1 if missing == len(args.users) else 0


if __name__ == "__main__":
    raise SystemExit(main())
