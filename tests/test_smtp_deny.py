"""Deny entries through the wire, added and removed on the management port: IPIN at
connect (554), DOMAININ / MAILBOXIN at MAIL FROM, DOMAINOUT / MAILBOXOUT at RCPT (550)."""

from __future__ import annotations

import smtplib

import pytest

import smtpwire
from smtpwire import Raw


@pytest.fixture(scope="module")
def mx(tmp_path_factory):
    server = smtpwire.start(str(tmp_path_factory.mktemp("deny")))
    yield server
    server.stop()


@pytest.fixture
def deny(mx):
    """Add deny entries for one test; every entry is removed at the end."""
    admin = mx.admin()

    def add(entry: str) -> None:
        assert admin.cmd(f"DENY ADD {entry}").startswith("+OK")

    yield add
    assert admin.cmd("DENY DEL ALL").startswith("+OK")
    admin.close()


def test_ipin_refuses_at_connect(mx, deny):
    deny("IPIN=127.0.0.2")
    deny("IPIN=127.0.1.0/24")
    for source in ("127.0.0.2", "127.0.1.77"):
        client = Raw(mx.smtp_port, source=source)
        assert client.greeting == (554, f"5.7.1 Connections from {source} are not accepted")
        assert client.closed()
        client.close()
    client = Raw(mx.smtp_port, source="127.0.0.3")
    assert client.greeting[0] == 220
    client.close()
    assert mx.logged("refused at connect")


def test_ipin_removed(mx):
    admin = mx.admin()
    for command, expected in (("DENY ADD IPIN=127.0.0.4", 554), ("DENY DEL IPIN=127.0.0.4", 220)):
        assert admin.cmd(command).startswith("+OK")
        client = Raw(mx.smtp_port, source="127.0.0.4")
        assert client.greeting[0] == expected
        client.close()
    admin.close()


def test_sender_denies(mx, deny):
    deny("DOMAININ=spam.test")
    deny("MAILBOXIN=bad@ok.test")
    with smtplib.SMTP("127.0.0.1", mx.smtp_port) as client:
        client.ehlo("client.test")
        assert client.mail("x@spam.test") == (550, b"5.7.1 Mail from <x@spam.test> is not accepted")
        assert client.mail("x@relay.SPAM.test")[0] == 550      # its subdomains too
        assert client.mail("Bad@ok.test")[0] == 550
        assert client.mail("good@ok.test")[0] == 250
        client.rset()
        assert client.mail("<>")[0] == 250
        # DOMAININ is about senders: mail *to* that domain is not refused by it
        assert client.rcpt("x@spam.test")[0] == 250


def test_recipient_denies(mx, deny):
    deny("DOMAINOUT=blocked.test")
    deny("MAILBOXOUT=joe@acme.test")
    with smtplib.SMTP("127.0.0.1", mx.smtp_port) as client:   # 127.0.0.1 may relay
        client.ehlo("client.test")
        client.mail("x@blocked.test")                          # not an IN entry: accepted
        assert client.rcpt("a@blocked.test") == (
            550, b"5.7.1 Mail to <a@blocked.test> is not accepted")
        assert client.rcpt("joe@acme.test")[0] == 550
        assert client.rcpt("mick@acme.test")[0] == 250
        assert client.rcpt("a@open.test")[0] == 250
