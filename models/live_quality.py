"""How good the lists shoppers are shown are, measured on the live stream.

The worker's own version of the prequential protocol (``../shared/EVALUATION.md``):
each incoming event is checked against the list its shopper was last shown,
before the model learns from it. An event is a test when the shopper has an
earlier event and meets the item for the first time; it is a hit when the
item is in the first ``k`` places of that list. The rate over the last
``window`` tests is what a dashboard shows.

Unlike the offline protocol, a test needs a list that this worker published:
after a restart, or for a shopper whose partition just moved here, the first
events find none and are not counted (``untested``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from models.events import Event
from models.profiles import UserProfile


@dataclass
class LiveCheck:
    """What one batch of events added to the rolling figure."""

    tests: int = 0
    hits: int = 0
    untested: int = 0


class LiveHitRate:
    """Rolling HR@k of the lists last shown, over the last ``window`` tests.

    ``max_shoppers`` bounds the lists remembered (the least recently shown
    are forgotten first), so memory stays flat however many shoppers come.
    """

    def __init__(
        self, k: int = 20, window: int = 10_000, max_shoppers: int = 200_000
    ) -> None:
        if k < 1 or window < 1 or max_shoppers < 1:
            raise ValueError("k, window and max_shoppers must be at least 1")
        self.k = k
        self.max_shoppers = max_shoppers
        self._shown: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._hits_in_window = 0

    @property
    def value(self) -> float | None:
        """Hits over tests in the window; None before the first test."""
        if not self._outcomes:
            return None
        return self._hits_in_window / len(self._outcomes)

    def check(
        self, events: Sequence[Event], profiles: Mapping[str, UserProfile]
    ) -> LiveCheck:
        """Score a batch, in order, against the lists shown before it.

        ``profiles`` hold the shoppers' state from before the batch (absent:
        a new shopper); events earlier in the batch count as history, as the
        offline protocol counts them.
        """
        outcome = LiveCheck()
        # per shopper of the batch: items met so far, and whether they have
        # any earlier event; built once per shopper, not per event
        met: dict[str, set[str]] = {}
        seen: set[str] = set()
        for event in events:
            user_id, item_id = event.user_id, event.item_id
            items = met.get(user_id)
            if items is None:
                profile = profiles.get(user_id)
                # profile.items is capped (models.profiles.MAX_ITEMS): a very
                # long history may have an old item tested again
                items = met[user_id] = set(profile.items) if profile else set()
                if profile is not None and profile.n_events > 0:
                    seen.add(user_id)
            if user_id in seen and item_id not in items:
                self._test(user_id, item_id, outcome)
            items.add(item_id)
            seen.add(user_id)
        return outcome

    def _test(self, user_id: str, item_id: str, outcome: LiveCheck) -> None:
        shown = self._shown.get(user_id)
        if shown is None:
            outcome.untested += 1
            return
        hit = item_id in shown
        self._record(hit)
        outcome.tests += 1
        outcome.hits += hit

    def shown(self, user_id: str, items: Sequence[str]) -> None:
        """Remember the list a shopper has just been shown."""
        self._shown[user_id] = frozenset(items[: self.k])
        self._shown.move_to_end(user_id)
        while len(self._shown) > self.max_shoppers:
            self._shown.popitem(last=False)

    def forget(self, user_id: str) -> None:
        self._shown.pop(user_id, None)

    def _record(self, hit: bool) -> None:
        outcomes = self._outcomes
        if len(outcomes) == outcomes.maxlen and outcomes[0]:
            self._hits_in_window -= 1
        outcomes.append(hit)
        self._hits_in_window += hit
