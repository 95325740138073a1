"""The remote transport: deliver one queued message to its remote recipients by MX (or
through CFG_SMART_HOST) and say what happened to each.

``deliver(message, recipients, data) -> {recipient: Outcome}`` is what the queue manager calls.
Recipients are grouped by domain (all in one group through a smart host); up to
CFG_NUM_DELIVERY domains of one message are delivered at once, one thread each.  For one domain:

1. the route comes from the DNS cache (or CFG_SMART_HOST); a DNS failure decides every
   recipient of the domain: permanent -> failed, temporary -> deferred;
2. the addresses of the MX hosts are tried in order (at most :data:`MAX_ADDRESSES` a
   round), skipping any in an IPOUT deny network; all recipients at one address go in
   one transaction;
3. after each transaction a 2xx recipient is delivered, a 5xx one failed; a 4xx one (or
   all of them, when the connection failed) is kept for the next address — soft error at
   a non-final MX: try the next; soft error at the last: defer (STYLE.md habit 7, after
   Postfix ``smtp_trouble.c``);
4. the cache learns whether any MX host could be reached (see :mod:`extremail.dnscache`).

Each attempt is one log line: message id, recipients, host [ip]:port, the reply and the
time taken.  ``smtp_out`` counts connections, ``mails_sent`` accepted transactions.

Attack surface: replies of remote servers (parsed by :mod:`extremail.smtp.client`); we
connect only where DNS or CFG_SMART_HOST says.
"""

from __future__ import annotations

import ipaddress
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import log
from ..dns import DNSError, MXResolver, Route
from ..dnscache import DNSCache
from ..reply import Reply
from ..smtp.client import Attempt, Client
from .spool import Outcome, QueuedMessage

LOG = log.get("remote")
MAX_ADDRESSES = 5  # addresses tried per domain and round, like Postfix smtp_mx_address_limit
DELIVERED, DEFERRED, FAILED = "delivered", "deferred", "failed"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def denied(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == net.version and ip in net for net in networks)


def outcome(reply: Reply, remote_mta: str = "") -> Outcome:
    """A final or temporary reply as the queue's :class:`Outcome` (RFC 3464 needs the
    remote MTA and the full reply for Remote-MTA and Diagnostic-Code)."""
    if 200 <= reply.code < 300:
        status = DELIVERED
    elif reply.code >= 500:
        status = FAILED
    else:
        status = DEFERRED
    return Outcome(status, str(reply), remote_mta)


class RemoteTransport:
    """The component behind ``ctx.transport``."""

    def __init__(self, ctx: Any, cache: DNSCache, resolver: MXResolver,
                 client: Client | None = None) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.cache = cache
        self.resolver = resolver
        self.client = client or Client(self.cfg.hostname, float(self.cfg.TIMEOUT_SOCK))

    def deliver(self, message: QueuedMessage, recipients: list[str],
                data: bytes | None = None) -> dict[str, Outcome]:
        """``data``: the message as the queue has just read it (else read here)."""
        groups: dict[str, list[str]] = {}
        for rcpt in recipients:  # through a smart host, all of them in one transaction
            key = "smart host" if self.cfg.CFG_SMART_HOST else domain_of(rcpt)
            groups.setdefault(key, []).append(rcpt)
        if data is None:
            data = message.read()
        results: dict[str, Outcome] = {}
        if len(groups) == 1:
            results.update(self.deliver_domain(message, *next(iter(groups.items())), data))
            return results
        workers = min(self.cfg.CFG_NUM_DELIVERY, len(groups))
        with ThreadPoolExecutor(workers, thread_name_prefix=f"out-{message.id[-6:]}") as pool:
            jobs = [(rcpts, pool.submit(self.deliver_domain, message, domain, rcpts, data))
                    for domain, rcpts in groups.items()]
            for rcpts, job in jobs:
                try:
                    results.update(job.result())
                except Exception as exc:  # this domain only: the others keep their outcomes
                    LOG.exception("delivery %s to %s: internal error", message.id, ",".join(rcpts))
                    results.update({r: Outcome(DEFERRED, f"451 4.4.0 Transport error: {exc}")
                                    for r in rcpts})
        return results

    def route(self, domain: str) -> Route:
        if self.cfg.CFG_SMART_HOST:
            return self.resolver.smart_host(domain)
        return self.cache.route(domain)

    def deliver_domain(self, message: QueuedMessage, domain: str, recipients: list[str],
                       data: bytes) -> dict[str, Outcome]:
        """One domain of one message: every recipient gets an outcome."""
        try:
            route = self.route(domain)
        except DNSError as exc:
            LOG.info("delivery %s to %s: %s", message.id, ",".join(recipients), exc.reply)
            return {rcpt: outcome(exc.reply) for rcpt in recipients}
        targets, skipped = self._targets(route)
        if not targets:
            # RFC 3463 X.7.1: delivery not authorized (an IPOUT deny entry).
            reply = (Reply(550, "5.7.1", f"every MX host of {domain} is denied by an IPOUT entry")
                     if skipped else Reply(451, "4.4.4", f"no MX address for {domain}"))
            LOG.info("delivery %s to %s: %s", message.id, ",".join(recipients), reply)
            return {rcpt: outcome(reply) for rcpt in recipients}
        results: dict[str, Outcome] = {}
        pending = list(recipients)
        last: dict[str, Outcome] = {}
        reached = False
        for host, address in targets:
            attempt = self._attempt(message, route, host, address, pending, data)
            reached = reached or attempt.connected
            for rcpt in pending:
                result = outcome(attempt.replies[rcpt], host if attempt.connected else "")
                (last if result.status == DEFERRED else results)[rcpt] = result
            pending = [rcpt for rcpt in pending if rcpt not in results]
            if not pending:
                break
        results.update({rcpt: last[rcpt] for rcpt in pending})
        if not route.smart_host:
            self.cache.delivery_round(domain, reached)
        return results

    def _targets(self, route: Route) -> tuple[list[tuple[str, str]], int]:
        """(host, address) pairs to try in order, and how many IPOUT entries removed."""
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for deny in self.ctx.store.denies.rows.values():
            if deny.kind == "IPOUT":
                try:
                    networks.append(ipaddress.ip_network(deny.value, strict=False))
                except ValueError:
                    LOG.warning("IPOUT deny entry %r is not an address or network", deny.value)
        pairs = [(h.name, a) for h in route.hosts for a in h.addresses]
        allowed = [(h, a) for h, a in pairs if not denied(a, networks)]
        return allowed[:MAX_ADDRESSES], len(pairs) - len(allowed)

    def _attempt(self, message: QueuedMessage, route: Route, host: str, address: str,
                 recipients: list[str], data: bytes) -> Attempt:
        started = time.monotonic()
        attempt = self.client.send(host, address, route.port, message.envelope.sender,
                                   recipients, data)
        if attempt.opened:
            self.ctx.stats.incr("smtp_out")
        if attempt.connected and any(200 <= r.code < 300 for r in attempt.replies.values()):
            self.ctx.stats.incr("mails_sent")
        shown = f"[{address}]" if ":" not in address else f"[IPv6:{address}]"
        LOG.info("delivery %s to %s via %s %s:%d: %s (%.3fs)%s", message.id,
                 ",".join(recipients), host, shown, route.port, attempt.last,
                 time.monotonic() - started,
                 "".join(f"; {note}" for note in attempt.notes))
        for rcpt, reply in attempt.replies.items():
            if reply is not attempt.last:
                LOG.info("delivery %s to %s via %s: %s", message.id, rcpt, host, reply)
        return attempt
