"""The outbound SMTP client: one transaction, one message, several recipients, and a reply
per recipient (RFC 5321 3.3, 4.1).

Steps: connect (TIMEOUT_SOCK for the connection and every read), read the greeting
(multi-line allowed, 4.2.1), ``EHLO cfg.hostname`` with ``HELO`` when EHLO gets a 5xx
(3.2), then ``MAIL FROM`` (with ``SIZE=`` when the peer offers SIZE, RFC 1870, and
``BODY=8BITMIME`` when the data has 8-bit bytes and the peer offers it, RFC 6152),
every ``RCPT TO``, ``DATA`` only if a recipient was accepted, the dot-stuffed data
(:func:`extremail.net.lineio.dot_stuff`).  With PIPELINING (RFC 2920) MAIL, the RCPTs and
DATA go out in one write and their replies are read in order.  After the reply to the
final dot the session is parked in the connection cache
(:mod:`extremail.smtp.connections`) for the next message to the same address, which
then starts at ``MAIL FROM``; otherwise, and after a refusal, ``QUIT``.

Results: :class:`Attempt` with the final reply of each recipient: the RCPT reply when a
recipient was refused, else the reply to the end of data; when the whole transaction
fails (greeting, EHLO, MAIL, DATA, a dropped connection) every recipient still pending
gets that reply.  A reply that cannot be parsed, or whose code is outside 2xx-5xx, is a
temporary failure (STYLE.md habit 6).  ``opened`` says whether the TCP connection was
made, ``connected`` whether the peer then greeted us with 220 (a reused session: not
opened, connected).  A reused session that fails before its first reply (the peer closed
it meanwhile) has delivered nothing, so the message goes out on a fresh connection.

Attack surface: everything the remote server sends; reply lines are bounded
(:data:`MAX_REPLY_LINE`, :data:`MAX_REPLY_LINES`) and never executed or logged raw.
"""

from __future__ import annotations

import re
import select
import socket
import time
from dataclasses import dataclass, field

from ..net.lineio import Closed, LineIO, LineTooLong, Timeout, dot_stuff
from ..reply import Reply
from .connections import ConnectionCache

MAX_REPLY_LINE = 2048   # RFC 5321 4.5.3.1.5 says 512; peers send longer ones
MAX_REPLY_LINES = 100   # a multi-line reply longer than this is garbage
QUIT_TIMEOUT = 2.0      # seconds to wait for the reply to QUIT: the outcome is known already
DEFAULT_REPLY_SECONDS = 300.0  # a whole reply, where no timeout is set (RFC 5321 4.5.3.2)
_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -]|$)(.*)$", re.DOTALL)
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?: |$)")


class Broken(Exception):
    """The conversation cannot go on (timeout, lost connection, garbage): no QUIT.
    ``reply`` is always temporary."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(str(reply))


class Refused(Exception):
    """The peer refused the whole transaction (greeting, EHLO, MAIL, DATA) with ``reply``;
    every recipient still pending gets it, then QUIT."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(str(reply))


@dataclass
class Attempt:
    """One connection to one address: what each recipient got."""

    host: str
    address: str
    port: int
    opened: bool = False     # the TCP connection was made
    connected: bool = False  # ... and the server greeted with 220
    replies: dict[str, Reply] = field(default_factory=dict)
    last: Reply | None = None  # the last reply read (for the log line)
    notes: list[str] = field(default_factory=list)

    def settle(self, recipients: list[str], reply: Reply) -> None:
        """Every recipient without a final reply yet gets the transaction's ``reply``."""
        self.last = reply
        for rcpt in recipients:
            self.replies.setdefault(rcpt, reply)


def make_reply(code: int, lines: list[str]) -> Reply:
    """A remote reply as a :class:`Reply`: the enhanced code (RFC 3463, repeated on every
    line by RFC 2034 3) split off, the lines joined by blanks."""
    texts = [line.strip() for line in lines]
    match = _ENHANCED.match(texts[0]) if texts else None
    enhanced = match.group(1) if match and match.group(1)[0] == str(code)[0] else ""
    if enhanced:
        texts = [t[len(enhanced):].strip() if t.startswith(enhanced) else t for t in texts]
    return Reply(code, enhanced, " ".join(t for t in texts if t))


def read_lines(io: LineIO) -> tuple[int, list[str]]:
    """One reply, multi-line allowed (RFC 5321 4.2.1): its code and the text of each line.
    Only codes 2xx-5xx are replies; anything else is garbage (:class:`Broken`).  The whole
    reply must come within the socket's timeout, so a peer that drips a byte at a time
    cannot hold a delivery thread for ever."""
    lines: list[str] = []
    code = None
    deadline = time.monotonic() + (io.timeout or DEFAULT_REPLY_SECONDS)
    for _ in range(MAX_REPLY_LINES):
        try:
            raw = io.readline(MAX_REPLY_LINE, deadline)
        except Timeout:
            raise Broken(Reply(451, "4.4.2", "timeout waiting for the remote reply")) from None
        except Closed:
            raise Broken(Reply(451, "4.4.2", "connection lost")) from None
        except LineTooLong:
            raise Broken(Reply(451, "4.5.0", "remote reply line too long")) from None
        match = _REPLY_LINE.match(raw)
        if match is None or (code is not None and int(match.group(1)) != code):
            raise Broken(Reply(451, "4.5.0", "garbled remote reply: "
                               + raw[:80].decode("ascii", "replace")))
        code = int(match.group(1))
        lines.append(match.group(3).decode("utf-8", "replace"))
        if match.group(2) != b"-":
            return code, lines
    raise Broken(Reply(451, "4.5.0", "remote reply has too many lines"))


