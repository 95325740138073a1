"""The POP3 session (PORT_POP3): RFC 1939 with CAPA, response codes (RFC 2449, RFC 3206)
and AUTH PLAIN (RFC 5034, RFC 4616).

States (RFC 1939 section 3): ``auth`` (AUTHORIZATION: CAPA, USER, PASS, AUTH, QUIT) and
``transaction`` (STAT, LIST, UIDL, RETR, TOP, DELE, RSET, NOOP, QUIT).  QUIT in the
transaction state runs the UPDATE state (section 6); a connection that ends any other
way changes nothing in the mailbox.  STLS is not offered (no TLS yet): CAPA lists only
what works.

Logins: see :mod:`extremail.login` (``user@domain``, ``user.domain``, bare ``user``);
every failure gets the same ``-ERR [AUTH]`` after the same work, and an IP with recent
failures waits before each answer.  A successful login locks the mailbox for this
session (``-ERR [IN-USE]`` for a second one), snapshots its messages, and records the
IP for POP-before-SMTP (CFG_ANTI_RELY=2).

Attack surface: anyone who can reach CFG_BIND:PORT_POP3 before logging in (command lines
of at most :attr:`POP3Session.max_line` bytes, base64 SASL data, login names and
passwords); after it, message numbers in the user's own mailbox.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, BinaryIO

from . import VERSION, log, login, reply
from .mailbox import Maildir
from .net.lineio import LineTooLong
from .pop3_mailbox import (LOCKS, Maildrop, NoSuchMessage, open_message, retr_chunks,
                           top_text, unique_id)
from .reply import Disconnect, Refusal, Reply
from .session import Session

# RFC 2449 section 4: command lines are at most 255 octets; an AUTH PLAIN initial
# response (RFC 5034 section 4, RFC 4616: up to 3 x 255 UTF-8 characters in base64) can
# be longer, so lines up to 2048 octets are accepted and longer ones refused.
MAX_LINE = 2048
# Failed logins in one session before it is closed; the IP throttle slows them anyway.
MAX_AUTH_FAILURES = 3
SASL_MECHANISMS = ("PLAIN",)


def _ok(text: str) -> Reply:
    return Reply(200, "", text)


def _err(text: str) -> Reply:
    return Reply(500, "", text)


AUTH_FAILED = _err("[AUTH] Authentication failed")
IN_USE = _err("[IN-USE] Mailbox in use by another session, try again later")
MAILBOX_TROUBLE = _err("[SYS/TEMP] Mailbox unavailable, try again later")
NO_SUCH_MESSAGE = _err("No such message")
BAD_ARGUMENTS = _err("Syntax error in arguments")
NO_USER = _err("USER first")
AUTH_CANCELLED = _err("Authentication cancelled")
BAD_BASE64 = _err("Invalid base64 data")
BAD_MECHANISM = _err("Unsupported authentication mechanism (PLAIN)")
TOO_MANY_FAILURES = _err("[AUTH] Too many failed logins, bye")
BYE = _ok("eXtremail POP3 server signing off")


class POP3Session(Session):
    protocol = "pop3"
    max_line = MAX_LINE
    max_errors = 20
    initial_state = "auth"

    LINE_TOO_LONG = _err("Line too long")
    UNKNOWN = _err("Unknown command")
    BAD_SEQUENCE = _err("Command not valid in this state")
    LOCAL_ERROR = _err("[SYS/TEMP] Local error, try again later")
    TOO_MANY_ERRORS = _err("Too many errors, bye")
    TIMEOUT = _err("Timeout, closing connection")
    SHUTTING_DOWN = _err("[SYS/TEMP] Server shutting down, try again later")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = ""           # user@domain once logged in (CONN POP3 SHOW)
        self.given_user = ""     # the argument of USER, waiting for PASS
        self.failures = 0
        self.maildir_path = ""   # locked while set
        self.drop = Maildrop([])

    @classmethod
    def busy_line(cls) -> bytes:
        return reply.err("[SYS/TEMP] Too many POP3 connections, try again later")

    def greet(self) -> bool:
        self.ctx.stats.incr("pop3")
        self.send(_ok(f"{self.cfg.hostname} eXtremail POP3 server ready"))
        return True

    def timeout(self) -> float:
        return float(self.cfg.TIMEOUT_POP3)

    def describe(self) -> str:
        base = super().describe()
        return f"{base} ({self.user})" if self.user else base

    def finish(self) -> None:
        self._unlock()

    def loop_ready(self) -> bool:
        """TRANSACTION commands only read the mailbox: the event loop serves them, so
        many sessions retrieving at once do not contend for the GIL."""
        return self.state == "transaction"

    def loop_command(self, line: bytes) -> bool:
        """QUIT's UPDATE removes files and syncs directories: a thread of its own."""
        return line.split(b" ", 1)[0].strip().upper() != b"QUIT"

    def _unlock(self) -> None:
        if self.maildir_path:
            LOCKS.release(self.maildir_path)
            self.maildir_path = ""

    def send_listing(self, first: str, lines: list[str]) -> None:
        """A multi-line reply (RFC 1939 section 3): its lines, then ``.``."""
        self.send_raw("".join(f"{line}\r\n" for line in [f"+OK {first}", *lines, "."])
                      .encode("utf-8", "replace"))

    # ---- AUTHORIZATION ----
    def do_capa(self, arg: str) -> None:
        """RFC 2449 section 5; USER and SASL are offered only before login (section 6)."""
        lines = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                 f"IMPLEMENTATION eXtremail-{VERSION}"]
        if self.state == "auth":
            lines[:0] = ["USER", "SASL " + " ".join(SASL_MECHANISMS)]
        self.send_listing("Capability list follows", lines)

    def do_user(self, arg: str) -> None:
        """RFC 1939 section 7: always ``+OK``, so USER tells nothing about who exists."""
        if not arg.strip():
            raise Refusal(BAD_ARGUMENTS)
        self.given_user = arg.strip()
        self.send(_ok("Send your password"))

    def do_pass(self, arg: str) -> None:
        """RFC 1939 section 7: the password is the rest of the line, spaces included."""
        if not self.given_user:
            raise Refusal(NO_USER)
        name, self.given_user = self.given_user, ""
        self.log_in(name, login.clear_text(arg))

    def do_auth(self, arg: str) -> None:
        """RFC 5034: ``AUTH PLAIN [initial-response]``; without an argument, the list of
        mechanisms (what Outlook asks for)."""
        mechanism, _, initial = arg.strip().partition(" ")
        if not mechanism:
            self.send_listing("Supported mechanisms follow", list(SASL_MECHANISMS))
            return
        if mechanism.upper() != "PLAIN":
            raise Refusal(BAD_MECHANISM)
        initial = initial.strip()
        if not initial:
            self.send_raw(b"+ \r\n")  # RFC 5034 section 4: an empty challenge
            try:
                initial = self.io.readline(self.max_line).decode("ascii", "replace").strip()
            except LineTooLong:
                raise Refusal(self.LINE_TOO_LONG) from None
        if initial == "*":
            raise Refusal(AUTH_CANCELLED)  # RFC 5034 section 4: the client cancels
        self.log_in(*_plain_credentials(initial))

    def log_in(self, name: str, password: str) -> None:
        outcome = login.authenticate(self.ctx, self.peer_ip, name, password)
        waited = f" after waiting {outcome.delayed:.1f}s" if outcome.delayed else ""
        user = outcome.user
        if user is None:
            self.failures += 1
            self.log.warning("%s: login failed for %r%s", self.describe(), name[:80], waited)
            if self.failures >= MAX_AUTH_FAILURES:
                raise Disconnect(TOO_MANY_FAILURES)
            raise Refusal(AUTH_FAILED)
        path = self.ctx.store.user_dir(user)
        if not LOCKS.acquire(path):
            self.log.info("%s: login of %s refused: mailbox in use", self.describe(), user.address)
            raise Refusal(IN_USE)
        try:
            maildir = Maildir(path)
            stale = maildir.clean_tmp()
            if stale:
                self.log.info("%s: removed %d stale files from the tmp/ of %s", self.describe(),
                              stale, user.address)
            self.drop = Maildrop(maildir.scan())
        except Exception as exc:  # whatever went wrong, the lock must not outlive the attempt
            LOCKS.release(path)
            self.log.error("%s: cannot read the mailbox of %s: %s", self.describe(),
                           user.address, exc)
            raise Refusal(MAILBOX_TROUBLE) from None
        self.maildir_path = path
        self.state = "transaction"
        self.ctx.relay.record(self.peer_ip)  # POP-before-SMTP (CFG_ANTI_RELY=2)
        count, octets = self.drop.stat()
        self.log.info("%s: login ok for %s%s, %d messages (%d octets)", self.describe(),
                      user.address, waited, count, octets)
        self.user = user.address
        self.send(_ok(f"Logged in, {count} messages ({octets} octets)"))

    # ---- TRANSACTION ----
    def message(self, arg: str) -> tuple[int, list[str]]:
        """The message number that starts ``arg`` (must exist, not deleted) and the rest."""
        words = arg.split()
        if not words or not words[0].isdigit() or not words[0].isascii():
            raise Refusal(BAD_ARGUMENTS)
        number = int(words[0])
        try:
            self.drop.get(number)
        except NoSuchMessage:
            raise Refusal(NO_SUCH_MESSAGE) from None
        return number, words[1:]

    def one_message(self, arg: str) -> int:
        number, rest = self.message(arg)
        if rest:
            raise Refusal(BAD_ARGUMENTS)
        return number

    def do_stat(self, arg: str) -> None:
        count, octets = self.drop.stat()
        self.send(_ok(f"{count} {octets}"))

    def do_list(self, arg: str) -> None:
        self._scan_listing(arg, lambda n, entry: f"{n} {entry.vsize}")

    def do_uidl(self, arg: str) -> None:
        """RFC 1939 section 7: the unique id stays the same across sessions."""
        self._scan_listing(arg, lambda n, entry: f"{n} {unique_id(entry.uid)}")

    def _scan_listing(self, arg: str, line: Any) -> None:
        if arg.strip():
            number = self.one_message(arg)
            self.send(_ok(line(number, self.drop.get(number))))
            return
        count, octets = self.drop.stat()
        self.send_listing(f"{count} messages ({octets} octets)",
                          [line(n, entry) for n, entry in self.drop.live()])

    def message_file(self, number: int) -> BinaryIO:
        """Message ``number`` opened where it is now (another reader may have renamed it);
        :class:`OSError` when it cannot be read."""
        handle = open_message(self.drop.get(number))
        if handle is None:
            raise Refusal(_err(f"Message {number} was removed by another client"))
        return handle

    def do_retr(self, arg: str) -> None:
        number = self.one_message(arg)
        entry = self.drop.get(number)
        try:
            chunks = retr_chunks(self.message_file(number), entry.size)
            first = next(chunks)
        except OSError as exc:
            self.log.error("%s: cannot read message %s: %s", self.describe(), entry.uid, exc)
            raise Refusal(MAILBOX_TROUBLE) from None
        self.send_raw(f"+OK {entry.vsize} octets\r\n".encode("ascii") + first)
        self.io.write_chunks(chunks)
        self.drop.retrieved.add(number)

    def do_top(self, arg: str) -> None:
        number, rest = self.message(arg)
        if len(rest) != 1 or not rest[0].isdigit() or not rest[0].isascii():
            raise Refusal(BAD_ARGUMENTS)
        entry = self.drop.get(number)
        try:
            text = top_text(self.message_file(number), int(rest[0]))
        except OSError as exc:
            self.log.error("%s: cannot read message %s: %s", self.describe(), entry.uid, exc)
            raise Refusal(MAILBOX_TROUBLE) from None
        self.send_raw(b"+OK top of message follows\r\n" + text)

    def do_dele(self, arg: str) -> None:
        """RFC 1939 section 5: only marks; the UPDATE state at QUIT removes."""
        number = self.one_message(arg)
        self.drop.delete(number)
        self.send(_ok(f"Message {number} deleted"))

    def do_rset(self, arg: str) -> None:
        self.drop.reset()
        count, octets = self.drop.stat()
        self.send(_ok(f"{count} messages ({octets} octets)"))

    def do_noop(self, arg: str) -> None:
        self.send(_ok("NOOP"))

    def do_quit(self, arg: str) -> None:
        """RFC 1939 section 6: in the transaction state QUIT enters UPDATE."""
        if self.state != "transaction":
            raise Disconnect(BYE)
        removed, problems = self.drop.update()
        self._unlock()
        for uid in removed:
            self.log.log(log.DETAIL, "%s: deleted %s", self.describe(), uid)
        if removed:
            self.log.info("%s: %d messages deleted at QUIT", self.describe(), len(removed))
        for problem in problems:
            self.log.error("%s: %s", self.describe(), problem)
        if problems:
            raise Disconnect(_err("[SYS/TEMP] Some deleted messages not removed"))
        raise Disconnect(BYE.with_text(f"{BYE.text} ({len(removed)} messages deleted)"))

    COMMANDS = {
        "CAPA": (do_capa, frozenset({"auth", "transaction"})),
        "USER": (do_user, frozenset({"auth"})),
        "PASS": (do_pass, frozenset({"auth"})),
        "AUTH": (do_auth, frozenset({"auth"})),
        "STAT": (do_stat, frozenset({"transaction"})),
        "LIST": (do_list, frozenset({"transaction"})),
        "UIDL": (do_uidl, frozenset({"transaction"})),
        "RETR": (do_retr, frozenset({"transaction"})),
        "TOP": (do_top, frozenset({"transaction"})),
        "DELE": (do_dele, frozenset({"transaction"})),
        "RSET": (do_rset, frozenset({"transaction"})),
        "NOOP": (do_noop, frozenset({"transaction"})),
        "QUIT": (do_quit, frozenset({"auth", "transaction"})),
    }


def _plain_credentials(response: str) -> tuple[str, str]:
    """RFC 4616 section 2: ``[authzid] NUL authcid NUL passwd`` in base64 (RFC 5034 4);
    ``=`` stands for an empty response.  Returns (login, password)."""
    try:
        data = b"" if response == "=" else base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):
        raise Refusal(BAD_BASE64) from None
    parts = data.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise Refusal(AUTH_FAILED)
    authzid, authcid, password = (part.decode("utf-8", "replace") for part in parts)
    # Acting as someone else (a different authzid) is not offered.
    if authzid and authzid.lower() != authcid.lower():
        raise Refusal(AUTH_FAILED)
    return authcid, password
