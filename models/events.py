"""The event contract: what a shop publishes on the ``events`` topic.

One JSON object per message, keyed by ``user_id``::

    {"event_id": "e-1", "user_id": "u-7", "item_id": "sku-42",
     "event_type": "purchase", "timestamp": 1700000000000,
     "session_id": "s-1", "price": 19.9, "quantity": 1}

Decoding and validation are msgspec's: one C pass per message, with error
messages that name the field. What msgspec cannot know (the clock, id lengths
set at run time) is checked right after, in :func:`decode_event`.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import msgspec

EventType = Literal["view", "click", "add_to_cart", "purchase"]
EVENT_TYPES: tuple[EventType, ...] = ("view", "click", "add_to_cart", "purchase")

# Ids are opaque strings; the length cap is enforced in decode_event so that it
# can be configured, this is only the hard ceiling of the schema.
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
_Price = Annotated[float, msgspec.Meta(ge=0.0)]
_Quantity = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
_Millis = Annotated[int, msgspec.Meta(ge=0)]


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One thing a shopper did. ``timestamp`` is Unix time in milliseconds."""

    event_id: _Id
    user_id: _Id
    item_id: _Id
    event_type: EventType
    timestamp: _Millis
    session_id: _Id | None = None
    price: _Price | None = None
    quantity: _Quantity | None = None


class InvalidEvent(ValueError):
    """An event that breaks the contract; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Reasons are metric label values: keep this set small and stable.
REASONS = (
    "not_json",
    "schema",
    "unknown_event_type",
    "future_timestamp",
    "id_too_long",
)

_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


def decode_event(
    raw: bytes | None,
    *,
    max_id_length: int = 128,
    max_future_ms: int = 300_000,
    now_ms: int | None = None,
) -> Event:
    """Decode and validate one message value, or raise :class:`InvalidEvent`."""
    if not raw:
        raise InvalidEvent("not_json", "the message has no value")
    try:
        event = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        reason = "unknown_event_type" if "$.event_type" in message else "schema"
        if "length <=" in message:
            reason = "id_too_long"
        raise InvalidEvent(reason, message) from exc
    except msgspec.DecodeError as exc:
        raise InvalidEvent("not_json", str(exc)) from exc

    for field in ("event_id", "user_id", "item_id", "session_id"):
        value = getattr(event, field)
        if value is not None and len(value) > max_id_length:
            raise InvalidEvent(
                "id_too_long",
                f"{field} has {len(value)} characters, the limit is {max_id_length}",
            )
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if event.timestamp > now + max_future_ms:
        raise InvalidEvent(
            "future_timestamp",
            f"timestamp {event.timestamp} is more than {max_future_ms} ms "
            f"ahead of the worker clock ({now})",
        )
    return event


def encode_event(event: Event) -> bytes:
    """Serialise an event as the JSON the ``events`` topic carries."""
    return _encoder.encode(event)
