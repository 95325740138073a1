"""Outbound delivery when the REMOTE side misbehaves.

One server for the module relays every remote recipient through CFG_SMART_HOST to a
scripted loopback peer (:class:`Remote`) that sends exactly the bytes a test chooses at
each step: odd greetings, garbled or split replies, contradicting codes, hang-ups around
the final dot, drip-fed bytes.  A loopback DNS server with an empty table is the only
resolver the server has, so nothing leaves 127.0.0.1.

Each case sends one message and checks the outcome precisely: delivered once (the remote
said 250 once and the queue let it go), deferred (the spool state keeps the recipient with
the remote's reply, the log line says why) and delivered on a retry, or failed with a
report in the local sender's Maildir carrying the remote's reply; never lost, never a
traceback in the log or on stderr.  TIMEOUT_SOCK is 1 second to keep timeouts short.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import os
import re
import smtplib
import socket
import threading
import time
from collections.abc import Callable

import pytest
from dnsserver import DNSServer
from harness import ServerProcess, wait_until

from extremail.queue.spool import SpoolError, parse

CLOSE = object()  # a reply slot that hangs up instead of answering
GREETING = b"220 remote.test ESMTP hostile\r\n"
EHLO = b"250-remote.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n"
EHLO_PLAIN = b"250-remote.test\r\n250 8BITMIME\r\n"  # no PIPELINING: one command at a time
BODY = b"Subject: hostile\r\n\r\nline one\r\n.dot line\r\n"
TIMEOUT = 1.0  # the server's TIMEOUT_SOCK


class Peer:
    """One connection from the server, seen from the remote side."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = bytearray()
        self.commands: list[bytes] = []
        self.accepted: list[list[str]] = []  # recipients of each message answered with 2xx
        self.ended = threading.Event()
        conn.settimeout(8)

    def send(self, raw: bytes) -> None:
        self.conn.sendall(raw)

    def _until(self, done: Callable[[], bool]) -> bool:
        """Read until ``done()``; False when the connection ends first."""
        while not done():
            try:
                chunk = self.conn.recv(65536)
            except OSError:
                return False
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def line(self) -> bytes | None:
        if not self._until(lambda: b"\r\n" in self.buffer):
            return None
        index = self.buffer.index(b"\r\n")
        line = bytes(self.buffer[:index])
        del self.buffer[:index + 2]
        self.commands.append(line)
        return line

    def data(self) -> bytes | None:
        if not self._until(lambda: b"\r\n.\r\n" in self.buffer or self.buffer.startswith(b".\r\n")):
            return None
        if self.buffer.startswith(b".\r\n"):
            del self.buffer[:3]
            return b""
        index = self.buffer.index(b"\r\n.\r\n")
        raw = bytes(self.buffer[:index])
        del self.buffer[:index + 5]
        return raw

    def verbs(self) -> list[str]:
        return [c[:4].decode("ascii", "replace").upper() for c in self.commands]


Reply = bytes | object | Callable[[Peer], bool]


