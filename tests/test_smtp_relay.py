"""Relay policy through the wire (DESIGN.md rule 2): CFG_ANTI_RELY 0/1/2, CFG_LOCALIP,
POP-before-SMTP, the classic relay tricks, and nmap's smtp-open-relay probe.

Clients bind other loopback addresses (127.0.0.2, ...) to play hosts on the internet.
No test sends DATA to a remote recipient: nothing here may look a test domain up.
"""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess

import pytest

import smtpwire
from smtpwire import OUTSIDE, messages, new_messages

UNTRUSTED = "10.255.255.1"   # a CFG_LOCALIP that no test client uses (never contacted)


def rcpt_reply(server, recipient: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, source_address=(source, 0)) as client:
        client.ehlo("client.test")
        assert client.mail("a@x.test")[0] == 250
        answer = client.rcpt(recipient)
        client.rset()
        return answer


@pytest.fixture(scope="module")
def trusting_loopback(tmp_path_factory):
    """CFG_ANTI_RELY=1 with the default CFG_LOCALIP=127.0.0.1."""
    server = smtpwire.start(str(tmp_path_factory.mktemp("relay1")), CFG_ANTI_RELY="1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def closed(tmp_path_factory):
    """CFG_ANTI_RELY=1 trusting nobody on loopback, with a catch-all domain."""
    server = smtpwire.start(str(tmp_path_factory.mktemp("closed")), CFG_ANTI_RELY="1",
                            CFG_LOCALIP=UNTRUSTED)
    admin = server.admin()
    assert admin.cmd("DOMAIN ADD NAME=catch.test DEFMAILBOX=mick@acme.test").startswith("+OK")
    admin.close()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def open_relay(tmp_path_factory):
    server = smtpwire.start(str(tmp_path_factory.mktemp("open")), CFG_ANTI_RELY="0",
                            CFG_LOCALIP=UNTRUSTED)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pop_before_smtp(tmp_path_factory):
    server = smtpwire.start(str(tmp_path_factory.mktemp("relay2")), CFG_ANTI_RELY="2",
                            CFG_LOCALIP=UNTRUSTED)
    yield server
    server.stop()


def test_anti_rely_1(trusting_loopback):
    assert rcpt_reply(trusting_loopback, "bob@remote.test")[0] == 250
    assert rcpt_reply(trusting_loopback, "bob@remote.test", OUTSIDE) == (
        550, b"5.7.1 Relaying denied")
    # mail for local users is welcome from anywhere
    assert rcpt_reply(trusting_loopback, "mick@acme.test", OUTSIDE)[0] == 250
    assert rcpt_reply(trusting_loopback, "postmaster", OUTSIDE)[0] == 250
    assert rcpt_reply(trusting_loopback, "postmaster@acme.test", OUTSIDE)[0] == 250


def test_anti_rely_0_is_open(open_relay):
    assert rcpt_reply(open_relay, "bob@remote.test", OUTSIDE)[0] == 250
    assert open_relay.logged("OPEN RELAY")


def pop3_login(port: int, source: str, user: str, password: str) -> bytes:
    """A POP3 login from ``source`` (poplib cannot choose its source address)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20,
                                  source_address=(source, 0)) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for line in (f"USER {user}", f"PASS {password}"):
            sock.sendall(line.encode() + b"\r\n")
            answer = reader.readline()
        sock.sendall(b"QUIT\r\n")
        reader.readline()
        return answer


def test_anti_rely_2_pop_before_smtp(pop_before_smtp):
    server = pop_before_smtp
    assert rcpt_reply(server, "bob@remote.test", OUTSIDE)[0] == 550
    assert pop3_login(server.pop3_port, OUTSIDE, "mick@acme.test", "wrong").startswith(b"-ERR")
    assert rcpt_reply(server, "bob@remote.test", OUTSIDE)[0] == 550   # a failed login is not one
    assert pop3_login(server.pop3_port, OUTSIDE, "mick@acme.test", "secret").startswith(b"+OK")
    assert rcpt_reply(server, "bob@remote.test", OUTSIDE)[0] == 250
    assert rcpt_reply(server, "bob@remote.test", "127.0.0.3")[0] == 550  # only that IP


@pytest.mark.parametrize("recipient, expected", [
    ("bob%remote.test@acme.test", b"5.1.1"),        # percent hack: an unknown local user
    ("remote.test!bob@acme.test", b"5.1.1"),        # bang path: an unknown local user
    ('"bob@remote.test"@acme.test', b"5.1.1"),      # quoted local part: an unknown local user
    ("@acme.test:bob@remote.test", b"5.7.1"),       # source route: the final address is judged
    ("@acme.test,@catch.test:bob@remote.test", b"5.7.1"),
    ("bob@remote.test", b"5.7.1"),
    ("bob@[192.0.2.1]", b"5.7.1"),
])
def test_relay_tricks_never_relay(closed, recipient, expected):
    code, text = rcpt_reply(closed, f"<{recipient}>")
    assert code == 550 and text.startswith(expected), text


def test_tricks_to_a_catch_all_stay_local(closed):
    """With a DEFMAILBOX the trick addresses are accepted, and land in the local mailbox."""
    before = messages(closed)
    with smtplib.SMTP("127.0.0.1", closed.smtp_port) as client:
        client.ehlo("client.test")
        refused = client.sendmail("a@x.test", ["bob%remote.test@catch.test",
                                               "remote.test!bob@catch.test"],
                                  b"Subject: trick\r\n\r\nbody\r\n")
    assert refused == {}
    new = new_messages(closed, before)
    assert b"Subject: trick" in new[0]


NMAP = shutil.which("nmap")


def nmap_open_relay(port: int) -> str:
    result = subprocess.run(
        [NMAP, "-Pn", "-n", "-p", str(port), "--script", "+smtp-open-relay", "--script-args",
         "smtp-open-relay.domain=elsewhere.test,smtp-open-relay.ip=127.0.0.1", "127.0.0.1"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "smtp-open-relay" in result.stdout, result.stdout
    return result.stdout


@pytest.mark.skipif(NMAP is None, reason="nmap is not installed")
def test_nmap_finds_no_open_relay(closed, open_relay):
    assert "Server doesn't seem to be an open relay" in nmap_open_relay(closed.smtp_port)
    # the same probe does recognise an open relay, so the test above can fail
    assert "Server is an open relay" in nmap_open_relay(open_relay.smtp_port)
