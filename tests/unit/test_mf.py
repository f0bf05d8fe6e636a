"""Online matrix factorization: gradients, learning, guards and determinism."""

from __future__ import annotations

import re

import numpy as np
import pytest

from models.events import Event
from models.items import ItemState
from models.mf import (
    DEFAULT_EVENT_WEIGHTS,
    ItemUpdate,
    MFConfig,
    OnlineMF,
    bpr_gradients,
    bpr_loss,
    clip_rows,
)
from models.profiles import UserProfile
from models.replay import Replayer, batches

START_MS = 1_700_000_000_000
GRADIENT_NAMES = ("users", "positives", "negatives", "positive_bias", "negative_bias")


def make_event(
    event_id: str, user_id: str, item_id: str, kind: str = "view", at: int = 0
) -> Event:
    return Event(event_id, user_id, item_id, kind, START_MS + at)


def factors_only(**settings: object) -> MFConfig:
    """Plain SGD matrix factorization: the sequence part, the popularity
    blend, Adagrad and popular negatives switched off."""
    plain = {
        "seq_weight": 0.0,
        "pop_weight": 0.0,
        "adagrad": False,
        "popular_negatives": 0.0,
    }
    return MFConfig(**{**plain, **settings})  # type: ignore[arg-type]


def learn(model: OnlineMF, events: list[Event], profiles: dict[str, UserProfile]):
    result = model.learn_batch(events, profiles)
    model.apply_item_update(result.item_update)
    return result


# --- gradients --------------------------------------------------------------


def tiny_bpr_case() -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(2024)
    batch, n_negatives, k = 3, 2, 4
    params = [
        rng.normal(size=(batch, k)),
        rng.normal(size=(batch, k)),
        rng.normal(size=(batch, n_negatives, k)),
        rng.normal(size=batch),
        rng.normal(size=(batch, n_negatives)),
    ]
    weights = np.array([1.0, 3.0, 5.0])
    return params, weights


def central_differences(
    params: list[np.ndarray], which: int, weights: np.ndarray, reg: float
) -> np.ndarray:
    step = 1e-6
    numeric = np.zeros_like(params[which])
    for index in np.ndindex(params[which].shape):
        shifted = [p.copy() for p in params]
        shifted[which][index] += step
        upper = bpr_loss(*shifted, weights, reg)
        shifted[which][index] -= 2 * step
        lower = bpr_loss(*shifted, weights, reg)
        numeric[index] = (upper - lower) / (2 * step)
    return numeric


@pytest.mark.parametrize("regularization", [0.0, 0.1])
@pytest.mark.parametrize("which", range(5), ids=GRADIENT_NAMES)
def test_bpr_gradients_match_finite_differences_of_bpr_loss(which, regularization):
    params, weights = tiny_bpr_case()

    analytic = bpr_gradients(*params, weights, regularization)[which]
    numeric = central_differences(params, which, weights, regularization)

    assert analytic.shape == params[which].shape
    error = np.linalg.norm(analytic - numeric) / max(
        np.linalg.norm(analytic), np.linalg.norm(numeric)
    )
    assert error < 1e-5, f"{GRADIENT_NAMES[which]}: relative error {error:.2e}"


def test_masked_negatives_contribute_no_data_gradient():
    params, weights = tiny_bpr_case()
    users, positives, negatives, positive_bias, negative_bias = params
    mask = np.array([[True, False], [True, False], [True, False]])

    masked = bpr_gradients(*params, weights, 0.0, negative_mask=mask)
    only_first = bpr_gradients(
        users, positives, negatives[:, :1], positive_bias, negative_bias[:, :1],
        weights, 0.0,
    )  # fmt: skip

    np.testing.assert_allclose(masked[0], only_first[0], rtol=1e-6)
    np.testing.assert_allclose(masked[1], only_first[1], rtol=1e-6)
    np.testing.assert_allclose(masked[3], only_first[3], rtol=1e-6)
    assert not masked[2][:, 1].any()
    assert not masked[4][:, 1].any()


def test_clip_rows_scales_long_rows_to_the_limit_and_keeps_short_rows():
    grads = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])

    clipped = clip_rows(grads, 1.0)

    np.testing.assert_allclose(clipped[0], [0.6, 0.8])
    np.testing.assert_allclose(clipped[1], [0.3, 0.4])
    np.testing.assert_array_equal(clipped[2], [0.0, 0.0])


