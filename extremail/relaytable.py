"""The POP-before-SMTP table: client IPs that logged in to POP3 or IMAP recently.

Owned by the control thread (which expires it); POP3/IMAP sessions record logins and the
relay policy asks whether an IP may relay (CFG_ANTI_RELY=2, CFG_RELY_TIMEOUT minutes).
"""

from __future__ import annotations

import threading
import time


class RelayTable:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self.timeout = 15 * 60.0

    def configure(self, minutes: int) -> None:
        self.timeout = minutes * 60.0

    def record(self, ip: str) -> None:
        with self._lock:
            self._seen[ip] = self._clock()

    def allows(self, ip: str) -> bool:
        with self._lock:
            when = self._seen.get(ip)
        return when is not None and self._clock() - when < self.timeout

    def expire(self) -> None:
        now = self._clock()
        with self._lock:
            for ip in [ip for ip, when in self._seen.items() if now - when >= self.timeout]:
                del self._seen[ip]

    def entries(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seen)
