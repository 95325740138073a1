"""The DNS cache of the manual: mail domain -> MX hosts with their addresses, kept for the
TTL of the answer, with an "Active"/"Not active" status, saved in FILE_DNS_CACHE.

States of a domain's entry:

* **Active**: created by a successful resolution (delivery or ``DNS RESOLV``); used until
  its TTL (the smallest TTL of the answer) runs out, then dropped and resolved again.
* **Not active**: set after :data:`NOT_ACTIVE_AFTER` consecutive delivery rounds in which
  no MX host of the domain opened a session (every connection refused, timed out, or
  turned away at the greeting).  Deliveries to the domain are then deferred without
  connecting.  It ends when the administrator flushes the entry
  (``DNS CACHE FLUSH``), or by itself CFG_HOR_RETRY_MAIL hours after it was set (by then
  every message that was waiting for the domain has expired), whichever comes first; the
  TTL does not end it.  Decision recorded here because the manual leaves it open.

The consecutive-failure counts live beside the entries (not in them) so that an entry
re-resolved after its TTL keeps counting.  The file is rewritten atomically on every
change and at stop, and read at start (expired entries are dropped as they are read).

Attack surface: none from the network; FILE_DNS_CACHE is written by this module only,
and a damaged file is logged and ignored (the cache starts empty).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from collections.abc import Callable

from . import log
from .dns import DNSError, MXHost, MXResolver, Route, order_hosts
from .reply import Reply
from .durable import atomic_write

LOG = log.get("dns")
NOT_ACTIVE_AFTER = 5  # consecutive delivery rounds in which no MX host greeted us
FILE_VERSION = 1


@dataclass
class Entry:
    """One cached domain."""

    domain: str
    hosts: tuple[MXHost, ...]
    entered: float  # wall-clock time of the resolution
    ttl: int
    active: bool = True
    deactivated: float = 0.0  # when it became Not active

    def expired(self, now: float, not_active_lifetime: float) -> bool:
        if not self.active:
            return now >= self.deactivated + not_active_lifetime
        return now >= self.entered + self.ttl

    def to_json(self) -> dict:
        return {"domain": self.domain, "entered": self.entered, "ttl": self.ttl,
                "active": self.active, "deactivated": self.deactivated,
                "hosts": [[h.name, h.preference, list(h.addresses)] for h in self.hosts]}

    @classmethod
    def from_json(cls, item: dict) -> Entry:
        hosts = tuple(MXHost(str(name), int(pref), tuple(str(a) for a in addrs))
                      for name, pref, addrs in item["hosts"])
        return cls(str(item["domain"]), hosts, float(item["entered"]), int(item["ttl"]),
                   bool(item["active"]), float(item["deactivated"]))


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))


class DNSCache:
    """Thread-safe cache in front of an :class:`MXResolver`; a server component."""

    def __init__(self, path: str, resolver: MXResolver, not_active_hours: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.resolver = resolver
        self.not_active_lifetime = not_active_hours * 3600.0
        self.clock = clock
        self._lock = threading.RLock()
        self._entries: dict[str, Entry] = {}
        self._failures: dict[str, int] = {}

    # ---- component life ----
    def start(self) -> None:
        self.load()

    def stop(self) -> None:
        with self._lock:
            self.save()

    # ---- lookups ----
    def route(self, domain: str) -> Route:
        """The route for a delivery: from the cache (equal preferences re-shuffled each
        time) or freshly resolved and cached.  A Not active domain raises a temporary
        :class:`DNSError` so the message waits without a connection being made."""
        domain = domain.lower()
        now = self.clock()
        with self._lock:
            entry = self._entries.get(domain)
            if entry is not None and entry.expired(now, self.not_active_lifetime):
                del self._entries[domain]
                self.save()
                entry = None
        if entry is None:
            entry = self.refresh(domain)
        if not entry.active:
            raise DNSError(Reply(451, "4.4.1", f"domain {domain} is Not active in the DNS cache "
                                               f"(MX hosts unreachable); not connecting"))
        return Route(domain, order_hosts(entry.hosts, self.resolver.rng),
                     self.resolver.cfg.PORT_SMTP_OUT, entry.ttl)

    def refresh(self, domain: str) -> Entry:
        """Resolve now (cache misses and ``DNS RESOLV``) and store the answer; raises
        :class:`DNSError`.  A Not active entry keeps its status."""
        domain = domain.lower()
        found = self.resolver.resolve(domain)
        with self._lock:
            old = self._entries.get(domain)
            entry = Entry(domain, found.hosts, self.clock(), found.ttl)
            if old is not None and not old.active:
                entry.active, entry.deactivated = False, old.deactivated
            self._entries[domain] = entry
            self.save()
        LOG.info("DNS %s: %s (TTL %ds)", domain,
                 ", ".join(f"{h.name}[{'/'.join(h.addresses)}] pref {h.preference}"
                           for h in found.hosts), found.ttl)
        return entry

    # ---- status ----
    def delivery_round(self, domain: str, reached: bool) -> None:
        """Record whether a delivery round reached any MX host of ``domain``."""
        domain = domain.lower()
        with self._lock:
            if reached:
                if self._failures.pop(domain, None) is not None:
                    self.save()
                return
            count = self._failures.get(domain, 0) + 1
            self._failures[domain] = count
            entry = self._entries.get(domain)
            if count >= NOT_ACTIVE_AFTER and entry is not None and entry.active:
                entry.active, entry.deactivated = False, self.clock()
                LOG.warning("DNS %s marked Not active: no MX host reachable in %d consecutive "
                            "delivery rounds", domain, count)
            self.save()

    def is_active(self, domain: str) -> bool:
        with self._lock:
            entry = self._entries.get(domain.lower())
            return entry is None or entry.active

    # ---- management (looked up as ``ctx.dns`` by extremail.remote.commands) ----
    def cache_show(self, domain: str | None = None) -> list[str]:
        """The manual's DNS CACHE SHOW lines: <mailbox domain> <MX domain> <MX IP>
        <entry date> <TTL> <secs in cache> <status>, tab-separated."""
        now = self.clock()
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.domain)
        lines = []
        for entry in entries:
            if domain is not None and entry.domain != domain.lower():
                continue
            status = "Active" if entry.active else "Not active"
            for host in entry.hosts:
                for address in host.addresses:
                    lines.append("\t".join((entry.domain, host.name, address, _utc(entry.entered),
                                            str(entry.ttl), str(int(now - entry.entered)),
                                            status)))
        return lines

    def cache_flush(self, domain: str | None = None) -> int:
        """Forget one domain (or all): its entry and its failure count; returns the
        number of entries removed."""
        with self._lock:
            if domain is None:
                count = len(self._entries)
                self._entries.clear()
                self._failures.clear()
            else:
                domain = domain.lower()
                count = 1 if self._entries.pop(domain, None) is not None else 0
                self._failures.pop(domain, None)
            self.save()
        return count

    def resolve(self, domain: str) -> list[str]:
        """DNS RESOLV: resolve now, cache the answer, list its rows."""
        try:
            entry = self.refresh(domain)
        except DNSError as exc:
            raise LookupError(f"cannot resolve {domain}: {exc.reply}") from None
        return self.cache_show(entry.domain)

    def expire(self) -> int:
        """The control thread's periodic job: drop entries past their lifetime."""
        now = self.clock()
        with self._lock:
            gone = [d for d, e in self._entries.items() if e.expired(now, self.not_active_lifetime)]
            for domain in gone:
                del self._entries[domain]
            if gone:
                self.save()
        return len(gone)

    # ---- persistence ----
    def save(self) -> None:
        """Rewrite FILE_DNS_CACHE (atomically); called with the lock held."""
        data = {"version": FILE_VERSION,
                "entries": [e.to_json() for e in self._entries.values()],
                "failures": self._failures}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            atomic_write(self.path, json.dumps(data, indent=1).encode("utf-8"))
        except OSError as exc:
            LOG.error("cannot save the DNS cache to %s: %s", self.path, exc)

    def load(self) -> None:
        """Read FILE_DNS_CACHE, dropping expired entries; a damaged file is ignored."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
            entries = [Entry.from_json(item) for item in data["entries"]]
            failures = {str(k): int(v) for k, v in data.get("failures", {}).items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            LOG.error("DNS cache file %s not loaded: %s", self.path, exc)
            return
        now = self.clock()
        with self._lock:
            self._entries = {e.domain: e for e in entries
                             if not e.expired(now, self.not_active_lifetime)}
            self._failures = failures
        LOG.info("DNS cache: %d entries loaded (%d expired)", len(self._entries),
                 len(entries) - len(self._entries))
