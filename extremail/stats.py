"""Counters for the STATUS management command, shared by every thread."""

from __future__ import annotations

import threading
import time
from collections import Counter


class Stats:
    """Thread-safe named counters plus the start time."""

    def __init__(self, clock=time.time) -> None:
        self.started = clock()
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def uptime(self) -> int:
        return int(self._clock() - self.started)
