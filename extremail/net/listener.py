"""Accept thread per listening port; one worker thread per connection; live sessions.

A listener accepts until it is stopped, hands each connection to a new worker thread
running a session, and refuses connections beyond CFG_MAX_CONN with the protocol's busy
line.  A session may move to the event loop and back (:mod:`.eventloop`); it counts as
live until its ``end()``.  An exception escaping a session is logged with its traceback;
it ends that session only.

Attack surface: every remote connection; the bound on live sessions is here.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from typing import Any, Protocol
from collections.abc import Callable

from .. import log

LOG = log.get("net")


class SessionLike(Protocol):
    def run(self) -> None: ...


class SessionFactory(Protocol):
    protocol: str

    def __call__(self, ctx: Any, sock: socket.socket, peer: tuple[str, int]) -> SessionLike: ...

    def busy_line(self) -> bytes: ...


class Registry:
    """Live sessions by protocol, for CONN ... SHOW, STATUS and the graceful stop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[int, Any] = {}
        self._ids = itertools.count(1)

    def add(self, session: Any) -> int:
        with self._lock:
            ident = next(self._ids)
            self._sessions[ident] = session
            return ident

    def remove(self, ident: int) -> None:
        with self._lock:
            self._sessions.pop(ident, None)

    def sessions(self, protocol: str | None = None) -> list[Any]:
        with self._lock:
            return [s for s in self._sessions.values()
                    if protocol is None or getattr(s, "protocol", None) == protocol]

    def count(self, protocol: str | None = None) -> int:
        return len(self.sessions(protocol))


def bind(address: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket (IPv6 when the address has a colon)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class Listener(threading.Thread):
    """The accept loop of one port."""

    def __init__(self, name: str, sock: socket.socket, factory: Callable[..., SessionLike],
                 ctx: Any, max_conn: int, busy_line: bytes) -> None:
        super().__init__(name=f"accept-{name}", daemon=True)
        self.label = name
        self.sock = sock
        self.factory = factory
        self.ctx = ctx
        self.max_conn = max_conn
        self.busy_line = busy_line
        self._live = 0
        self._live_lock = threading.Lock()
        self._stopped = threading.Event()
        self._workers: set[threading.Thread] = set()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                time.sleep(0.05)  # EMFILE and friends: back off instead of spinning
                continue
            with self._live_lock:
                full = self._live >= self.max_conn
                if not full:
                    self._live += 1
            if full:
                self._refuse(conn, peer)
                continue
            worker = threading.Thread(target=self._serve, args=(conn, peer),
                                      name=f"{self.label}-{peer[0]}:{peer[1]}", daemon=True)
            with self._live_lock:
                self._workers.add(worker)
            worker.start()

    def _refuse(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        LOG.warning("%s: refused %s: %d connections already", self.label, peer[0], self.max_conn)
        try:
            conn.settimeout(2)
            conn.sendall(self.busy_line)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        owned = False  # once the session owns the connection, its end() releases it
        try:
            # Replies are written whole (or batched for pipelining): Nagle would only hold a
            # reply's last segment back until the client's delayed ACK (~40 ms).
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session = self.factory(self.ctx, conn, peer)
            session.on_end = self._ended
            owned = True
            session.run()  # returns when the session ends or the event loop adopts it
        except Exception:
            LOG.exception("%s: session with %s ended by an internal error", self.label, peer[0])
        finally:
            if not owned:
                conn.close()
                self._ended()
            with self._live_lock:
                self._workers.discard(threading.current_thread())

    def _ended(self) -> None:
        with self._live_lock:
            self._live -= 1

    def live(self) -> int:
        with self._live_lock:
            return self._live

    def stop_accepting(self) -> None:
        self._stopped.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def join_workers(self, deadline: float) -> bool:
        """Wait for running sessions until ``deadline`` (monotonic); True if all ended."""
        with self._live_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        return self.live() == 0
