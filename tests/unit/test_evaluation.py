"""The prequential harness of EVALUATION.md, its popularity baseline and bootstrap.

Hand-made streams check the protocol's definitions by hand; the Taobao files
check the harness against the values ``data/README.md`` prints.
"""

from __future__ import annotations

import math
import os
import random
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from models.evaluation import (
    EventBatch,
    ListRequest,
    Popularity,
    StreamrecRecommender,
    bootstrap_ratio,
    encode,
    metrics_at,
    prequential,
    ranks_of,
    rolling_rate,
    top_n,
)
from models.events import Event
from models.mf import MFConfig
from producers.datasets import read_events
from producers.synthetic import SyntheticShop

DATA = Path(
    os.environ.get("STREAMREC_DATA_DIR")
    or Path(__file__).resolve().parents[2].parent / "shared" / "data"
)
TAOBAO = DATA / "taobao-userbehavior"
START_MS = 1_700_000_000_000


def stream_of(*pairs: str, types: dict[int, str] | None = None) -> list[Event]:
    """Events from "user:item" strings, one millisecond apart."""
    events = []
    for k, pair in enumerate(pairs):
        user, item = pair.split(":")
        kind = (types or {}).get(k, "view")
        events.append(Event(f"e{k}", user, item, kind, START_MS + k))  # type: ignore[arg-type]
    return events


class Recorder:
    """Answers scripted lists (item ids) and records what it was asked."""

    name = "recorder"

    def __init__(self, lists: dict[int, list[str]] | None = None) -> None:
        self.lists = lists or {}
        self.item_index: dict[str, int] = {}
        self.learned = 0
        self.calls: list[tuple[int, list[str], list[list[int]]]] = []
        self.asked = 0

    def recommend(self, request: ListRequest, n: int) -> np.ndarray:
        self.calls.append(
            (self.learned, request.user_ids, [e.tolist() for e in request.exclude])
        )
        out = np.full((len(request), n), -1)
        for row in range(len(request)):
            wanted = self.lists.get(self.asked, [])
            self.asked += 1
            rows = [self.item_index[i] for i in wanted if i in self.item_index]
            out[row, : len(rows)] = rows[:n]
        return out

    def learn(self, batch: EventBatch) -> None:
        for event, item in zip(batch.events, batch.items.tolist(), strict=True):
            self.item_index.setdefault(event.item_id, item)
        self.learned += len(batch)


# --- the stream ------------------------------------------------------------------


def test_encode_numbers_users_and_items_by_first_appearance():
    stream = encode(stream_of("u2:b", "u1:a", "u2:a", "u3:c"))

    assert stream.user_ids == ["u2", "u1", "u3"]
    assert stream.item_ids == ["b", "a", "c"]
    assert stream.users.tolist() == [0, 1, 0, 2]
    assert stream.items.tolist() == [0, 1, 1, 2]


def test_encode_refuses_a_stream_out_of_time_order():
    events = stream_of("u1:a", "u1:b")

    with pytest.raises(ValueError, match="sorted by timestamp"):
        encode(events[::-1])


def test_read_events_returns_a_stable_sort_by_timestamp():
    events = read_events(TAOBAO / "user_behavior_head.csv.gz", fav_as="click")
    stamps = [e.timestamp for e in events]
    lines = [int(e.event_id.split(":")[1]) for e in events]

    assert stamps == sorted(stamps)
    # equal timestamps keep the order of the file
    pairs = pairwise(zip(stamps, lines, strict=True))
    assert all(a[1] < b[1] for a, b in pairs if a[0] == b[0])


# --- the protocol ----------------------------------------------------------------


def test_a_test_is_a_users_first_meeting_with_an_item_after_their_first_event():
    events = stream_of(
        "u1:a",  # 0: u1's first event: not a test
        "u1:a",  # 1: met a before: not a test
        "u2:a",  # 2: u2's first event: not a test, though a is known
        "u1:b",  # 3: test, excluding a
        "u2:b",  # 4: test, excluding a
        "u1:a",  # 5: met before
        "u3:c",  # 6: u3's first event
        "u1:c",  # 7: test, excluding a and b
        "u2:z",  # 8: test on an item nobody has seen yet: a certain miss
    )
    recorder = Recorder()

    result = prequential(encode(events), recorder)

    assert result.positions.tolist() == [3, 4, 7, 8]
    assert result.tests == 4
    a, b = 0, 1
    assert [(users, exclude) for _, users, exclude in recorder.calls] == [
        (["u1"], [[a]]),
        (["u2"], [[a]]),
        (["u1"], [[a, b]]),
        (["u2"], [[a, b]]),
    ]
    # each test is answered before its own event is learned (batch of one)
    assert [learned for learned, _, _ in recorder.calls] == [3, 4, 7, 8]
    assert result.events == 9


