"""The trending counter: buckets in the windowed table, changelog records on the
items' own partitions, old buckets dropped."""

from __future__ import annotations

import json

import numpy as np
from prometheus_client import CollectorRegistry

from config.settings import Settings
from models.mf import ItemUpdate
from streams.owner import split_by_owner
from streams.sink import partition_of
from streams.worker import StreamrecWorker

N_FACTORS = 4


def tracker():  # type: ignore[no-untyped-def]
    settings = Settings(
        n_factors=N_FACTORS,
        trending_bucket_s=10,
        trending_window_s=60,
        trending_half_life_s=30,
    )
    return StreamrecWorker(settings, CollectorRegistry()).api.trending


def messages(counts: dict[str, float], at: float) -> list[tuple[bytes, float, int]]:
    """item-updates messages of one learner batch, as the learner splits them."""
    ids = list(counts)
    update = ItemUpdate(
        ids,
        np.zeros((len(ids), N_FACTORS), np.float32),
        np.zeros(len(ids), np.float32),
        np.asarray(list(counts.values()), np.float32),
    )
    return [(payload, at, part) for part, payload in split_by_owner(update, 8)]


def test_counts_land_in_their_bucket_and_on_the_items_partitions() -> None:
    trending = tracker()
    written = trending.count(messages({"a": 2, "b": 1, "negative": 0}, 1005.0))
    written += trending.count(messages({"a": 3}, 1007.0))
    assert written == 3  # a twice, b once; the 0-count negative is no event
    assert dict(trending.table.data) == {
        ("a", (1000.0, 1009.9)): 5.0,
        ("b", (1000.0, 1009.9)): 1.0,
    }
    topic = trending.table.changelog_topic.get_topic_name()
    for (to_topic, partition), records in trending.sink._pending.items():
        assert to_topic == topic
        for key, value, _ in records:
            item_id, window = json.loads(key)
            assert partition == partition_of(item_id.encode(), 8)
            assert window == [1000.0, 1009.9] and json.loads(value) > 0


def test_scores_decay_and_expired_buckets_are_dropped() -> None:
    trending = tracker()
    trending.count(messages({"old": 50}, 1000.0))
    trending.count(messages({"new": 20}, 1100.0))
    scores = trending.scores(now=1101.0)
    assert set(scores) == {"new"} and scores["new"] == 20.0
    assert all(key[0] == "new" for key in trending.table.data)
