"""The main control thread: signals, shared caches, periodic jobs, start and stop.

The main thread binds every listener (so a port that cannot be bound fails the start),
starts one accept thread per listener and the queue threads, then waits: SIGTERM or
SIGINT stops the server gracefully, SIGHUP reloads the data files, and every
CFG_MIN_CONTROL minutes (or sooner, for jobs that ask for it) the periodic jobs run.

Attack surface: none directly; it owns what the sessions share.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from . import VERSION, auth, log, services
from .config import Config
from .net.listener import Listener, Registry, bind
from .relaytable import RelayTable
from .stats import Stats
from .store import Store

LOG = log.get("control")
STOP_GRACE_SECONDS = 30.0


class StartError(Exception):
    """The server cannot start (a port cannot be bound, a directory cannot be made)."""


@dataclass
class Job:
    """A periodic job of the control thread."""

    name: str
    interval: float
    run: Callable[[], None]
    due: float = 0.0


@dataclass
class Context:
    """What every session and worker thread shares; built once by :class:`Server`."""

    cfg: Config
    store: Store
    stats: Stats = field(default_factory=Stats)
    registry: Registry = field(default_factory=Registry)
    stopping: threading.Event = field(default_factory=threading.Event)
    relay: RelayTable = field(default_factory=RelayTable)
    throttle: auth.Throttle = field(default_factory=auth.Throttle)
    server: Any = None
    loop: Any = None  # the event loop serving sessions between commands (services.py)
    listeners: list[Listener] = field(default_factory=list)

    def active_threads(self) -> int:
        return threading.active_count()


class Server:
    """The whole daemon: build it, :meth:`bind`, then :meth:`serve` in the main thread."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.store = Store(cfg)
        self.ctx = Context(cfg=cfg, store=self.store)
        self.ctx.server = self
        self.jobs: list[Job] = []
        self._wake = threading.Event()
        self._reload = False
        self._bound: list[tuple[services.Service, socket.socket]] = []
        self._components: list[Any] = []

    # ---- start ----
    def bind(self) -> None:
        """Read the data files, then bind every configured port; raise :class:`StartError`
        naming the data file line or the port that fails.  A data file that cannot be read
        stops the start: running without its users would refuse their mail for good."""
        problems = self.store.load()
        if problems:
            raise StartError("data file not loaded: " + "; ".join(problems))
        for service in services.SERVICES:
            port = getattr(self.cfg, service.port_param)
            if not port:
                continue
            address = getattr(self.cfg, service.bind_param)
            try:
                sock = bind(address, port, getattr(self.cfg, service.backlog_param))
            except OSError as exc:
                self.close_sockets()
                raise StartError(f"cannot bind {service.port_param}={port} on {address}: "
                                 f"{exc.strerror or exc}") from None
            self._bound.append((service, sock))

    def close_sockets(self) -> None:
        for _, sock in self._bound:
            sock.close()
        self._bound.clear()

    def add_job(self, name: str, interval: float, run: Callable[[], None]) -> None:
        self.jobs.append(Job(name, interval, run, time.monotonic() + interval))

    def add_component(self, component: Any) -> None:
        """Something with ``start()`` and ``stop()`` (the queue, caches) owned by the server."""
        self._components.append(component)

    def start(self) -> None:
        """Load data and start every thread; call after :meth:`bind`."""
        cfg = self.cfg
        postmaster_domain = cfg.postmaster.rpartition("@")[2].lower()
        if not self.store.is_local_domain(postmaster_domain):
            LOG.warning("CFG_POSTMASTER=%s is not in a local domain: mail to postmaster is relayed "
                        "there; add the domain %s or set CFG_POSTMASTER", cfg.postmaster,
                        postmaster_domain)
        if cfg.CFG_ANTI_RELY == 0:
            LOG.warning("CFG_ANTI_RELY=0: this server is an OPEN RELAY; anyone can send mail "
                        "through it to anywhere")
        services.build_components(self)
        for component in self._components:
            component.start()
        for service, sock in self._bound:
            session_class = service.factory()
            listener = Listener(service.name, sock, session_class, self.ctx, cfg.CFG_MAX_CONN,
                                session_class.busy_line())
            self.ctx.listeners.append(listener)
            listener.start()
            LOG.info("listening for %s on %s port %d", service.name, *sock.getsockname()[:2])
        minutes = cfg.CFG_MIN_CONTROL * 60.0
        self.add_job("expire", minutes, self._expire)
        LOG.info("eXtremail %s started (pid %d, base %s)", VERSION, os.getpid(), cfg.base)

    def _expire(self) -> None:
        self.ctx.throttle.expire()
        self.ctx.relay.expire()

    # ---- signals and the control loop ----
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self.ctx.stopping.set()
        self._wake.set()

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reload = True
        self._wake.set()

    def request_stop(self) -> None:
        self.ctx.stopping.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def serve(self) -> None:
        """Run the control loop in the calling (main) thread until a stop is requested."""
        while not self.ctx.stopping.is_set():
            now = time.monotonic()
            next_due = min((job.due for job in self.jobs), default=now + 60)
            self._wake.wait(max(0.0, min(next_due - now, 60.0)))
            self._wake.clear()
            if self._reload:
                self._reload = False
                self.reload()
            now = time.monotonic()
            for job in self.jobs:
                if job.due <= now and not self.ctx.stopping.is_set():
                    job.due = now + job.interval
                    try:
                        job.run()
                    except Exception:
                        LOG.exception("periodic job %s failed", job.name)
        self.shutdown()

    def reload(self) -> None:
        problems = self.store.load()
        LOG.info("SIGHUP: data files reloaded%s", f" ({len(problems)} problems)" if problems else "")

    def shutdown(self) -> None:
        """Graceful stop: no new connections, idle sessions told goodbye, busy ones given
        STOP_GRACE_SECONDS to finish, then the queue threads stopped."""
        LOG.info("stopping: no new connections")
        self.ctx.stopping.set()
        for listener in self.ctx.listeners:
            listener.stop_accepting()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline and self.ctx.registry.count():
            for session in self.ctx.registry.sessions():
                session.interrupt_if_idle()
            time.sleep(0.05)
        for session in self.ctx.registry.sessions():
            LOG.warning("stopping: aborting session %s", session.describe())
            session.abort()
        for listener in self.ctx.listeners:
            listener.join_workers(time.monotonic() + 5)
        for component in reversed(self._components):
            try:
                component.stop()
            except Exception:
                LOG.exception("stopping %s failed", type(component).__name__)
        LOG.info("eXtremail stopped")
