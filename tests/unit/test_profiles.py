"""Shopper profiles: history kept in bounds, dedup window, msgpack records."""

from __future__ import annotations

import numpy as np

from models.events import Event
from models.items import initial_factors
from models.profiles import (
    MAX_EVENT_IDS,
    UserProfile,
    decode_profile,
    encode_profile,
)

START_MS = 1_700_000_000_000
HOUR_MS = 3_600_000


def make_event(
    event_id: str, item_id: str, kind: str = "view", at: int = 0, user_id: str = "u1"
) -> Event:
    return Event(event_id, user_id, item_id, kind, START_MS + at)


def remember(
    profile: UserProfile,
    events: list[Event],
    recent_items: int = 20,
    window_ms: int = HOUR_MS,
) -> None:
    profile.remember(events, recent_items=recent_items, dedup_window_ms=window_ms)


def test_a_new_profile_starts_from_the_seeded_vector_of_the_shopper():
    profile = UserProfile.new("u1", 8, 0.1, seed=5)

    expected = initial_factors("user:u1", 8, 0.1, 5)
    np.testing.assert_array_equal(profile.vector, expected)
    assert profile.vector.dtype == np.float32
    assert UserProfile.new("u1", 8, 0.1, seed=5).factors == profile.factors
    assert UserProfile.new("u2", 8, 0.1, seed=5).factors != profile.factors
    assert (profile.n_events, profile.recent, profile.event_ids) == (0, [], [])


def test_a_profile_survives_a_msgpack_round_trip():
    profile = UserProfile.new("u1", 4, 0.1, seed=1)
    remember(
        profile,
        [
            make_event("e1", "i1", "view", at=0),
            make_event("e2", "i2", "purchase", at=5),
            make_event("e3", "i1", "click", at=9),
        ],
    )

    payload = encode_profile(profile)
    copy = decode_profile(payload)

    assert isinstance(payload, bytes)
    assert copy == profile
    np.testing.assert_array_equal(copy.vector, profile.vector)
    assert copy.recent == ["i1", "i2", "i1"]
    assert copy.event_times == [START_MS, START_MS + 5, START_MS + 9]


def test_remember_counts_events_and_keeps_the_latest_timestamp():
    profile = UserProfile.new("u1", 4, 0.1, seed=1)

    remember(profile, [make_event("e1", "i1", at=10), make_event("e2", "i2", at=30)])
    remember(profile, [make_event("e3", "i3", at=20)])

    assert profile.n_events == 3
    assert profile.last_timestamp == START_MS + 30


def test_recent_items_keep_only_the_newest_up_to_the_cap():
    profile = UserProfile.new("u1", 4, 0.1, seed=1)
    events = [make_event(f"e{n}", f"i{n % 7}", at=n) for n in range(30)]

    remember(profile, events[:12], recent_items=5)
    assert profile.recent == [f"i{n % 7}" for n in range(7, 12)]

    remember(profile, events[12:], recent_items=5)
    assert profile.recent == [f"i{n % 7}" for n in range(25, 30)]


def test_items_are_distinct_in_order_of_first_interaction():
    profile = UserProfile.new("u1", 4, 0.1, seed=1)

    remember(
        profile,
        [
            make_event("e1", "b"),
            make_event("e2", "a"),
            make_event("e3", "b", "purchase"),
            make_event("e4", "c"),
        ],
    )

    assert profile.items == ["b", "a", "c"]


def test_bought_records_only_purchases_once_each():
    profile = UserProfile.new("u1", 4, 0.1, seed=1)
    kinds = ["view", "click", "add_to_cart", "purchase", "purchase", "view"]
    items = ["a", "b", "c", "d", "d", "e"]

    remember(
        profile,
        [
            make_event(f"e{n}", item, kind)
            for n, (item, kind) in enumerate(zip(items, kinds, strict=True))
        ],
    )
    remember(profile, [make_event("e9", "a", "purchase"), make_event("e10", "c")])

    assert profile.bought == ["d", "a"]


def test_event_ids_are_remembered_within_the_dedup_window():
    profile = UserProfile.new("u1", 4, 0.1, seed=1)

    remember(profile, [make_event("e1", "i1", at=0)], window_ms=1_000)
    remember(profile, [make_event("e2", "i2", at=1_000)], window_ms=1_000)

    assert profile.event_ids == ["e1", "e2"]
    assert profile.event_times == [START_MS, START_MS + 1_000]


def test_event_ids_older_than_the_dedup_window_are_forgotten():
    profile = UserProfile.new("u1", 4, 0.1, seed=1)
    remember(
        profile,
        [make_event("e1", "i1", at=0), make_event("e2", "i2", at=400)],
        window_ms=1_000,
    )

    remember(profile, [make_event("e3", "i3", at=1_001)], window_ms=1_000)
    assert profile.event_ids == ["e2", "e3"]
    assert profile.event_times == [START_MS + 400, START_MS + 1_001]

    remember(profile, [make_event("e4", "i4", at=5_000)], window_ms=1_000)
    assert profile.event_ids == ["e4"]
    assert profile.event_times == [START_MS + 5_000]
    assert profile.n_events == 4
    assert profile.items == ["i1", "i2", "i3", "i4"]


def test_event_ids_are_capped_even_inside_the_window():
    profile = UserProfile.new("u1", 4, 0.1, seed=1)
    events = [make_event(f"e{n}", "i1", at=n) for n in range(MAX_EVENT_IDS + 50)]

    remember(profile, events, window_ms=HOUR_MS)

    assert len(profile.event_ids) == MAX_EVENT_IDS
    assert profile.event_ids[0] == "e50"
    assert profile.event_ids[-1] == f"e{MAX_EVENT_IDS + 49}"
    assert len(profile.event_times) == MAX_EVENT_IDS
