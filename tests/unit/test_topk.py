"""Top-K lists: properties over random small shops, and the popularity fallback."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import EVENT_TYPES, Event
from models.mf import MFConfig, OnlineMF, Recommendation
from models.profiles import UserProfile
from models.replay import batches

START_MS = 1_700_000_000_000
USERS = [f"u{n}" for n in range(5)]
ITEMS = [f"i{n}" for n in range(12)]

# One event as (user, item, type); ids and timestamps follow the position.
raw_events = st.lists(
    st.tuples(
        st.sampled_from(USERS), st.sampled_from(ITEMS), st.sampled_from(EVENT_TYPES)
    ),
    min_size=1,
    max_size=60,
)


def to_events(rows: list[tuple[str, str, str]]) -> list[Event]:
    return [
        Event(f"e{n}", user, item, kind, START_MS + n)
        for n, (user, item, kind) in enumerate(rows)
    ]


def learn_all(
    events: list[Event], config: MFConfig, batch_size: int
) -> tuple[OnlineMF, dict[str, UserProfile]]:
    model = OnlineMF(config)
    profiles: dict[str, UserProfile] = {}
    for batch in batches(events, batch_size):
        result = model.learn_batch(batch, profiles)
        model.apply_item_update(result.item_update)
    return model, profiles


def hidden_items(events: list[Event], user_id: str, exclude_viewed: bool) -> set[str]:
    mine = [e for e in events if e.user_id == user_id]
    if exclude_viewed:
        return {e.item_id for e in mine}
    return {e.item_id for e in mine if e.event_type == "purchase"}


def assert_well_formed(
    rec: Recommendation, events: list[Event], k: int, exclude_viewed: bool
) -> None:
    known = {e.item_id for e in events}
    bought = {
        e.item_id
        for e in events
        if e.user_id == rec.user_id and e.event_type == "purchase"
    }
    hidden = hidden_items(events, rec.user_id, exclude_viewed)

    assert len(rec.items) == len(rec.scores)
    assert len(set(rec.items)) == len(rec.items)
    assert all(math.isfinite(s) for s in rec.scores)
    assert rec.scores == sorted(rec.scores, reverse=True)
    assert len(rec.items) <= k
    assert len(rec.items) == min(k, len(known - hidden))
    assert set(rec.items) <= known
    assert not set(rec.items) & bought
    assert not set(rec.items) & hidden


@settings(max_examples=60, deadline=None)
@given(
    rows=raw_events,
    k=st.integers(1, 15),
    exclude_viewed=st.booleans(),
    min_history=st.integers(0, 4),
    batch_size=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_every_list_is_a_sorted_unique_finite_top_k_without_hidden_items(
    rows, k, exclude_viewed, min_history, batch_size, seed
):
    events = to_events(rows)
    config = MFConfig(
        n_factors=4, seed=seed, min_history=min_history, exclude_viewed=exclude_viewed
    )
    model, profiles = learn_all(events, config, batch_size)
    user_ids = sorted(profiles)

    lists = model.recommend([profiles[u] for u in user_ids], user_ids, k)

    assert [rec.user_id for rec in lists] == user_ids
    for rec in lists:
        assert rec.personal == (profiles[rec.user_id].n_events >= min_history)
        assert_well_formed(rec, events, k, exclude_viewed)


def brute_force_popular(events: list[Event], hidden: set[str], k: int) -> list[str]:
    counts: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for position, event in enumerate(events):
        counts[event.item_id] = counts.get(event.item_id, 0) + 1
        first_seen.setdefault(event.item_id, position)
    ranked = sorted(counts, key=lambda item: (-counts[item], first_seen[item]))
    return [item for item in ranked if item not in hidden][:k]


@settings(max_examples=60, deadline=None)
@given(
    rows=raw_events,
    k=st.integers(1, 15),
    exclude_viewed=st.booleans(),
    batch_size=st.integers(1, 20),
)
def test_popularity_fallback_ranks_by_event_count_then_first_appearance(
    rows, k, exclude_viewed, batch_size
):
    events = to_events(rows)
    config = MFConfig(n_factors=4, min_history=10_000, exclude_viewed=exclude_viewed)
    model, profiles = learn_all(events, config, batch_size)
    user_ids = [*sorted(profiles), "stranger"]
    stranger = model.new_profile("stranger")

    lists = model.recommend(
        [*(profiles[u] for u in user_ids[:-1]), stranger], user_ids, k
    )

    counts = {e.item_id: 0 for e in events}
    for event in events:
        counts[event.item_id] += 1
    for rec in lists:
        hidden = hidden_items(events, rec.user_id, exclude_viewed)
        assert not rec.personal
        assert rec.items == brute_force_popular(events, hidden, k)
        assert rec.scores == [float(counts[item]) for item in rec.items]
        assert_well_formed(rec, events, k, exclude_viewed)


@settings(max_examples=40, deadline=None)
@given(rows=raw_events, duplicated=st.lists(st.integers(0, 59), max_size=20))
def test_popularity_counts_each_event_id_once(rows, duplicated):
    events = to_events(rows)
    replayed = [events[n] for n in duplicated if n < len(events)]
    model, _ = learn_all(events + replayed, MFConfig(n_factors=4), 7)

    order = [model.items.ids[row] for row in model.popularity_order()]

    assert order == brute_force_popular(events, set(), len(ITEMS))


def test_popularity_order_breaks_ties_by_first_appearance():
    rows = [
        ("u0", "late", "view"),
        ("u0", "early", "view"),
        ("u1", "late", "view"),
        ("u1", "early", "click"),
        ("u2", "top", "view"),
        ("u3", "top", "view"),
        ("u4", "top", "view"),
    ]
    model, _ = learn_all(to_events(rows), MFConfig(n_factors=4), 3)

    order = [model.items.ids[row] for row in model.popularity_order()]

    assert order == ["top", "late", "early"]


def test_lists_come_back_in_the_order_of_the_user_ids_given():
    rows = [(USERS[n % 5], ITEMS[(3 * n) % 12], "view") for n in range(40)]
    rows += [("u4", "i0", "purchase")]
    model, profiles = learn_all(to_events(rows), MFConfig(n_factors=4), 8)
    profiles["new"] = model.new_profile("new")
    asked = ["u3", "new", "u0", "u4", "u1", "u2"]

    lists = model.recommend([profiles[u] for u in asked], asked, 5)

    assert [rec.user_id for rec in lists] == asked
    assert [rec.personal for rec in lists] == [True, False, True, True, True, True]
    assert "i0" not in lists[asked.index("u4")].items


def test_an_empty_shop_gives_empty_lists():
    model = OnlineMF(MFConfig(n_factors=4))
    profile = model.new_profile("u0")

    lists = model.recommend([profile], ["u0"], 10)

    assert lists == [Recommendation("u0", [], [], False)]


def test_personal_scores_are_the_model_scores_of_the_listed_items():
    rows = [(USERS[n % 5], ITEMS[(7 * n) % 12], EVENT_TYPES[n % 4]) for n in range(50)]
    model, profiles = learn_all(to_events(rows), MFConfig(n_factors=4, seed=9), 10)
    profile = profiles["u2"]

    rec = model.recommend([profile], ["u2"], 4)[0]

    items = model.items
    expected = model.scores([profile])[0]
    bought = {item for u, item, kind in rows if u == "u2" and kind == "purchase"}
    best = sorted(
        (i for i in items.ids if i not in bought),
        key=lambda i: -expected[items.index[i]],
    )[:4]
    assert rec.personal
    assert rec.items == best
    np.testing.assert_allclose(
        rec.scores, [expected[items.index[i]] for i in rec.items], rtol=1e-6
    )