class Remote:
    """The smart host: a loopback listener; every connection plays ``replies`` (keys
    greeting, EHLO, HELO, MAIL, RCPT or "RCPT <addr>", DATA, dot, QUIT; values: the bytes
    to send, CLOSE, or a callable(peer) returning False to hang up).  After the reply to
    the final dot it hangs up, unless ``keep`` is set (a parked session never carries
    the script of an earlier test)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.reset()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self, **replies: Reply) -> None:
        with self.lock:
            self.replies: dict[str, Reply] = dict(replies)
            self.peers: list[Peer] = []

    def set(self, **replies: Reply) -> None:
        with self.lock:
            self.replies = dict(replies)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            peer = Peer(conn)
            with self.lock:
                self.peers.append(peer)
                replies = dict(self.replies)
            threading.Thread(target=self._session, args=(peer, replies), daemon=True).start()

    def _session(self, peer: Peer, replies: dict[str, Reply]) -> None:
        try:
            self._talk(peer, replies)
        except OSError:
            pass
        finally:
            peer.conn.close()
            peer.ended.set()

    @staticmethod
    def _answer(peer: Peer, reply: Reply) -> bool:
        if reply is CLOSE:
            return False
        if callable(reply):
            return bool(reply(peer))
        peer.send(reply)  # type: ignore[arg-type]
        return True

    def _talk(self, peer: Peer, replies: dict[str, Reply]) -> None:
        if not self._answer(peer, replies.get("greeting", GREETING)):
            return
        rcpts: list[str] = []
        while True:
            line = peer.line()
            if line is None:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                reply = replies.get("EHLO", EHLO)
            elif verb == b"HELO":
                reply = replies.get("HELO", b"250 remote.test\r\n")
            elif verb == b"MAIL":
                rcpts = []
                reply = replies.get("MAIL", b"250 2.1.0 sender ok\r\n")
            elif verb == b"RCPT":
                address = line.partition(b"<")[2].partition(b">")[0].decode()
                reply = replies.get(f"RCPT {address}", replies.get("RCPT", b"250 2.1.5 ok\r\n"))
                if positive(reply):
                    rcpts.append(address)
            elif verb == b"DATA":
                reply = replies.get("DATA", b"354 go ahead\r\n" if rcpts else b"554 5.5.1 no rcpt\r\n")
                if not self._answer(peer, reply):
                    return
                if not isinstance(reply, bytes) or not reply.startswith(b"354"):
                    continue
                if peer.data() is None:
                    return
                dot = replies.get("dot", b"250 2.0.0 queued as 4711\r\n")
                if positive(dot):
                    peer.accepted.append(list(rcpts))
                if not self._answer(peer, dot) or not replies.get("keep"):
                    return
                continue
            elif verb == b"QUIT":
                reply = replies.get("QUIT", b"221 2.0.0 bye\r\n")
                self._answer(peer, reply)
                return
            elif verb == b"RSET":
                rcpts = []
                reply = b"250 2.0.0 reset\r\n"
            else:
                reply = b"502 5.5.1 what\r\n"
            if not self._answer(peer, reply):
                return

    def delivered(self, rcpt: str) -> int:
        """How many times the remote said 2xx to a message for ``rcpt``."""
        with self.lock:
            peers = list(self.peers)
        return sum(rcpt in accepted for peer in peers for accepted in peer.accepted)

    def close(self) -> None:
        self.listener.close()


def positive(reply: Reply) -> bool:
    """True when ``reply`` accepts (250/251; a scripted one says so in ``.raw``)."""
    raw = reply if isinstance(reply, bytes) else getattr(reply, "raw", b"")
    return raw[:3] in (b"250", b"251")


def pieces(*parts: bytes, pause: float = 0.05) -> Callable[[Peer], bool]:
    """A reply sent in several TCP segments."""
    def send(peer: Peer) -> bool:
        for part in parts:
            peer.send(part)
            time.sleep(pause)
        return True
    send.raw = b"".join(parts)  # type: ignore[attr-defined]
    return send


def drip(raw: bytes, every: float = 0.1) -> Callable[[Peer], bool]:
    """A reply sent one byte at a time."""
    return pieces(*(raw[i:i + 1] for i in range(len(raw))), pause=every)


def then_close(raw: bytes) -> Callable[[Peer], bool]:
    """Send ``raw``, then hang up."""
    def send(peer: Peer) -> bool:
        peer.send(raw)
        return False
    return send


def silence(peer: Peer) -> bool:
    """Say nothing until the server hangs up (or 8 s)."""
    while peer.line() is not None:
        pass
    return False


# ------------------------------------------------------------------ the server and a case
@pytest.fixture(scope="module")
def remote():
    peer = Remote()
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def mta(tmp_path_factory, remote):
    dns = DNSServer({})  # the only resolver: nothing is looked up beyond loopback
    server = ServerProcess(str(tmp_path_factory.mktemp("hostile")),
                           CFG_SMART_HOST=f"127.0.0.1:{remote.port}", CFG_DNS_SERVERS=dns.setting,
                           TIMEOUT_DNS="1", TIMEOUT_SOCK=str(int(TIMEOUT)), CFG_MIN_QUEUE="60",
                           CFG_HOR_DELAY_DSN="0", CFG_NUM_QUEUE="4")
    server.start()
    server.setup_mail({"local.test": {}})
    yield server
    server.stop()
    dns.close()


_serial = itertools.count(1)


class Case:
    """One message from a fresh local sender to fresh remote recipients."""

    def __init__(self, server: ServerProcess, remote: Remote) -> None:
        self.server, self.remote = server, remote
        number = next(_serial)
        self.name = f"s{number}"
        self.sender = f"{self.name}@local.test"
        self.tag = f"c{number}x"
        self.log_from = len(server.log_text())
        self.stderr_from = os.path.getsize(server.path("stderr.log"))
        self.rcpts: list[str] = []
        admin = server.admin()
        answer = admin.cmd(f"USER ADD NAME={self.name} DOMAIN=local.test PASS=secret")
        admin.close()
        assert answer.startswith("+OK"), answer

    def rcpt(self, local: str = "u") -> str:
        return f"{local}.{self.tag}@far.test"

    def send(self, rcpts: list[str], body: bytes = BODY) -> None:
        self.rcpts = list(rcpts)
        with smtplib.SMTP("127.0.0.1", self.server.smtp_port, timeout=20) as client:
            assert client.sendmail(self.sender, rcpts, body) == {}

    # ---- what the server did ----
    def log(self) -> str:
        return self.server.log_text()[self.log_from:]

    def delivery_lines(self, rcpt: str) -> list[str]:
        """The log lines of delivery attempts naming ``rcpt``."""
        return [line for line in self.log().splitlines()
                if " delivery " in line and rcpt in line and " via " in line]

    def logged_for(self, rcpt: str, text: str, timeout: float = 5) -> None:
        """Wait for a delivery log line naming ``rcpt`` with ``text`` (the log is written
        by a thread of its own, a moment after the spool)."""
        wait_until(lambda: any(text in line for line in self.delivery_lines(rcpt)), timeout,
                   f"{text!r} in a delivery line for {rcpt}: {self.delivery_lines(rcpt)}")

    def queued(self) -> dict[str, object]:
        """Recipients in the spool's state files: address -> Recipient."""
        out: dict[str, object] = {}
        directory = self.server.path("queue", "env")
        for name in os.listdir(directory) if os.path.isdir(directory) else ():
            try:
                with open(os.path.join(directory, name), "rb") as handle:
                    message = parse(handle.read(), "")
            except (OSError, SpoolError):
                continue
            for r in message.recipients:
                if r.address in self.rcpts:
                    out[r.address] = r
        return out

    def deferred(self, rcpt: str, timeout: float = 15):
        """Wait until the spool holds ``rcpt`` as queued with a reply; return it."""
        def check():
            r = self.queued().get(rcpt)
            return r if r is not None and r.status == "queued" and r.reply else None
        return wait_until(check, timeout, f"{rcpt} deferred in the spool")

    def settled(self, rcpt: str, timeout: float = 15) -> None:
        """Wait until the first attempt for ``rcpt`` is over: the message is done, or the
        spool keeps ``rcpt`` with a reply."""
        def over() -> bool:
            r = self.queued().get(rcpt)
            return " done (" in self.log() or (r is not None and bool(r.reply))
        wait_until(over, timeout, f"the attempt for {rcpt} to end")

    def in_queue(self) -> list[list[str]]:
        admin = self.server.admin()
        rows = []
        for rcpt in self.rcpts:
            first, found = admin.listing(f"QUEUE SHOW MAILBOX={rcpt}")
            assert first.startswith("+OK"), first
            rows += [row.split("\t") for row in found]
        admin.close()
        return rows

    def done(self, timeout: float = 15) -> None:
        """Wait until the message left the queue (every recipient final)."""
        wait_until(lambda: " done (" in self.log() and not self.in_queue(), timeout,
                   "the message to leave the queue")

    def reports(self) -> list[bytes]:
        """The messages in the sender's Maildir (the server's reports), raw."""
        new = os.path.join(self.server.maildir(self.name, "local.test"), "new")
        out = []
        for name in sorted(os.listdir(new)) if os.path.isdir(new) else ():
            with open(os.path.join(new, name), "rb") as handle:
                out.append(handle.read())
        return out

    def report(self, timeout: float = 15) -> tuple[email.message.Message, str, bytes]:
        """The one failure report: (message, delivery-status text, raw bytes)."""
        [raw] = wait_until(self.reports, timeout, "the failure report")
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        part = next(p for p in message.walk() if p.get_content_type() == "message/delivery-status")
        fields = "\n".join(str(block) for block in part.get_payload())
        return message, re.sub(r"\r?\n[ \t]+", " ", fields), raw  # unfolded (RFC 5322 2.2.3)

    def resend(self) -> None:
        admin = self.server.admin()
        for rcpt in self.rcpts:
            assert admin.cmd(f"QUEUE RESEND MAILBOX={rcpt}").startswith("+OK")
        admin.close()

    def clean(self) -> None:
        """No traceback or internal error anywhere, since the case began."""
        with open(self.server.path("stderr.log"), "rb") as handle:
            handle.seek(self.stderr_from)
            stderr = handle.read().decode("utf-8", "replace")
        for text in (self.log(), stderr):
            assert "Traceback" not in text and "internal error" not in text, text[-3000:]

    def finish(self) -> None:
        admin = self.server.admin()
        for rcpt in self.rcpts:
            admin.cmd(f"QUEUE DEL MAILBOX={rcpt}")
        admin.close()
        with self.remote.lock:
            peers = list(self.remote.peers)
        for peer in peers:
            peer.ended.wait(10)


