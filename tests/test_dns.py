"""MX resolution (RFC 5321 5.1, RFC 7505) against a loopback DNS server, a fake resolver
for the statistics of equal preferences, and the DNS cache's states and file."""

from __future__ import annotations

import collections
import json
import random
import time
from types import SimpleNamespace

import dns.resolver
import dns.rrset
import pytest
from dnsserver import DNSServer

from extremail import config
from extremail.dns import MXHost, MXResolver, Route
from extremail.dnscache import NOT_ACTIVE_AFTER, DNSCache

TABLE = {
    "dest.test": [("MX", "10 mx1.dest.test."), ("MX", "20 mx2.dest.test.")],
    "mx1.dest.test": [("A", "127.0.0.2")],
    "mx2.dest.test": [("A", "127.0.0.3"), ("AAAA", "::1")],
    "cname.test": [("MX", "5 alias.cname.test.")],
    "alias.cname.test": [("CNAME", "real.cname.test.")],
    "real.cname.test": [("A", "127.0.0.4")],
    "mxcname.test": [("CNAME", "dest.test.")],
    "null.test": [("MX", "0 .")],
    "implicit.test": [("A", "127.0.0.5")],
    "nothing.test": [],
    "deadmx.test": [("MX", "10 gone.deadmx.test.")],
    "halfbad.test": [("MX", "10 broken.halfbad.test."), ("MX", "20 ok.halfbad.test.")],
    "ok.halfbad.test": [("A", "127.0.0.6")],
    "relay.test": [("A", "127.0.0.9")],
}


@pytest.fixture
def dns_server():
    server = DNSServer(TABLE, ttl=600, servfail=("servfail.test", "broken.halfbad.test"),
                       silent=("silent.test",))
    yield server
    server.close()


def make_cfg(tmp_path, **settings: str) -> config.Config:
    return config.build(str(tmp_path), {"PORT_SMTP_OUT": "2525", "TIMEOUT_DNS": "1", **settings})


def resolver_for(tmp_path, server: DNSServer, **settings: str) -> MXResolver:
    return MXResolver(make_cfg(tmp_path, CFG_DNS_SERVERS=server.setting, **settings))


def failure(resolver: MXResolver, domain: str):
    with pytest.raises(Exception) as info:
        resolver.resolve(domain)
    return info.value.reply


def test_mx_in_preference_order_with_addresses(tmp_path, dns_server):
    route = resolver_for(tmp_path, dns_server).resolve("DEST.test.")
    assert route.domain == "dest.test"
    assert [(h.name, h.preference, h.addresses) for h in route.hosts] == [
        ("mx1.dest.test", 10, ("127.0.0.2",)), ("mx2.dest.test", 20, ("127.0.0.3", "::1"))]
    assert route.port == 2525 and route.ttl == 600
    assert ("mx2.dest.test", "AAAA") in dns_server.queries


def test_cname_mx_target_and_cname_domain_are_followed(tmp_path, dns_server):
    resolver = resolver_for(tmp_path, dns_server)
    assert resolver.resolve("cname.test").hosts == (MXHost("alias.cname.test", 5, ("127.0.0.4",)),)
    assert [h.name for h in resolver.resolve("mxcname.test").hosts] == ["mx1.dest.test",
                                                                        "mx2.dest.test"]


def test_implicit_mx_when_there_is_no_mx(tmp_path, dns_server):
    route = resolver_for(tmp_path, dns_server).resolve("implicit.test")
    assert route.hosts == (MXHost("implicit.test", 0, ("127.0.0.5",)),)


@pytest.mark.parametrize("domain, code, enhanced", [
    ("null.test", 556, "5.1.10"),          # RFC 7505 null MX: fail at once
    ("nowhere.test", 550, "5.1.2"),        # NXDOMAIN
    ("nothing.test", 550, "5.1.2"),        # no MX, no address
    ("deadmx.test", 550, "5.4.4"),         # the only MX host does not exist
    ("servfail.test", 451, "4.4.3"),       # SERVFAIL: temporary
    ("silent.test", 451, "4.4.3"),         # no answer within TIMEOUT_DNS: temporary
])
def test_failures_are_classified(tmp_path, dns_server, domain, code, enhanced):
    reply = failure(resolver_for(tmp_path, dns_server), domain)
    assert (reply.code, reply.enhanced) == (code, enhanced)
    assert domain in reply.text


