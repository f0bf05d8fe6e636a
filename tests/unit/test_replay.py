"""In-process replay: the report's counts agree with the stream it learned."""

from __future__ import annotations

import pytest

from models.events import Event
from models.mf import MFConfig, Recommendation
from models.replay import Replayer, batches, replay
from producers.synthetic import SyntheticShop

START_MS = 1_700_000_000_000
CONFIG = MFConfig(n_factors=8, seed=3)


@pytest.fixture(scope="module")
def stream() -> list[Event]:
    return list(SyntheticShop(n_users=60, n_items=40, seed=5).events(3_000, START_MS))


def test_batches_cut_the_stream_in_order_into_pieces_of_at_most_size():
    pieces = list(batches(iter(range(10)), 4))

    assert pieces == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(batches([], 4)) == []


def test_replay_reports_counts_consistent_with_the_stream(stream):
    lists: list[Recommendation] = []
    progress: list[int] = []

    replayer, report = replay(
        stream,
        CONFIG,
        batch_size=128,
        k=5,
        on_lists=lists.extend,
        progress=progress.append,
    )

    assert report.events == len(stream) == 3_000
    assert report.learned + report.duplicates == report.events
    assert report.duplicates == 0
    assert report.learned == len(stream)
    assert report.users == len({e.user_id for e in stream})
    assert report.items == len({e.item_id for e in stream})
    assert report.users == len(replayer.profiles)
    assert report.items == len(replayer.model.items)
    per_batch = [len({e.user_id for e in b}) for b in batches(stream, 128)]
    assert report.lists == len(lists) == sum(per_batch)
    assert progress == [len(b) for b in batches(stream, 128)]
    assert all(len(rec.items) <= 5 for rec in lists)
    assert report.seconds > 0
    assert report.events_per_second > 0
    assert report.events_per_second == pytest.approx(report.events / report.seconds)


def test_replay_counts_replayed_events_as_duplicates(stream):
    again = stream[:500]

    _, report = replay(stream + again, CONFIG, batch_size=256)

    assert report.events == 3_500
    assert report.learned == 3_000
    assert report.duplicates == 500


def test_replay_learned_count_matches_the_batches_learned(stream):
    replayer = Replayer(CONFIG, k=5)
    learned = duplicates = 0
    doubled = [e for e in stream[:400] for _ in range(2)]
    for batch in batches(doubled, 64):
        result = replayer.model.learn_batch(batch, replayer.profiles)
        replayer.model.apply_item_update(result.item_update)
        learned += result.learned
        duplicates += result.duplicates

    _, report = replay(doubled, CONFIG, batch_size=64)

    assert (learned, duplicates) == (400, 400)
    assert (report.learned, report.duplicates) == (learned, duplicates)


def test_replay_of_the_same_stream_and_seed_is_repeatable(stream):
    first, _ = replay(stream, CONFIG, batch_size=200)
    again, _ = replay(stream, CONFIG, batch_size=200)

    users = sorted(first.profiles)[:10]
    assert first.lists_for(users) == again.lists_for(users)
    assert first.model.items.ids == again.model.items.ids


def test_an_empty_stream_gives_an_empty_report():
    replayer, report = replay([], CONFIG)

    assert (report.events, report.learned, report.duplicates) == (0, 0, 0)
    assert (report.users, report.items, report.lists) == (0, 0, 0)
    assert report.events_per_second == 0.0
    assert replayer.lists_for(["u1"])[0].items == []


def test_lists_for_an_unknown_shopper_fall_back_to_popular_items(stream):
    replayer, _ = replay(stream, CONFIG, batch_size=256, k=3)

    rec = replayer.lists_for(["nobody"])[0]

    order = replayer.model.popularity_order()[:3]
    assert not rec.personal
    assert rec.items == [replayer.model.items.ids[row] for row in order]
    assert "nobody" not in replayer.profiles
