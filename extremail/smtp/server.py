"""The ESMTP server session (RFC 5321) on PORT_SMTP: protocol only.

States (the command table below is the whole state machine)::

    start --HELO/EHLO--> helo --MAIL--> mail --RCPT--> rcpt --DATA--> helo
      RSET and HELO/EHLO end a transaction; QUIT ends the session anywhere.

Extensions (EHLO): SIZE (RFC 1870), PIPELINING (RFC 2920), 8BITMIME (RFC 6152),
ENHANCEDSTATUSCODES (RFC 2034: every reply but the greeting and HELO/EHLO carries an
RFC 3463 code).  VRFY answers 252 unless CFG_VRFY=1 (then local users only).

Limits (RFC 5321 4.5.3.1): command lines 512 octets, text lines 1000, paths 256,
CFG_MAX_RCPT recipients (at least 100), CFG_MAX_MAIL_SIZE; TIMEOUT_SMTP1..5 per stage;
too many errors end the session with 421.  End of data is ``<CRLF>.<CRLF>`` only
(:class:`~extremail.net.lineio.DataReader`), so no bare-LF smuggling.

Pipelining (RFC 2920 3.1): replies to RSET, MAIL, RCPT and NOOP are held while more
commands are already waiting, and sent together; every other reply flushes them.

Who may send what is :mod:`extremail.policy`; whether a local recipient exists, and the
durable acceptance of the message, are :mod:`extremail.delivery`.

Attack surface: anyone who can reach PORT_SMTP.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, NoReturn

from .. import VERSION, delivery, log, policy, reply, routing
from ..envelope import Envelope
from ..net.lineio import Closed, DataLineTooLong, DataReader, DataTooBig, Timeout
from ..reply import Disconnect, Refusal, Reply
from ..session import Handler, Session
from . import address

MAX_RECEIVED = 30     # more Received: headers than this is a mail loop (RFC 5321 6.3)
MAX_HELO = 255        # RFC 5321 4.5.3.1.2: a domain is at most 255 octets
BATCHED = frozenset({"RSET", "MAIL", "RCPT", "NOOP"})  # RFC 2920 3.1
STAGE_TIMEOUTS = {"start": "TIMEOUT_SMTP1", "helo": "TIMEOUT_SMTP2", "mail": "TIMEOUT_SMTP3",
                  "rcpt": "TIMEOUT_SMTP4"}  # TIMEOUT_SMTP5 covers the message data
NOT_IMPLEMENTED = ("EXPN", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML", "BDAT", "STARTTLS",
                   "AUTH")

_RECEIVED = re.compile(rb"(?:^|\r\n)received[ \t]*:", re.IGNORECASE)
_HELO = re.compile(r"[\x21-\x7e]+\Z")
_NOT_IN_RECEIVED = re.compile(r"[^A-Za-z0-9._:\[\]-]")  # keeps a HELO from forging ";" or "("
_ids = itertools.count(1)


_date_cache: tuple[int, str] = (0, "")


def _rfc5322_now() -> str:
    """The current date for Received: (RFC 5322 3.3), formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, format_datetime(datetime.fromtimestamp(now, UTC)))
    return _date_cache[1]


def transaction_id() -> str:
    """A short id naming one transaction in Received: and in the log."""
    return f"{time.time_ns() // 1000:X}{next(_ids) % 0x10000:04X}"


def count_received(data: bytes) -> int:
    """The number of Received: fields in the header section (RFC 5322 2.1: up to the
    first empty line)."""
    end = data.find(b"\r\n\r\n")
    return len(_RECEIVED.findall(data if end < 0 else data[:end + 2]))


