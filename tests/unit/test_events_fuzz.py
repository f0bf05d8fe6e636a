"""Property tests of the event contract against hostile input (Hypothesis)."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.events import REASONS, Event, InvalidEvent, decode_event, encode_event
from tests.integration.faults import hostile_messages

NOW_MS = 1_764_780_000_000
LIMIT = 128

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=200),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner),
    max_leaves=10,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "event_id": json_values | st.text(max_size=300),
        "user_id": json_values | st.text(max_size=300),
        "item_id": json_values | st.text(max_size=300),
        "event_type": st.sampled_from(["view", "click", "add_to_cart", "purchase"])
        | json_values,
        "timestamp": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
        "price": st.floats() | json_values,
        "quantity": st.integers() | json_values,
        "session_id": json_values,
    },
).map(lambda d: {**d, **({"extra": d["event_id"]} if "event_id" in d else {})})


def check(raw: bytes) -> None:
    """Only an Event or an InvalidEvent with a known reason, ever."""
    try:
        event = decode_event(raw, max_id_length=LIMIT, now_ms=NOW_MS)
    except InvalidEvent as exc:
        assert exc.reason in REASONS
        assert exc.detail
        return
    assert isinstance(event, Event)
    for value in (event.event_id, event.user_id, event.item_id):
        assert 0 < len(value) <= LIMIT
        value.encode()  # ids reach Kafka keys and Redis: no lone surrogates
    assert 0 <= event.timestamp <= NOW_MS + 300_000
    if event.price is not None:
        assert math.isfinite(event.price) and event.price >= 0
    assert (
        decode_event(encode_event(event), max_id_length=LIMIT, now_ms=NOW_MS) == event
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_decoding(raw: bytes) -> None:
    check(raw)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(fields, st.booleans())
def test_any_json_object_is_an_event_or_has_a_reason(body: dict, ascii: bool) -> None:
    # allow_nan: json.dumps writes NaN and Infinity tokens, which must fail
    check(json.dumps(body, ensure_ascii=ascii).encode())


@given(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0.0e999999"]),
    st.sampled_from(["price", "timestamp", "quantity"]),
)
def test_non_finite_numbers_are_refused(token: str, field: str) -> None:
    body = {"event_id": "e", "user_id": "u", "item_id": "i", "event_type": "view"}
    body["timestamp"] = 1
    raw = json.dumps({**body, field: "@"}).replace('"@"', token).encode()
    try:
        event = decode_event(raw, now_ms=NOW_MS)
    except InvalidEvent:
        return
    assert field == "price" and event.price == 0.0  # -0.0e999999 is zero


def test_the_hostile_generator_labels_with_the_contract() -> None:
    messages = hostile_messages(2000, 500, seed=3, now_ms=NOW_MS)
    reasons = {m.reason for m in messages}
    assert None in reasons and reasons - {None} <= set(REASONS)
    assert len(reasons) == len(REASONS) + 1  # every reason is exercised
    for message in messages:
        if message.reason is None:
            check(message.value)
            decode_event(message.value, now_ms=NOW_MS)