def test_any_event_type_counts_as_meeting_an_item():
    events = stream_of("u1:a", "u1:b", "u1:b", types={1: "purchase", 2: "view"})

    result = prequential(encode(events), Recorder())

    assert result.positions.tolist() == [1]


def test_ranks_and_metrics_by_hand():
    # u9 makes 24 items known (23 tests of its own come first); then u1's four
    # tests, on t1..t4, get scripted lists that rank them 1, 3, absent, 15
    fill = [f"x{k}" for k in range(20)]
    warm = [f"u9:{i}" for i in (*fill, "t1", "t2", "t3", "t4")]
    events = stream_of(*warm, "u1:s", "u1:t1", "u1:t2", "u1:t3", "u1:t4")
    lists = {
        23: ["t1", *fill[:19]],
        24: ["x0", "x1", "t2", *fill[2:19]],
        25: fill,
        26: [*fill[:14], "t4", *fill[14:19]],
    }

    result = prequential(encode(events), Recorder(lists))

    assert result.tests == 23 + 4
    assert result.ranks[-4:].tolist() == [1, 3, 0, 15]
    assert result.hits(10)[-4:].tolist() == [True, True, False, False]
    assert result.hits(20)[-4:].tolist() == [True, True, False, True]
    ranks = np.array([1, 3, 0, 15])
    assert metrics_at(ranks, 10) == pytest.approx(
        {"hr@10": 2 / 4, "mrr@10": (1 + 1 / 3) / 4, "ndcg@10": (1 + 1 / 2) / 4}
    )
    assert metrics_at(ranks, 20) == pytest.approx(
        {
            "hr@20": 3 / 4,
            "mrr@20": (1 + 1 / 3 + 1 / 15) / 4,
            "ndcg@20": (1 + 1 / 2 + 1 / math.log2(16)) / 4,
        }
    )


def test_ranks_of_finds_the_target_or_gives_zero():
    lists = np.array([[5, 7, 9], [1, -1, -1], [3, 4, 2]])

    assert ranks_of(lists, np.array([9, 2, 3])).tolist() == [3, 0, 1]


def test_metrics_of_no_tests_are_nan():
    figures = metrics_at(np.zeros(0, np.int32), 20)

    assert all(math.isnan(v) for v in figures.values())


def test_result_summary_has_every_figure_and_the_speed():
    result = prequential(
        encode(stream_of("u1:a", "u1:b", "u2:a", "u2:b")), Popularity()
    )

    summary = result.summary()

    assert summary["tests"] == 2
    assert summary["events"] == 4
    assert summary["events_per_second"] > 0
    assert {"hr@10", "mrr@10", "ndcg@10", "hr@20", "mrr@20", "ndcg@20"} <= set(summary)
    assert summary["hr@20"] == 0.5  # u2 gets b, u1's list cannot hold a new b


# --- micro-batches ---------------------------------------------------------------


def test_a_batch_is_answered_from_the_state_before_it_with_per_event_exclusions():
    events = stream_of("u1:a", "u1:b", "u1:c", "u2:a", "u2:c", "u1:a", "u1:d")
    recorder = Recorder()

    result = prequential(encode(events), recorder, batch_size=3)

    a, b, c = 0, 1, 2
    assert recorder.calls == [
        # batch [0, 3): tests 1 and 2, both before any learning; test 2
        # excludes b, met earlier in the same batch
        (0, ["u1", "u1"], [[a], [a, b]]),
        # batch [3, 6): test 4 (u2 met a at 3, in this batch)
        (3, ["u2"], [[a]]),
        # batch [6, 7): test 6
        (6, ["u1"], [[a, b, c]]),
    ]
    assert result.positions.tolist() == [1, 2, 4, 6]
    assert result.batch_size == 3


def test_the_test_set_does_not_depend_on_the_batch_size():
    events = list(SyntheticShop(n_users=30, n_items=25, seed=2).events(600, START_MS))
    stream = encode(events)

    positions = {
        b: prequential(stream, Popularity(), batch_size=b).positions.tolist()
        for b in (1, 7, 64, 600)
    }

    assert positions[1] == positions[7] == positions[64] == positions[600]


def test_one_batch_for_the_whole_stream_answers_everything_from_nothing():
    events = list(SyntheticShop(n_users=30, n_items=25, seed=2).events(300, START_MS))

    result = prequential(encode(events), Popularity(), batch_size=len(events))

    assert result.tests > 0
    assert result.hits(20).sum() == 0


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        prequential(encode(stream_of("u1:a")), Popularity(), batch_size=0)


