"""The peers of benchmarks.peers on tiny streams: each runs the protocol and
gives valid lists; the numpy ones are checked by hand.

River and implicit are optional (the ``peers`` extra): their tests skip when
they are not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.peer_models import ISGD, PeriodicALS, RiverMF, SequentialRules
from benchmarks.peers import best_peer_ratio, make_factory
from models.evaluation import (
    EventBatch,
    ListRequest,
    Popularity,
    Recommender,
    encode,
    prequential,
)
from models.events import Event
from models.mf import MFConfig
from producers.synthetic import SyntheticShop

START_MS = 1_700_000_000_000


@pytest.fixture(scope="module")
def shop() -> list[Event]:
    return list(SyntheticShop(n_users=30, n_items=50, seed=9).events(800, START_MS))


class Checked:
    """Wraps a peer and checks every list it gives against the protocol."""

    def __init__(self, inner: Recommender) -> None:
        self.inner, self.name = inner, inner.name
        self.known = 0
        self.lists = 0

    def recommend(self, request: ListRequest, n: int) -> np.ndarray:
        lists = self.inner.recommend(request, n)
        assert lists.shape == (len(request), n)
        for row, before in zip(lists, request.exclude, strict=True):
            items = row[row >= 0]
            assert (row[len(items) :] == -1).all(), "-1 only fills the end"
            assert len(set(items.tolist())) == len(items), "no item twice"
            assert not set(items.tolist()) & set(before.tolist()), "own items"
            assert (items < self.known).all(), "only items seen so far"
            self.lists += 1
        return lists

    def learn(self, batch: EventBatch) -> None:
        self.inner.learn(batch)
        self.known = max(self.known, int(batch.items.max()) + 1)


def run_checked(model: Recommender, events: list[Event], batch_size: int = 1):  # type: ignore[no-untyped-def]
    checked = Checked(model)
    result = prequential(encode(events), checked, batch_size=batch_size)
    assert checked.lists == result.tests > 0
    assert 0.0 <= result.hits(20).mean() <= 1.0
    return result


def stream_of(*pairs: str) -> list[Event]:
    events = []
    for k, pair in enumerate(pairs):
        user, item = pair.split(":")
        events.append(Event(f"e{k}", user, item, "view", START_MS + k))
    return events


# --- numpy peers -----------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 16])
def test_isgd_gives_valid_lists(shop, batch_size):
    run_checked(ISGD(), shop, batch_size)


def test_isgd_moves_a_pair_towards_one():
    model = ISGD(n_factors=4, seed=0)
    stream = encode(stream_of("u:a", "u:a", "u:a"))
    model.learn(stream.batch(0, 1))
    first = float(model.users.data[0] @ model.items.data[0])

    model.learn(stream.batch(1, 3))

    assert abs(1 - float(model.users.data[0] @ model.items.data[0])) < abs(1 - first)


@pytest.mark.parametrize("batch_size", [1, 16])
def test_sequential_rules_gives_valid_lists(shop, batch_size):
    run_checked(SequentialRules(), shop, batch_size)


def test_sequential_rules_weigh_followers_by_one_over_distance():
    model = SequentialRules(steps=2, last_items=1)
    stream = encode(stream_of("u1:a", "u1:b", "u1:c", "u1:d", "u2:x", "u2:a"))
    model.learn(stream.batch(0, len(stream)))
    a, b, c, d = 0, 1, 2, 3

    assert model.rules[a] == {b: 1.0, c: 0.5}  # d is 3 steps away: no rule
    assert model.rules[b] == {c: 1.0, d: 0.5}
    # u2's last item is a: its rules first, then the most popular to fill
    request = ListRequest(np.array([1]), ["u2"], [np.array([4, a])])
    assert model.recommend(request, 4).tolist() == [[b, c, d, -1]]


def test_sequential_rules_sum_the_rules_of_the_last_items():
    model = SequentialRules(steps=1, last_items=2)
    stream = encode(stream_of("u1:a", "u1:c", "u2:b", "u2:d", "u2:c", "u3:b", "u3:a"))
    model.learn(stream.batch(0, len(stream)))
    a, c, b, d = 0, 1, 2, 3

    # u3's last items are a (a -> c: 1) and b (b -> d: 1): a tie, and c is
    # more popular (2 events to d's 1)
    request = ListRequest(np.array([2]), ["u3"], [np.array([b, a])])
    assert model.recommend(request, 2).tolist() == [[c, d]]


# --- optional peers --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["funk", "biased"])
def test_river_peers_give_valid_lists(shop, kind):
    pytest.importorskip("river")

    run_checked(RiverMF(kind), shop)
    run_checked(RiverMF(kind), shop, batch_size=16)


def test_river_scores_from_the_mirror_equal_rivers_own_predictions(shop):
    pytest.importorskip("river")
    model = RiverMF("biased")
    stream = encode(shop)
    model.learn(stream.batch(0, 400))
    user = int(stream.users[399])

    mirrored = model.user_vectors.data[user] @ model.item_vectors.view.T
    mirrored += model.item_biases.view[:, 0]
    own = [model.model.predict_one(user, item) for item in range(model.n_items)]

    offset = model.model.global_mean.get() + model.model.u_biases[user]
    assert np.allclose(mirrored + offset, own)


def test_periodic_als_retrains_every_five_percent_and_folds_in_new_shoppers(shop):
    pytest.importorskip("implicit")
    model = PeriodicALS(len(shop), factors=8, iterations=3)

    result = run_checked(model, shop)

    assert model.fits == 20
    assert result.tests > 0
    # a shopper after the last fit still gets a list from their items
    later = Event("new-1", "new", shop[0].item_id, "view", shop[-1].timestamp + 1)
    stream = encode([*shop, later])
    new_user = len(stream.user_ids) - 1
    assert new_user >= model.fit_users
    model.learn(stream.batch(len(shop), len(stream)))
    lists = model.recommend(
        ListRequest(np.array([new_user]), ["new"], [stream.items[-1:]]), 5
    )
    assert (lists >= 0).all()


def test_periodic_als_has_no_list_before_its_first_fit():
    pytest.importorskip("implicit")
    model = PeriodicALS(1000)
    stream = encode(stream_of("u1:a", "u1:b"))
    model.learn(stream.batch(0, 2))

    request = ListRequest(np.array([0]), ["u1"], [np.array([0, 1])])
    assert model.recommend(request, 3).tolist() == [[-1, -1, -1]]


# --- the benchmark's own pieces --------------------------------------------------


def test_every_system_of_the_benchmark_can_be_made(shop):
    stream = encode(shop)
    for name in ("popularity", "ISGD", "sequential-rules", "streamrec"):
        model = make_factory(name, stream, MFConfig(n_factors=4))()
        assert model.name == name


def test_best_peer_ratio_pairs_streamrec_with_the_best_other_system(shop):
    stream = encode(shop)
    results = [
        prequential(stream, make_factory(name, stream, MFConfig(n_factors=4))())
        for name in ("popularity", "sequential-rules", "streamrec")
    ]
    best = max(results[:2], key=lambda r: r.hits(20).mean())

    ratio = best_peer_ratio(results, resamples=200)

    assert ratio is not None
    assert ratio["best_peer"] == best.name
    assert ratio["ratio"] == pytest.approx(
        results[2].hits(20).sum() / best.hits(20).sum()
    )
    assert best_peer_ratio(results[:2], resamples=10) is None


def test_popularity_is_a_peer_too(shop):
    run_checked(Popularity(), shop, batch_size=5)
