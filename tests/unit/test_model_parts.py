"""The pieces the ablation switches: Adagrad, popular negatives, item biases,
the popularity blend, and the settings that carry them."""

from __future__ import annotations

import numpy as np
import pytest

from config.settings import ConfigError, load_settings
from models.events import Event
from models.mf import ItemUpdate, MFConfig, OnlineMF
from models.profiles import UserProfile

START_MS = 1_700_000_000_000


def events(n: int, users: int = 5, items: int = 40) -> list[Event]:
    return [
        Event(f"e{k}", f"u{k % users}", f"i{(3 * k) % items}", "view", START_MS + k)
        for k in range(n)
    ]


def test_adagrad_steps_shrink_as_a_row_accumulates():
    model = OnlineMF(MFConfig(n_factors=2, learning_rate=0.1, adagrad=True))
    update = ItemUpdate(
        ["a", "b"],
        np.array([[0.6, 0.8], [0.6, 0.8]], np.float32),
        np.zeros(2, np.float32),
        np.ones(2, np.float32),
    )

    steps, _, added = model.item_steps(update, np.array([0.0, 98.0], np.float32))

    # unit gradients: a fresh row moves by lr / sqrt(1 + 1), one with G = 98
    # by lr / sqrt(1 + 98 + 1)
    np.testing.assert_allclose(np.linalg.norm(steps, axis=1), [0.1 / 2**0.5, 0.01])
    np.testing.assert_allclose(added, [1.0, 1.0], rtol=1e-6)


def test_adagrad_sums_are_kept_in_profiles_and_items():
    model = OnlineMF(MFConfig(n_factors=4))
    profiles: dict[str, UserProfile] = {}
    result = model.learn_batch(events(50), profiles)
    model.apply_item_update(result.item_update)

    assert all(p.accum > 0 for p in profiles.values())
    assert (model.items.accums > 0).any()


def test_popular_negatives_come_from_recent_positives():
    model = OnlineMF(MFConfig(n_factors=2, popular_negatives=1.0, n_negatives=4))
    profiles: dict[str, UserProfile] = {}
    # a catalogue of 40 items, then a stream of one item only
    model.learn_batch(events(40), profiles)
    only = [Event(f"x{k}", "u1", "i0", "view", START_MS + 100 + k) for k in range(64)]
    model.learn_batch(only, profiles)

    drawn = model._draw_items((1000,))

    assert (drawn == model.items.index["i0"]).mean() > 0.5


def test_without_item_biases_biases_stay_zero():
    model = OnlineMF(MFConfig(n_factors=4, item_bias=False))
    profiles: dict[str, UserProfile] = {}
    for start in range(0, 200, 50):
        result = model.learn_batch(events(200)[start : start + 50], profiles)
        model.apply_item_update(result.item_update)

    assert not model.items.biases.any()


def test_the_popularity_blend_fades_with_the_shoppers_history():
    config = MFConfig(n_factors=2, seq_weight=0.0, pop_weight=1.0, pop_history=10)
    model = OnlineMF(config)
    profiles: dict[str, UserProfile] = {}
    result = model.learn_batch(events(100), profiles)
    model.apply_item_update(result.item_update)
    newcomer = model.new_profile("n")
    veteran = model.new_profile("v")
    veteran.n_events = 990

    scores = model.scores([newcomer, veteran])

    items = model.items
    factors = np.stack([newcomer.vector, veteran.vector]) @ items.vectors.T
    share = np.array([[10 / (10 + 0)], [10 / (10 + 990)]])  # h / (h + n)
    expected = factors + items.biases + share * items.log_counts
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "value"),
    [("SEQ_WEIGHT", "-1"), ("POPULAR_NEGATIVES", "1.5"), ("LINK_CAP", "0")],
)
def test_bad_model_settings_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(f"STREAMREC_{name}", value)
    with pytest.raises(ConfigError, match=f"STREAMREC_{name}"):
        load_settings()


def test_seq_steps_may_not_exceed_the_remembered_items(monkeypatch):
    monkeypatch.setenv("STREAMREC_SEQ_STEPS", "30")
    with pytest.raises(ConfigError, match="STREAMREC_SEQ_STEPS"):
        load_settings()
