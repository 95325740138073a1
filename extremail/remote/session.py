"""The management session (PORT_REMT): login, then one reply per command.

Replies are ``+OK text`` or ``-ERR text``; a listing follows its ``+OK`` line with one
line per entry (fields separated by a tab) and ends with a line holding a single ``.``
(a line starting with ``.`` gets another in front).  Before LOGIN only HELP and QUIT
work.  Three failed logins: the server waits, answers, and closes the connection.

Attack surface: anyone who can reach CFG_REMT_BIND:PORT_REMT (127.0.0.1 by default).
"""

from __future__ import annotations

import time

from .. import auth, layout, reply
from ..reply import Disconnect, Refusal, Reply
from ..session import Session
from . import commands
from .parser import ParseError, parse, unquote

MAX_LOGIN_FAILURES = 3
FAILED_LOGIN_DELAY = 3.0  # seconds before the answer to the last failed login


def _err(text: str) -> Reply:
    return Reply(500, "", text)


class RemoteSession(Session):
    protocol = "remt"
    max_line = 8192
    max_errors = 20
    initial_state = "auth"

    LINE_TOO_LONG = _err("line too long (8192 bytes at most)")
    UNKNOWN = _err("unknown command")
    BAD_SEQUENCE = _err("login first")
    LOCAL_ERROR = _err("internal error, see the log")
    TOO_MANY_ERRORS = _err("too many errors, bye")
    TIMEOUT = _err("timeout, bye")
    SHUTTING_DOWN = _err("server shutting down, bye")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failures = 0

    @classmethod
    def busy_line(cls) -> bytes:
        return reply.err("too many management connections, try again later")

    def greet(self) -> bool:
        from .. import VERSION
        self.send_raw(reply.ok(f"eXtremail {VERSION} remote management ready"))
        return True

    def timeout(self) -> float:
        return float(self.cfg.TIMEOUT_REMT)

    def unknown_text(self, verb: str) -> str:
        return f"unknown command {verb[:40]}" if verb else "empty command"

    # ---- commands ----
    def do_login(self, arg: str) -> None:
        try:
            password = unquote(arg.strip())
        except ParseError as exc:
            raise Refusal(_err(str(exc))) from None
        if not password:
            raise Refusal(_err("LOGIN needs a password"))
        key = f"remt:{self.peer_ip}"  # failures from earlier connections slow this one
        delay = self.ctx.throttle.delay(key)
        if delay:
            time.sleep(delay)
        if auth.verify_password(password, layout.login_hash(self.cfg)):
            self.state = "open"
            self.failures = 0
            self.ctx.throttle.success(key)
            self.log.info("%s: management login", self.describe())
            self.send_raw(reply.ok("logged in"))
            return
        self.failures += 1
        self.ctx.throttle.failure(key)
        self.log.warning("%s: management login failed (%d)", self.describe(), self.failures)
        if self.failures >= MAX_LOGIN_FAILURES:
            time.sleep(FAILED_LOGIN_DELAY)
            raise Disconnect(_err("login failed too many times, bye"))
        raise Refusal(_err("login failed"))

    def do_quit(self, arg: str) -> None:
        raise Disconnect(Reply(200, "", "bye"))

    def do_command(self, line: str) -> None:
        try:
            command = parse(line)
        except ParseError as exc:
            raise Refusal(_err(str(exc))) from None
        answer = commands.execute(self.ctx, command, logged_in=self.state == "open")
        self.send_raw(answer.render())
        if answer.ok:
            self.log.info("%s: %s", self.describe(), commands.summary(command))
        else:
            self.log.info("%s: %s refused: %s", self.describe(), commands.summary(command),
                          answer.text[:200])

    def dispatch(self, line: bytes) -> None:
        """Every verb but LOGIN and QUIT goes through the grammar and the command table."""
        text = line.decode("utf-8", "replace").strip()
        verb = text.split(" ", 1)[0].upper()
        if verb in ("LOGIN", "QUIT") or not text:
            super().dispatch(line)
            return
        self.trace(line)
        self.invoke(lambda session, rest: session.do_command(text), text, verb)

    COMMANDS = {
        "LOGIN": (do_login, frozenset({"auth", "open"})),
        "QUIT": (do_quit, frozenset({"auth", "open"})),
    }
