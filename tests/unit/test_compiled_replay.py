"""The compiled prequential loop learns what the worker's Python code learns.

Both replays run on real data (heads of the shared MovieLens and Taobao
files): the learned factors, biases and link rows must be equal to the bit,
and the ranks of the tests equal (a float32 tie summed in another order could
rank the other way; none does on these streams).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

import models.compiled_replay as compiled
import models.mf as mf
from models.evaluation import StreamrecRecommender, encode, prequential
from models.events import Event
from models.mf import MFConfig
from producers.datasets import read_events

DATA = Path(
    os.environ.get("STREAMREC_DATA_DIR")
    or Path(__file__).resolve().parents[2].parent / "shared" / "data"
)
MOVIELENS = DATA / "movielens-latest-small" / "ratings.csv"
TAOBAO = DATA / "taobao-userbehavior" / "user_behavior_head.csv.gz"


def _stream(path: Path, n: int):  # type: ignore[no-untyped-def]
    return encode(read_events(path, limit=n, fav_as="click"))


def _python_replay(stream, config):  # type: ignore[no-untyped-def]
    model = StreamrecRecommender(config, compiled=False)
    return prequential(stream, model), model.replayer


def assert_same_replay(stream, config: MFConfig) -> None:  # type: ignore[no-untyped-def]
    result, replayer = _python_replay(stream, config)
    ranks, state = compiled.replay_arrays(stream, config)

    tested = np.flatnonzero(ranks >= 0)
    assert tested.tolist() == result.positions.tolist()
    assert ranks[tested].tolist() == result.ranks.tolist()

    items = replayer.model.items
    assert items.ids == stream.item_ids[: len(items)]  # rows = stream order
    np.testing.assert_array_equal(state.item_vectors[: len(items)], items.vectors)
    np.testing.assert_array_equal(state.item_biases[: len(items)], items.biases)
    if items.link_cap:
        np.testing.assert_array_equal(
            state.link_targets[: len(items)], items.link_targets
        )
        np.testing.assert_array_equal(
            state.link_weights[: len(items)], items.link_weights
        )
    for row, user_id in enumerate(stream.user_ids):
        np.testing.assert_array_equal(
            state.user_vectors[row], replayer.profiles[user_id].vector
        )


@pytest.mark.parametrize("n_factors", [16, 7])  # 7: not a multiple of four
def test_movielens_head_is_learned_and_ranked_alike(n_factors):
    assert_same_replay(_stream(MOVIELENS, 3000), MFConfig(n_factors=n_factors))


def test_taobao_head_with_candidate_lists_is_learned_and_ranked_alike(monkeypatch):
    # a small catalogue threshold, so that most lists are candidate lists
    monkeypatch.setattr(mf, "CANDIDATE_CATALOGUE", 500)
    monkeypatch.setattr(compiled, "CANDIDATE_CATALOGUE", 500)
    stream = _stream(TAOBAO, 5000)
    assert len(stream.item_ids) > 2000
    assert_same_replay(stream, MFConfig())


@pytest.mark.parametrize(
    "change",
    [
        {"seq_weight": 0.0},
        {"adagrad": False},
        {"item_bias": False},
        {"pop_weight": 0.0},
        {"popular_negatives": 0.0},
        {"n_negatives": 200, "negative_pool": 16},  # the shared-pool draw
        {"seq_backward": 0.0, "seq_recency": 1.0},
        {"recent_items": 3, "seq_steps": 3, "seq_sources": 2},
        {"min_history": 0},
    ],
    ids=lambda change: ",".join(change),
)
def test_every_switch_of_the_ablation_is_replayed_alike(change):
    stream = _stream(MOVIELENS, 1200)
    assert_same_replay(stream, dataclasses.replace(MFConfig(n_factors=8), **change))


def test_prequential_takes_the_compiled_loop_only_when_asked_and_fit():
    stream = _stream(MOVIELENS, 1500)
    config = MFConfig(n_factors=8)
    fast = StreamrecRecommender(config, compiled=True)
    result = prequential(stream, fast)
    assert not fast.replayer.profiles  # the Python replayer never ran
    reference = prequential(stream, StreamrecRecommender(config))
    assert result.ranks.tolist() == reference.ranks.tolist()
    assert result.positions.tolist() == reference.positions.tolist()

    # at a larger micro-batch, or past min_history 1, the Python loop runs
    batched = StreamrecRecommender(config, compiled=True)
    prequential(stream, batched, batch_size=8)
    assert batched.replayer.profiles
    patient = StreamrecRecommender(
        dataclasses.replace(config, min_history=3), compiled=True
    )
    prequential(stream, patient)
    assert patient.replayer.profiles


def test_a_stream_with_a_repeated_event_id_is_left_to_the_python_loop():
    events = [
        Event("e1", "u1", "a", "view", 1_000),
        Event("e2", "u1", "b", "view", 2_000),
        Event("e2", "u1", "c", "view", 3_000),  # a redelivery under its id
    ]
    stream = encode(events)
    assert not compiled.supports(stream, MFConfig())
    with pytest.raises(ValueError, match="unique event ids"):
        compiled.prequential_compiled(stream, MFConfig())
    model = StreamrecRecommender(MFConfig(n_factors=4), compiled=True)
    prequential(stream, model)
    assert model.replayer.profiles["u1"].n_events == 2  # the repeat dropped