def test_timeout_honours_timeout_dns(tmp_path, dns_server):
    started = time.monotonic()
    failure(resolver_for(tmp_path, dns_server, TIMEOUT_DNS="1"), "silent.test")
    assert time.monotonic() - started < 5


def test_an_mx_host_that_fails_is_left_out(tmp_path, dns_server):
    route = resolver_for(tmp_path, dns_server).resolve("halfbad.test")
    assert [h.name for h in route.hosts] == ["ok.halfbad.test"]


def test_mx_hosts_from_our_own_preference_on_are_left_out(tmp_path, dns_server):
    resolver = resolver_for(tmp_path, dns_server, CFG_HOSTNAME="mx2.dest.test")
    assert [h.name for h in resolver.resolve("dest.test").hosts] == ["mx1.dest.test"]
    reply = failure(resolver_for(tmp_path, dns_server, CFG_HOSTNAME="mx1.dest.test"), "dest.test")
    assert (reply.code, reply.enhanced) == (554, "5.4.6")


def test_smart_host_by_name_and_by_ip(tmp_path, dns_server):
    resolver = resolver_for(tmp_path, dns_server, CFG_SMART_HOST="relay.test:2600")
    route = resolver.smart_host("anything.test")
    assert route.smart_host and route.port == 2600
    assert route.hosts == (MXHost("relay.test", 0, ("127.0.0.9",)),)
    by_ip = resolver_for(tmp_path, dns_server, CFG_SMART_HOST="127.0.0.8").smart_host("x.test")
    assert by_ip.hosts[0].addresses == ("127.0.0.8",) and by_ip.port == 25
    with pytest.raises(Exception) as info:
        resolver_for(tmp_path, dns_server, CFG_SMART_HOST="nowhere.test").smart_host("x.test")
    assert info.value.reply.code == 451


class FakeResolver:
    """dnspython's resolve() interface answering from rrsets built in memory."""

    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = records

    def resolve(self, name, rdtype, **options):
        values = self.records.get((name, rdtype))
        if values is None and not any(key[0] == name for key in self.records):
            raise dns.resolver.NXDOMAIN()
        rrset = dns.rrset.from_text(name + ".", 300, "IN", rdtype, *values) if values else None
        return SimpleNamespace(rrset=rrset)


def test_equal_preferences_are_shuffled_lower_first(tmp_path):
    records = {("eq.test", "MX"): ["10 a.eq.test.", "10 b.eq.test.", "10 c.eq.test.",
                                   "5 first.eq.test."]}
    for index, name in enumerate(("a", "b", "c", "first")):
        records[(f"{name}.eq.test", "A")] = [f"127.0.1.{index + 1}"]
    resolver = MXResolver(make_cfg(tmp_path), FakeResolver(records), random.Random(7))
    seconds = collections.Counter()
    for _ in range(60):
        hosts = resolver.resolve("eq.test").hosts
        assert hosts[0].name == "first.eq.test"
        assert sorted(h.name for h in hosts[1:]) == ["a.eq.test", "b.eq.test", "c.eq.test"]
        seconds[hosts[1].name] += 1
    # each of the three equal hosts comes second sometimes (expected 20 of 60 each)
    assert set(seconds) == {"a.eq.test", "b.eq.test", "c.eq.test"}
    assert min(seconds.values()) >= 8


# ---- the cache ----
class CountingResolver(MXResolver):
    def __init__(self, cfg, ttl: int = 300) -> None:
        super().__init__(cfg, resolver=object(), rng=random.Random(1))
        self.calls = 0
        self.ttl = ttl

    def resolve(self, domain: str) -> Route:
        self.calls += 1
        return Route(domain, (MXHost("mx.a.test", 10, ("127.0.0.2",)),
                              MXHost("mx2.a.test", 10, ("127.0.0.3",))), 2525, self.ttl)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_cache(tmp_path, ttl=300, clock=None):
    resolver = CountingResolver(make_cfg(tmp_path), ttl)
    return DNSCache(str(tmp_path / "dns_cache"), resolver, 48, clock or Clock()), resolver