@pytest.fixture
def case(mta, remote):
    remote.reset()
    current = Case(mta, remote)
    yield current
    current.finish()


def delivered_once(case: Case, rcpts: list[str]) -> None:
    case.done()
    for rcpt in rcpts:
        assert case.remote.delivered(rcpt) == 1, rcpt
    assert case.reports() == []
    case.clean()


def deferred_with(case: Case, rcpt: str, reason: str) -> None:
    """Deferred: the spool keeps ``rcpt`` queued with ``reason`` in its reply and in the
    log line of the attempt; nothing reached the remote."""
    r = case.deferred(rcpt)
    assert r.reply.startswith("4"), r.reply
    assert reason in r.reply, r.reply
    case.logged_for(rcpt, reason)
    assert [row[8] for row in case.in_queue() if row[1] == rcpt] == ["queued"]
    assert case.remote.delivered(rcpt) == 0
    assert case.reports() == []
    case.clean()


def retry_delivers(case: Case, rcpt: str, expected: int = 1) -> None:
    """A good remote now; QUEUE RESEND; delivered ``expected`` times in all."""
    case.remote.set()
    case.resend()
    case.done()
    assert case.remote.delivered(rcpt) == expected
    case.clean()


# ------------------------------------------------------------------ greeting
def test_greeting_554_defers_with_the_remote_text(case, remote):
    """A host that greets with 554 is skipped (the next MX, or a later round), as Postfix
    does by default: one host's refusal is no reason to return the message."""
    remote.set(greeting=b"554 5.7.1 no service for you today\r\n")
    rcpt = case.rcpt()
    case.send([rcpt])
    deferred_with(case, rcpt, "554 5.7.1 no service for you today")
    assert remote.peers[0].verbs() == ["QUIT"]  # RFC 5321 3.1: QUIT, nothing else
    retry_delivers(case, rcpt)