def read_reply(io: LineIO) -> Reply:
    return make_reply(*read_lines(io))


def extensions(lines: list[str]) -> dict[str, str]:
    """EHLO keywords (RFC 5321 4.1.1.1) -> their parameters; the first line is the name."""
    result = {}
    for line in lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            result[keyword.upper()] = params.strip()
    return result


def _unexpected(reply: Reply) -> Reply:
    """A positive reply where another was due is a broken peer, not a delivery: the
    recipients wait for another attempt (never counted delivered by a stray 250)."""
    return Reply(451, "4.5.0", f"unexpected reply: {reply}")


def _refusal(reply: Reply) -> Reply:
    """A reply that ends a recipient's attempt: the peer's own 4xx/5xx, or :func:`_unexpected`."""
    return reply if reply.code >= 400 else _unexpected(reply)


def _stop_unless(reply: Reply, code: int) -> Reply:
    if reply.code != code:
        raise Refused(_refusal(reply))
    return reply


class Session:
    """An open SMTP session past EHLO, ready for ``MAIL FROM`` (kept between transactions
    by :class:`extremail.smtp.connections.ConnectionCache`)."""

    def __init__(self, io: LineIO, features: dict[str, str], opened: float) -> None:
        self.io = io
        self.features = features
        self.opened = opened
        self.transactions = 0

    def alive(self) -> bool:
        """False when the peer has closed the connection or sent something unasked (a
        ``421`` on its idle timeout): such a session cannot take a transaction."""
        if self.io.has_pending():
            return False
        poller = select.poll()
        poller.register(self.io.sock, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        """QUIT politely (briefly: the outcome is already known) and close."""
        self.io.settimeout(QUIT_TIMEOUT)
        try:
            self.io.write(b"QUIT\r\n")
            read_reply(self.io)
        except (Broken, Timeout, Closed):
            pass
        self.io.close()


class Client:
    """Outbound transactions; :meth:`send` never raises for the peer's behaviour.  With a
    ``cache``, a session that completed a transaction is parked there for the next
    message to the same address instead of being closed."""

    def __init__(self, helo_name: str, timeout: float, cache: ConnectionCache | None = None) -> None:
        self.helo_name = helo_name
        self.timeout = timeout
        self.cache = cache

    def send(self, host: str, address: str, port: int, sender: str, recipients: list[str],
             data: bytes) -> Attempt:
        """Deliver ``data`` (CRLF wire form) for ``recipients`` through ``address:port``."""
        cached = self.cache.take(address, port) if self.cache else None
        if isinstance(cached, Session):
            attempt = Attempt(host, address, port, connected=True,
                              notes=[f"connection reused ({cached.transactions + 1})"])
            if self._run(cached, attempt, address, port, sender, recipients, data):
                return attempt
            # The peer dropped the parked session before answering anything: nothing was
            # delivered, so the message goes out on a fresh connection.
        attempt = Attempt(host, address, port)
        session = self._open(attempt, recipients)
        if session is not None:
            self._run(session, attempt, address, port, sender, recipients, data)
        return attempt

    def _open(self, attempt: Attempt, recipients: list[str]) -> Session | None:
        """Connect, read the greeting, EHLO; None (every recipient settled) on failure."""
        try:
            sock = socket.create_connection((attempt.address, attempt.port), timeout=self.timeout)
        except OSError as exc:
            attempt.settle(recipients, Reply(451, "4.4.1", f"cannot connect: {exc.strerror or exc}"))
            return None
        attempt.opened = True
        io = LineIO(sock)
        io.settimeout(self.timeout)
        session = Session(io, {}, time.monotonic())
        try:
            greeting = read_reply(io)
            if greeting.code >= 500:
                # RFC 5321 3.1: "no service here", from this host: as Postfix does by
                # default (smtp_skip_5xx_greeting), the next MX host is tried, and the
                # message waits for the next round when none is left.
                raise Refused(Reply(451, "4.4.0", f"{attempt.host} refused to talk to us: "
                                                  f"{greeting}"))
            attempt.last = _stop_unless(greeting, 220)
            attempt.connected = True
            session.features = self._ehlo(io, attempt)
        except Refused as exc:
            attempt.settle(recipients, exc.reply)
            session.close()
            return None
        except Broken as exc:
            attempt.settle(recipients, exc.reply)
            io.close()
            return None
        return session

    def _run(self, session: Session, attempt: Attempt, address: str, port: int, sender: str,
             recipients: list[str], data: bytes) -> bool:
        """One transaction on ``session``, which is then parked or closed.  False (nothing
        settled) when a reused session died before its first reply."""
        reused = session.transactions > 0
        try:
            complete = self._transaction(session, attempt, sender, recipients, data)
        except Refused as exc:
            attempt.settle(recipients, exc.reply)
            session.close()
        except Broken as exc:
            session.io.close()
            if reused and attempt.last is None:
                return False
            attempt.settle(recipients, exc.reply)
        else:
            session.transactions += 1
            if complete and self.cache is not None:
                self.cache.put(address, port, session)
            else:
                session.close()
        return True

    # ---- the conversation ----
    def _transaction(self, session: Session, attempt: Attempt, sender: str, recipients: list[str],
                     data: bytes) -> bool:
        """MAIL to the final dot; True when it ended cleanly after the data (the session
        may then take another transaction)."""
        io, features = session.io, session.features
        mail = f"MAIL FROM:<{sender}>"
        if "SIZE" in features:  # RFC 1870 6: refuse before sending what the peer cannot take
            limit = features["SIZE"]
            if limit.isascii() and limit.isdigit() and int(limit) and len(data) > int(limit):
                raise Refused(Reply(552, "5.3.4", f"message of {len(data)} bytes exceeds the "
                                                  f"{limit}-byte limit of {attempt.host}"))
            mail += f" SIZE={len(data)}"
        if not data.isascii():
            if "8BITMIME" in features:
                mail += " BODY=8BITMIME"  # RFC 6152 2
            else:
                attempt.notes.append("8-bit data sent to a server without 8BITMIME")
        accepted, go_ahead = self._envelope(io, attempt, mail, recipients, "PIPELINING" in features)
        if not accepted:
            return False  # RFC 5321 3.3: no data without an accepted recipient
        _stop_unless(go_ahead if go_ahead is not None else self._command(io, attempt, "DATA"), 354)
        self._write(io, dot_stuff(data))  # RFC 5321 4.5.2 transparency
        reply = read_reply(io)
        if reply.code // 100 == 3:
            reply = _unexpected(reply)
        attempt.last = reply
        for rcpt in accepted:
            attempt.replies[rcpt] = reply
        return True

    def _ehlo(self, io: LineIO, attempt: Attempt) -> dict[str, str]:
        """EHLO, or HELO when the peer refuses EHLO with a 5xx (RFC 5321 3.2)."""
        self._write(io, f"EHLO {self.helo_name}\r\n".encode())
        code, lines = read_lines(io)
        attempt.last = make_reply(code, lines)
        if code == 250:
            return extensions(lines)
        if code < 500:
            raise Refused(_refusal(attempt.last))
        _stop_unless(self._command(io, attempt, f"HELO {self.helo_name}"), 250)
        return {}

    def _envelope(self, io: LineIO, attempt: Attempt, mail: str, recipients: list[str],
                  pipelining: bool) -> tuple[list[str], Reply | None]:
        """MAIL and the RCPTs (and DATA, when pipelining); returns the recipients accepted
        and the reply to a pipelined DATA, and records the refused recipients."""
        commands = [mail] + [f"RCPT TO:<{rcpt}>" for rcpt in recipients]
        go_ahead = None
        if pipelining:
            # RFC 2920 3.1: MAIL, the RCPTs and DATA go out as one group (DATA last);
            # the replies are read in order.
            commands.append("DATA")
            self._write(io, "".join(c + "\r\n" for c in commands).encode("utf-8"))
            replies = self._replies(io, len(commands))
            go_ahead = replies.pop()
            attempt.last = replies[-1]
        else:
            replies = [self._command(io, attempt, mail)]
            if replies[0].code == 250:
                replies += [self._command(io, attempt, c) for c in commands[1:]]
        accepted = [rcpt for rcpt, reply in zip(recipients, replies[1:], strict=False)
                    if reply.code in (250, 251) and replies[0].code == 250]
        if go_ahead is not None and go_ahead.code == 354 and not accepted:
            # RFC 2920 3.1: a server that says 354 with no valid recipient gets no data.
            self._write(io, b".\r\n")
            read_reply(io)
        _stop_unless(replies[0], 250)
        for rcpt, reply in zip(recipients, replies[1:], strict=True):
            if rcpt not in accepted:
                attempt.replies[rcpt] = _refusal(reply)
        return accepted, go_ahead

    @staticmethod
    def _replies(io: LineIO, count: int) -> list[Reply]:
        """The replies to ``count`` pipelined commands.  A peer that says 421 and hangs up
        (RFC 5321 3.8) is the reason the rest are missing, so its reply is what they get."""
        replies: list[Reply] = []
        for _ in range(count):
            try:
                replies.append(read_reply(io))
            except Broken:
                if replies and replies[-1].code == 421:
                    raise Broken(replies[-1]) from None
                raise
        return replies

    def _command(self, io: LineIO, attempt: Attempt, line: str) -> Reply:
        self._write(io, (line + "\r\n").encode("utf-8"))
        attempt.last = read_reply(io)
        return attempt.last

    @staticmethod
    def _write(io: LineIO, data: bytes) -> None:
        try:
            io.write(data)
        except (Timeout, Closed):
            raise Broken(Reply(451, "4.4.2", "connection lost while sending")) from None
