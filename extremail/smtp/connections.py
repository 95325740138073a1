"""The outbound connection cache: SMTP sessions kept open between transactions.

A relayed message used to cost a connection of its own (connect, greeting, EHLO, the
transaction, QUIT); a busy destination now gets its next message on a session that
just finished one, which saves three round trips a message (STYLE.md habit 5, after
Postfix ``scache(8)`` and ``smtp_connection_cache_on_demand``).

Rules, as Postfix's: a session is kept only after a complete transaction (the reply to
the final dot was read), it is idle at most :data:`IDLE_SECONDS` (closed by
:meth:`ConnectionCache.prune`, a periodic job, or on the next look-up), and it is not
reused once it is :data:`REUSE_SECONDS` old.  The key is the address and port, so
every MX host name of one address shares it.  A session the peer has meanwhile closed
(or that has unread input, such as a ``421`` on its own idle timeout) is dropped when
it is taken; one that dies on its first command is the client's business
(:meth:`extremail.smtp.client.Client.send` then opens a fresh one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

IDLE_SECONDS = 2.0      # Postfix smtp_connection_cache_time_limit
REUSE_SECONDS = 300.0   # Postfix smtp_connection_reuse_time_limit
MAX_IDLE = 100          # sessions kept idle in all, so a burst cannot pile up sockets

Key = tuple[str, int]


class Cacheable(Protocol):
    """What the cache needs of a session (:class:`extremail.smtp.client.Session`)."""

    opened: float

    def alive(self) -> bool: ...

    def close(self) -> None: ...


class ConnectionCache:
    """Idle outbound sessions by (address, port); thread-safe; a component of the server
    (``start``/``stop``) whose :meth:`prune` runs as a periodic job."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._idle: dict[Key, list[tuple[float, Cacheable]]] = {}
        self._lock = threading.Lock()
        self._stopped = False

    def take(self, address: str, port: int) -> Cacheable | None:
        """The most recently parked live session to ``address:port``, or None."""
        while True:
            with self._lock:
                parked = self._idle.get((address, port))
                if not parked:
                    return None
                since, session = parked.pop()
                if not parked:
                    del self._idle[(address, port)]
            if self._fresh(since, session) and session.alive():
                return session
            session.close()

    def put(self, address: str, port: int, session: Cacheable) -> None:
        """Park ``session`` after a complete transaction, or close it when it may not be
        kept (too old, the cache full or stopped)."""
        now = self.clock()
        with self._lock:
            keep = (not self._stopped and now - session.opened < REUSE_SECONDS
                    and sum(map(len, self._idle.values())) < MAX_IDLE)
            if keep:
                self._idle.setdefault((address, port), []).append((now, session))
        if not keep:
            session.close()

    def prune(self) -> None:
        """Close every session idle longer than :data:`IDLE_SECONDS`."""
        expired = []
        with self._lock:
            for key, parked in list(self._idle.items()):
                keep = [(since, s) for since, s in parked if self._fresh(since, s)]
                expired += [s for since, s in parked if not self._fresh(since, s)]
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
        for session in expired:
            session.close()

    def idle(self) -> int:
        with self._lock:
            return sum(map(len, self._idle.values()))

    def _fresh(self, since: float, session: Cacheable) -> bool:
        now = self.clock()
        return now - since < IDLE_SECONDS and now - session.opened < REUSE_SECONDS

    # ---- component ----
    def start(self) -> None:
        pass

    def stop(self) -> None:
        """Say QUIT on every parked session; later ones are closed as they come back."""
        with self._lock:
            self._stopped = True
            parked = [s for sessions in self._idle.values() for _, s in sessions]
            self._idle.clear()
        for session in parked:
            session.close()

