"""The remote transport over the wire: a loopback DNS server says where each domain's MX
hosts are (127.0.0.x), loopback sinks play them.  MX fallback, per-recipient outcomes,
IPOUT deny, parallel domains, the smart host, "Not active", statistics and log lines."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest
from dnsserver import DNSServer
from harness import free_port
from smtpsink import SMTPSink, sinks_on_one_port

from extremail import config
from extremail.dns import MXResolver
from extremail.dnscache import NOT_ACTIVE_AFTER, DNSCache
from extremail.envelope import Envelope
from extremail.queue.remote import RemoteTransport
from extremail.queue.spool import QueuedMessage
from extremail.stats import Stats
from extremail.store import Deny

MESSAGE = b"From: a@here.test\r\nSubject: out\r\n\r\nbody\r\n"
TABLE = {
    "dest.test": [("MX", "10 mx1.dest.test."), ("MX", "20 mx2.dest.test."),
                  ("MX", "30 mx3.dest.test.")],
    "mx1.dest.test": [("A", "127.0.0.2")],
    "mx2.dest.test": [("A", "127.0.0.3")],
    "mx3.dest.test": [("A", "127.0.0.4")],
    "one.test": [("MX", "10 mx.one.test.")], "mx.one.test": [("A", "127.0.0.5")],
    "two.test": [("MX", "10 mx.two.test.")], "mx.two.test": [("A", "127.0.0.6")],
    "three.test": [("MX", "10 mx.three.test.")], "mx.three.test": [("A", "127.0.0.7")],
    "implicit.test": [("A", "127.0.0.8")],
    "null.test": [("MX", "0 .")],
}


@pytest.fixture
def dns_server():
    server = DNSServer(TABLE, silent=("slow.test",))
    yield server
    server.close()


@pytest.fixture
def world(tmp_path, dns_server):
    """Build a transport pointed at the DNS server, with sinks on the addresses given."""
    made: list[SMTPSink] = []

    def make(hosts: list[str], denies: tuple[Deny, ...] = (), **settings: str):
        sinks = sinks_on_one_port(hosts) if hosts else []
        made.extend(sinks)
        port = sinks[0].port if sinks else free_port()
        cfg = config.build(str(tmp_path), {"CFG_DNS_SERVERS": dns_server.setting,
                                           "PORT_SMTP_OUT": str(port), "TIMEOUT_DNS": "1",
                                           "TIMEOUT_SOCK": "3", "CFG_HOSTNAME": "out.here.test",
                                           **settings})
        ctx = SimpleNamespace(cfg=cfg, stats=Stats(),
                              store=SimpleNamespace(denies=SimpleNamespace(
                                  rows={(d.kind, d.value): d for d in denies})))
        resolver = MXResolver(cfg)
        cache = DNSCache(cfg.FILE_DNS_CACHE, resolver, cfg.CFG_HOR_RETRY_MAIL)
        transport = RemoteTransport(ctx, cache, resolver)
        return transport, {sink.host: sink for sink in sinks}

    yield make
    for sink in made:
        sink.close()


def message(tmp_path, recipients, sender="a@here.test", data=MESSAGE) -> QueuedMessage:
    path = tmp_path / f"msg-{len(os.listdir(tmp_path))}"
    path.write_bytes(data)
    return QueuedMessage("0123456789abcd-1-1", Envelope(sender, list(recipients)), str(path),
                         len(data), [])


def deliver(transport, tmp_path, recipients, **kwargs):
    return transport.deliver(message(tmp_path, recipients, **kwargs), list(recipients))


def test_next_mx_when_the_first_cannot_be_reached(tmp_path, world):
    transport, sinks = world(["127.0.0.3", "127.0.0.4"])  # nothing listens on mx1's 127.0.0.2
    result = deliver(transport, tmp_path, ["u@dest.test"])
    assert result["u@dest.test"].status == "delivered"
    assert result["u@dest.test"].remote_mta == "mx2.dest.test"
    assert len(sinks["127.0.0.3"].messages) == 1 and not sinks["127.0.0.4"].sessions
    assert transport.ctx.stats.get("smtp_out") == 1 and transport.ctx.stats.get("mails_sent") == 1


def test_soft_error_tries_next_mx_soft_at_last_defers(tmp_path, world):
    transport, sinks = world(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    sinks["127.0.0.2"].greeting = "421 4.3.2 busy"
    sinks["127.0.0.3"].rcpt_replies = {"a@dest.test": "450 4.2.1 later"}
    sinks["127.0.0.4"].rcpt_replies = {"a@dest.test": "451 4.3.0 still later"}
    result = deliver(transport, tmp_path, ["a@dest.test", "b@dest.test"])
    assert result["b@dest.test"].status == "delivered"
    assert result["b@dest.test"].remote_mta == "mx2.dest.test"
    assert result["a@dest.test"].status == "deferred"
    assert result["a@dest.test"].reply == "451 4.3.0 still later"
    assert result["a@dest.test"].remote_mta == "mx3.dest.test"
    assert [m.recipients for m in sinks["127.0.0.3"].messages] == [["b@dest.test"]]
    assert sinks["127.0.0.4"].messages == []


def test_a_554_greeting_skips_to_the_next_mx(tmp_path, world):
    """RFC 5321 3.1's "no service here" speaks for that host only (Postfix's
    smtp_skip_5xx_greeting): the next MX takes the message."""
    transport, sinks = world(["127.0.0.2", "127.0.0.3"])
    sinks["127.0.0.2"].greeting = "554 5.7.1 no service here"
    result = deliver(transport, tmp_path, ["u@dest.test"])
    assert result["u@dest.test"].status == "delivered"
    assert result["u@dest.test"].remote_mta == "mx2.dest.test"
    assert len(sinks["127.0.0.3"].messages) == 1


def test_hard_error_fails_without_trying_the_next_mx(tmp_path, world):
    transport, sinks = world(["127.0.0.2", "127.0.0.3"])
    sinks["127.0.0.2"].rcpt_replies = {"bad@dest.test": "550 5.1.1 no such user here"}
    result = deliver(transport, tmp_path, ["bad@dest.test", "good@dest.test"])
    assert result["bad@dest.test"].status == "failed"
    assert result["bad@dest.test"].reply == "550 5.1.1 no such user here"
    assert result["bad@dest.test"].remote_mta == "mx1.dest.test"
    assert result["good@dest.test"].status == "delivered"
    assert not sinks["127.0.0.3"].sessions


def test_one_transaction_per_mx_for_many_recipients(tmp_path, world):
    transport, sinks = world(["127.0.0.2"])
    rcpts = [f"user{i}@dest.test" for i in range(5)]
    result = deliver(transport, tmp_path, rcpts)
    assert {o.status for o in result.values()} == {"delivered"}
    assert len(sinks["127.0.0.2"].sessions) == 1
    assert sinks["127.0.0.2"].messages[0].recipients == rcpts
    assert sinks["127.0.0.2"].messages[0].data + b"\r\n" == MESSAGE


def test_ipout_deny_skips_denied_mx_hosts(tmp_path, world):
    transport, sinks = world(["127.0.0.2", "127.0.0.3"],
                             denies=(Deny("IPOUT", "127.0.0.2"), Deny("IPIN", "127.0.0.3")))
    assert deliver(transport, tmp_path, ["u@dest.test"])["u@dest.test"].status == "delivered"
    assert not sinks["127.0.0.2"].sessions and sinks["127.0.0.3"].messages


def test_ipout_deny_of_every_mx_fails(tmp_path, world):
    transport, sinks = world(["127.0.0.2"], denies=(Deny("IPOUT", "127.0.0.0/24"),))
    result = deliver(transport, tmp_path, ["u@dest.test"])["u@dest.test"]
    assert result.status == "failed" and result.reply.startswith("550 5.7.1")
    assert not sinks["127.0.0.2"].sessions


def test_several_domains_in_parallel(tmp_path, world):
    transport, sinks = world(["127.0.0.5", "127.0.0.6", "127.0.0.7"], CFG_NUM_DELIVERY="3")
    for sink in sinks.values():
        sink.delay = 0.5
    rcpts = ["a@one.test", "b@two.test", "c@three.test", "d@one.test"]
    result = deliver(transport, tmp_path, rcpts)
    assert {o.status for o in result.values()} == {"delivered"}
    sessions = [s.sessions[0] for s in sinks.values()]
    assert all(len(s.sessions) == 1 for s in sinks.values())
    assert max(s.started for s in sessions) < min(s.ended for s in sessions)  # they overlapped


def test_one_delivery_thread_means_one_domain_at_a_time(tmp_path, world):
    transport, sinks = world(["127.0.0.5", "127.0.0.6"], CFG_NUM_DELIVERY="1")
    for sink in sinks.values():
        sink.delay = 0.2
    deliver(transport, tmp_path, ["a@one.test", "b@two.test"])
    first, second = sorted((s.sessions[0] for s in sinks.values()), key=lambda s: s.started)
    assert first.ended <= second.started


@pytest.mark.parametrize("rcpt, status, reply", [
    ("u@null.test", "failed", "556 5.1.10"),
    ("u@nowhere.test", "failed", "550 5.1.2"),
    ("u@slow.test", "deferred", "451 4.4.3"),
])
def test_dns_failures_decide_without_connecting(tmp_path, world, rcpt, status, reply):
    transport, _ = world([])
    result = deliver(transport, tmp_path, [rcpt])[rcpt]
    assert result.status == status and result.reply.startswith(reply)
    assert transport.ctx.stats.get("smtp_out") == 0


def test_implicit_mx_delivery(tmp_path, world):
    transport, sinks = world(["127.0.0.8"])
    assert deliver(transport, tmp_path, ["u@implicit.test"])["u@implicit.test"].status == "delivered"
    assert sinks["127.0.0.8"].messages[0].recipients == ["u@implicit.test"]


def test_smart_host_takes_everything_without_dns(tmp_path, world, dns_server):
    smart = SMTPSink("127.0.0.9", 0)
    try:
        transport, _ = world([], CFG_SMART_HOST=f"127.0.0.9:{smart.port}")
        result = deliver(transport, tmp_path, ["a@dest.test", "b@elsewhere.test"])
        assert {o.status for o in result.values()} == {"delivered"}
        assert [m.recipients for m in smart.messages] == [["a@dest.test", "b@elsewhere.test"]]
        assert dns_server.queries == []
    finally:
        smart.close()


def test_not_active_after_repeated_unreachable_rounds(tmp_path, world):
    transport, sinks = world(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    for sink in sinks.values():
        sink.greeting = "421 4.3.2 not now"
    for _ in range(NOT_ACTIVE_AFTER):
        assert deliver(transport, tmp_path, ["u@dest.test"])["u@dest.test"].status == "deferred"
    assert not transport.cache.is_active("dest.test")
    before = sum(len(s.sessions) for s in sinks.values())
    assert before == 3 * NOT_ACTIVE_AFTER
    result = deliver(transport, tmp_path, ["u@dest.test"])["u@dest.test"]
    assert result.status == "deferred" and "Not active" in result.reply
    assert sum(len(s.sessions) for s in sinks.values()) == before  # no connection made
    transport.cache.cache_flush("dest.test")
    for sink in sinks.values():
        sink.greeting = "220 back"
    assert deliver(transport, tmp_path, ["u@dest.test"])["u@dest.test"].status == "delivered"


def test_each_attempt_is_one_log_line(tmp_path, world, caplog):
    transport, sinks = world(["127.0.0.3"])
    caplog.set_level(logging.INFO, logger="extremail.remote")
    deliver(transport, tmp_path, ["u@dest.test"])
    lines = [r.getMessage() for r in caplog.records if r.name == "extremail.remote"]
    port = sinks["127.0.0.3"].port
    assert len(lines) == 2
    assert lines[0].startswith("delivery 0123456789abcd-1-1 to u@dest.test via mx1.dest.test "
                               f"[127.0.0.2]:{port}: 451 4.4.1 cannot connect")
    assert lines[1].startswith("delivery 0123456789abcd-1-1 to u@dest.test via mx2.dest.test "
                               f"[127.0.0.3]:{port}: 250 2.0.0 queued (")
    assert lines[1].endswith("s)")