# --- top_n -----------------------------------------------------------------------


def test_top_n_orders_excludes_and_fills_with_minus_one():
    scores = np.array([[0.1, 0.9, 0.5, np.nan], [3.0, 2.0, 1.0, 0.0]])

    lists = top_n(scores.copy(), [np.array([1]), np.array([0, 1, 2, 7])], 3)

    assert lists.tolist() == [[2, 0, -1], [3, -1, -1]]


def test_top_n_with_fewer_items_than_n():
    lists = top_n(np.array([[1.0, 2.0]]), [np.zeros(0, np.int64)], 4)

    assert lists.tolist() == [[1, 0, -1, -1]]


# --- popularity ------------------------------------------------------------------


def brute_force_popularity(events: list[Event], n: int = 20) -> list[list[str]]:
    """The baseline as the protocol words it, one full sort per test."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    met: dict[str, set[str]] = {}
    lists = []
    for k, e in enumerate(events):
        mine = met.get(e.user_id)
        if mine is not None and e.item_id not in mine:
            order = sorted(counts, key=lambda i: (-counts[i], first[i]))
            lists.append([i for i in order if i not in mine][:n])
        counts[e.item_id] = counts.get(e.item_id, 0) + 1
        first.setdefault(e.item_id, k)
        met.setdefault(e.user_id, set()).add(e.item_id)
    return lists


class ListKeeper:
    """Wraps a recommender and keeps its lists as item ids."""

    def __init__(self, inner, item_ids: list[str]) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.item_ids, self.name = inner, item_ids, inner.name
        self.lists: list[list[str]] = []

    def recommend(self, request: ListRequest, n: int) -> np.ndarray:
        lists = self.inner.recommend(request, n)
        self.lists += [[self.item_ids[i] for i in row if i >= 0] for row in lists]
        return lists

    def learn(self, batch: EventBatch) -> None:
        self.inner.learn(batch)


def test_popularity_breaks_ties_by_first_appearance_and_skips_own_items():
    events = stream_of("u1:x", "u2:y", "u3:z", "u3:y", "u1:w", "u2:q")
    keeper = ListKeeper(Popularity(), encode(events).item_ids)

    prequential(encode(events), keeper)

    # test 3 (u3 meets y): x, y, z have one event each; z is u3's own
    # test 4 (u1 meets w): y leads with 2; x is u1's own; then z (before w)
    # test 5 (u2 meets q): y is u2's own; x, z, w tie at 1, by first appearance
    assert keeper.lists == [["x", "y"], ["y", "z"], ["x", "z", "w"]]


@pytest.mark.parametrize("leaders", [1, 3, 256])
def test_popularity_matches_a_brute_force_on_a_random_stream(leaders):
    rng = random.Random(leaders)
    events = [
        Event(
            f"e{k}",
            f"u{rng.randrange(12)}",
            f"i{min(rng.randrange(40), rng.randrange(40))}",  # skewed popularity
            "view",
            START_MS + k // 3,  # ties in time too
        )
        for k in range(1500)
    ]
    stream = encode(events)
    keeper = ListKeeper(Popularity(leaders=leaders), stream.item_ids)

    prequential(stream, keeper)

    assert keeper.lists == brute_force_popularity(events)


def check_values(path: Path, fav_as: str | None) -> dict[str, object]:
    result = prequential(encode(read_events(path, fav_as=fav_as)), Popularity())
    return {
        "tests": result.tests,
        "hits@10": int(result.hits(10).sum()),
        "hits@20": int(result.hits(20).sum()),
        **{k: f"{v:.6f}" for k, v in result.metrics().items()},
    }


def test_popularity_reproduces_the_head_file_check_values():
    assert check_values(TAOBAO / "user_behavior_head.csv.gz", "click") == {
        "tests": 63_017,
        "hits@10": 36,
        "hits@20": 61,
        "hr@10": "0.000571",
        "mrr@10": "0.000155",
        "ndcg@10": "0.000250",
        "hr@20": "0.000968",
        "mrr@20": "0.000181",
        "ndcg@20": "0.000349",
    }


def test_popularity_reproduces_the_slice_check_values():
    assert check_values(TAOBAO / "stream_slice_2017-11-26.csv.gz", "click") == {
        "tests": 41_789,
        "hits@10": 79,
        "hits@20": 126,
        "hr@10": "0.001890",
        "mrr@10": "0.000701",
        "ndcg@10": "0.000977",
        "hr@20": "0.003015",
        "mrr@20": "0.000774",
        "ndcg@20": "0.001255",
    }


def test_the_check_values_count_fav_lines_dropping_them_changes_the_tests():
    # how the README's numbers were obtained: with every line, fav included
    dropped = check_values(TAOBAO / "user_behavior_head.csv.gz", None)

    assert dropped["tests"] == 61_537 != 63_017


# --- streamrec through the harness -----------------------------------------------


@pytest.fixture(scope="module")
def shop() -> list[Event]:
    return list(SyntheticShop(n_users=40, n_items=60, seed=4).events(1500, START_MS))


def test_streamrec_with_only_its_popularity_fallback_is_the_reference_baseline(shop):
    # Every shopper below min_history: the model's fallback, cut to the
    # protocol's exclusion, must be the protocol's popularity exactly.
    stream = encode(shop)
    fallback = StreamrecRecommender(MFConfig(n_factors=4, min_history=10**9))

    ours = prequential(stream, fallback)
    reference = prequential(stream, Popularity())

    assert ours.ranks.tolist() == reference.ranks.tolist()


@pytest.mark.parametrize("n", [2, 20])
def test_streamrec_lists_are_its_own_scores_ranked_under_the_protocols_exclusion(
    shop, n
):
    # n = 2 with the busiest shopper: most of the model's first lists are
    # their own items, so the adapter has to ask again for longer ones
    stream = encode(shop)
    model = StreamrecRecommender(MFConfig(n_factors=8, min_history=1, seed=5))
    prequential(encode(shop[:1000]), model)  # learn a while, then ask
    users = stream.users[:1000]
    user = int(np.bincount(users).argmax())
    before = np.unique(stream.items[:1000][users == user])
    request = ListRequest(np.array([user]), [stream.user_ids[user]], [before])

    lists = model.recommend(request, n)

    items = model.replayer.model.items
    profile = model.replayer.profiles[stream.user_ids[user]]
    scores = model.replayer.model.scores([profile])[0]
    scores[[items.index[stream.item_ids[i]] for i in before]] = -np.inf
    expected = [items.ids[r] for r in np.argsort(-scores, kind="stable")[:n]]
    assert len(before) > 2 * 2  # more than the first ask when n = 2
    assert [stream.item_ids[i] for i in lists[0]] == expected


def test_streamrec_runs_at_any_batch_size_with_the_same_tests(shop):
    stream = encode(shop)
    one = prequential(stream, StreamrecRecommender(MFConfig(n_factors=8)))
    many = prequential(
        stream, StreamrecRecommender(MFConfig(n_factors=8)), batch_size=50
    )

    assert one.positions.tolist() == many.positions.tolist()
    assert one.name == "streamrec"
    assert 0 <= many.hits(20).mean() <= 1


# --- bootstrap and rolling rate --------------------------------------------------


def test_bootstrap_of_identical_hits_is_exactly_one():
    hits = np.array([True, False, True, False, False])

    interval = bootstrap_ratio(hits, hits, resamples=500)

    assert (interval.ratio, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_bootstrap_ratio_matches_resampling_the_tests_themselves():
    rng = np.random.default_rng(1)
    a = rng.random(400) < 0.30
    b = np.where(rng.random(400) < 0.7, a, rng.random(400) < 0.15)

    interval = bootstrap_ratio(a, b, resamples=20_000, seed=3)

    # the same bootstrap done the slow way: resample test indices
    picks = rng.integers(0, 400, size=(20_000, 400))
    ratios = a[picks].sum(axis=1) / b[picks].sum(axis=1)
    low, high = np.quantile(ratios, [0.025, 0.975])
    assert interval.ratio == pytest.approx(a.sum() / b.sum())
    assert interval.low == pytest.approx(low, abs=0.03)
    assert interval.high == pytest.approx(high, abs=0.03)
    assert interval.low < interval.ratio < interval.high
    assert interval.as_dict()["confidence"] == 0.95


def test_bootstrap_refuses_unpaired_hits():
    with pytest.raises(ValueError, match="equally long"):
        bootstrap_ratio(np.ones(3, bool), np.ones(4, bool))


def test_bootstrap_when_the_peer_never_hits():
    interval = bootstrap_ratio(np.array([True, False]), np.array([False, False]))

    assert interval.ratio == math.inf


def test_rolling_rate_is_the_mean_of_each_window():
    flags = np.array([1, 0, 0, 1, 1, 0], bool)

    assert rolling_rate(flags, 3).tolist() == pytest.approx(
        [1 / 3, 1 / 3, 2 / 3, 2 / 3]
    )
    assert rolling_rate(flags, 100).tolist() == pytest.approx([0.5])
    assert len(rolling_rate(np.zeros(0, bool), 3)) == 0
