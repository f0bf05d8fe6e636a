"""Trend scores: a fast-starting new item overtakes a steady old one."""

from __future__ import annotations

import pytest

from models.trending import (
    TrendConfig,
    WindowedCount,
    bucket_weight,
    merge_parts,
    top_trending,
    trend_scores,
)

CONFIG = TrendConfig(bucket_s=60, window_s=600, half_life_s=120)
NOW = 10_000.0


def bucket(item: str, end: float, count: float) -> WindowedCount:
    return (item, (end - 60, end)), count


def test_open_buckets_weigh_one_and_old_ones_fade_then_drop() -> None:
    assert bucket_weight(NOW + 30, NOW, CONFIG) == 1.0
    assert bucket_weight(NOW - 120, NOW, CONFIG) == pytest.approx(0.5)
    assert bucket_weight(NOW - 600, NOW, CONFIG) == 0.0


def test_a_new_item_with_a_fast_start_beats_a_steady_favourite() -> None:
    steady = [bucket("old", NOW - 60 * n, 10) for n in range(10)]  # 100 events
    burst = [bucket("new", NOW + 30, 40)]  # 40 events, all in the open bucket
    scores = trend_scores([*steady, *burst], NOW, CONFIG)
    assert top_trending(scores, 2)[0][0] == "new"
    assert scores["old"] < 100


def test_items_outside_the_window_and_empty_counts_drop_out() -> None:
    scores = trend_scores(
        [bucket("gone", NOW - 700, 99), bucket("zero", NOW, 0), bucket("a", NOW, 1)],
        NOW,
        CONFIG,
    )
    assert scores == {"a": 1.0}


def test_keys_restored_from_a_changelog_as_lists_are_read_too() -> None:
    restored = [(("a", [NOW - 60, NOW]), 3.0)]
    assert trend_scores(restored, NOW, CONFIG) == {"a": 3.0}  # type: ignore[arg-type]


def test_top_is_sorted_with_ties_by_id() -> None:
    assert top_trending({"b": 2.0, "a": 2.0, "c": 5.0}, 2) == [("c", 5.0), ("a", 2.0)]


def test_parts_merge_by_the_higher_score_never_the_sum() -> None:
    merged = merge_parts([[("a", 3.0), ("b", 1.0)], [("a", 2.0), ("c", 4.0)]])
    assert merged == {"a": 3.0, "b": 1.0, "c": 4.0}


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="at least one bucket"):
        TrendConfig(bucket_s=60, window_s=30)
    with pytest.raises(ValueError, match="positive"):
        TrendConfig(half_life_s=0)
