"""Compile the model's kernels into numba's on-disk cache, ahead of need.

numba compiles a kernel on its first call (some 20 s for all of this
project's, on 2 cores) and keeps the machine code on disk (``cache=True``:
``__pycache__`` beside the sources, or ``NUMBA_CACHE_DIR``); a later process
loads it in well under a second. Without a warm cache the first worker to
start spends its first batch compiling. ``scripts/test.sh`` and the image
build run this first::

    python -m models.warmup

It drives the real code paths on a small random stream: learning at
micro-batch 1 and above, applying item updates, lists over the whole
catalogue and over candidates, and the compiled prequential loop.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from models.compiled_replay import prequential_compiled
from models.evaluation import encode
from models.events import Event
from models.mf import MFConfig
from models.replay import Replayer

_TYPES = ("view", "click", "add_to_cart", "purchase")


def warm_up(config: MFConfig | None = None) -> float:
    """Run every compiled path once; return the seconds it took."""
    config = config or MFConfig()
    started = time.perf_counter()
    events = _events(400)
    for batch_size in (1, 16):
        replayer = Replayer(config)
        for start in range(0, len(events), batch_size):
            replayer.step(events[start : start + batch_size])
    # lists among candidates, as above CANDIDATE_CATALOGUE items
    model = replayer.model
    profiles = list(replayer.profiles.values())[:4]
    model._top_candidates(profiles, 10, None)
    prequential_compiled(encode(events), config)
    plain = dataclasses.replace(config, n_factors=config.n_factors + 1)
    prequential_compiled(encode(events[:50]), plain)  # factors not in fours
    return time.perf_counter() - started


def _events(n: int) -> list[Event]:
    """A small random stream (40 shoppers, 120 items), one event a second."""
    rng = np.random.default_rng(7)
    users, items = rng.integers(0, 40, n), rng.integers(0, 120, n)
    kinds = rng.integers(0, len(_TYPES), n)
    return [
        Event(f"w{k}", f"u{users[k]}", f"i{items[k]}", _TYPES[kinds[k]], 1000 * k)
        for k in range(n)
    ]


def main() -> int:
    seconds = warm_up()
    print(f"model kernels ready ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
