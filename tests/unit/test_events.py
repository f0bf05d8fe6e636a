"""The event contract: what decode_event accepts, and why it refuses the rest."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import (
    EVENT_TYPES,
    REASONS,
    Event,
    InvalidEvent,
    decode_event,
    encode_event,
)

NOW_MS = 1_700_000_000_000
VALID = {
    "event_id": "e-1",
    "user_id": "u-7",
    "item_id": "sku-42",
    "event_type": "purchase",
    "timestamp": NOW_MS - 1_000,
    "session_id": "s-1",
    "price": 19.9,
    "quantity": 2,
}


def raw(**changes: object) -> bytes:
    fields = {**VALID, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


def refusal(payload: bytes | None, **options: int) -> str:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(payload, now_ms=NOW_MS, **options)
    assert caught.value.reason in REASONS
    assert str(caught.value).startswith(caught.value.reason + ": ")
    return caught.value.reason


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_type_is_accepted_with_all_optional_fields(event_type):
    event = decode_event(raw(event_type=event_type), now_ms=NOW_MS)

    assert event == Event(
        "e-1", "u-7", "sku-42", event_type, NOW_MS - 1_000, "s-1", 19.9, 2
    )


def test_optional_fields_may_be_missing_or_null():
    missing = raw(session_id=..., price=..., quantity=...)
    null = raw(session_id=None, price=None, quantity=None)

    for payload in (missing, null):
        event = decode_event(payload, now_ms=NOW_MS)
        assert (event.session_id, event.price, event.quantity) == (None, None, None)


def test_unknown_extra_fields_are_ignored():
    event = decode_event(raw(campaign="spring"), now_ms=NOW_MS)

    assert event.event_id == "e-1"


def test_integer_price_and_zero_values_at_the_bounds_are_accepted():
    event = decode_event(raw(price=0, timestamp=0, quantity=1), now_ms=NOW_MS)

    assert (event.price, event.timestamp, event.quantity) == (0.0, 0, 1)


@pytest.mark.parametrize(
    "payload",
    [None, b"", b"not json", b"{", b'{"event_id": "e-1",', b"\xff\xfe"],
    ids=["none", "empty", "text", "open_brace", "truncated", "bad_utf8"],
)
def test_a_value_that_is_not_json_is_refused_as_not_json(payload):
    assert refusal(payload) == "not_json"


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id", "timestamp"])
def test_a_missing_required_field_is_refused_as_schema(field):
    assert refusal(raw(**{field: ...})) == "schema"


def test_a_missing_event_type_is_refused_as_schema():
    assert refusal(raw(event_type=...)) == "schema"


@pytest.mark.parametrize(
    "changes",
    [
        {"event_id": 17},
        {"user_id": ["u"]},
        {"item_id": None},
        {"timestamp": "1700000000000"},
        {"timestamp": 1.5},
        {"timestamp": True},
        {"price": "19.90"},
        {"quantity": 1.5},
        {"session_id": 3},
    ],
    ids=lambda changes: next(iter(changes)) + "=" + repr(next(iter(changes.values()))),
)
def test_a_field_of_the_wrong_type_is_refused_as_schema(changes):
    assert refusal(raw(**changes)) == "schema"


@pytest.mark.parametrize(
    "payload",
    [b"null", b"[1, 2]", b'"event"', b"42"],
    ids=["null", "array", "str", "int"],
)
def test_json_that_is_not_an_object_is_refused_as_schema(payload):
    assert refusal(payload) == "schema"


@pytest.mark.parametrize(
    "changes",
    [{"price": -0.01}, {"timestamp": -1}, {"quantity": 0}, {"quantity": -3}],
    ids=["price", "timestamp", "quantity_zero", "quantity_negative"],
)
def test_a_negative_or_zero_amount_is_refused_as_schema(changes):
    assert refusal(raw(**changes)) == "schema"


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id", "session_id"])
def test_an_empty_id_is_refused_as_schema_not_as_too_long(field):
    assert refusal(raw(**{field: ""})) == "schema"


@pytest.mark.parametrize("event_type", ["refund", "View", "", "add-to-cart"])
def test_an_unknown_event_type_is_refused_as_unknown_event_type(event_type):
    assert refusal(raw(event_type=event_type)) == "unknown_event_type"


def test_a_timestamp_beyond_the_allowed_future_is_refused():
    at_limit = raw(timestamp=NOW_MS + 300_000)
    beyond = raw(timestamp=NOW_MS + 300_001)

    assert decode_event(at_limit, now_ms=NOW_MS).timestamp == NOW_MS + 300_000
    assert refusal(beyond) == "future_timestamp"
    assert refusal(raw(timestamp=NOW_MS + 11), max_future_ms=10) == "future_timestamp"


def test_the_future_check_uses_the_wall_clock_by_default():
    far = raw(timestamp=NOW_MS * 10)

    with pytest.raises(InvalidEvent) as caught:
        decode_event(far)

    assert caught.value.reason == "future_timestamp"
    assert decode_event(raw(timestamp=NOW_MS)).timestamp == NOW_MS


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id", "session_id"])
def test_an_id_longer_than_max_id_length_is_refused_as_id_too_long(field):
    longest = raw(**{field: "x" * 128})
    too_long = raw(**{field: "x" * 129})

    assert getattr(decode_event(longest, now_ms=NOW_MS), field) == "x" * 128
    assert refusal(too_long) == "id_too_long"
    assert refusal(raw(**{field: "abcdef"}), max_id_length=5) == "id_too_long"


def test_an_id_beyond_the_schema_ceiling_is_refused_as_id_too_long():
    assert refusal(raw(item_id="x" * 2_000), max_id_length=1024) == "id_too_long"


def test_an_id_length_counts_characters_not_bytes():
    event = decode_event(raw(user_id="ü" * 128), now_ms=NOW_MS)

    assert event.user_id == "ü" * 128


id_text = st.text(min_size=1, max_size=128)
valid_events = st.builds(
    Event,
    event_id=id_text,
    user_id=id_text,
    item_id=id_text,
    event_type=st.sampled_from(EVENT_TYPES),
    timestamp=st.integers(0, NOW_MS),
    session_id=st.none() | id_text,
    price=st.none() | st.floats(0.0, 1e12, allow_nan=False, allow_infinity=False),
    quantity=st.none() | st.integers(1, 1_000_000),
)


@settings(max_examples=200, deadline=None)
@given(event=valid_events)
def test_encode_then_decode_gives_the_same_event(event):
    payload = encode_event(event)

    assert isinstance(payload, bytes)
    assert decode_event(payload, now_ms=NOW_MS) == event
    assert json.loads(payload)["event_type"] == event.event_type