class SMTPSession(Session):
    """One SMTP connection."""

    protocol = "smtp"
    max_line = 512       # RFC 5321 4.5.3.1.4, CRLF included
    max_errors = 20      # protocol errors and permanent refusals (like Postfix's hard limit)
    initial_state = "start"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helo = ""
        self.esmtp = False
        self.authenticated = ""     # user@domain once SMTP AUTH lands
        self.mail_from = ""
        self.rcpts: list[str] = []
        self.declared_size = 0
        self.body_8bit = False
        self._out = bytearray()
        self._hold = False
        self._data_id = ""  # the transaction whose message data is being read

    @classmethod
    def busy_line(cls) -> bytes:
        return reply.TOO_BUSY.format()

    @property
    def max_size(self) -> int:
        """CFG_MAX_MAIL_SIZE in octets; 0 = no limit."""
        return self.cfg.CFG_MAX_MAIL_SIZE * 1024

    # ---- session hooks ----
    def greet(self) -> bool:
        self.ctx.stats.incr("smtp_in")
        try:
            policy.check_connect(self.ctx.store, self.peer_ip)
        except Refusal as refusal:
            self.log.info("%s: refused at connect: %s", self.describe(), refusal.reply)
            self.send(refusal.reply)
            return False
        # RFC 5321 4.2: the greeting names this host; RFC 2034: no enhanced code here
        self.send(Reply(220, "", f"{self.cfg.hostname} ESMTP eXtremail {VERSION} ready"))
        return True

    def timeout(self) -> float:
        return float(getattr(self.cfg, STAGE_TIMEOUTS[self.state]))

    def render(self, answer: Reply) -> bytes:
        return answer.format()

    def finish(self) -> None:
        try:
            self.flush()
        except (Closed, Timeout):
            pass

    def unknown_text(self, verb: str) -> str | None:
        return f"Command {verb[:20]!r} unrecognized" if verb else "Empty command"

    def sequence_text(self, verb: str) -> str | None:
        if self.state == "start":
            return "Bad sequence of commands: send HELO/EHLO first"
        if verb == "MAIL":
            return "Bad sequence of commands: nested MAIL command"
        return "Bad sequence of commands: send MAIL first"

    # ---- output: RFC 2920 batching ----
    def send(self, answer: Reply, text: str | None = None) -> None:
        self._out += self.render(answer if text is None else answer.with_text(text))
        if not self._hold:
            self.flush()

    def flush(self) -> None:
        if self._out:
            data = bytes(self._out)
            self._out.clear()
            self.io.write(data)

    def dispatch(self, line: bytes) -> None:
        verb = line.strip(b" ").split(b" ", 1)[0].decode("ascii", "replace").upper()
        self._hold = verb in BATCHED
        try:
            super().dispatch(line)
        finally:
            self._hold = False
        if not self.io.has_pending():
            self.flush()

    def invoke(self, handler: Handler, arg: str, verb: str) -> None:
        super().invoke(_counting_errors(handler), arg, verb)

    # ---- transaction ----
    def reset(self) -> None:
        """Forget the current transaction (RSET, HELO/EHLO, end of DATA)."""
        self.mail_from = ""
        self.rcpts = []
        self.declared_size = 0
        self.body_8bit = False
        self.state = "helo" if self.helo else "start"

    # ---- commands ----
    def do_helo(self, arg: str) -> None:
        self._hello(arg, esmtp=False)
        self.send(Reply(250, "", f"{self.cfg.hostname} Hello {self.helo} [{self.peer_ip}]"))

    def do_ehlo(self, arg: str) -> None:
        self._hello(arg, esmtp=True)
        size = f"SIZE {self.max_size}" if self.max_size else "SIZE"  # RFC 1870 4
        lines = [f"{self.cfg.hostname} Hello {self.helo} [{self.peer_ip}]", size,
                 "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "HELP"]
        self.send(Reply(250, "", "\n".join(lines)))

    def _hello(self, arg: str, esmtp: bool) -> None:
        name = arg.strip().split(" ")[0]
        if not name or len(name) > MAX_HELO or not _HELO.match(name):
            raise Refusal(reply.BAD_ARGS, f"{'EHLO' if esmtp else 'HELO'} requires a domain "
                                          "or an address literal")
        self.helo = name
        self.esmtp = esmtp
        self.reset()  # RFC 5321 4.1.4: HELO/EHLO in a transaction also resets it
        self.log.info("%s: %s %s", self.describe(), "EHLO" if esmtp else "HELO", name)

    def do_mail(self, arg: str) -> None:
        try:
            args = address.parse_mail(arg)
            sender = args.path.address
            # RFC 1870 6.1: a declared SIZE over the limit is refused at once
            if self.max_size and args.size > self.max_size:
                raise Refusal(reply.TOO_BIG, f"Message size exceeds the limit of "
                                             f"{self.max_size} octets")
            policy.check_sender(self.ctx.store, sender)
            policy.check_out_size(self.ctx.store, sender, args.size)
        except Refusal as refusal:
            self.log.info("%s: MAIL FROM %s rejected: %s", self.describe(), arg[5:200].strip(),
                          refusal.reply)
            raise
        self.mail_from = sender
        self.declared_size = args.size
        self.body_8bit = args.body_8bit
        self.state = "mail"
        self.log.log(log.DETAIL, "%s: MAIL FROM:<%s> size=%d", self.describe(), sender, args.size)
        self.send(reply.SENDER_OK, f"<{sender}> Sender OK")

    def do_rcpt(self, arg: str) -> None:
        try:
            recipient = address.parse_rcpt(arg).address
            if len(self.rcpts) >= self.cfg.CFG_MAX_RCPT:  # RFC 5321 4.5.3.1.10
                raise Refusal(reply.TOO_MANY_RCPTS)
            later = self.check_recipient(recipient)
        except Refusal as refusal:
            self._rcpt_refused(arg, refusal)
        if later is None:
            self._rcpt_accepted(recipient)
            return
        # A quota check lists a Maildir: on a worker when the event loop serves the session.
        self.io.offload(lambda: _refusal_of(later),
                        lambda refusal: self._rcpt_checked(arg, recipient, refusal))

    def _rcpt_checked(self, arg: str, recipient: str, refusal: Refusal | None) -> None:
        if refusal is not None:
            self._rcpt_refused(arg, refusal)
        self._rcpt_accepted(recipient)

    def _rcpt_refused(self, arg: str, refusal: Refusal) -> NoReturn:
        self.log.info("%s: RCPT TO %s rejected: %s", self.describe(), arg[3:300].strip(),
                      refusal.reply)
        raise refusal

    def _rcpt_accepted(self, recipient: str) -> None:
        if recipient.lower() not in (known.lower() for known in self.rcpts):
            self.rcpts.append(recipient)
        self.state = "rcpt"
        self.log.log(log.DETAIL, "%s: RCPT TO:<%s> accepted", self.describe(), recipient)
        self.send(reply.RCPT_OK, f"<{recipient}> Recipient OK")

    def check_recipient(self, recipient: str) -> Callable[[], None] | None:
        """Deny entries, then a local mailbox or the relay policy (DESIGN.md rule 2);
        returns the checks that may block (a quota's Maildir listing), if any."""
        store = self.ctx.store
        policy.check_recipient(store, recipient)
        if routing.is_local(store, recipient):
            return delivery.check_rcpt(self.ctx, recipient, self.mail_from, self.declared_size)
        policy.check_relay(self.ctx, self.peer_ip, self.authenticated)
        return None

    def do_data(self, arg: str) -> None:
        """354, then the message data: read here on a thread, or in the event loop as it
        arrives; its acceptance (fsyncs) on a worker there (LineIO's ``collect`` and
        ``offload``, which a LoopIO does the loop's way)."""
        if arg.strip():
            raise Refusal(reply.BAD_ARGS, "DATA takes no arguments")
        if not self.rcpts:  # RFC 5321 3.3: 554 when every RCPT was refused
            raise Refusal(reply.NO_VALID_RCPTS)
        self.send(reply.START_DATA)
        self.io.settimeout(float(self.cfg.TIMEOUT_SMTP5))
        self._data_id = transaction_id()
        reader = DataReader(self.max_size)
        try:
            self.io.collect(reader, lambda: self._data_received(reader))
        except Timeout:
            self.timed_out()
            raise Disconnect(None) from None

    def _data_received(self, reader: DataReader) -> None:
        try:
            data = reader.result()
        except DataTooBig:
            self._data_answered(0, reply.TOO_BIG.with_text(
                f"Message size exceeds the limit of {self.max_size} octets"))
            return
        except DataLineTooLong:
            self._data_answered(0, reply.TEXT_LINE_TOO_LONG)
            return
        ident = self._data_id
        self.io.offload(lambda: self.accept(data, ident),
                        lambda answer: self._data_answered(len(data), answer))

    def _data_answered(self, size: int, answer: Reply) -> None:
        ident, rcpts, sender = self._data_id, len(self.rcpts), self.mail_from
        self._data_id = ""
        self.reset()
        try:
            if answer.is_permanent:
                raise Refusal(answer)
            self.send(answer)
        finally:  # after the reply: the client need not wait for the log
            self.log.info("%s: DATA id %s from <%s> to %d recipient(s), %d octets: %s",
                          self.describe(), ident, sender, rcpts, size, answer)

    def timed_out(self) -> None:
        if self._data_id:
            self.log.info("%s: timeout while reading message data", self.describe())
            self.send(self.TIMEOUT)
        else:
            super().timed_out()

    def accept(self, data: bytes, ident: str) -> Reply:
        """Check the whole message, add Received:, hand it to delivery; the reply for DATA
        (a failure here is a temporary one: the client keeps the message)."""
        try:
            received = count_received(data)
            if received > MAX_RECEIVED:
                return reply.LOOP.with_text(f"Routing loop detected: {received} Received headers")
            try:
                policy.check_out_size(self.ctx.store, self.mail_from, len(data))
            except Refusal as refusal:
                return refusal.reply
            envelope = Envelope(self.mail_from, list(self.rcpts), client_ip=self.peer_ip,
                                helo=self.helo, authenticated=self.authenticated,
                                body_8bit=self.body_8bit)
            answer = delivery.accept(self.ctx, envelope, self.received_header(ident) + data)
        except Exception:
            self.log.exception("%s: internal error accepting message %s", self.describe(), ident)
            return self.LOCAL_ERROR
        if 200 <= answer.code < 300:
            self.ctx.stats.incr("mails_received")
        return answer

    # ---- the event loop serves the session between transactions ----
    def loop_ready(self) -> bool:
        return self.state == "helo"

    def received_header(self, ident: str) -> bytes:
        """RFC 5321 4.4 trace field; FOR only with a single recipient (privacy)."""
        literal = f"IPv6:{self.peer_ip}" if ":" in self.peer_ip else self.peer_ip
        protocol = ("ESMTP" if self.esmtp else "SMTP") + ("A" if self.authenticated else "")
        recipient = f"\r\n\tfor <{self.rcpts[0]}>" if len(self.rcpts) == 1 else ""
        date = _rfc5322_now()
        helo = _NOT_IN_RECEIVED.sub("_", self.helo)
        return (f"Received: from {helo} ([{literal}])\r\n"
                f"\tby {self.cfg.hostname} (eXtremail {VERSION}) with {protocol} id {ident}"
                f"{recipient}; {date}\r\n").encode("utf-8", "surrogateescape")

    def do_rset(self, arg: str) -> None:
        if arg.strip():
            raise Refusal(reply.BAD_ARGS, "RSET takes no arguments")
        self.reset()
        self.send(reply.RESET)

    def do_noop(self, arg: str) -> None:
        self.send(reply.OK)  # RFC 5321 4.1.1.9: any argument is ignored

    def do_help(self, arg: str) -> None:
        self.send(reply.HELP)

    def do_quit(self, arg: str) -> None:
        raise Disconnect(reply.CLOSING.with_text(f"{self.cfg.hostname} closing connection"))

    def do_vrfy(self, arg: str) -> None:
        """RFC 5321 3.5.3: 252 unless CFG_VRFY=1; even then, never about remote mailboxes."""
        if not arg.strip():
            raise Refusal(reply.BAD_ARGS, "VRFY requires an address")
        if not self.cfg.CFG_VRFY:
            raise Refusal(reply.CANNOT_VRFY)
        target = address.parse_bare(arg).address
        if not routing.is_local(self.ctx.store, target):
            raise Refusal(reply.CANNOT_VRFY)
        routing.check_recipient(self.ctx.store, self.cfg.CFG_POSTMASTER, target)
        self.send(Reply(250, "2.1.5", f"<{target}>"))

    def do_not_implemented(self, arg: str) -> None:
        raise Refusal(reply.NOT_IMPLEMENTED)

    ANYWHERE = frozenset({"start", "helo", "mail", "rcpt"})
    COMMANDS = {
        "HELO": (do_helo, ANYWHERE),
        "EHLO": (do_ehlo, ANYWHERE),
        "MAIL": (do_mail, frozenset({"helo"})),
        "RCPT": (do_rcpt, frozenset({"mail", "rcpt"})),
        "DATA": (do_data, frozenset({"mail", "rcpt"})),
        "RSET": (do_rset, ANYWHERE),
        "NOOP": (do_noop, ANYWHERE),
        "HELP": (do_help, ANYWHERE),
        "QUIT": (do_quit, ANYWHERE),
        "VRFY": (do_vrfy, ANYWHERE),
        **dict.fromkeys(NOT_IMPLEMENTED, (do_not_implemented, ANYWHERE)),
    }


def _refusal_of(check: Callable[[], None]) -> Refusal | None:
    """Run ``check``; the refusal it raises, as a result (a worker hands it back)."""
    try:
        check()
    except Refusal as refusal:
        return refusal
    return None


def _counting_errors(handler: Handler) -> Handler:
    """Count a permanent refusal against the session's error budget (STYLE.md habit 4):
    a client probing for addresses or ignoring errors is sent away with 421."""
    def run(session: SMTPSession, arg: str) -> None:
        try:
            handler(session, arg)
        except Refusal as refusal:
            if not refusal.reply.is_permanent:
                raise
            session.errors += 1
            if session.errors <= session.max_errors:
                raise
            session.send(refusal.reply)
            raise Disconnect(session.TOO_MANY_ERRORS) from None
    return run
