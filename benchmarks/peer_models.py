"""The peer systems of ``benchmarks.peers``, behind the harness's Recommender.

Each follows :class:`models.evaluation.Recommender`: ``recommend`` answers a
batch of tests from the current state, ``learn`` then trains on the batch's
events in order. Hyper-parameters are each library's or paper's defaults,
fixed before any run: none was tuned on the streams they are judged on.

- :class:`RiverMF`: River's FunkMF or BiasedMF (``river.reco``), taught every
  event as a positive (y = 1) plus sampled negatives (y = 0), and scored from
  a numpy mirror of its learned factors.
- :class:`PeriodicALS`: implicit's AlternatingLeastSquares, retrained from
  scratch every 5 % of the stream; shoppers new since the last fit are folded
  in from their items (``recalculate_user``), the rest keep the fit's factors.
- :class:`ISGD`: incremental SGD for positive-only feedback (Vinagre, Jorge
  and Gama 2014), in numpy.
- :class:`SequentialRules`: the SR baseline of session-based recommendation
  (Ludewig and Jannach 2018) over each shopper's whole stream.

River and implicit are optional (``pip install -e '.[peers]'``); they are
imported when their peer is made.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from models.evaluation import EventBatch, ListRequest, Popularity, top_n_chunked


class _Growable:
    """A float matrix whose rows are added as ids appear."""

    def __init__(self, width: int, dtype: type = np.float64) -> None:
        self.data = np.zeros((1024, width), dtype=dtype)
        self.rows = 0

    def ensure(self, row: int) -> None:
        if row >= len(self.data):
            shape = (max(2 * len(self.data), row + 1), *self.data.shape[1:])
            grown = np.zeros(shape, dtype=self.data.dtype)
            grown[: len(self.data)] = self.data
            self.data = grown
        self.rows = max(self.rows, row + 1)

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.rows]


# --- River ----------------------------------------------------------------------------


class RiverMF:
    """River's FunkMF or BiasedMF with sampled negatives.

    River learns one (user, item, y) at a time and predicts one pair at a
    time; ranking every item per test through ``predict_one`` would take
    seconds. Its factors are plain numpy vectors in dicts, so the ones an
    event touched are copied into matrices after each event, and a test is
    one matrix product: ``p_u . q_i`` (+ ``b_i`` for BiasedMF; the global
    mean and the user bias do not change a user's order).
    """

    def __init__(
        self,
        kind: str = "funk",
        *,
        n_negatives: int = 4,
        seed: int = 42,
        name: str | None = None,
    ) -> None:
        from river import optim, reco

        self.kind = kind
        self.name = name or {"funk": "river-FunkMF", "biased": "river-BiasedMF"}[kind]
        self.n_negatives = n_negatives
        self.rng = np.random.default_rng(seed)
        # River's own defaults but for the seeds: FunkMF 10 factors, SGD(0.1);
        # BiasedMF 10 factors, SGD(0.01); squared loss, no L2.
        if kind == "funk":
            self.model = reco.FunkMF(
                initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
                seed=seed,
            )
        elif kind == "biased":
            self.model = reco.BiasedMF(
                latent_initializer=optim.initializers.Normal(sigma=0.1, seed=seed),
                seed=seed,
            )
        else:
            raise ValueError(f"kind must be 'funk' or 'biased', got {kind!r}")
        width = self.model.n_factors
        self.item_vectors = _Growable(width)
        self.item_biases = _Growable(1)
        self.user_vectors = _Growable(width)
        self.n_items = 0

    def learn(self, batch: EventBatch) -> None:
        for user, item in zip(batch.users.tolist(), batch.items.tolist(), strict=True):
            self.n_items = max(self.n_items, item + 1)
            negatives = self.rng.integers(0, self.n_items, self.n_negatives).tolist()
            self.model.learn_one(user, item, 1.0)
            touched = [item]
            for other in negatives:
                if other != item:  # a positive is not its own negative
                    self.model.learn_one(user, other, 0.0)
                    touched.append(other)
            self._mirror(user, touched)

    def _mirror(self, user: int, items: list[int]) -> None:
        model = self.model
        self.user_vectors.ensure(user)
        self.user_vectors.data[user] = model.u_latents[user]
        for item in items:
            self.item_vectors.ensure(item)
            self.item_vectors.data[item] = model.i_latents[item]
            if self.kind == "biased":
                self.item_biases.ensure(item)
                self.item_biases.data[item, 0] = model.i_biases[item]

    def recommend(self, request: ListRequest, n: int) -> np.ndarray:
        # users River has not seen yet (B > 1) score 0 everywhere: the
        # biases alone order their list, as in River's own predict_one
        users = _rows_or_zeros(self.user_vectors, request.users)
        items = self.item_vectors.view
        bias = self.item_biases.view[:, 0] if self.kind == "biased" else 0.0

        def score(rows: slice) -> np.ndarray:
            return users[rows] @ items.T + bias

        return top_n_chunked(score, request.exclude, n)


def _rows_or_zeros(matrix: _Growable, rows: np.ndarray) -> np.ndarray:
    out = np.zeros((len(rows), matrix.data.shape[1]))
    known = rows < matrix.rows
    out[known] = matrix.data[rows[known]]
    return out


# --- implicit ALS, retrained periodically ---------------------------------------------


class PeriodicALS:
    """implicit's AlternatingLeastSquares, refit from scratch every
    ``retrain_fraction`` of the stream (the periodic-retrain design of engines
    like Gorse).

    The fit sees every event so far as confidence ``1 + alpha * count`` per
    (shopper, item). Until the first fit there is no model and no list. A
    shopper who joined after the last fit is folded in at each test from the
    items they met so far (implicit's ``recalculate_user``: the ALS user step
    against the fit's item factors); items new since the fit cannot be
    recommended until the next one.
    """

    def __init__(
        self,
        total_events: int,
        *,
        retrain_fraction: float = 0.05,
        factors: int = 100,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        seed: int = 42,
        name: str = "implicit-ALS",
    ) -> None:
        import implicit  # noqa: F401  (fail at construction when missing)

        self.name = name
        self.every = max(1, math.ceil(total_events * retrain_fraction))
        # implicit's defaults (factors 100, regularization 0.01, alpha 1.0,
        # 15 iterations of conjugate gradient), seeded
        self.params = {
            "factors": factors,
            "regularization": regularization,
            "alpha": alpha,
            "iterations": iterations,
            "random_state": seed,
        }
        self.seen = 0
        self.n_items = 0
        self.user_items: list[dict[int, float]] = []
        self.model = None
        self.fit_users = 0
        self.fit_items = 0
        self.fits = 0
        self.fit_seconds = 0.0

    def learn(self, batch: EventBatch) -> None:
        for user, item in zip(batch.users.tolist(), batch.items.tolist(), strict=True):
            while len(self.user_items) <= user:
                self.user_items.append({})
            counts = self.user_items[user]
            counts[item] = counts.get(item, 0.0) + 1.0
            self.n_items = max(self.n_items, item + 1)
            self.seen += 1
            if self.seen % self.every == 0:
                self._fit()

    def _matrix(self, users: list[int], n_items: int):  # -> scipy.sparse.csr_matrix
        from scipy.sparse import csr_matrix

        indptr, indices, data = [0], [], []
        for user in users:
            row = self.user_items[user] if user < len(self.user_items) else {}
            kept = [(i, c) for i, c in row.items() if i < n_items]
            indices += [i for i, _ in kept]
            data += [c for _, c in kept]
            indptr.append(len(indices))
        return csr_matrix(
            (np.asarray(data, np.float32), np.asarray(indices, np.int32), indptr),
            shape=(len(users), n_items),
        )

    def _fit(self) -> None:
        import time

        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        started = time.perf_counter()
        users = list(range(len(self.user_items)))
        matrix = self._matrix(users, self.n_items)
        # implicit runs its own threads and asks for a single-threaded BLAS
        # under them (it warns otherwise); threadpoolctl comes with implicit
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(**self.params)
            model.fit(matrix, show_progress=False)
        self.model = model
        self.fit_users, self.fit_items = matrix.shape
        self.fits += 1
        self.fit_seconds += time.perf_counter() - started

    def recommend(self, request: ListRequest, n: int) -> np.ndarray:
        if self.model is None:
            return np.full((len(request), n), -1, dtype=np.int64)
        users = np.asarray(self.model.user_factors)[
            np.minimum(request.users, self.fit_users - 1)
        ].copy()
        new = np.flatnonzero(request.users >= self.fit_users)
        if len(new):
            rows = self._matrix(request.users[new].tolist(), self.fit_items)
            users[new] = self.model.recalculate_user(np.arange(len(new)), rows)
        items = np.asarray(self.model.item_factors)

        def score(rows: slice) -> np.ndarray:
            return users[rows] @ items.T

        return top_n_chunked(score, request.exclude, n)


# --- ISGD -----------------------------------------------------------------------------


class ISGD:
    """Incremental SGD for positive-only feedback (Vinagre et al. 2014).

    Every event is a 1 to fit: ``err = 1 - p_u . q_i``, then
    ``p_u += lr * (err * q_i - reg * p_u)`` and
    ``q_i += lr * (err * p_u - reg * q_i)``; new users and items start from
    N(0, 0.1). A list holds the items whose prediction is nearest to 1,
    ``|1 - p_u . q_i|`` ascending, as the paper ranks them. Defaults are
    those of the authors' reference implementation: 10 factors, learning
    rate 0.01, regularization 0.1, the update repeated 10 times per event.
    """

    def __init__(
        self,
        *,
        n_factors: int = 10,
        learning_rate: float = 0.01,
        regularization: float = 0.1,
        steps: int = 10,
        seed: int = 1,
        name: str = "ISGD",
    ) -> None:
        self.name = name
        self.lr, self.reg, self.steps = learning_rate, regularization, steps
        self.rng = np.random.default_rng(seed)
        self.users = _Growable(n_factors)
        self.items = _Growable(n_factors)

    def _start(self, matrix: _Growable, row: int) -> None:
        if row >= matrix.rows:
            first = matrix.rows
            matrix.ensure(row)
            width = matrix.data.shape[1]
            matrix.data[first : row + 1] = self.rng.normal(
                0.0, 0.1, (row + 1 - first, width)
            )

    def learn(self, batch: EventBatch) -> None:
        lr, reg = self.lr, self.reg
        for user, item in zip(batch.users.tolist(), batch.items.tolist(), strict=True):
            self._start(self.users, user)
            self._start(self.items, item)
            p, q = self.users.data[user], self.items.data[item]  # views: in place
            for _ in range(self.steps):
                err = 1.0 - float(p @ q)
                p += lr * (err * q - reg * p)
                q += lr * (err * p - reg * q)

    def recommend(self, request: ListRequest, n: int) -> np.ndarray:
        users = _rows_or_zeros(self.users, request.users)
        items = self.items.view

        def score(rows: slice) -> np.ndarray:
            return -np.abs(1.0 - users[rows] @ items.T)

        return top_n_chunked(score, request.exclude, n)


# --- sequential rules -----------------------------------------------------------------


class SequentialRules:
    """Sequential rules (SR; Ludewig and Jannach 2018) on shoppers' streams.

    When item ``j`` follows item ``i`` in a shopper's stream at most ``steps``
    events later, the rule ``i -> j`` gains ``1 / distance`` (SR's default
    "div" weighting, 10 steps). A shopper's list sums the rules leaving their
    ``last_items`` most recent distinct items, strongest first, ties to the
    more popular item; a list the rules cannot fill is filled with the most
    popular items (the protocol's baseline), so every peer answers ``n``
    items.
    """

    def __init__(
        self, *, steps: int = 10, last_items: int = 3, name: str = "sequential-rules"
    ) -> None:
        self.name = name
        self.steps = steps
        self.last_items = last_items
        self.rules: list[dict[int, float]] = []
        self.recent: list[deque[int]] = []
        self.popularity = Popularity()

    def learn(self, batch: EventBatch) -> None:
        weights = [1.0 / d for d in range(1, self.steps + 1)]
        for user, item in zip(batch.users.tolist(), batch.items.tolist(), strict=True):
            while len(self.recent) <= user:
                self.recent.append(deque(maxlen=self.steps))
            while len(self.rules) <= item:
                self.rules.append({})
            before = self.recent[user]
            for weight, earlier in zip(weights, reversed(before), strict=False):
                if earlier != item:  # a rule to itself never makes a list
                    rules = self.rules[earlier]
                    rules[item] = rules.get(item, 0.0) + weight
            before.append(item)
        self.popularity.learn(batch)

    def _sources(self, user: int) -> list[int]:
        if user >= len(self.recent):
            return []
        sources: list[int] = []
        for item in reversed(self.recent[user]):
            if item not in sources:
                sources.append(item)
                if len(sources) == self.last_items:
                    break
        return sources

    def _ranked(self, user: int, skip: set[int], n: int) -> list[int]:
        scores: dict[int, float] = {}
        for source in self._sources(user):
            for target, weight in self.rules[source].items():
                scores[target] = scores.get(target, 0.0) + weight
        for item in skip:
            scores.pop(item, None)
        if not scores:
            return self.popularity.ranked(skip, n)
        targets = np.fromiter(scores.keys(), np.int64, len(scores))
        weights = np.fromiter(scores.values(), np.float64, len(scores))
        popular = self.popularity.counts
        counts = np.fromiter((popular[t] for t in scores), np.int64, len(scores))
        chosen = targets[np.lexsort((targets, -counts, -weights))[:n]].tolist()
        if len(chosen) < n:
            chosen += self.popularity.ranked(skip | set(chosen), n - len(chosen))
        return chosen

    def recommend(self, request: ListRequest, n: int) -> np.ndarray:
        out = np.full((len(request), n), -1, dtype=np.int64)
        for row, (user, before) in enumerate(
            zip(request.users.tolist(), request.exclude, strict=True)
        ):
            chosen = self._ranked(user, set(before.tolist()), n)
            out[row, : len(chosen)] = chosen
        return out
