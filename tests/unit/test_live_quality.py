"""The worker's live HR@20: tests as the prequential protocol defines them."""

from __future__ import annotations

import pytest

from models.events import Event
from models.live_quality import LiveHitRate
from models.profiles import UserProfile


def event(user: str, item: str, n: int = 0) -> Event:
    return Event(
        event_id=f"e{user}{item}{n}",
        user_id=user,
        item_id=item,
        event_type="view",
        timestamp=1_000 + n,
    )


def profile(*items: str) -> UserProfile:
    return UserProfile(factors=b"", n_events=len(items), items=list(items))


def test_a_first_meeting_of_a_known_shopper_is_a_hit_when_the_item_was_shown():
    live = LiveHitRate(k=3, window=10)
    live.shown("u1", ["a", "b", "c", "d"])
    checked = live.check([event("u1", "b"), event("u1", "d")], {"u1": profile("x")})
    # "d" is in fourth place, outside k = 3: a miss
    assert (checked.tests, checked.hits) == (2, 1)
    assert live.value == pytest.approx(0.5)


def test_items_met_before_and_a_shoppers_first_event_are_not_tests():
    live = LiveHitRate(k=3, window=10)
    live.shown("u1", ["a"])
    live.shown("u2", ["a"])
    checked = live.check(
        [
            event("u1", "x"),  # met before (in the profile)
            event("u2", "a"),  # u2's first event ever
            event("u2", "a", 1),  # met earlier in this batch
            event("u2", "b", 2),  # a test: history from this batch
        ],
        {"u1": profile("x")},
    )
    assert (checked.tests, checked.hits) == (1, 0)


def test_a_shopper_never_shown_a_list_is_counted_apart():
    live = LiveHitRate(k=3, window=10)
    checked = live.check([event("u1", "b")], {"u1": profile("x")})
    assert (checked.tests, checked.untested) == (0, 1)
    assert live.value is None


def test_the_rate_covers_only_the_last_window_tests():
    live = LiveHitRate(k=1, window=4)
    live.shown("u1", ["hit"])
    known = {"u1": profile("x")}
    for _ in range(4):  # four hits
        live.check([event("u1", "hit")], known)
    for n in range(3):  # then three misses push three hits out
        live.check([event("u1", f"miss{n}")], known)
    assert live.value == pytest.approx(1 / 4)


def test_the_oldest_shown_lists_are_forgotten_past_max_shoppers():
    live = LiveHitRate(k=1, window=10, max_shoppers=2)
    for user in ("u1", "u2", "u3"):
        live.shown(user, ["a"])
    known = {u: profile("x") for u in ("u1", "u2", "u3")}
    checked = live.check([event(u, "a") for u in ("u1", "u2", "u3")], known)
    assert (checked.tests, checked.hits, checked.untested) == (2, 2, 1)


def test_nonsense_sizes_are_refused():
    with pytest.raises(ValueError):
        LiveHitRate(k=0)