def test_cache_keeps_an_answer_for_its_ttl(tmp_path):
    clock = Clock()
    cache, resolver = make_cache(tmp_path, ttl=300, clock=clock)
    cache.route("a.test")
    clock.now += 299
    cache.route("a.test")
    assert resolver.calls == 1
    clock.now += 2
    cache.route("a.test")
    assert resolver.calls == 2
    clock.now += 301
    assert cache.expire() == 1 and cache.cache_show() == []


def test_cache_rows_in_the_manual_format(tmp_path):
    clock = Clock()
    cache, _ = make_cache(tmp_path, clock=clock)
    cache.route("A.test")
    clock.now += 42
    rows = [row.split("\t") for row in cache.cache_show("a.test")]
    assert rows == [["a.test", "mx.a.test", "127.0.0.2", "2023-11-14 22:13:20", "300", "42", "Active"],
                    ["a.test", "mx2.a.test", "127.0.0.3", "2023-11-14 22:13:20", "300", "42",
                     "Active"]]
    assert cache.cache_show("other.test") == []


def test_not_active_after_repeated_failed_rounds_until_flushed(tmp_path):
    clock = Clock()
    cache, resolver = make_cache(tmp_path, ttl=60, clock=clock)
    for _ in range(NOT_ACTIVE_AFTER):
        clock.now += 600  # past the TTL: re-resolved each round, the count goes on
        cache.route("a.test")
        assert cache.is_active("a.test")
        cache.delivery_round("a.test", reached=False)
    assert resolver.calls == NOT_ACTIVE_AFTER
    assert not cache.is_active("a.test")
    assert all(row.endswith("\tNot active") for row in cache.cache_show())
    clock.now += 3600  # the TTL does not end it
    with pytest.raises(Exception) as info:
        cache.route("a.test")
    assert info.value.reply.code == 451 and "Not active" in info.value.reply.text
    assert cache.cache_flush("a.test") == 1
    assert cache.route("a.test").hosts and cache.is_active("a.test")


def test_a_reached_round_resets_the_count(tmp_path):
    cache, _ = make_cache(tmp_path)
    cache.route("a.test")
    for _ in range(NOT_ACTIVE_AFTER - 1):
        cache.delivery_round("a.test", reached=False)
    cache.delivery_round("a.test", reached=True)
    cache.delivery_round("a.test", reached=False)
    assert cache.is_active("a.test")


def test_not_active_ends_after_the_retry_hours(tmp_path):
    clock = Clock()
    cache, _ = make_cache(tmp_path, clock=clock)
    cache.route("a.test")
    for _ in range(NOT_ACTIVE_AFTER):
        cache.delivery_round("a.test", reached=False)
    clock.now += 47 * 3600
    assert cache.expire() == 0
    clock.now += 3600
    assert cache.expire() == 1


def test_cache_file_survives_restart_and_drops_expired(tmp_path):
    clock = Clock()
    cache, _ = make_cache(tmp_path, ttl=300, clock=clock)
    cache.route("a.test")
    clock.now += 200
    resolver = CountingResolver(make_cfg(tmp_path), 1000)
    cache.resolver = resolver
    cache.route("b.test")  # b lives longer than a
    cache.stop()
    saved = json.loads((tmp_path / "dns_cache").read_text())
    assert {e["domain"] for e in saved["entries"]} == {"a.test", "b.test"}
    later = Clock()
    later.now = clock.now + 200
    again, resolver = make_cache(tmp_path, clock=later)
    again.start()
    assert [row.split("\t")[0] for row in again.cache_show()] == ["b.test", "b.test"]
    again.route("b.test")
    assert resolver.calls == 0


def test_a_damaged_cache_file_is_ignored(tmp_path):
    (tmp_path / "dns_cache").write_text("{not json")
    cache, _ = make_cache(tmp_path)
    cache.start()
    assert cache.cache_show() == []
