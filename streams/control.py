"""Commands on the control topic: today one, ``forget`` a shopper.

A command is JSON keyed by the shopper's user id, so Kafka's default
partitioner puts it on the same partition number as the shopper's events.
The control topic has as many partitions as ``events`` and the learner
subscribes to both, so Faust's assignor gives partition *p* of both to the
same worker: the one holding the shopper's profile::

    {"command": "forget", "user_id": "u-17", "requested_at": 1764780000123}

The worker handles a forget in its learning agent, between micro-batches of
events, so it never races a batch that is learning the same shopper
(``streams/worker.py``, ``StreamrecWorker.forget``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from models.events import InvalidEvent
from producers.kafka import ProduceReport, produce_raw

Command = Literal["forget"]


class ControlCommand(msgspec.Struct, frozen=True):
    """One command for the worker that owns ``user_id``."""

    command: Command
    user_id: str
    requested_at: int = 0  # Unix ms, for the audit trail


_decoder = msgspec.json.Decoder(ControlCommand)
_encoder = msgspec.json.Encoder()


def forget_command(user_id: str, now_ms: int | None = None) -> ControlCommand:
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    return ControlCommand("forget", user_id, stamp)


def encode_command(command: ControlCommand) -> bytes:
    return _encoder.encode(command)


def decode_command(raw: bytes | None, *, max_id_length: int = 128) -> ControlCommand:
    """Decode one control message, or raise :class:`InvalidEvent`.

    The reasons are the events' (``not_json``, ``schema``, ``id_too_long``),
    so a bad command lands in the dead-letter topic like a bad event.
    """
    if not raw:
        raise InvalidEvent("not_json", "the message has no value")
    try:
        command = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidEvent("schema", str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise InvalidEvent("not_json", str(exc)) from exc
    if not command.user_id:
        raise InvalidEvent("schema", "user_id is empty")
    if len(command.user_id) > max_id_length:
        raise InvalidEvent(
            "id_too_long",
            f"user_id has {len(command.user_id)} characters, "
            f"the limit is {max_id_length}",
        )
    return command


async def send_forget(
    user_ids: Iterable[str],
    *,
    bootstrap: str,
    topic: str,
    partitions: int,
    client_options: Mapping[str, Any] | None = None,
) -> ProduceReport:
    """Put a forget command for each shopper on the control topic."""
    records: list[tuple[bytes | None, bytes]] = [
        (user_id.encode(), encode_command(forget_command(user_id)))
        for user_id in user_ids
    ]
    return await produce_raw(
        records,
        bootstrap=bootstrap,
        topic=topic,
        partitions=partitions,
        client_options=client_options,
    )
