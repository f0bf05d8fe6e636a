"""Nearest items in factor space: planted neighbours come back first."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.items import FLOAT, ItemTable
from models.similar import similar_items, similarity_scores, top_rows


def table(vectors: dict[str, list[float]]) -> ItemTable:
    n_factors = len(next(iter(vectors.values())))
    items = ItemTable(n_factors)
    rows = items.rows(list(vectors))
    # ``vectors`` is a view of the table's storage: this is what a replica
    # applying its owners' updates amounts to
    items.vectors[rows] = np.asarray(list(vectors.values()), FLOAT)
    return items


def test_planted_neighbours_come_first_and_the_item_itself_never() -> None:
    items = table(
        {
            "shoe": [1.0, 0.0, 0.0],
            "boot": [0.9, 0.1, 0.0],
            "sandal": [0.7, 0.7, 0.0],
            "hat": [0.0, 0.0, 1.0],
        }
    )
    found = similar_items(items, "shoe", k=3)
    assert found is not None
    assert found.items == ["boot", "sandal", "hat"]
    assert found.scores == sorted(found.scores, reverse=True)
    assert found.scores[-1] == pytest.approx(0.0)


def test_cosine_ignores_length_and_dot_does_not() -> None:
    items = table({"a": [1.0, 0.0], "near": [0.5, 0.05], "long": [3.0, 3.0]})
    assert similar_items(items, "a", 1, "cosine").items == ["near"]  # type: ignore[union-attr]
    assert similar_items(items, "a", 1, "dot").items == ["long"]  # type: ignore[union-attr]


def test_answers_follow_the_factors_as_they_change() -> None:
    items = table({"a": [1.0, 0.0], "b": [0.9, 0.1], "c": [0.0, 1.0]})
    assert similar_items(items, "a", 1).items == ["b"]  # type: ignore[union-attr]
    items.vectors[items.index["c"]] = [1.0, 0.01]  # an owner's update arrives
    assert similar_items(items, "a", 1).items == ["c"]  # type: ignore[union-attr]


def test_unknown_item_and_short_catalogues() -> None:
    items = table({"a": [1.0, 0.0], "b": [0.0, 1.0]})
    assert similar_items(items, "nope", 5) is None
    assert similar_items(items, "a", 50).items == ["b"]  # type: ignore[union-attr]
    alone = table({"a": [1.0, 0.0]})
    assert similar_items(alone, "a", 5).items == []  # type: ignore[union-attr]


def test_zero_vectors_score_zero_not_nan() -> None:
    vectors = np.asarray([[0.0, 0.0], [1.0, 1.0]], FLOAT)
    scores = similarity_scores(vectors, np.asarray([1.0, 0.0], FLOAT))
    assert np.isfinite(scores).all() and scores[0] == 0.0
    assert np.isfinite(similarity_scores(vectors, vectors[0])).all()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="metric"):
        similarity_scores(np.zeros((2, 2)), np.zeros(2), "euclid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        top_rows(np.zeros(3), 0)


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        FLOAT,
        st.tuples(st.integers(2, 40), st.just(4)),
        elements=st.floats(-3, 3, width=32),
    ),
    st.integers(1, 50),
)
def test_top_rows_are_sorted_unique_and_exclude_the_query(
    vectors: np.ndarray, k: int
) -> None:
    scores = similarity_scores(vectors, vectors[0])
    best = top_rows(scores, k, exclude=0)
    assert 0 not in best
    assert len(set(best.tolist())) == len(best) == min(k, len(vectors) - 1)
    assert np.all(np.diff(scores[best]) <= 1e-6)
    assert np.isfinite(scores).all()