@pytest.mark.parametrize("greeting", [
    b"220-remote.test first line\r\n220-second line\r\n220 ready\r\n",
    b"220 " + b"g" * 600 + b"\r\n",
    b"220 " + b"g" * 2000 + b"\r\n",
    b"220 \xff\xfe not utf-8 \x00 nul \x1b[2J esc\r\n",
], ids=["multiline", "600-bytes", "2000-bytes", "binary"])
def test_odd_but_valid_greetings_deliver_once(case, remote, greeting):
    remote.set(greeting=greeting)
    rcpt = case.rcpt()
    case.send([rcpt])
    delivered_once(case, [rcpt])
    assert "\x1b" not in case.log() and "\x00" not in case.log()


@pytest.mark.parametrize("greeting, reason", [
    (b"220 " + b"g" * 100_000 + b"\r\n", "too long"),
    (b"220 no line end and then silence", "timeout"),
    (b"2x0 garbled\r\n", "garbled"),
    (b"99 short\r\n", "garbled"),
    (b"600 out of range\r\n", "garbled"),
    (then_close(b"220-first line and no last\r\n"), "connection lost"),
    (b"220-first\r\n250 second line has another code\r\n", "garbled"),
    (then_close(b""), "connection lost"),
], ids=["100k", "no-crlf", "2x0", "99", "600", "220-dash-close", "mixed-codes", "close"])
def test_broken_greetings_defer_then_a_retry_delivers(case, remote, greeting, reason):
    remote.set(greeting=greeting)
    rcpt = case.rcpt()
    case.send([rcpt])
    deferred_with(case, rcpt, reason)
    retry_delivers(case, rcpt)


