"""MX resolution (RFC 5321 section 5.1, RFC 7505) behind an injectable resolver.

:class:`MXResolver` turns a mail domain into a :class:`Route`: the MX hosts in preference
order (equal preferences shuffled on every use, STYLE.md habit 11; none at or after our
own name, CFG_HOSTNAME), each with its A and AAAA addresses, the port to connect to, and
the TTL the answer may be cached for (the smallest TTL seen).  No MX records means the
implicit MX (the domain's own addresses); a single MX ``.`` is the null MX of RFC 7505
and fails at once.  CFG_SMART_HOST replaces all of it with one relay.

Failures are :class:`DNSError` carrying the reply a delivery reports: NXDOMAIN, the null
MX or a domain with no address at all are permanent (5xx); SERVFAIL, a timeout
(TIMEOUT_DNS) or anything unclassified are temporary (4xx, STYLE.md habit 6).

The resolver is a constructor argument (STYLE.md habit 8): anything with dnspython's
``resolve(name, rdtype, raise_on_no_answer=False, search=False)``; by default a dnspython
resolver aimed at CFG_DNS_SERVERS (ip, port) or, when that is empty, the system's.

Attack surface: answers of DNS servers; only the record types asked for are read, and a
route never holds anything but addresses parsed by :mod:`ipaddress`.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from .config import Config
from .reply import Reply

MAX_TTL = 86400  # never trust an answer for more than a day


class DNSError(Exception):
    """A resolution that gave no route; ``reply`` says why and whether it is permanent."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(str(reply))

    @property
    def temporary(self) -> bool:
        return self.reply.is_temporary


@dataclass(frozen=True)
class MXHost:
    name: str
    preference: int
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    """Where mail for ``domain`` goes: hosts in the order to try, on ``port``."""

    domain: str
    hosts: tuple[MXHost, ...]
    port: int
    ttl: int
    smart_host: bool = False


def order_hosts(hosts: list[MXHost] | tuple[MXHost, ...], rng: random.Random) -> tuple[MXHost, ...]:
    """RFC 5321 5.1: lowest preference first; hosts of equal preference in random order."""
    shuffled = list(hosts)
    rng.shuffle(shuffled)
    return tuple(sorted(shuffled, key=lambda host: host.preference))  # sort is stable


def system_resolver(cfg: Config) -> dns.resolver.Resolver:
    """A dnspython resolver with TIMEOUT_DNS, aimed at CFG_DNS_SERVERS when it is set."""
    if cfg.CFG_DNS_SERVERS:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port)
                                for ip, port in cfg.CFG_DNS_SERVERS]
    else:
        resolver = dns.resolver.Resolver()
    resolver.timeout = float(cfg.TIMEOUT_DNS)
    resolver.lifetime = float(cfg.TIMEOUT_DNS)
    return resolver


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _temporary(name: str, why: str) -> DNSError:
    # RFC 3463 X.4.3: directory server failure.
    return DNSError(Reply(451, "4.4.3", f"DNS lookup of {name} failed: {why}"))


class MXResolver:
    """Domain -> :class:`Route`, through ``resolver`` (dnspython's interface)."""

    def __init__(self, cfg: Config, resolver: Any = None, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.resolver = resolver if resolver is not None else system_resolver(cfg)
        self.rng = rng or random.Random()

    # ---- one query ----
    def _query(self, name: str, rdtype: str) -> tuple[list[Any], int]:
        """The records of one type (CNAMEs followed by dnspython) and their TTL;
        ([], MAX_TTL) for NODATA.  NXDOMAIN propagates; other failures become temporary."""
        try:
            answer = self.resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            raise
        except dns.resolver.NoNameservers:  # SERVFAIL or REFUSED from every server
            raise _temporary(name, "server failure") from None
        except dns.exception.Timeout:
            raise _temporary(name, f"no answer within {self.cfg.TIMEOUT_DNS}s") from None
        except dns.exception.DNSException as exc:
            raise _temporary(name, type(exc).__name__) from None
        if answer.rrset is None:
            return [], MAX_TTL
        return list(answer.rrset), answer.rrset.ttl

    def addresses(self, name: str) -> tuple[tuple[str, ...], int]:
        """A then AAAA addresses of ``name`` and the smaller TTL; NXDOMAIN gives none."""
        found: list[str] = []
        ttl = MAX_TTL
        for rdtype in ("A", "AAAA"):
            try:
                records, rttl = self._query(name, rdtype)
            except dns.resolver.NXDOMAIN:
                return (), ttl
            for record in records:
                found.append(str(ipaddress.ip_address(record.address)))
            if records:
                ttl = min(ttl, rttl)
        return tuple(found), ttl

    # ---- routes ----
    def resolve(self, domain: str) -> Route:
        """The MX route of ``domain`` (RFC 5321 5.1); raises :class:`DNSError`."""
        domain = domain.rstrip(".").lower()
        try:
            records, ttl = self._query(domain, "MX")
        except dns.resolver.NXDOMAIN:
            # RFC 3463 X.1.2: the destination system does not exist.
            raise DNSError(Reply(550, "5.1.2", f"domain {domain} does not exist (NXDOMAIN)")) from None
        # RFC 7505 3: a single MX with the root as target means "accepts no mail".
        if len(records) == 1 and records[0].exchange == dns.name.root:
            raise DNSError(Reply(556, "5.1.10", f"domain {domain} accepts no mail (null MX)"))
        if not records:
            # RFC 5321 5.1: no MX records: the domain itself is the implicit MX, preference 0.
            addresses, attl = self.addresses(domain)
            if not addresses:
                raise DNSError(Reply(550, "5.1.2", f"domain {domain} has no MX and no address"))
            return Route(domain, (MXHost(domain, 0, addresses),), self.cfg.PORT_SMTP_OUT,
                         min(MAX_TTL, attl))
        hosts = []
        problem: DNSError | None = None
        for record in records:
            if record.exchange == dns.name.root:
                continue  # a "." beside real MX hosts (RFC 7505 forbids it): ignore it
            name = record.exchange.to_text(omit_final_dot=True).lower()
            try:
                addresses, attl = self.addresses(name)
            except DNSError as exc:
                problem = exc
                continue
            if addresses:
                hosts.append(MXHost(name, record.preference, addresses))
                ttl = min(ttl, attl)
        if not hosts:
            # RFC 3463 X.4.4: unable to route; temporary when a lookup could not finish.
            raise problem or DNSError(Reply(550, "5.4.4", f"no MX host of {domain} has an address"))
        # RFC 5321 5.1: when we are one of the MX hosts, only those more preferred than
        # we are may be tried; if there are none, the mail would loop back to us.
        ours = [h.preference for h in hosts if h.name == self.cfg.hostname]
        if ours:
            hosts = [h for h in hosts if h.preference < min(ours)]
            if not hosts:
                raise DNSError(Reply(554, "5.4.6", f"mail for {domain} loops back to myself "
                                                   f"({self.cfg.hostname} is its best MX)"))
        return Route(domain, order_hosts(hosts, self.rng), self.cfg.PORT_SMTP_OUT,
                     min(MAX_TTL, ttl))

    def smart_host(self, domain: str) -> Route:
        """CFG_SMART_HOST: every domain goes through the one relay (an IP or a name's A/AAAA).
        A smart host that cannot be resolved is the administrator's problem: temporary."""
        host, port = self.cfg.CFG_SMART_HOST[0]
        addresses = (host,) if _is_ip(host) else self.addresses(host)[0]
        if not addresses:
            raise _temporary(host, "the smart host has no address")
        return Route(domain, (MXHost(host.lower(), 0, addresses),), port, 0, smart_host=True)
