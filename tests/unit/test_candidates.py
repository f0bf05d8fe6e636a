"""Candidate generation (#3, speed): lists chosen among the items linked from
the shopper's latest items and the popular head, and that head itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models import mf
from models.events import Event
from models.items import ItemState, ItemTable
from models.mf import MFConfig, OnlineMF
from models.profiles import UserProfile

START_MS = 1_700_000_000_000


def brute_head(table: ItemTable, n: int) -> set[int]:
    counts = table.counts
    order = np.lexsort((np.arange(len(counts)), -counts))[:n]
    return set(order[counts[order] > 0].tolist())


@pytest.mark.parametrize("n", [1, 5, 30])
def test_the_popular_head_kept_up_to_date_is_the_top_by_count(n):
    rng = np.random.default_rng(3)
    table = ItemTable(2)
    rows = table.rows([f"i{k}" for k in range(20)])
    table.apply(rows, np.zeros((20, 2)), np.zeros(20), np.arange(20) % 3)
    assert set(table.popular(n).tolist()) == brute_head(table, n)
    for _ in range(300):
        new = f"i{int(rng.integers(0, 40))}"  # new items keep joining
        rows = np.unique(table.rows([new, f"i{int(rng.integers(0, 40))}"]))
        steps = rng.integers(0, 3, len(rows)).astype(float)  # ties are common
        table.apply(rows, np.zeros((len(rows), 2)), np.zeros(len(rows)), steps)
        if rng.random() < 0.3:
            assert set(table.popular(n).tolist()) == brute_head(table, n)
    # a replica's counts arrive whole, from the owner
    table.put("i3", ItemState(np.zeros(2, np.float32), count=1e6))
    head = table.popular(n)
    assert set(head.tolist()) == brute_head(table, n)
    assert table.index["i3"] in head


def sessions(shoppers: int = 30, items: int = 60, length: int = 12) -> list[Event]:
    rng = np.random.default_rng(5)
    events, n = [], 0
    for user in range(shoppers):
        start = int(rng.integers(0, items))
        for step in range(length):
            item = (start + step * int(rng.integers(1, 3))) % items
            kind = "purchase" if rng.random() < 0.2 else "view"
            events.append(Event(f"e{n}", f"u{user}", f"i{item}", kind, START_MS + n))
            n += 1
    return events


def trained(config: MFConfig) -> tuple[OnlineMF, dict[str, UserProfile]]:
    model, profiles = OnlineMF(config), {}
    for event in sessions():
        result = model.learn_batch([event], profiles)
        model.apply_item_update(result.item_update)
    return model, profiles


@pytest.fixture
def every_catalogue(monkeypatch):
    """Candidates however small the catalogue."""
    monkeypatch.setattr(mf, "CANDIDATE_CATALOGUE", 0)


def test_with_every_item_a_candidate_the_lists_are_the_full_catalogues(monkeypatch):
    config = MFConfig(n_factors=8, seed=2, candidate_popular=0)
    full, profiles = trained(config)
    monkeypatch.setattr(mf, "CANDIDATE_CATALOGUE", 0)
    # a head as large as the catalogue makes every item a candidate
    wide, _ = trained(dataclasses.replace(config, candidate_popular=10_000))
    users = sorted(profiles)
    chosen = [profiles[u] for u in users]

    expected = full.recommend(chosen, users, 15)
    got = wide.recommend(chosen, users, 15)

    for want, have in zip(expected, got, strict=True):
        assert have.personal and have.items == want.items
        np.testing.assert_allclose(have.scores, want.scores, rtol=1e-5, atol=1e-6)


def test_candidate_lists_hide_bought_and_excluded_items_and_stay_in_the_pool(
    every_catalogue,
):
    config = MFConfig(n_factors=8, seed=2, candidate_popular=5)
    model, profiles = trained(config)
    items = model.items
    head = set(model.items.popular(5).tolist())
    for user_id, profile in profiles.items():
        latest = [items.index[i] for i in dict.fromkeys(reversed(profile.recent))]
        linked = set()
        for row in latest[: config.seq_sources]:
            targets = items.link_targets[row]
            linked |= set(targets[targets >= 0].tolist())
        exclude = items.rows(profile.items[:2])

        rows, scores = model.top_rows([profile], 10, [exclude])

        listed = [r for r in rows[0].tolist() if r >= 0]
        assert listed, user_id
        assert set(listed) <= head | linked
        assert not set(listed) & set(items.known_rows(profile.bought).tolist())
        assert not set(listed) & set(exclude.tolist())
        assert list(scores[0][: len(listed)]) == sorted(
            scores[0][: len(listed)], reverse=True
        )
        hidden = set(exclude.tolist()) | set(items.known_rows(profile.bought).tolist())
        assert len(listed) == min(10, len((head | linked) - hidden))


def test_a_small_catalogue_is_scored_whole():
    # up to CANDIDATE_CATALOGUE items the candidates are not used at all
    config = MFConfig(n_factors=8, seed=2, candidate_popular=0)
    full, profiles = trained(config)
    small, _ = trained(dataclasses.replace(config, candidate_popular=1))
    users = sorted(profiles)
    chosen = [profiles[u] for u in users]
    assert [r.items for r in small.recommend(chosen, users, 15)] == [
        r.items for r in full.recommend(chosen, users, 15)
    ]