# ------------------------------------------------------------------ EHLO
def test_ehlo_5xx_multiline_falls_back_to_helo(case, remote):
    remote.set(EHLO=b"500-5.5.1 what is EHLO\r\n500 5.5.1 never heard of it\r\n")
    rcpt = case.rcpt()
    case.send([rcpt])
    delivered_once(case, [rcpt])
    assert remote.peers[0].verbs()[:3] == ["EHLO", "HELO", "MAIL"]


@pytest.mark.parametrize("ehlo, reason", [
    (b"250-remote.test\r\n550-5.0.0 odd\r\n250 SIZE 100\r\n", "garbled"),
    (then_close(b"250-remote.test\r\n250-\r\n"), "connection lost"),
    (b"421 4.3.2 going down\r\n", "421 4.3.2 going down"),
], ids=["mixed-codes", "dash-then-close", "421"])
def test_broken_ehlo_defers(case, remote, ehlo, reason):
    remote.set(EHLO=ehlo)
    rcpt = case.rcpt()
    case.send([rcpt])
    deferred_with(case, rcpt, reason)
    retry_delivers(case, rcpt)


@pytest.mark.parametrize("ehlo, size_param", [
    (b"250-remote.test\r\n250-\r\n250-pIpElInInG\r\n250 sIzE 99999999999999999999999999\r\n", True),
    (b"250-remote.test\r\n250 SIZE -5\r\n", True),
    (b"250-remote.test\r\n250 SIZE\r\n", True),
], ids=["odd-case-huge", "negative", "no-value"])
def test_odd_ehlo_keywords_still_deliver(case, remote, ehlo, size_param):
    remote.set(EHLO=ehlo)
    rcpt = case.rcpt()
    case.send([rcpt])
    delivered_once(case, [rcpt])
    [mail] = [c for c in remote.peers[0].commands if c.startswith(b"MAIL")]
    assert (b" SIZE=" in mail) == size_param


def test_message_bigger_than_declared_size_fails_before_mail(case, remote):
    remote.set(EHLO=b"250-remote.test\r\n250-pipelining\r\n250 size 40\r\n")
    rcpts = [case.rcpt("a"), case.rcpt("b")]
    case.send(rcpts)
    _, fields, _ = case.report()
    assert all(f"Final-Recipient: rfc822; {r}" in fields for r in rcpts)
    assert "Status: 5.3.4" in fields and "40-byte limit" in fields
    case.done()
    assert "MAIL" not in remote.peers[0].verbs()
    case.clean()