def test_item_steps_of_a_batch_are_clipped_to_grad_clip_times_batch_clip():
    config = MFConfig(
        n_factors=3, learning_rate=0.5, grad_clip=2.0, batch_clip=3.0, adagrad=False
    )
    model = OnlineMF(config)
    update = ItemUpdate(
        ["a", "b"],
        np.array([[100.0, 0.0, 0.0], [0.1, 0.0, 0.0]], np.float32),
        np.array([-100.0, 0.1], np.float32),
        np.array([1.0, 1.0], np.float32),
    )

    vector_steps, bias_steps, _ = model.item_steps(update)

    np.testing.assert_allclose(vector_steps[0], [-3.0, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(vector_steps[1], [-0.05, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(bias_steps, [3.0, -0.05], rtol=1e-6)


# --- event weights ----------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [
        {"view": 1.0, "click": 1.5, "add_to_cart": 6.0, "purchase": 5.0},
        {"view": 1.0, "click": 4.0, "add_to_cart": 3.0, "purchase": 5.0},
        {"view": 2.0, "click": 1.5, "add_to_cart": 3.0, "purchase": 5.0},
        {"view": -1.0, "click": 1.5, "add_to_cart": 3.0, "purchase": 5.0},
    ],
    ids=["cart_over_purchase", "click_over_cart", "view_over_click", "negative"],
)
def test_config_refuses_event_weights_out_of_rank(weights):
    with pytest.raises(ValueError, match="purchase >= add_to_cart >= click >= view"):
        MFConfig(event_weights=weights)


def test_config_accepts_ranked_and_equal_event_weights():
    equal = {"view": 1.0, "click": 1.0, "add_to_cart": 1.0, "purchase": 1.0}

    assert MFConfig(event_weights=equal).event_weights == equal
    assert MFConfig().event_weights == dict(DEFAULT_EVENT_WEIGHTS)


def test_a_purchase_moves_the_item_by_its_weight_relative_to_a_view():
    config = MFConfig(n_factors=4, regularization=0.0, grad_clip=1e6, seed=3)
    steps = {}
    for kind in ("view", "purchase"):
        model = OnlineMF(config)
        learn(model, [make_event("warm", "w", "other")], {})
        result = model.learn_batch([make_event("e1", "u", "target", kind)], {})
        row = result.item_update.item_ids.index("target")
        steps[kind] = result.item_update.vector_grads[row]

    ratio = DEFAULT_EVENT_WEIGHTS["purchase"] / DEFAULT_EVENT_WEIGHTS["view"]
    assert np.linalg.norm(steps["view"]) > 0
    np.testing.assert_allclose(steps["purchase"], ratio * steps["view"], rtol=1e-5)


# --- duplicates -------------------------------------------------------------


def test_a_duplicate_event_id_within_a_batch_is_learned_once():
    model = OnlineMF(MFConfig(n_factors=4))
    profiles: dict[str, UserProfile] = {}
    event = make_event("e1", "u1", "i1", "purchase")

    result = learn(model, [event, event, make_event("e2", "u1", "i2")], profiles)

    assert (result.learned, result.duplicates) == (2, 1)
    assert profiles["u1"].n_events == 2
    assert profiles["u1"].event_ids == ["e1", "e2"]
    assert model.items.counts.tolist() == [1.0, 1.0]


def test_a_duplicate_event_id_in_a_later_batch_changes_nothing():
    model = OnlineMF(MFConfig(n_factors=4))
    profiles: dict[str, UserProfile] = {}
    event = make_event("e1", "u1", "i1", "purchase")
    learn(model, [event, make_event("e2", "u1", "i2")], profiles)
    user_before = profiles["u1"].factors
    items_before = model.items.vectors.copy()
    version_before = model.items.version

    result = learn(model, [event], profiles)

    assert (result.learned, result.duplicates) == (0, 1)
    assert result.users == []
    assert len(result.item_update) == 0
    assert profiles["u1"].factors == user_before
    assert profiles["u1"].n_events == 2
    np.testing.assert_array_equal(model.items.vectors, items_before)
    assert model.items.version == version_before
    assert model.items.counts.tolist() == [1.0, 1.0]


def test_an_event_id_is_learned_again_after_the_dedup_window():
    model = OnlineMF(MFConfig(n_factors=4, dedup_window_ms=1_000))
    profiles: dict[str, UserProfile] = {}
    learn(model, [make_event("e1", "u1", "i1", at=0)], profiles)
    learn(model, [make_event("e2", "u1", "i2", at=5_000)], profiles)

    result = learn(model, [make_event("e1", "u1", "i1", at=0)], profiles)

    assert (result.learned, result.duplicates) == (1, 0)


# --- non-finite guard -------------------------------------------------------


def test_a_huge_learning_rate_leaves_every_factor_finite_and_is_counted():
    model = OnlineMF(MFConfig(n_factors=4, learning_rate=1e39))
    profiles: dict[str, UserProfile] = {}
    events = [
        make_event(f"e{n}", f"u{n % 3}", f"i{n % 5}", "purchase", at=n)
        for n in range(20)
    ]

    with np.errstate(all="ignore"):
        learn(model, events, profiles)

    assert all(np.isfinite(p.vector).all() for p in profiles.values())
    assert np.isfinite(model.items.vectors).all()
    assert np.isfinite(model.items.biases).all()
    assert model.nonfinite_users == 3
    assert model.nonfinite_items == 5


def test_a_nan_item_gradient_is_refused_for_that_item_only():
    model = OnlineMF(MFConfig(n_factors=3))
    learn(model, [make_event("e1", "u1", "a"), make_event("e2", "u1", "b")], {})
    before = model.items.vectors.copy()
    update = ItemUpdate(
        ["a", "b"],
        np.array([[np.nan, 0.0, 0.0], [0.5, 0.5, 0.5]], np.float32),
        np.zeros(2, np.float32),
        np.ones(2, np.float32),
    )

    with np.errstate(all="ignore"):
        model.apply_item_update(update)

    np.testing.assert_array_equal(model.items.vectors[0], before[0])
    assert not np.array_equal(model.items.vectors[1], before[1])
    assert np.isfinite(model.items.vectors).all()
    assert model.nonfinite_items == 1


def test_a_nan_item_in_the_table_does_not_poison_the_shopper():
    model = OnlineMF(MFConfig(n_factors=3, n_negatives=1))
    profiles: dict[str, UserProfile] = {}
    learn(model, [make_event("e1", "u1", "good")], profiles)
    model.items.put("bad", ItemState(np.full(3, np.nan, np.float32), 0.0, 1.0))
    before = profiles["u1"].factors

    with np.errstate(all="ignore"):
        model.learn_batch([make_event("e2", "u1", "bad", at=1)], profiles)

    assert profiles["u1"].factors == before
    assert np.isfinite(profiles["u1"].vector).all()
    assert model.nonfinite_users == 1


# --- growth -----------------------------------------------------------------


def test_new_shoppers_and_items_join_on_the_fly():
    model = OnlineMF(MFConfig(n_factors=4, min_history=1))
    profiles: dict[str, UserProfile] = {}
    learn(model, [make_event("e1", "u1", "i1"), make_event("e2", "u1", "i2")], profiles)

    result = learn(
        model,
        [make_event("e3", "u2", "i3", at=1), make_event("e4", "u1", "i4", at=2)],
        profiles,
    )

    assert result.users == ["u2", "u1"]
    assert set(profiles) == {"u1", "u2"}
    assert model.items.ids == ["i1", "i2", "i3", "i4"]
    assert model.items.index == {"i1": 0, "i2": 1, "i3": 2, "i4": 3}
    newcomer = model.recommend([profiles["u2"]], ["u2"], k=10)[0]
    assert newcomer.personal
    assert sorted(newcomer.items) == ["i1", "i2", "i3", "i4"]


def test_the_item_table_grows_past_its_first_capacity_without_losing_items():
    model = OnlineMF(MFConfig(n_factors=2, n_negatives=1))
    profiles: dict[str, UserProfile] = {}
    learn(model, [make_event(f"a{n}", "u1", f"i{n}") for n in range(1000)], profiles)
    early = model.items.vectors[:1000].copy()

    second = learn(
        model, [make_event(f"b{n}", "u2", f"j{n}") for n in range(600)], profiles
    )

    assert len(model.items) == 1600
    assert model.items.ids[1000] == "j0"
    assert model.items.index["j599"] == 1599
    assert model.items.counts.sum() == 1600
    assert np.isfinite(model.items.vectors).all()
    touched = {model.items.index[i] for i in second.item_update.item_ids}
    untouched = [row for row in range(1000) if row not in touched]
    assert len(untouched) > 800
    np.testing.assert_array_equal(model.items.vectors[untouched], early[untouched])


def test_a_single_item_is_never_contrasted_with_itself():
    model = OnlineMF(MFConfig(n_factors=4, regularization=0.0))
    profiles: dict[str, UserProfile] = {}
    start = model.new_profile("u1").factors

    learn(model, [make_event("e1", "u1", "only", "purchase")], profiles)

    assert profiles["u1"].factors == start


# --- planted preferences ----------------------------------------------------


def planted_world(
    seed: int,
    groups: int = 3,
    shoppers: int = 20,
    block: int = 15,
    touched: int = 8,
    epochs: int = 4,
) -> list[Event]:
    """Shoppers of group g only touch items of block g; half of them buy one."""
    rng = np.random.default_rng(seed)
    funnel = ("view", "click", "add_to_cart")
    pairs = []
    for group in range(groups):
        for shopper in range(shoppers):
            items = rng.choice(block, size=touched, replace=False)
            for n, item in enumerate(items):
                bought = n == 0 and shopper % 2 == 0
                kind = "purchase" if bought else funnel[n % 3]
                pairs.append((f"g{group}u{shopper}", f"g{group}i{item}", kind))
    events = []
    for epoch in range(epochs):
        for n in rng.permutation(len(pairs)):
            user_id, item_id, kind = pairs[n]
            events.append(
                make_event(f"e{epoch}-{n}", user_id, item_id, kind, at=len(events))
            )
    return events


def group_of(some_id: str) -> str:
    """The group of a shopper ``g1u7`` or an item ``g1i3``: ``g1``."""
    return re.match(r"g\d+", some_id).group()


def train(events: list[Event], config: MFConfig, batch_size: int) -> Replayer:
    replayer = Replayer(config, k=10)
    for batch in batches(events, batch_size):
        replayer.step(batch)
    return replayer


def own_block_auc(replayer: Replayer) -> float:
    """How often an own-block item outscores another block's item (mean)."""
    items = replayer.model.items
    own = np.array([[group_of(i)] for i in items.ids])
    aucs = []
    for user_id, profile in replayer.profiles.items():
        scores = items.vectors @ profile.vector + items.biases
        mine = own[:, 0] == group_of(user_id)
        wins = scores[mine][:, None] > scores[~mine][None, :]
        aucs.append(wins.mean())
    return float(np.mean(aucs))


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_group_preferences_come_back_first(seed):
    events = planted_world(seed)
    replayer = train(events, MFConfig(n_factors=8, learning_rate=0.1, seed=seed), 64)

    lists = replayer.lists_for(sorted(replayer.profiles))

    assert len(lists) == 60
    for rec in lists:
        assert rec.personal
        assert len(rec.items) == 10
        own = sum(group_of(item) == group_of(rec.user_id) for item in rec.items)
        assert own >= 8, (rec.user_id, rec.items)


def test_planted_preferences_beat_the_popularity_baseline():
    events = planted_world(5)
    replayer = train(events, MFConfig(n_factors=8, learning_rate=0.1, seed=5), 64)
    newcomer = replayer.model.new_profile("nobody")
    popular = replayer.model.recommend([newcomer], ["nobody"], 10)[0]

    def own_share(user_id: str, items: list[str]) -> float:
        return sum(group_of(i) == group_of(user_id) for i in items) / len(items)

    users = sorted(replayer.profiles)
    personal = replayer.lists_for(users)
    personal_share = np.mean([own_share(r.user_id, r.items) for r in personal])
    popular_share = np.mean([own_share(u, popular.items) for u in users])

    assert not popular.personal
    assert personal_share >= 0.9
    assert popular_share <= 0.5
    assert personal_share > popular_share + 0.4


@pytest.mark.parametrize("batch_size", [1, 50])
def test_learning_improves_over_the_start_with_any_batch_size(batch_size):
    events = planted_world(7, epochs=3)
    start = train(events, factors_only(n_factors=8, learning_rate=0.0, seed=7), 50)
    learned = train(
        events, factors_only(n_factors=8, learning_rate=0.1, seed=7), batch_size
    )

    start_auc, learned_auc = own_block_auc(start), own_block_auc(learned)

    assert 0.3 < start_auc < 0.7
    assert learned_auc > 0.9
    assert learned_auc > start_auc + 0.25


# --- determinism ------------------------------------------------------------


def test_the_same_seed_gives_identical_runs_and_another_seed_does_not():
    events = planted_world(11, epochs=2)

    first = train(events, MFConfig(n_factors=8, seed=11), 32)
    again = train(events, MFConfig(n_factors=8, seed=11), 32)
    other = train(events, MFConfig(n_factors=8, seed=12), 32)

    users = sorted(first.profiles)
    assert first.model.items.ids == again.model.items.ids
    np.testing.assert_array_equal(first.model.items.vectors, again.model.items.vectors)
    np.testing.assert_array_equal(first.model.items.biases, again.model.items.biases)
    for user_id in users:
        assert first.profiles[user_id].factors == again.profiles[user_id].factors
    assert first.lists_for(users) == again.lists_for(users)
    assert not np.array_equal(first.model.items.vectors, other.model.items.vectors)
