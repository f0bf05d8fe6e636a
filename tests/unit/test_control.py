"""Control commands: their wire format, and how a batch is split around them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from models.events import InvalidEvent
from streams.control import decode_command, encode_command, forget_command
from streams.worker import _runs


def test_a_forget_round_trips() -> None:
    command = forget_command("u-17", now_ms=123)
    assert decode_command(encode_command(command)) == command
    assert b'"command":"forget"' in encode_command(command)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not_json"),
        (None, "not_json"),
        (b"{", "not_json"),
        (b'{"command": "drop_all", "user_id": "u"}', "schema"),
        (b'{"command": "forget"}', "schema"),
        (b'{"command": "forget", "user_id": ""}', "schema"),
        (b'{"command": "forget", "user_id": 17}', "schema"),
        (b'{"command": "forget", "user_id": "' + b"u" * 200 + b'"}', "id_too_long"),
    ],
)
def test_bad_commands_have_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as error:
        decode_command(raw)
    assert error.value.reason == reason


def _record(topic: str) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(topic=topic))


def test_a_batch_splits_into_runs_in_arrival_order() -> None:
    topics = ["e", "e", "c", "e", "c", "c"]
    batch = [_record(t) for t in topics]
    assert _runs(batch, "c") == [
        (0, 2, False),
        (2, 3, True),
        (3, 4, False),
        (4, 6, True),
    ]
    assert _runs([_record("e")] * 3, "c") == [(0, 3, False)]
    assert _runs([], "c") == []