# ------------------------------------------------------------------ MAIL / RCPT
@pytest.mark.parametrize("ehlo", [EHLO, EHLO_PLAIN], ids=["pipelining", "one-by-one"])
def test_partial_success_delivers_once_defers_and_bounces_the_others(case, remote, ehlo):
    ok, later, bad, ok2 = (case.rcpt(n) for n in ("ok", "later", "bad", "ok2"))
    remote.set(EHLO=ehlo, **{f"RCPT {later}": b"452 4.2.2 mailbox full, later\r\n",
                             f"RCPT {bad}": b"550 5.1.1 no such user here\r\n"})
    case.send([ok, later, bad, ok2])
    assert case.deferred(later).reply == "452 4.2.2 mailbox full, later"
    case.logged_for(later, "452 4.2.2 mailbox full, later")
    case.logged_for(bad, "550 5.1.1 no such user here")
    state = case.queued()
    assert (state[ok].status, state[ok2].status, state[bad].status) == ("delivered", "delivered",
                                                                        "failed")
    assert state[bad].reply == "550 5.1.1 no such user here"
    assert [m for p in remote.peers for m in p.accepted] == [[ok, ok2]]
    assert [row[1] for row in case.in_queue()] == [later]
    case.clean()
    # the failed report waits for the last recipient (extremail/queue/manager.py _reports)
    remote.set()
    case.resend()
    _, fields, _ = case.report()
    assert "Diagnostic-Code: smtp; 550 5.1.1 no such user here" in fields
    assert f"Final-Recipient: rfc822; {bad}" in fields
    assert later not in fields and ok not in fields and ok2 not in fields
    case.done()
    assert [m for p in remote.peers for m in p.accepted] == [[ok, ok2], [later]]
    case.clean()


@pytest.mark.parametrize("ehlo", [
    EHLO, EHLO_PLAIN], ids=["pipelining", "one-by-one"])
def test_421_and_close_at_rcpt_defers_with_the_remote_reply(case, remote, ehlo):
    first, second = case.rcpt("a"), case.rcpt("b")
    remote.set(EHLO=ehlo, **{f"RCPT {second}": then_close(b"421 4.3.2 shutting down now\r\n")})
    case.send([first, second])
    for rcpt in (first, second):
        r = case.deferred(rcpt)
        assert r.reply.startswith("4")
    assert remote.delivered(first) == 0
    case.clean()
    # the remote's reason is what the log and the queue keep
    assert "421 4.3.2 shutting down now" in case.deferred(second).reply
    case.logged_for(second, "421 4.3.2 shutting down now")


def test_421_and_close_at_mail_defers_with_the_remote_reply(case, remote):
    rcpt = case.rcpt()
    remote.set(EHLO=EHLO_PLAIN, MAIL=then_close(b"421 4.4.5 too busy\r\n"))
    case.send([rcpt])
    deferred_with(case, rcpt, "421 4.4.5 too busy")
    retry_delivers(case, rcpt)


def test_a_rcpt_reply_in_several_pieces(case, remote):
    rcpt = case.rcpt()
    remote.set(RCPT=pieces(b"25", b"0-2.1.5 o", b"k\r", b"\n250 2.1", b".5 fine\r\n"))
    case.send([rcpt])
    delivered_once(case, [rcpt])


def test_contradicting_enhanced_code_basic_code_decides_delivery(case, remote):
    rcpt = case.rcpt()
    remote.set(RCPT=b"250 5.1.1 no such user (says the enhanced code)\r\n")
    case.send([rcpt])
    delivered_once(case, [rcpt])


