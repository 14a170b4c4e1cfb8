"""Background work in bounded steps: a walk over a snapshot of keys, pass after pass."""
from __future__ import annotations

from typing import Callable, Iterable


class Walk:
    """Hands out ``batch`` keys a step, at most one step every ``interval_us``, from a snapshot
    of the keys taken when a pass starts; a pass starts ``pause_us`` after the last one ended.
    So a loop chore never runs long, and a read never waits behind more than one step."""

    def __init__(self, batch: int, interval_us: int, pause_us: int) -> None:
        self.batch, self.interval_us, self.pause_us = batch, interval_us, pause_us
        self._keys: list = []
        self._pos = 0
        self.at = 0  # the clock reading the next step may run at

    def step(self, now: int, keys: Callable[[], Iterable]) -> list:
        """The keys to examine now ([] while resting); ``keys()`` is called when a pass starts."""
        if now < self.at:
            return []
        if self._pos >= len(self._keys):
            if self._keys:  # a pass just ended: rest before the next
                self._keys, self._pos = [], 0
                self.at = now + self.pause_us
                return []
            self._keys, self._pos = list(keys()), 0
        end = min(self._pos + self.batch, len(self._keys))
        picked = self._keys[self._pos:end]
        self._pos = end
        self.at = now + self.interval_us
        return picked
