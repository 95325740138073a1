"""Wiring: which listeners and background components the server runs.

Kept apart from :mod:`extremail.control` so the control thread does not import every
protocol; each protocol adds its listener to :data:`SERVICES` as it lands, and its
background components (queue threads, caches) in :func:`build_components`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Callable


@dataclass(frozen=True)
class Service:
    """A listener: its port parameter, backlog parameter, bind parameter and session class."""

    name: str
    port_param: str
    backlog_param: str
    bind_param: str
    factory: Callable[[], Any]  # returns the session class; imported lazily


def _remote() -> Any:
    from .remote.session import RemoteSession
    return RemoteSession


def _pop3() -> Any:
    from .pop3 import POP3Session
    return POP3Session


def _smtp() -> Any:
    from .smtp.server import SMTPSession
    return SMTPSession


SERVICES: list[Service] = [
    Service("remt", "PORT_REMT", "QUEUE_REMT", "CFG_REMT_BIND", _remote),
    Service("pop3", "PORT_POP3", "QUEUE_POP3", "CFG_BIND", _pop3),
    Service("smtp", "PORT_SMTP", "QUEUE_SMTP", "CFG_BIND", _smtp),
]


def build_components(server: Any) -> None:
    """Create the shared background components (queue, caches) and hand them to the server."""
    server.ctx.relay.configure(server.cfg.CFG_RELY_TIMEOUT)
    _event_loop(server)
    _outbound(server)
    _queue(server)


def _event_loop(server: Any) -> None:
    """The loop that serves POP3 sessions after their login (``ctx.loop``).  Added first
    so it stops last, after the stop has ended every session."""
    from .net.eventloop import EventLoop
    server.ctx.loop = EventLoop()
    server.add_component(server.ctx.loop)


def _outbound(server: Any) -> None:
    """The DNS cache (``ctx.dns``, for the DNS commands), the outbound connection cache
    and the remote transport (``ctx.transport``, for the queue).  Added before the queue
    so they stop after it."""
    from .dns import MXResolver
    from .dnscache import DNSCache
    from .queue.remote import RemoteTransport
    from .smtp.client import Client
    from .smtp.connections import IDLE_SECONDS, ConnectionCache
    cfg = server.cfg
    resolver = MXResolver(cfg)
    cache = DNSCache(cfg.FILE_DNS_CACHE, resolver, cfg.CFG_HOR_RETRY_MAIL)
    connections = ConnectionCache()
    server.ctx.dns = cache
    server.ctx.transport = RemoteTransport(server.ctx, cache, resolver,
                                           Client(cfg.hostname, float(cfg.TIMEOUT_SOCK), connections))
    server.add_component(cache)
    server.add_component(connections)
    server.add_job("dns-cache", cfg.CFG_MIN_CONTROL * 60.0, cache.expire)
    server.add_job("outbound-connections", IDLE_SECONDS, connections.prune)


def _queue(server: Any) -> None:
    """The durable spool and its delivery threads (``ctx.queue``): the SMTP session hands
    messages to it, the QUEUE commands manage it.  Added last so it stops first."""
    from .queue.manager import QueueManager
    server.ctx.queue = QueueManager(server.ctx)
    server.add_component(server.ctx.queue)
