"""Sending mail through a real server: smtplib hands a message to eXtremail, its queue
sends it by MX to loopback sinks found through a loopback DNS server; the DNS commands
over the management port; the DNS cache across a restart; "Not active" after failures."""

from __future__ import annotations

import mailbox
import os
import smtplib

import pytest
from dnsserver import DNSServer
from harness import wait_until
from smtpsink import sinks_on_one_port

TABLE = {
    "dest.test": [("MX", "10 mx1.dest.test."), ("MX", "20 mx2.dest.test.")],
    "mx1.dest.test": [("A", "127.0.0.2")],
    "mx2.dest.test": [("A", "127.0.0.3")],
    "other.test": [("MX", "10 mx.other.test.")],
    "mx.other.test": [("A", "127.0.0.4")],
    "null.test": [("MX", "0 .")],
}
BODY = "Subject: outbound\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n"


@pytest.fixture
def dns_server():
    server = DNSServer(TABLE, ttl=3600)
    yield server
    server.close()


@pytest.fixture
def sinks():
    made = sinks_on_one_port(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    yield {sink.host: sink for sink in made}
    for sink in made:
        sink.close()


@pytest.fixture
def outbound(make_server, dns_server, sinks):
    def make(**settings: str):
        return make_server(CFG_DNS_SERVERS=dns_server.setting,
                           PORT_SMTP_OUT=str(sinks["127.0.0.2"].port), TIMEOUT_DNS="2",
                           TIMEOUT_SOCK="5", **settings)
    return make


def send(server, recipients, body=BODY, sender="someone@local.test") -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=20) as client:
        client.sendmail(sender, recipients, body.encode())


def status(server) -> dict[str, str]:
    admin = server.admin()
    _, rows = admin.listing("STATUS")
    admin.close()
    return {key.rstrip(":"): value for key, value in (row.split("\t", 1) for row in rows)}


