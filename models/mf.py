"""Online matrix factorization for implicit feedback, learned by SGD.

The score of item ``i`` for shopper ``u`` is ``x_ui = p_u . q_i + b_i``. Each
event is a positive; it is contrasted with ``n_negatives`` items drawn from the
items seen so far, under a weighted BPR loss (Rendle et al. 2009)::

    L = sum_j -w_e * log(sigmoid(x_ui - x_uj))
        + reg/2 * (|p_u|^2 + |q_i|^2 + b_i^2 + sum_j (|q_j|^2 + b_j^2))

where ``w_e`` is the weight of the event's type (a purchase says more than a
view). A micro-batch of events is learned in one vectorised step: every
gradient is taken at the state from before the batch, clipped to a maximum
norm, and the steps of one shopper or one item are summed. With ``adagrad``
each row (a shopper's or an item's factors and bias) scales its steps by
``1 / sqrt(1 + G)``, ``G`` the sum of its squared step norms so far.
Negatives are drawn uniformly from the items seen, and a share
``popular_negatives`` of them from the positives of recent events (so a
popular item is contrasted as often as it appears).

A list blends three scores (``models/sequence.py`` has the second)::

    s_uj = x_uj + seq_weight * sum_p recency^p * link(r_p -> j)
                + pop_weight * h / (h + n_u) * log(1 + count_j)

the factor score for long-term taste; the links from the shopper's latest
distinct items ``r_0, r_1, ...`` for what they are doing now; and popularity,
which counts most while the shopper's history ``n_u`` is short
(``h = pop_history``).

Shopper updates are applied here, to the profiles passed in. Item updates are
returned as an :class:`ItemUpdate`, because on the worker an item belongs to
one owner that applies them (see ``docs/ARCHITECTURE.md``); in-process, the
caller applies them at once with :meth:`OnlineMF.apply_item_update`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from models.events import Event
from models.items import FLOAT, ItemTable
from models.kernels import (
    adagrad_steps,
    bpr_batch,
    candidate_lists,
    draw_items,
    finish_lists,
)
from models.profiles import UserProfile
from models.sequence import (
    EMPTY,
    add_sequence_scores,
    batch_links,
    latest_distinct,
)

# Shoppers scored per matrix product: bounds the (users x items) score matrix.
_SCORE_CHUNK = 256
_NO_ROWS = np.zeros(0, np.int64)
_NONE = np.zeros(0, np.float32)


def _zeros(n: int) -> np.ndarray:
    return np.zeros(n, np.float32)


# Up to this many items every item is scored (MFConfig.candidate_popular):
# measured on this machine, below it one product over the whole catalogue
# costs less than gathering a shopper's candidates.
CANDIDATE_CATALOGUE = 20_000

DEFAULT_EVENT_WEIGHTS: Mapping[str, float] = {
    "view": 1.0,
    "click": 1.5,
    "add_to_cart": 3.0,
    "purchase": 5.0,
}


@dataclass(frozen=True)
class MFConfig:
    """Hyper-parameters; ``config.Settings`` carries the same names."""

    # 16: as good as 32 on both first halves (MovieLens 9,489 vs 9,454 hits,
    # Taobao 94 vs 94), at half the cost of a list (docs/BENCHMARKS.md)
    n_factors: int = 16
    learning_rate: float = 0.05
    regularization: float = 0.01
    n_negatives: int = 4
    negative_pool: int = 128
    grad_clip: float = 1.0
    batch_clip: float = 4.0
    init_scale: float = 0.1
    event_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS)
    )
    seed: int = 42
    min_history: int = 1
    exclude_viewed: bool = False
    recent_items: int = 20
    dedup_window_ms: int = 600_000
    # --- chosen on the first half of each stream (docs/BENCHMARKS.md) ---
    item_bias: bool = True
    adagrad: bool = True
    popular_negatives: float = 0.5
    negative_memory: int = 4096
    seq_weight: float = 1.0
    seq_steps: int = 10
    seq_sources: int = 10
    seq_recency: float = 0.85
    seq_backward: float = 0.75
    link_cap: int = 300
    pop_weight: float = 0.5
    pop_history: float = 10.0
    # Candidate generation (#3, speed; chosen on the first halves, see
    # docs/BENCHMARKS.md): with n > 0, once the catalogue has more than
    # CANDIDATE_CATALOGUE items, a list is chosen among the items linked from
    # the shopper's latest sources and the n most popular items only; 0
    # scores every item.
    candidate_popular: int = 200

    def __post_init__(self) -> None:
        if self.seq_steps > self.recent_items:
            raise ValueError(
                f"seq_steps ({self.seq_steps}) must not exceed recent_items "
                f"({self.recent_items}): links come from the remembered items"
            )
        weights = self.event_weights
        if not (
            weights["purchase"]
            >= weights["add_to_cart"]
            >= weights["click"]
            >= weights["view"]
            >= 0
        ):
            raise ValueError(
                "event weights must rank purchase >= add_to_cart >= click >= "
                f"view >= 0, got {dict(weights)}"
            )


@dataclass
class ItemUpdate:
    """Summed gradients of one batch per item, for the item's owner to apply."""

    item_ids: list[str]
    vector_grads: np.ndarray  # (n, n_factors) float32
    bias_grads: np.ndarray  # (n,) float32
    counts: np.ndarray  # (n,) events per item in the batch
    # the batch's links, summed per (source, target); owned by the source
    link_sources: list[str] = field(default_factory=list)
    link_targets: list[str] = field(default_factory=list)
    link_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, FLOAT))
    # The same items and links as rows of ``table``, the learner's item table:
    # applied to that same table in-process, the ids need no lookup.
    rows: np.ndarray | None = field(default=None, repr=False, compare=False)
    link_source_rows: np.ndarray | None = field(default=None, repr=False, compare=False)
    link_target_rows: np.ndarray | None = field(default=None, repr=False, compare=False)
    table: ItemTable | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.item_ids) + len(self.link_sources)

    def rows_in(self, items: ItemTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows in ``items`` of the updated items, link sources and targets
        (items not met yet are added)."""
        if self.table is items and self.rows is not None:
            sources, targets = self.link_source_rows, self.link_target_rows
            if sources is not None and targets is not None:
                return self.rows, sources, targets
        return (
            items.rows(self.item_ids),
            items.rows(self.link_sources),
            items.rows(self.link_targets),
        )


@dataclass
class BatchResult:
    """What one call of :meth:`OnlineMF.learn_batch` did."""

    learned: int
    duplicates: int
    users: list[str]
    item_update: ItemUpdate


@dataclass
class Recommendation:
    """A shopper's top-K list; ``personal`` is False for the popularity fallback."""

    user_id: str
    items: list[str]
    scores: list[float]
    personal: bool


def bpr_gradients(
    users: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    positive_bias: np.ndarray,
    negative_bias: np.ndarray,
    weights: np.ndarray,
    regularization: float,
    negative_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Gradients of the weighted BPR loss for a batch of events.

    Shapes: users and positives (B, k), negatives (B, n, k), biases (B,) and
    (B, n), weights (B,). ``negative_mask`` (B, n) is False where a sampled
    negative is the positive itself and must not count. Returns gradients for
    users, positives, negatives, positive biases and negative biases.
    """
    # predict: the score margin of the positive over each negative
    margin = (
        np.einsum("bk,bk->b", users, positives)[:, None]
        + positive_bias[:, None]
        - np.einsum("bk,bnk->bn", users, negatives)
        - negative_bias
    )

    # gradient: d/dx -log(sigmoid(x)) = -sigmoid(-x), weighted per event
    pull = weights[:, None] / (1.0 + np.exp(np.clip(margin, -30.0, 30.0)))
    if negative_mask is not None:
        pull = pull * negative_mask
    pull = pull.astype(FLOAT)

    # regularise: L2 on every parameter the event touched
    user_grad = (
        -np.einsum("bn,bnk->bk", pull, positives[:, None, :] - negatives)
        + regularization * users
    )
    positive_grad = -pull.sum(axis=1)[:, None] * users + regularization * positives
    negative_grad = pull[:, :, None] * users[:, None, :] + regularization * negatives
    positive_bias_grad = -pull.sum(axis=1) + regularization * positive_bias
    negative_bias_grad = pull + regularization * negative_bias
    return (
        user_grad,
        positive_grad,
        negative_grad,
        positive_bias_grad,
        negative_bias_grad,
    )


def bpr_loss(
    users: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    positive_bias: np.ndarray,
    negative_bias: np.ndarray,
    weights: np.ndarray,
    regularization: float,
) -> float:
    """The loss :func:`bpr_gradients` differentiates (for gradient checks)."""
    margin = (
        np.einsum("bk,bk->b", users, positives)[:, None]
        + positive_bias[:, None]
        - np.einsum("bk,bnk->bn", users, negatives)
        - negative_bias
    )
    data = float((weights[:, None] * np.logaddexp(0.0, -margin)).sum())
    # each event pays once for the parameters it touches, negatives included
    penalty = (
        (users**2).sum()
        + (positives**2).sum()
        + (negatives**2).sum()
        + (positive_bias**2).sum()
        + (negative_bias**2).sum()
    )
    return data + regularization / 2 * float(penalty)


def clip_rows(grads: np.ndarray, max_norm: float) -> np.ndarray:
    """Scale each row (last axis) down to at most ``max_norm``."""
    # np.linalg.norm's own sum, without its per-call checks
    norms = np.sqrt(np.add.reduce(grads * grads, axis=-1, keepdims=True))
    scale = np.minimum(1.0, max_norm / np.maximum(norms, 1e-12))
    return grads * scale


class OnlineMF:
    """Online SGD matrix factorization with a popularity fallback.

    Examples
    --------
    >>> model = OnlineMF(MFConfig(n_factors=8))
    >>> users: dict[str, UserProfile] = {}
    >>> result = model.learn_batch([some_event], users)   # doctest: +SKIP
    >>> model.apply_item_update(result.item_update)       # doctest: +SKIP
    >>> model.recommend([users["u1"]], ["u1"], k=10)      # doctest: +SKIP
    """

    def __init__(self, config: MFConfig, items: ItemTable | None = None) -> None:
        self.config = config
        self.items = items or ItemTable(
            config.n_factors,
            init_scale=config.init_scale,
            seed=config.seed,
            link_cap=config.link_cap if config.seq_weight else 0,
        )
        self.rng = np.random.default_rng(config.seed)
        self.nonfinite_users = 0
        self.nonfinite_items = 0
        # rows of recent positives, the popular share of the negatives
        self._positives = np.zeros(max(1, config.negative_memory), np.int64)
        self._positives_seen = 0
        # scratch of the candidate lists: a candidate's place, per item row
        self._slot = np.zeros(0, np.int64)

    def new_profile(self, user_id: str) -> UserProfile:
        c = self.config
        return UserProfile.new(user_id, c.n_factors, c.init_scale, c.seed)

    # --- learning -----------------------------------------------------------

    def learn_batch(
        self, events: Sequence[Event], profiles: MutableMapping[str, UserProfile]
    ) -> BatchResult:
        """Learn one micro-batch; updates ``profiles`` in place (missing ones
        are created) and returns the item gradients for the items' owner.

        The arithmetic is compiled (``models/kernels.py``); what is left in
        Python is per event and per shopper bookkeeping (ids to rows,
        profiles), some 0.2 ms an event at micro-batch 1. The in-process
        replay at micro-batch 1 runs the same kernels in one compiled loop
        instead (``models/compiled_replay.py``).
        """
        fresh = self._drop_duplicates(events, profiles)
        if not fresh:
            return BatchResult(0, len(events), [], self._empty_update())
        user_ids = list(dict.fromkeys(e.user_id for e in fresh))
        user_row = {user_id: row for row, user_id in enumerate(user_ids)}
        user_matrix = np.stack([profiles[u].vector for u in user_ids])

        event_users = np.fromiter((user_row[e.user_id] for e in fresh), np.int64)
        positive_rows = self.items.rows([e.item_id for e in fresh])
        weights = np.fromiter(
            (self.config.event_weights[e.event_type] for e in fresh), FLOAT
        )
        negative_rows = self._sample_negatives(len(fresh))
        self._remember_positives(positive_rows)
        user_steps, rows, vector_grads, bias_grads, counts = self._gradients(
            user_matrix, event_users, positive_rows, negative_rows, weights
        )
        self._apply_user_steps(user_ids, user_matrix, user_steps, profiles)
        update = self._item_update(rows, vector_grads, bias_grads, counts)
        if self.config.seq_weight:
            self._add_links(update, fresh, positive_rows, profiles)
        self._remember(fresh, profiles)
        return BatchResult(len(fresh), len(events) - len(fresh), user_ids, update)

    def item_steps(
        self, update: ItemUpdate, accums: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The steps of summed item gradients: what the owner adds to the
        factors, the biases and (Adagrad) the rows' squared-step sums.

        Summed gradients are clipped again, so that a popular item touched by
        a whole batch moves by at most ``batch_clip`` times one event's step.
        ``accums`` are the rows' sums so far (zeros when not given).
        """
        c = self.config
        n = len(update.item_ids)
        return adagrad_steps(
            update.vector_grads,
            update.bias_grads,
            np.zeros(n, FLOAT) if accums is None else accums,
            c.learning_rate,
            c.adagrad,
            c.grad_clip * c.batch_clip,
        )

    def apply_item_update(self, update: ItemUpdate) -> None:
        """Apply item gradients to this model's own items (the owner's step)."""
        if not len(update):
            return
        items = self.items
        rows, link_sources, link_targets = update.rows_in(items)
        if update.item_ids:
            vector_steps, bias_steps, added = self.item_steps(
                update, items.accums[rows]
            )
            refused = items.apply(rows, vector_steps, bias_steps, update.counts, added)
            self.nonfinite_items += refused
        if update.link_sources:
            # the learner's own links come summed per pair, hence unique
            items.add_links(
                link_sources,
                link_targets,
                update.link_weights,
                unique=update.table is items,
            )

    def _add_links(
        self,
        update: ItemUpdate,
        events: list[Event],
        positive_rows: np.ndarray,
        profiles: MutableMapping[str, UserProfile],
    ) -> None:
        # each event links from what its shopper met before it: the profile's
        # recent items, then the shopper's earlier events of this batch
        c = self.config
        histories: dict[str, list[int]] = {}
        event_histories = []
        for event, row in zip(events, positive_rows.tolist(), strict=True):
            history = histories.get(event.user_id)
            if history is None:
                recent = profiles[event.user_id].recent[-c.seq_steps :]
                history = histories[event.user_id] = self.items.rows(recent).tolist()
            event_histories.append(history[-c.seq_steps :])
            history.append(row)
        # Every event type links alike, as sequential rules count them; weighing
        # links by event type was not tried (#3).
        weights = [1.0] * len(events)
        sources, targets, amounts = batch_links(
            event_histories,
            positive_rows.tolist(),
            weights,
            c.seq_steps,
            c.seq_backward,
        )
        ids = self.items.ids
        update.link_sources = [ids[r] for r in sources.tolist()]
        update.link_targets = [ids[r] for r in targets.tolist()]
        update.link_weights = amounts
        update.link_source_rows, update.link_target_rows = sources, targets

    def _drop_duplicates(
        self, events: Sequence[Event], profiles: MutableMapping[str, UserProfile]
    ) -> list[Event]:
        fresh: list[Event] = []
        # per shopper: the event ids learned, as a set from their second
        # event in the batch on (a shopper's first is checked in the list)
        seen: dict[str, set[str] | None] = {}
        for event in events:
            user_id = event.user_id
            if user_id not in seen:
                profile = profiles.get(user_id)
                if profile is None:
                    profile = profiles[user_id] = self.new_profile(user_id)
                if event.event_id in profile.event_ids:
                    continue
                seen[user_id] = None
                fresh.append(event)
                continue
            known = seen[user_id]
            if known is None:
                known = seen[user_id] = set(profiles[user_id].event_ids)
                known.update(e.event_id for e in fresh if e.user_id == user_id)
            if event.event_id in known:
                continue
            known.add(event.event_id)
            fresh.append(event)
        return fresh

    def _sample_negatives(self, n_events: int) -> np.ndarray:
        # One shared pool of candidates per batch, each event drawing its
        # negatives from it: the batch then touches at most ``negative_pool``
        # negative items, which bounds the item updates sent to their owners.
        n_negatives = self.config.n_negatives
        if n_events * n_negatives <= self.config.negative_pool:
            return self._draw_items((n_events, n_negatives))
        pool = self._draw_items((self.config.negative_pool,))
        picks = self.rng.integers(0, len(pool), size=(n_events, n_negatives))
        return pool[picks]

    def _draw_items(self, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform item rows, a ``popular_negatives`` share of them replaced
        by rows of recent positives (popularity-proportional draws)."""
        filled = self._positives_seen
        memory = self._positives[: min(filled, len(self._positives))]
        size = math.prod(shape)
        rows = draw_items(
            self.rng, len(self.items), size, self.config.popular_negatives, memory
        )
        return rows.reshape(shape)

    def _remember_positives(self, rows: np.ndarray) -> None:
        size = len(self._positives)
        at = (self._positives_seen + np.arange(len(rows))) % size
        self._positives[at[-size:]] = rows[-size:]
        self._positives_seen += len(rows)

    def _gradients(
        self,
        user_matrix: np.ndarray,
        event_users: np.ndarray,
        positive_rows: np.ndarray,
        negative_rows: np.ndarray,
        weights: np.ndarray,
    ) -> tuple[np.ndarray, ...]:
        """The batch's clipped BPR gradients (see :func:`bpr_gradients`),
        summed per shopper and per item row: one compiled loop."""
        items = self.items
        # clip: one event may move a vector by at most learning_rate * grad_clip
        return bpr_batch(
            user_matrix,
            event_users,
            positive_rows,
            negative_rows,
            weights,
            items.vectors,
            items.biases if self.config.item_bias else _zeros(len(items)),
            self.config.regularization,
            self.config.grad_clip,
            self.config.item_bias,  # off: biases stay 0
        )

    def _apply_user_steps(
        self,
        user_ids: list[str],
        user_matrix: np.ndarray,
        steps: np.ndarray,
        profiles: MutableMapping[str, UserProfile],
    ) -> None:
        accums = np.fromiter((profiles[u].accum for u in user_ids), FLOAT)
        # a shopper's summed steps are not clipped again (one shopper's batch
        # is their own)
        c = self.config
        vector_steps, _, added = adagrad_steps(
            steps, _zeros(len(steps)), accums, c.learning_rate, c.adagrad, np.inf
        )
        updated = user_matrix + vector_steps
        finite = np.isfinite(updated).all(axis=1)
        self.nonfinite_users += int((~finite).sum())
        for row, user_id in enumerate(user_ids):
            if finite[row]:
                profile = profiles[user_id]
                profile.factors = updated[row].astype(FLOAT).tobytes()
                profile.accum = float(accums[row] + added[row])

    def _item_update(
        self,
        unique_rows: np.ndarray,
        vector_grads: np.ndarray,
        bias_grads: np.ndarray,
        counts: np.ndarray,
    ) -> ItemUpdate:
        ids = self.items.ids
        return ItemUpdate(
            [ids[r] for r in unique_rows.tolist()],
            vector_grads,
            bias_grads,
            counts,
            rows=unique_rows,
            link_source_rows=np.zeros(0, np.int64),
            link_target_rows=np.zeros(0, np.int64),
            table=self.items,
        )

    def _empty_update(self) -> ItemUpdate:
        k = self.config.n_factors
        return ItemUpdate(
            [], np.zeros((0, k), FLOAT), np.zeros(0, FLOAT), np.zeros(0, FLOAT)
        )

    def _remember(
        self, events: list[Event], profiles: MutableMapping[str, UserProfile]
    ) -> None:
        by_user: dict[str, list[Event]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(event)
        for user_id, user_events in by_user.items():
            profiles[user_id].remember(
                user_events,
                recent_items=self.config.recent_items,
                dedup_window_ms=self.config.dedup_window_ms,
            )

    # --- lists --------------------------------------------------------------

    def recommend(
        self, profiles: Sequence[UserProfile], user_ids: Sequence[str], k: int
    ) -> list[Recommendation]:
        """Top-``k`` lists for several shoppers, scored in one matrix product.

        A shopper's bought items never appear (nor anything they interacted
        with, when ``exclude_viewed``). Shoppers with fewer than
        ``min_history`` events get the most popular items instead.
        """
        if not len(self.items):
            return [Recommendation(u, [], [], False) for u in user_ids]
        personal = [p.n_events >= self.config.min_history for p in profiles]
        result: list[Recommendation] = []
        chosen = [i for i, is_personal in enumerate(personal) if is_personal]
        for start in range(0, len(chosen), _SCORE_CHUNK):
            chunk = chosen[start : start + _SCORE_CHUNK]
            result += self._top_personal(
                [profiles[i] for i in chunk], [user_ids[i] for i in chunk], k
            )
        chosen = [i for i, is_personal in enumerate(personal) if not is_personal]
        if chosen:
            order = self.popularity_order()
            for i in chosen:
                result.append(self._top_popular(user_ids[i], profiles[i], order, k))
        by_user = {rec.user_id: rec for rec in result}
        return [by_user[u] for u in user_ids]

    def popularity_order(self) -> np.ndarray:
        """Item rows by event count, most first; earlier first appearance wins
        ties (the reference baseline of EVALUATION.md)."""
        counts = self.items.counts
        return np.lexsort((np.arange(len(counts)), -counts))

    def scores(self, profiles: Sequence[UserProfile]) -> np.ndarray:
        """The blended score of every item for each shopper (see the module
        docstring), shape (shoppers, items): the numpy statement of what
        :meth:`top_rows` ranks by (it adds the same terms in a compiled loop)."""
        c, items = self.config, self.items
        users = np.stack([p.vector for p in profiles])
        scores = users @ items.vectors.T
        if c.item_bias:
            scores += items.biases
        if c.seq_weight and items.link_cap:
            sources, source_weights = self._sources(profiles)
            add_sequence_scores(
                scores,
                items.link_targets,
                items.link_weights,
                sources,
                np.broadcast_to(source_weights, sources.shape),
            )
        if c.pop_weight:
            scores += self._shares(profiles)[:, None] * items.log_counts
        return scores

    def _sources(
        self, profiles: Sequence[UserProfile]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each shopper's latest distinct items as rows (T, seq_sources),
        EMPTY where fewer, and the weight of each position (newest first)."""
        c, items = self.config, self.items
        sources = np.full((len(profiles), c.seq_sources), EMPTY, np.int64)
        index = items.index
        for n, profile in enumerate(profiles):
            latest = latest_distinct(profile.recent, c.seq_sources)
            rows = [index[i] for i in latest if i in index]
            sources[n, : len(rows)] = rows
        weights = c.seq_weight * c.seq_recency ** np.arange(c.seq_sources)
        return sources, weights.astype(FLOAT)

    def _shares(self, profiles: Sequence[UserProfile]) -> np.ndarray:
        """Each shopper's weight on popularity: most for short histories."""
        c = self.config
        history = np.fromiter((p.n_events for p in profiles), FLOAT, len(profiles))
        return (c.pop_weight * c.pop_history / (c.pop_history + history)).astype(FLOAT)

    def _hidden(self, profile: UserProfile) -> list[str]:
        return profile.items if self.config.exclude_viewed else profile.bought

    def top_rows(
        self,
        profiles: Sequence[UserProfile],
        k: int,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each shopper's ``k`` best item rows by the blended score, best
        first, and their scores: shape (shoppers, k), -1 and -inf filling a
        short list. Hidden items (bought, or all met with ``exclude_viewed``)
        never appear, nor the rows in ``exclude[n]`` for shopper ``n``."""
        items = self.items
        k = min(k, len(items))
        c = self.config
        if c.candidate_popular > 0 and len(items) > CANDIDATE_CATALOGUE:
            return self._top_candidates(profiles, k, exclude)
        if k <= 0:
            empty = np.zeros((len(profiles), 0))
            return empty.astype(np.int64), empty
        users = np.stack([p.vector for p in profiles])
        scores = users @ items.vectors.T  # one product; the rest is compiled
        if c.seq_weight and items.link_cap:
            sources, source_weights = self._sources(profiles)
        else:
            sources, source_weights = np.zeros((len(profiles), 0), np.int64), _NONE
        shares = self._shares(profiles) if c.pop_weight else _zeros(len(profiles))
        hidden_starts, hidden_rows = self._hidden_rows(profiles, exclude)
        return finish_lists(
            scores,
            items.biases if c.item_bias else _zeros(len(items)),
            items.log_counts,
            shares,
            sources,
            source_weights,
            items.link_targets,
            items.link_weights,
            hidden_starts,
            hidden_rows,
            k,
        )

    def _hidden_rows(
        self,
        profiles: Sequence[UserProfile],
        exclude: Sequence[np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The rows each shopper's list leaves out, flat: shopper ``t``'s are
        ``rows[starts[t]:starts[t + 1]]`` (hidden items, then ``exclude[t]``)."""
        items = self.items
        parts = [items.known_rows(self._hidden(p)) for p in profiles]
        if exclude is not None:
            parts = [
                np.concatenate((h, e)) if len(e) else h
                for h, e in zip(parts, exclude, strict=True)
            ]
        lengths = np.fromiter(map(len, parts), np.int64, len(parts))
        starts = np.zeros(len(profiles) + 1, np.int64)
        np.cumsum(lengths, out=starts[1:])
        rows = np.concatenate(parts) if parts else _NO_ROWS
        return starts, rows.astype(np.int64, copy=False)

    def _top_candidates(
        self,
        profiles: Sequence[UserProfile],
        k: int,
        exclude: Sequence[np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`top_rows` among each shopper's candidates: the targets of
        their sources' links and the ``candidate_popular`` most popular items,
        scored as :meth:`scores` does (factors, bias, links, popularity)."""
        c, items = self.config, self.items
        if c.seq_weight and items.link_cap:
            sources, source_weights = self._sources(profiles)
        else:
            sources, source_weights = np.zeros((len(profiles), 0), np.int64), _NONE
        if len(self._slot) < len(items):
            self._slot = np.full(2 * len(items), -1, np.int64)
        hidden_starts, hidden_rows = self._hidden_rows(profiles, exclude)
        return candidate_lists(
            np.stack([p.vector for p in profiles]),
            items.vectors,
            items.biases if c.item_bias else _zeros(len(items)),
            items.log_counts,
            self._shares(profiles) if c.pop_weight else _zeros(len(profiles)),
            sources,
            source_weights,
            items.link_targets,
            items.link_weights,
            items.popular(c.candidate_popular),
            hidden_starts,
            hidden_rows,
            k,
            self._slot,
        )

    def _top_personal(
        self, profiles: list[UserProfile], user_ids: list[str], k: int
    ) -> list[Recommendation]:
        best, best_scores = self.top_rows(profiles, k)
        ids = self.items.ids
        result = []
        for n, user_id in enumerate(user_ids):
            keep = best[n] >= 0
            result.append(
                Recommendation(
                    user_id,
                    [ids[r] for r in best[n][keep].tolist()],
                    best_scores[n][keep].tolist(),
                    True,
                )
            )
        return result

    def popular_rows(
        self,
        profile: UserProfile,
        order: np.ndarray,
        k: int,
        exclude: np.ndarray | None = None,
    ) -> list[int]:
        """The popularity fallback: the first ``k`` rows of ``order`` (see
        :meth:`popularity_order`) that are neither hidden from the shopper
        nor in ``exclude``."""
        if k <= 0:
            return []
        skip = set(self.items.known_rows(self._hidden(profile)).tolist())
        if exclude is not None:
            skip.update(exclude.tolist())
        # lazily: the head of the order is all that is usually read
        return list(islice((r for r in map(int, order) if r not in skip), k))

    def _top_popular(
        self, user_id: str, profile: UserProfile, order: np.ndarray, k: int
    ) -> Recommendation:
        rows = self.popular_rows(profile, order, k)
        ids, counts = self.items.ids, self.items.counts
        return Recommendation(
            user_id, [ids[r] for r in rows], [float(counts[r]) for r in rows], False
        )
