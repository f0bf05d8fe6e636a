"""The synthetic shop: seeded, heavy-tailed, funnel-shaped, contract-valid."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from itertools import islice, pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import EVENT_TYPES, Event, decode_event, encode_event
from producers.synthetic import SyntheticShop

START_MS = 1_700_000_000_000


@pytest.fixture(scope="module")
def stream() -> list[Event]:
    return list(SyntheticShop(seed=7).events(60_000, start_ms=START_MS))


def test_same_seed_gives_the_same_events():
    first = list(SyntheticShop(seed=3).events(5_000, start_ms=START_MS))
    again = list(SyntheticShop(seed=3).events(5_000, start_ms=START_MS))
    other = list(SyntheticShop(seed=4).events(5_000, start_ms=START_MS))

    assert first == again
    assert [(e.user_id, e.item_id) for e in first] != [
        (e.user_id, e.item_id) for e in other
    ]


def test_each_call_replays_the_shop_so_shorter_runs_are_prefixes():
    shop = SyntheticShop(seed=3)
    long = list(shop.events(3_000, start_ms=START_MS))

    assert list(shop.events(1_234, start_ms=START_MS)) == long[:1_234]
    assert list(shop.events(0, start_ms=START_MS)) == []


def test_none_streams_without_end():
    endless = SyntheticShop(n_users=50, n_items=20, seed=1).events(None, START_MS)

    assert len(list(islice(endless, 20_000))) == 20_000


def test_events_honour_the_contract(stream):
    now = stream[-1].timestamp
    for event in stream:
        assert decode_event(encode_event(event), now_ms=now) == event
    assert {e.event_type for e in stream} == set(EVENT_TYPES)
    assert len({e.event_id for e in stream}) == len(stream)
    assert all(re.fullmatch(r"u\d+", e.user_id) for e in stream)
    assert all(re.fullmatch(r"i\d+", e.item_id) for e in stream)
    assert all(re.fullmatch(r"s\d+-\d+", e.session_id) for e in stream)


def test_clock_starts_at_start_ms_and_advances_a_few_ms_per_event(stream):
    steps = [after.timestamp - before.timestamp for before, after in pairwise(stream)]

    assert START_MS < stream[0].timestamp <= START_MS + 5
    assert min(steps) >= 1 and max(steps) <= 5


def test_clock_defaults_to_now():
    before = int(time.time() * 1000)
    event = next(SyntheticShop(seed=1).events(1))

    assert before <= event.timestamp <= int(time.time() * 1000) + 5


def test_item_popularity_is_heavy_tailed(stream):
    shop = SyntheticShop(seed=7)
    views = Counter(e.item_id for e in stream if e.event_type == "view")
    top_one_percent = sum(n for _, n in views.most_common(shop.n_items // 100))

    # Uniform popularity would give the top 1% of items about 1% of views.
    assert top_one_percent / views.total() > 0.3


def test_views_follow_taste_as_well_as_popularity(stream):
    shop = SyntheticShop(seed=7)
    viewed = [e for e in stream if e.event_type == "view"]
    users = np.array([int(e.user_id[1:]) for e in viewed])
    items = np.array([int(e.item_id[1:]) for e in viewed])
    tastes = shop.initial_tastes[users]
    affinity = np.einsum("vk,vk->v", tastes, shop.item_factors[items])
    rng = np.random.default_rng(0)
    by_popularity = rng.choice(shop.n_items, size=len(items), p=shop.item_popularity)
    baseline = np.einsum("vk,vk->v", tastes, shop.item_factors[by_popularity])

    # Taste . factors is about standard normal for popularity draws alone.
    assert affinity.mean() > baseline.mean() + 0.5


def test_every_step_of_the_funnel_follows_the_one_before(stream):
    seen = defaultdict(set)  # (session, item) -> types so far
    for event in stream:
        done = seen[event.session_id, event.item_id]
        if event.event_type in ("click", "add_to_cart"):
            assert "view" in done, event
        if event.event_type == "purchase":
            assert {"view", "add_to_cart"} <= done, event
        done.add(event.event_type)
    mix = Counter(e.event_type for e in stream)
    assert mix["view"] > mix["click"] > mix["add_to_cart"] > mix["purchase"] > 0


def test_prices_are_per_item_and_quantities_on_carts_and_purchases(stream):
    prices = defaultdict(set)
    for event in stream:
        prices[event.item_id].add(event.price)
        if event.event_type in ("add_to_cart", "purchase"):
            assert event.quantity >= 1
        else:
            assert event.quantity is None
    assert all(len(p) == 1 and next(iter(p)) > 0 for p in prices.values())


def test_a_session_is_one_shoppers_and_never_overlaps_another_of_theirs(stream):
    spans = {}
    owner = {}
    for event in stream:
        assert owner.setdefault(event.session_id, event.user_id) == event.user_id
        first, _ = spans.get(event.session_id, (event.timestamp, 0))
        spans[event.session_id] = (first, event.timestamp)
    by_user = defaultdict(list)
    for session, (first, last) in spans.items():
        by_user[owner[session]].append((first, last))
    for sessions in by_user.values():
        sessions.sort()
        for (_, end), (start, _) in pairwise(sessions):
            assert end < start
    assert len(stream) / len(spans) > 2  # sessions of several events


def test_sessions_of_different_shoppers_interleave(stream):
    switches = sum(a.session_id != b.session_id for a, b in pairwise(stream[:1000]))

    assert switches > 500


def test_nonsense_settings_are_refused():
    with pytest.raises(ValueError, match="n_users"):
        SyntheticShop(n_users=0)
    with pytest.raises(ValueError, match="purchase_rate"):
        SyntheticShop(purchase_rate=1.0)
    with pytest.raises(ValueError, match="n must be"):
        next(SyntheticShop().events(-1))


@settings(max_examples=20, deadline=None)
@given(
    n_users=st.integers(1, 300),
    n_items=st.integers(1, 300),
    n_factors=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    drift=st.floats(0.0, 1.0),
    n=st.integers(0, 3_000),
)
def test_any_shop_size_gives_exactly_n_valid_events(
    n_users, n_items, n_factors, seed, drift, n
):
    shop = SyntheticShop(n_users, n_items, n_factors, seed=seed, drift=drift)
    events = list(shop.events(n, start_ms=0))

    assert len(events) == n
    assert all(int(e.user_id[1:]) < n_users for e in events)
    assert all(int(e.item_id[1:]) < n_items for e in events)
    assert all(a.timestamp < b.timestamp for a, b in pairwise(events))