def test_contradicting_enhanced_code_in_a_refusal_gives_a_5xx_status(case, remote):
    rcpt = case.rcpt()
    remote.set(RCPT=b"550 2.1.5 recipient ok (not really)\r\n")
    case.send([rcpt])
    _, fields, _ = case.report()
    assert "Action: failed" in fields
    assert "Diagnostic-Code: smtp; 550 2.1.5 recipient ok (not really)" in fields
    status = fields.split("Status: ")[1].split("\n")[0]
    assert status.startswith("5."), status


def test_control_bytes_in_a_deferral_stay_out_of_log_and_spool(case, remote):
    rcpt = case.rcpt()
    remote.set(RCPT=b"450 4.2.0 gr\x00ey\x1b[31m listed\rX-Evil: 1 \xff\r\n")
    case.send([rcpt])
    r = case.deferred(rcpt)
    assert r.reply.startswith("450 4.2.0 gr ey") and "listed" in r.reply
    assert not any(ord(c) < 32 or c == "\x7f" for c in r.reply)
    case.logged_for(rcpt, "450 4.2.0 gr\\x00ey\\x1b[31m listed\\x0dX-Evil")
    log = case.log()
    assert "\x00" not in log and "\x1b" not in log and "\r" not in log
    case.clean()
    retry_delivers(case, rcpt)


def test_control_bytes_in_a_refusal_stay_out_of_the_report(case, remote):
    rcpt = case.rcpt()
    remote.set(RCPT=b"550 5.1.1 gone\x00\x1b]0;title\x07 \xfe\xff user\r\n")
    case.send([rcpt])
    _, fields, raw = case.report()
    assert "Diagnostic-Code: smtp; 550 5.1.1 gone" in fields and "user" in fields
    assert b"\x00" not in raw and b"\x1b" not in raw and b"\x07" not in raw
    log = case.log()
    assert "\x00" not in log and "\x1b" not in log and "\x07" not in log
    case.clean()


# ------------------------------------------------------------------ a 2xx where another is due
# A 2xx where the client waits for another code (220, 250, 354) once ended the transaction
# as a "refusal" whose 2xx counted as delivered: the message left the queue unsent.


@pytest.mark.parametrize("replies", [
    {"greeting": b"250 remote.test hello\r\n"},
    {"EHLO": b"220 remote.test hello again\r\n"},
    {"EHLO": EHLO_PLAIN, "MAIL": b"251 2.1.0 sender ok, sort of\r\n"},
    {"EHLO": EHLO_PLAIN, "RCPT": b"252 2.1.5 cannot verify, will try\r\n"},
    {"EHLO": EHLO_PLAIN, "DATA": b"250 2.0.0 ok whatever\r\n"},
    {"DATA": b"250 2.0.0 ok whatever\r\n"},
], ids=["greeting-250", "ehlo-220", "mail-251", "rcpt-252", "data-250", "data-250-pipelined"])
def test_an_unexpected_2xx_is_not_a_delivery(case, remote, replies):
    rcpt = case.rcpt()
    remote.set(**replies)
    case.send([rcpt])
    case.settled(rcpt)
    assert remote.delivered(rcpt) == 0
    assert [row[1] for row in case.in_queue()] == [rcpt], "the message left the queue undelivered"


# ------------------------------------------------------------------ DATA
@pytest.mark.parametrize("data, reason", [
    (silence, "timeout"),
    (then_close(b""), "connection lost"),
    (b"451 4.3.0 not now\r\n", "451 4.3.0 not now"),
], ids=["354-never-comes", "close-at-data", "451"])
def test_data_not_accepted_defers(case, remote, data, reason):
    rcpt = case.rcpt()
    remote.set(EHLO=EHLO_PLAIN, DATA=data)
    case.send([rcpt])
    deferred_with(case, rcpt, reason)
    retry_delivers(case, rcpt)


def test_close_right_after_the_dot_is_retried_not_lost(case, remote):
    rcpt = case.rcpt()
    remote.set(dot=CLOSE)
    case.send([rcpt])
    deferred_with(case, rcpt, "connection lost")
    retry_delivers(case, rcpt)


