"""The base of every protocol session: command table by state, error budget, shutdown.

A subclass declares ``COMMANDS = {"VERB": (handler, {states...})}`` so its state machine
reads in one place (STYLE.md habit 2), and its replies for the common situations.  The
loop here reads one bounded line at a time, finds the handler, and turns what the
handler raises into replies:

* :class:`~extremail.reply.Refusal`: its reply is sent, the session goes on;
* :class:`~extremail.reply.Disconnect`: its reply is sent, the session ends;
* anything else: logged with its traceback, answered with ``LOCAL_ERROR``, the session
  goes on (a bug ends a command, never the server).

Too many protocol errors (unknown verbs, bad sequence, overlong lines) end the session
with ``TOO_MANY_ERRORS``.  The server's stop interrupts sessions that wait for a command.

Attack surface: every byte a client sends is dispatched here.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any
from collections.abc import Callable

from . import log, reply
from .net.lineio import Closed, LineIO, LineTooLong, Timeout
from .reply import Disconnect, Refusal, Reply

Handler = Callable[[Any, str], None]


class Session:
    """One connection of one protocol, served by one worker thread, or between commands
    that never block for long by the event loop (:meth:`loop_ready`)."""

    protocol = "base"
    max_line = 512
    max_errors = 10
    initial_state = "start"
    COMMANDS: dict[str, tuple[Handler, frozenset[str]]] = {}

    # replies a subclass may replace
    LINE_TOO_LONG: Reply = reply.LINE_TOO_LONG
    UNKNOWN: Reply = reply.SYNTAX
    BAD_SEQUENCE: Reply = reply.BAD_SEQUENCE
    LOCAL_ERROR: Reply = reply.LOCAL_ERROR
    TOO_MANY_ERRORS: Reply = reply.TOO_MANY_ERRORS
    TIMEOUT: Reply = reply.TIMEOUT
    SHUTTING_DOWN: Reply = reply.SHUTTING_DOWN

    def __init__(self, ctx: Any, sock: socket.socket, peer: tuple[str, ...]) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.peer_ip = peer[0]
        if self.peer_ip.startswith("::ffff:"):
            self.peer_ip = self.peer_ip[7:]
        self.peer_port = peer[1]
        self.io = LineIO(sock, self.cfg.BUFFER_SOCK)
        self.state = self.initial_state
        self.started = time.time()
        self.errors = 0
        self.done = False
        self.idle = False
        self._interrupted = False
        self._idle_lock = threading.Lock()
        self.log = log.get(self.protocol)
        self.ident = 0
        # Called once the session has ended: the listener counts one connection fewer.
        self.on_end: Callable[[], None] = lambda: None

    # ---- hooks ----
    def greet(self) -> bool:
        """Send the greeting; False refuses the connection (after sending why)."""
        return True

    def timeout(self) -> float:
        return 300.0

    def render(self, answer: Reply) -> bytes:
        """``+OK``/``-ERR`` protocols; SMTP overrides this with numeric replies."""
        return (reply.ok(answer.text) if answer.code < 400 else reply.err(answer.text))

    def finish(self) -> None:
        """Called once when the session ends, whatever the reason."""

    def describe(self) -> str:
        return f"{self.peer_ip}:{self.peer_port}"

    # ---- output ----
    def send(self, answer: Reply, text: str | None = None) -> None:
        self.io.write(self.render(answer if text is None else answer.with_text(text)))

    def send_raw(self, data: bytes) -> None:
        self.io.write(data)

    # ---- the loop ----
    def run(self) -> None:
        """Serve the connection from its worker thread: greet, then commands until the
        session ends or moves to the event loop."""
        self.ident = self.ctx.registry.add(self)
        self.log.info("connect from %s", self.describe())
        self._serve(greet=True)

    def resume(self) -> None:
        """Go on serving on this new thread: the event loop handed the session back
        because its next command may block."""
        self._serve(greet=False)

    def _serve(self, greet: bool) -> None:
        moved = False
        try:
            if not greet or self.greet():
                moved = self._loop()
        except (Closed, Timeout):
            pass
        finally:
            if not moved:
                self.end()

    def end(self) -> None:
        """The one way a session ends, on its thread or in the event loop."""
        self.ctx.registry.remove(self.ident)
        try:
            self.finish()
        finally:
            self.io.close()
            self.log.info("disconnect %s after %.1fs (in %d bytes, out %d bytes)",
                          self.describe(), time.time() - self.started,
                          self.io.bytes_in, self.io.bytes_out)
            self.on_end()

    def _loop(self) -> bool:
        """Commands until the session ends (False) or the event loop adopts it (True)."""
        while not self.done:
            with self._idle_lock:
                if self.ctx.stopping.is_set():
                    self.send(self.SHUTTING_DOWN)
                    return False
                self.idle = True
            try:
                self.io.settimeout(self.timeout())
                line = self.io.readline(self.max_line)
            except LineTooLong:
                self.idle = False
                self.line_too_long()
                continue
            except Timeout:
                self.timed_out()
                return False
            except Closed:
                self.peer_closed()
                return False
            self.idle = False
            self.dispatch(line)
            if not self.done and self.ctx.loop is not None and self.loop_ready():
                self.ctx.loop.adopt(self)
                return True
        return False

    # ---- what the thread's loop above and the event loop share ----
    def loop_ready(self) -> bool:
        """True when the commands that may follow never block for long, so the event
        loop (:mod:`extremail.net.eventloop`) can serve them."""
        return False

    def loop_command(self, line: bytes) -> bool:
        """False for a command line the event loop must hand back to a thread."""
        return True

    def begin_command(self) -> bool:
        """Mark the session busy; False (after saying goodbye) when the server stops."""
        with self._idle_lock:
            if self.ctx.stopping.is_set():
                self.send(self.SHUTTING_DOWN)
                self.done = True
                return False
            self.idle = False
        return True

    def continue_command(self, step: Callable[[], None]) -> None:
        """Run the rest of a command that waited in the event loop (for its data, or for a
        worker), turning what it raises into replies as the command itself would."""
        self.invoke(lambda _session, _arg: step(), "", "(continued)")

    def line_too_long(self) -> None:
        self.protocol_error(self.LINE_TOO_LONG)

    def timed_out(self) -> None:
        self.log.info("timeout %s in state %s", self.describe(), self.state)
        self.send(self.TIMEOUT)

    def peer_closed(self) -> None:
        """The connection's input ended: the client left, or the server's stop woke us."""
        if self._interrupted:
            self.send(self.SHUTTING_DOWN)

    def dispatch(self, line: bytes) -> None:
        text = line.decode("utf-8", "surrogateescape")
        verb, _, arg = text.strip(" ").partition(" ")
        self.trace(line)
        entry = self.COMMANDS.get(verb.upper())
        if entry is None:
            self.protocol_error(self.UNKNOWN, self.unknown_text(verb))
            return
        handler, states = entry
        if self.state not in states:
            self.protocol_error(self.BAD_SEQUENCE, self.sequence_text(verb.upper()))
            return
        self.invoke(handler, arg, verb.upper())

    def invoke(self, handler: Handler, arg: str, verb: str) -> None:
        """Run one command handler, turning what it raises into replies."""
        try:
            handler(self, arg)
        except Refusal as refusal:
            self.send(refusal.reply)
        except Disconnect as stop:
            if stop.reply is not None:
                self.send(stop.reply)
            self.done = True
        except (Closed, Timeout):
            raise
        except Exception:
            self.log.exception("%s: internal error in %s", self.describe(), verb[:20])
            self.send(self.LOCAL_ERROR)

    def trace(self, line: bytes) -> None:
        if self.log.isEnabledFor(log.logging.DEBUG):
            self.log.debug("%s <<< %s", self.describe(), log.redact(line))

    def unknown_text(self, verb: str) -> str | None:
        return None

    def sequence_text(self, verb: str) -> str | None:
        return None

    def protocol_error(self, answer: Reply, text: str | None = None) -> None:
        """Reply to a protocol error; too many of them end the session."""
        self.errors += 1
        if self.errors > self.max_errors:
            self.send(self.TOO_MANY_ERRORS)
            self.done = True
            return
        self.send(answer, text)

    # ---- called by the control thread during a stop ----
    def interrupt_if_idle(self) -> bool:
        """Wake a session that waits for a command so it can say goodbye; True if woken."""
        with self._idle_lock:
            if not self.idle or self._interrupted:
                return False
            self._interrupted = True
        try:
            self.io.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        return True

    def abort(self) -> None:
        """End the session now (a stop whose grace time ran out)."""
        self._interrupted = True
        try:
            self.io.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