def test_mail_leaves_by_mx_in_one_pipelined_transaction(outbound, sinks):
    server = outbound()
    send(server, ["a@dest.test", "b@dest.test", "c@other.test"])
    mx1, other = sinks["127.0.0.2"], sinks["127.0.0.4"]
    wait_until(lambda: mx1.messages and other.messages, 30, "both domains delivered")
    received = mx1.messages[0]
    assert received.recipients == ["a@dest.test", "b@dest.test"]
    assert received.mail.startswith("MAIL FROM:<someone@local.test> SIZE=")
    assert mx1.sessions[0].commands[0] == "EHLO mx.local.test"
    assert mx1.sessions[0].buffered_after_mail == 3  # RFC 2920: MAIL, RCPTs and DATA in one go
    # dot-stuffed on the wire, intact after unstuffing, behind our trace header
    assert b"\r\n..leading dot\r\n...two dots\r\n..\r\nlast line" in received.raw
    assert received.data.endswith(BODY.encode().split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n"))
    assert received.data.startswith(b"Received: ")
    assert not sinks["127.0.0.3"].sessions
    wait_until(lambda: status(server)["Mails sent"] == "2", 10, "the counters")
    assert status(server)["SMTP out"] == "2"
    assert server.logged(f"via mx1.dest.test [127.0.0.2]:{mx1.port}: 250 2.0.0 queued (")
    log = server.log_text()
    assert "to a@dest.test,b@dest.test via" in log


def test_the_next_message_reuses_the_connection_which_closes_when_idle(outbound, sinks):
    server = outbound()
    mx1 = sinks["127.0.0.2"]
    send(server, ["a@dest.test"])
    wait_until(lambda: mx1.messages, 30, "the first delivery")
    send(server, ["b@dest.test"])
    wait_until(lambda: len(mx1.messages) == 2, 30, "the second delivery")
    assert len(mx1.sessions) == 1
    assert [c for c in mx1.sessions[0].commands if c.startswith("RCPT")] == [
        "RCPT TO:<a@dest.test>", "RCPT TO:<b@dest.test>"]
    assert server.logged("250 2.0.0 queued (")
    assert server.logged("; connection reused (2)")
    # idle for longer than the cache keeps it: QUIT from the periodic job
    wait_until(lambda: mx1.sessions[0].ended, 15, "the idle connection to be closed")
    assert mx1.sessions[0].commands[-1] == "QUIT"
    assert status(server)["SMTP out"] == "1" and status(server)["Mails sent"] == "2"


def test_recipients_refused_remotely_fail_others_are_delivered(outbound, sinks):
    server = outbound()
    server.setup_mail({"local.test": {"someone": "secret"}})
    sinks["127.0.0.2"].rcpt_replies = {"bad@dest.test": "550 5.1.1 no such user here"}
    send(server, ["bad@dest.test", "good@dest.test"])
    wait_until(lambda: sinks["127.0.0.2"].messages, 30, "the delivery")
    assert sinks["127.0.0.2"].messages[0].recipients == ["good@dest.test"]
    path = server.maildir("someone", "local.test")
    [report] = wait_until(lambda: os.path.isdir(path) and list(mailbox.Maildir(path, create=False)),
                          30, "the failed report")
    text = report.as_string()
    assert "Diagnostic-Code: smtp; 550 5.1.1 no such user here" in text
    assert "Remote-MTA: dns; mx1.dest.test" in text and "bad@dest.test" in text
    assert "Final-Recipient: rfc822; good@dest.test" not in text


def rows_of(server, command: str) -> tuple[str, list[list[str]]]:
    admin = server.admin()
    first, rows = admin.listing(command)
    admin.close()
    return first, [row.split("\t") for row in rows]


def test_dns_commands_over_the_management_port(outbound, dns_server):
    server = outbound()
    first, rows = rows_of(server, "DNS RESOLV DOMAIN=dest.test")
    assert first.startswith("+OK")
    assert [(r[0], r[1], r[2], r[4], r[6]) for r in rows] == [
        ("dest.test", "mx1.dest.test", "127.0.0.2", "3600", "Active"),
        ("dest.test", "mx2.dest.test", "127.0.0.3", "3600", "Active")]
    assert len(rows[0][3]) == 19 and int(rows[0][5]) >= 0  # YYYY-MM-DD HH:MM:SS, secs in cache
    rows_of(server, "DNS RESOLV DOMAIN=other.test")
    _, everything = rows_of(server, "DNS CACHE SHOW ALL")
    assert [r[0] for r in everything] == ["dest.test", "dest.test", "other.test"]
    _, one = rows_of(server, "DNS CACHE SHOW DOMAIN=other.test")
    assert [r[1] for r in one] == ["mx.other.test"]
    admin = server.admin()
    assert admin.cmd("DNS RESOLV DOMAIN=null.test").startswith("-ERR cannot resolve null.test: 556")
    assert admin.cmd("DNS RESOLV DOMAIN=missing.test").startswith("-ERR")
    assert admin.cmd("DNS CACHE FLUSH DOMAIN=dest.test") == "+OK 1 cache entry flushed"
    admin.close()
    _, left = rows_of(server, "DNS CACHE SHOW ALL")
    assert [r[0] for r in left] == ["other.test"]
    admin = server.admin()
    assert admin.cmd("DNS CACHE FLUSH ALL") == "+OK 1 cache entry flushed"
    admin.close()
    assert rows_of(server, "DNS CACHE SHOW ALL")[1] == []


def test_dns_cache_survives_a_restart(outbound, dns_server, sinks):
    server = outbound()
    rows_of(server, "DNS RESOLV DOMAIN=dest.test")
    server.restart()
    _, rows = rows_of(server, "DNS CACHE SHOW DOMAIN=dest.test")
    assert [r[1] for r in rows] == ["mx1.dest.test", "mx2.dest.test"]
    asked = len(dns_server.queries)
    send(server, ["a@dest.test"])
    wait_until(lambda: sinks["127.0.0.2"].messages, 30, "the delivery")
    assert len(dns_server.queries) == asked  # delivered from the cache, no new lookup


def test_unreachable_domain_becomes_not_active_until_flushed(outbound, sinks):
    from extremail.dnscache import NOT_ACTIVE_AFTER
    for sink in sinks.values():
        sink.greeting = "421 4.3.2 not today"
    server = outbound()
    send(server, ["a@dest.test"])
    admin = server.admin()

    def tried(count: int) -> bool:
        return len(sinks["127.0.0.3"].sessions) >= count

    for round_number in range(1, NOT_ACTIVE_AFTER + 1):
        if round_number > 1:
            assert admin.cmd("QUEUE RESEND ALL").startswith("+OK")
        wait_until(lambda n=round_number: tried(n), 30, f"delivery round {round_number}")
    wait_until(lambda: rows_of(server, "DNS CACHE SHOW DOMAIN=dest.test")[1][0][6] == "Not active",
               10, "Not active")
    sessions = sum(len(s.sessions) for s in sinks.values())
    assert admin.cmd("QUEUE RESEND ALL").startswith("+OK")
    wait_until(lambda: "is Not active in the DNS cache" in server.log_text(), 15, "the deferral")
    assert sum(len(s.sessions) for s in sinks.values()) == sessions  # no connection made
    for sink in sinks.values():
        sink.greeting = "220 back again"
    assert admin.cmd("DNS CACHE FLUSH DOMAIN=dest.test") == "+OK 1 cache entry flushed"
    assert admin.cmd("QUEUE RESEND ALL").startswith("+OK")
    wait_until(lambda: sinks["127.0.0.2"].messages, 30, "delivery after the flush")
    admin.close()


def test_smart_host_takes_every_remote_mail(make_server, dns_server, sinks):
    relay = sinks["127.0.0.4"]
    server = make_server(CFG_DNS_SERVERS=dns_server.setting, CFG_SMART_HOST=f"127.0.0.4:{relay.port}",
                         PORT_SMTP_OUT="9", TIMEOUT_SOCK="5")
    send(server, ["a@dest.test", "b@nowhere.test"])
    wait_until(lambda: relay.messages, 30, "the relay")
    assert relay.messages[0].recipients == ["a@dest.test", "b@nowhere.test"]  # one transaction
    assert dns_server.queries == []