def test_250_after_the_server_gave_up_means_a_second_copy(case, remote):
    """The remote's 250 to the dot comes after TIMEOUT_SOCK: the server has hung up and
    cannot know; a retry (a second copy at the remote, RFC 1047) is right, a loss is not."""
    rcpt = case.rcpt()

    def late(peer: Peer) -> bool:
        peer.accepted.append([rcpt])  # the remote took it, whatever the server sees
        time.sleep(TIMEOUT + 0.6)
        try:
            peer.send(b"250 2.0.0 queued, too late\r\n")
        except OSError:
            pass
        return False

    remote.set(dot=late)
    case.send([rcpt])
    r = case.deferred(rcpt)
    assert "timeout" in r.reply
    retry_delivers(case, rcpt, expected=2)


@pytest.mark.parametrize("dot, outcome", [
    (b"452 4.3.1 insufficient storage\r\n", "deferred"),
    (b"552 5.3.4 message too big for us\r\n", "failed"),
    (b"554-5.7.1 rejected as spam\r\n554 5.7.1 see our policy\r\n", "failed"),
], ids=["452", "552", "554-multiline"])
def test_refusals_after_the_dot(case, remote, dot, outcome):
    rcpt = case.rcpt()
    remote.set(dot=dot)
    case.send([rcpt])
    text = " ".join(line[4:].decode() if i == 0 else line[10:].decode()
                    for i, line in enumerate(dot.rstrip(b"\r\n").split(b"\r\n")))
    if outcome == "deferred":
        deferred_with(case, rcpt, f"452 {text}")
        retry_delivers(case, rcpt)
        return
    _, fields, _ = case.report()
    assert f"Diagnostic-Code: smtp; {dot[:3].decode()} {text}" in fields
    assert f"Status: {dot[4:9].decode()}" in fields
    case.done()
    assert remote.delivered(rcpt) == 0
    case.clean()


def test_bare_250_after_the_dot_is_a_delivery(case, remote):
    rcpt = case.rcpt()
    remote.set(dot=b"250\r\n")
    case.send([rcpt])
    delivered_once(case, [rcpt])
    assert re.search(r": 250 +\(\d", "\n".join(case.delivery_lines(rcpt)))


def test_long_refusal_gives_a_report_with_short_lines(case, remote):
    rcpt = case.rcpt()
    lines = [b"550-5.7.1 " + b"reason %02d " % n + b"r" * 90 for n in range(15)]
    remote.set(RCPT=b"\r\n".join(lines) + b"\r\n550 5.7.1 end\r\n")
    case.send([rcpt])
    _, fields, raw = case.report()
    assert "reason 14" in fields.replace("\n ", " ").replace("\n\t", " ")
    longest = max(len(line.rstrip(b"\r")) for line in raw.split(b"\n"))  # LF in the Maildir
    assert longest <= 998, longest


# ------------------------------------------------------------------ slow remote
def test_drip_fed_greeting_and_dot_reply_still_deliver(case, remote):
    remote.set(greeting=drip(b"220 drip\r\n"), dot=drip(b"250 ok\r\n"))
    rcpt = case.rcpt()
    case.send([rcpt])
    delivered_once(case, [rcpt])


def test_endless_drip_is_cut_off(case, remote):
    gave_up = threading.Event()

    def endless(peer: Peer) -> bool:
        started = time.monotonic()
        try:
            peer.send(b"220 ")
            while time.monotonic() - started < 3 * TIMEOUT + 0.5:
                peer.send(b"x")
                time.sleep(0.1)
        except OSError:
            gave_up.set()
        return False

    remote.set(greeting=endless)
    rcpt = case.rcpt()
    case.send([rcpt])
    r = case.deferred(rcpt, timeout=15)
    # The hang-up reaches the dripping peer at its next send or two, well before its end.
    assert gave_up.wait(TIMEOUT), f"the server waited out the whole drip ({r.reply})"
