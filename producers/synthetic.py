"""A synthetic shop: endless, seeded event streams for load tests and demos.

The world
    ``n_items`` items with a Zipf-like popularity (weight of the item at
    popularity rank ``r`` is ``r ** -zipf_exponent``; which id gets which rank
    is shuffled), a latent factor vector and a fixed log-normal price each.
    ``n_users`` shoppers with a unit-length taste vector and a Zipf-like
    activity (a few shoppers come back far more often than most).

A session
    A shopper (never two sessions of one shopper at once) views a geometric
    number of items, each drawn with probability proportional to
    ``popularity * exp(taste_strength * taste . factors)``. A view can lead
    to a ``click`` (engagement with the item), a click to an ``add_to_cart``,
    and a cart to a ``purchase`` of the same item at checkout, i.e. after the
    shopper's last view. The odds of each step rise with the shopper's affinity
    for the item. After the session the taste vector takes a small random-walk
    step (``drift``) and is renormalised, so preferences move slowly.

Invariants a consumer can rely on
    Within a session, every ``click`` and ``add_to_cart`` directly follows
    the shopper's events for the view of that item, and every ``purchase``
    follows an ``add_to_cart`` of the same item, which follows a ``view`` of
    it. Timestamps strictly increase (1-5 ms per event). Every event carries
    the item's ``price``; ``add_to_cart`` and ``purchase`` carry the same
    ``quantity``. Sessions of different shoppers interleave.

Speed
    Items are chosen for a whole block of sessions at once: each view draws
    ``candidates`` items from the popularity distribution and keeps one with
    the Gumbel-max trick on the taste score, which samples popularity x taste
    without touching the whole catalogue. Python only builds the events.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from models.events import EVENT_TYPES, Event

# Index of each type in EVENT_TYPES; the funnel steps in order.
_VIEW, _CLICK, _CART, _PURCHASE = range(4)


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


class SyntheticShop:
    """A seeded simulation of shoppers, items and purchase funnels.

    Parameters
    ----------
    n_users, n_items
        Size of the shop.
    n_factors
        Dimension of the hidden taste and item vectors.
    seed
        Every random choice follows from it: the same seed and ``start_ms``
        give the same events.
    drift
        Standard deviation of a taste vector's random-walk step per session
        (per component, before renormalising to unit length).
    zipf_exponent
        Steepness of item popularity; around 1 gives a heavy tail.
    taste_strength
        How much a shopper's taste reweights popularity.
    session_views
        Mean number of views in a session.
    click_rate, cart_rate, purchase_rate
        Probability of each funnel step given the previous one, for a viewed
        item of average affinity (closer items convert more often).
    candidates
        Popularity draws per view among which taste picks one.
    """

    def __init__(
        self,
        n_users: int = 10_000,
        n_items: int = 5_000,
        n_factors: int = 8,
        seed: int = 42,
        drift: float = 0.02,
        *,
        zipf_exponent: float = 1.1,
        taste_strength: float = 1.5,
        session_views: float = 5.0,
        click_rate: float = 0.3,
        cart_rate: float = 0.3,
        purchase_rate: float = 0.5,
        candidates: int = 16,
    ) -> None:
        if n_users < 1 or n_items < 1 or n_factors < 1:
            raise ValueError(
                f"n_users, n_items and n_factors must be at least 1, got "
                f"{n_users}, {n_items}, {n_factors}"
            )
        for name, rate in (
            ("click_rate", click_rate),
            ("cart_rate", cart_rate),
            ("purchase_rate", purchase_rate),
        ):
            if not 0.0 < rate < 1.0:
                raise ValueError(f"{name} must be strictly between 0 and 1: {rate}")
        if session_views < 1.0 or drift < 0.0 or candidates < 1:
            raise ValueError(
                "session_views must be at least 1, drift at least 0 and "
                f"candidates at least 1; got {session_views}, {drift}, {candidates}"
            )
        self.n_users = n_users
        self.n_items = n_items
        self.n_factors = n_factors
        self.seed = seed
        self.drift = drift
        self.taste_strength = taste_strength
        self.session_views = session_views
        self.candidates = candidates
        self._click_logit = _logit(click_rate)
        self._cart_logit = _logit(cart_rate)
        self._purchase_logit = _logit(purchase_rate)

        # The world is drawn from its own stream so that it does not depend on
        # how many events a previous call to events() consumed.
        world = np.random.default_rng([seed, 0])
        ranks = world.permutation(n_items) + 1
        weights = ranks.astype(np.float64) ** -zipf_exponent
        self.item_popularity = weights / weights.sum()
        self._item_cdf = np.cumsum(self.item_popularity)
        # Standard normal factors against unit tastes: taste . factors is
        # standard normal whatever n_factors is, so taste_strength keeps its
        # meaning.
        self.item_factors = world.normal(size=(n_items, n_factors))
        self.item_prices = np.round(world.lognormal(3.0, 0.8, size=n_items), 2)
        self.initial_tastes = _unit_rows(world.normal(size=(n_users, n_factors)))
        activity = world.permutation(n_users) + 1
        self._user_log_activity = -0.7 * np.log(activity.astype(np.float64))

        self.user_ids = [f"u{user}" for user in range(n_users)]
        self.item_ids = [f"i{item}" for item in range(n_items)]

    def events(self, n: int | None, start_ms: int | None = None) -> Iterator[Event]:
        """Yield ``n`` events (endlessly when None) from a fresh run of the shop.

        Every call replays the shop from its seed, so ``events(n)`` is a prefix
        of ``events(m)`` for ``n < m`` when ``start_ms`` is the same. The clock
        starts at ``start_ms`` (Unix ms; the wall clock when None).
        """
        if n is not None and n < 0:
            raise ValueError(f"n must be None or at least 0, got {n}")
        if start_ms is None:
            start_ms = int(time.time() * 1000)
        if start_ms < 0:
            raise ValueError(f"start_ms must be at least 0, got {start_ms}")
        rng = np.random.default_rng([self.seed, 1])
        tastes = self.initial_tastes.copy()
        clock, session_seq, event_seq = start_ms, 0, 0
        remaining = n

        while remaining is None or remaining > 0:
            block = self._simulate_block(rng, tastes)
            sessions, users, items, kinds, quantities, order = block
            size = len(order) if remaining is None else min(len(order), remaining)
            order = order[:size]
            stamps = (clock + np.cumsum(rng.integers(1, 6, size=size))).tolist()
            if size:
                clock = stamps[-1]

            user_ids, item_ids, prices = self.user_ids, self.item_ids, self.item_prices
            rows = zip(
                (sessions[order] + session_seq).tolist(),
                users[order].tolist(),
                items[order].tolist(),
                kinds[order].tolist(),
                quantities[order].tolist(),
                prices[items[order]].tolist(),
                stamps,
                strict=True,
            )
            for offset, (session, user, item, kind, qty, price, ts) in enumerate(rows):
                yield Event(
                    f"e{start_ms}-{event_seq + offset}",
                    user_ids[user],
                    item_ids[item],
                    EVENT_TYPES[kind],
                    ts,
                    f"s{start_ms}-{session}",
                    price,
                    qty if kind >= _CART else None,
                )
            event_seq += size
            session_seq += int(sessions.max()) + 1
            if remaining is not None:
                remaining -= size

    # --- one block of concurrent sessions -------------------------------------

    def _simulate_block(
        self, rng: np.random.Generator, tastes: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Simulate a block of sessions; update ``tastes`` in place.

        Returns per-event arrays (block-local session, user, item, kind,
        quantity) in session order and ``order``, the interleaved emit order.
        """
        # Shoppers: a weighted draw without replacement (Gumbel top-k), so no
        # shopper has two sessions open at once.
        # Bigger shops get bigger blocks, which also keeps the O(n_users) draw
        # cheap per event.
        n_sessions = max(1, min(self.n_users // 2, max(256, self.n_users // 256)))
        keys = self._user_log_activity + rng.gumbel(size=self.n_users)
        shoppers = np.argpartition(-keys, n_sessions - 1)[:n_sessions]
        shoppers.sort()  # argpartition's order is an implementation detail

        # Views: which session each belongs to, and the shopper's taste.
        n_views = rng.geometric(1.0 / self.session_views, size=n_sessions)
        view_session = np.repeat(np.arange(n_sessions), n_views)
        view_taste = tastes[shoppers[view_session]]

        # Items: popularity proposals, reweighted by taste (Gumbel-max).
        draws = rng.random((len(view_session), self.candidates))
        proposals = np.searchsorted(self._item_cdf, draws, side="right")
        np.minimum(proposals, self.n_items - 1, out=proposals)  # cdf rounding
        affinity = np.einsum("vk,vck->vc", view_taste, self.item_factors[proposals])
        scores = self.taste_strength * affinity + rng.gumbel(size=affinity.shape)
        pick = scores.argmax(axis=1)
        view_item = proposals[np.arange(len(pick)), pick]
        view_affinity = affinity[np.arange(len(pick)), pick]

        # Funnel: each step only happens after the previous one. Affinity is
        # centred on the block's viewed items (taste already chose them, so
        # their raw affinity runs high), which keeps the rates as documented.
        lift = view_affinity - view_affinity.mean()
        uniform = rng.random((3, len(view_item)))
        clicked = uniform[0] < _sigmoid(self._click_logit + lift)
        carted = clicked & (uniform[1] < _sigmoid(self._cart_logit + lift))
        bought = carted & (uniform[2] < _sigmoid(self._purchase_logit + lift))
        view_quantity = rng.geometric(0.7, size=len(view_item))

        # Events in session order: view, click?, cart? per view, then checkout.
        steps = 1 + clicked.astype(np.int64) + carted
        source = np.repeat(np.arange(len(view_item)), steps)
        group_start = np.repeat(np.cumsum(steps) - steps, steps)
        kind = np.arange(len(source)) - group_start  # 0 view, 1 click, 2 cart
        checkout = np.flatnonzero(bought)
        source = np.concatenate([source, checkout])
        kind = np.concatenate([kind, np.full(len(checkout), _PURCHASE)])
        at_checkout = np.concatenate(
            [np.zeros(len(source) - len(checkout), bool), np.ones(len(checkout), bool)]
        )
        session = view_session[source]
        by_session = np.lexsort((kind, source, at_checkout, session))
        source, kind, session = (
            source[by_session],
            kind[by_session],
            session[by_session],
        )

        # Interleave sessions: each starts at a random moment and moves at its
        # own pace; the emit order sorts by that moment, keeping session order.
        first = np.searchsorted(session, np.arange(n_sessions))
        step_in_session = np.arange(len(session)) - first[session]
        start = rng.uniform(0.0, n_sessions, size=n_sessions)
        pace = rng.exponential(4.0, size=n_sessions)
        moment = start[session] + step_in_session * pace[session]
        order = np.argsort(moment, kind="stable")

        # Tastes drift after the session (duplicates are impossible here).
        if self.drift > 0.0:
            step = rng.normal(scale=self.drift, size=(n_sessions, self.n_factors))
            tastes[shoppers] = _unit_rows(tastes[shoppers] + step)

        return (
            session,
            shoppers[session],
            view_item[source],
            kind,
            view_quantity[source],
            order,
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
