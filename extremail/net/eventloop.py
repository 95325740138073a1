"""One thread serving many connections between their commands: the event loop.

Why: with a worker thread per connection, twenty POP3 sessions retrieving at once hand
the GIL to each other at every system call (strace counted 86 futex calls per RETR),
and the CPU per RETR triples.  A session whose next commands never block for long (the
POP3 TRANSACTION state: STAT, LIST, UIDL, RETR, TOP, DELE, RSET, NOOP) is adopted here
after its login; a command that may block (QUIT's UPDATE, which removes files and syncs
directories) hands it back to a thread of its own (:meth:`Session.resume`).

The loop reads with nonblocking sockets, cuts lines with the session's own limit and
dispatches them through the session's command table, so replies and errors are the same
as on a thread.  Replies are queued on :class:`LoopIO` and written as the socket takes
them; a session with a backlog of unwritten replies reads no further command, so a
client that pipelines RETRs and never reads holds only its own session.

Timeouts: the session's own between commands (it gets its ``TIMEOUT`` reply); a client
that stops reading its replies is cut off after the same time without progress.

Attack surface: every byte of an adopted connection passes through :meth:`_read`; no
buffer grows past the session's line limit plus one read.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .. import log
from .lineio import DataReader, LineIO

LOG = log.get("net")
# One read takes up to this much of a session's input, into the loop's own buffer (a
# 1 MB message arrives in a few reads, and no read allocates).
READ_SIZE = 262144
# Replies queued beyond this wait for the socket before the next command is read.
BACKLOG_BYTES = 65536
# How often idle sessions are checked for their timeout.
SCAN_SECONDS = 1.0
# Threads for the work a session may not do in the loop (an SMTP message's durable
# acceptance: fsyncs).  Started as needed; as many as sessions deliver at once up to
# this, so concurrent deliveries still share their directory fsyncs.
WORKERS = 32


class LoopIO:
    """A session's ``io`` while the loop serves it: :class:`LineIO`'s counters and
    writes, the writes queued (bytes, or an iterator of chunks pulled as the socket
    drains), and no reads: the loop reads for the session."""

    def __init__(self, sock: socket.socket, buffer: bytearray, bytes_in: int,
                 bytes_out: int) -> None:
        self.sock = sock
        self.buffer = buffer
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.pending: deque[bytearray | Iterator[bytes]] = deque()
        self.queued = 0   # bytes in ``pending``
        self.sources = 0  # iterators in ``pending``
        self.timeout = 300.0
        # What the session waits for instead of its next command line (see LineIO's calls).
        self.reader: tuple[DataReader, Callable[[], None]] | None = None
        self.job: tuple[Callable[[], Any], Callable[[Any], None]] | None = None

    # ---- LineIO's calls, done the loop's way ----
    def settimeout(self, seconds: float) -> None:
        """The time the session may wait for input from now on; the loop enforces it."""
        self.timeout = seconds

    def has_pending(self) -> bool:
        """True when the peer has already sent more input (pipelining)."""
        return bool(self.buffer)

    def collect(self, reader: DataReader, then: Callable[[], None]) -> None:
        """Feed the input to ``reader`` as it arrives; call ``then`` once it has all."""
        self.reader = (reader, then)

    def offload(self, job: Callable[[], Any], then: Callable[[Any], None]) -> None:
        """Run ``job`` on a worker thread (it may block); ``then(result)`` in the loop."""
        self.job = (job, then)

    def waits(self) -> bool:
        """True while the session waits for data or a worker, not for a command."""
        return self.reader is not None or self.job is not None

    def write(self, data: bytes) -> None:
        """Send ``data`` now if nothing waits before it (a reply leaves before the rest of
        its command's work: logging, bookkeeping); queue what the socket does not take.
        A failed send queues it too: the loop's next flush meets the error and ends the
        session."""
        if not self.pending:
            try:
                sent = self.sock.send(data)
            except OSError:
                sent = 0
            self.bytes_out += sent
            if sent == len(data):
                return
            data = data[sent:]
        if self.pending and isinstance(self.pending[-1], bytearray):
            self.pending[-1] += data
        else:
            self.pending.append(bytearray(data))
        self.queued += len(data)

    def write_chunks(self, chunks: Iterable[bytes]) -> None:
        self.pending.append(iter(chunks))
        self.sources += 1

    def backlogged(self) -> bool:
        """True when the next command must wait for the socket to take what is queued."""
        return self.sources > 0 or self.queued >= BACKLOG_BYTES

    def flush(self) -> bool:
        """Send what the socket takes now; True when nothing is left to send.  A failed
        send (the peer is gone) raises :class:`OSError`."""
        pending = self.pending
        while pending:
            head = pending[0]
            if not isinstance(head, bytearray):
                chunk = next(head, None)
                if chunk is None:
                    pending.popleft()
                    self.sources -= 1
                else:
                    pending.appendleft(bytearray(chunk))
                    self.queued += len(chunk)
                continue
            try:
                sent = self.sock.send(head)
            except BlockingIOError:
                return False
            self.bytes_out += sent
            self.queued -= sent
            if sent < len(head):
                del head[:sent]
                return False
            pending.popleft()
        return True

    def close(self) -> None:
        for item in self.pending:
            close = getattr(item, "close", None)
            if close is not None:
                close()  # a generator reading a message file closes it
        self.pending.clear()
        try:
            self.sock.close()
        except OSError:
            pass


class _Connection:
    """What the loop keeps per adopted session."""

    __slots__ = ("busy", "deadline", "discarding", "io", "session", "writing")

    def __init__(self, session: Any, io: LoopIO) -> None:
        self.session = session
        self.io = io
        self.deadline = 0.0
        self.busy = False        # a worker runs the session's job: not read meanwhile
        self.discarding = False  # inside a line over the limit: dropped up to its end
        self.writing = False     # waiting for the socket to take queued replies


class EventLoop:
    """The loop's thread and the sessions it serves; a server component
    (:meth:`start`, :meth:`stop`)."""

    def __init__(self, name: str = "event-loop") -> None:
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._lock = threading.Lock()
        self._adopted: list[Any] = []
        self._stopped = False
        self._connections: set[_Connection] = set()
        self._finished: list[tuple[_Connection, Callable[[Any], None], Future[Any]]] = []
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix=f"{name}-worker")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._next_scan = 0.0
        self._scratch = memoryview(bytearray(READ_SIZE))

    # ---- from any thread ----
    def start(self) -> None:
        self._selector.register(self._wake_in, selectors.EVENT_READ, None)
        self._thread.start()

    def adopt(self, session: Any) -> None:
        """Serve ``session`` (between two commands, its io a :class:`LineIO`) from now on."""
        with self._lock:
            if self._stopped:
                refused = True
            else:
                refused = False
                self._adopted.append(session)
        if refused:
            session.end()
            return
        self._wake()

    def stop(self) -> None:
        """End the loop; a session still in it (the server's stop already aborted them
        all) is ended without a word."""
        with self._lock:
            self._stopped = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(10)
        self._workers.shutdown(wait=True)  # acceptances under way finish (their fsyncs)
        for session in self._adopted:
            session.end()
        self._adopted.clear()
        for conn in list(self._connections):
            self._end(conn)
        self._selector.close()
        self._wake_in.close()
        self._wake_out.close()

    def _wake(self) -> None:
        try:
            self._wake_out.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already awake (the pair's buffer is full), or stopped

    # ---- the loop's thread ----
    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                adopted, self._adopted = self._adopted, []
                finished, self._finished = self._finished, []
            for conn, then, future in finished:
                if conn in self._connections:  # else the session ended meanwhile
                    self._guarded(conn, lambda conn, then=then, future=future:
                                  self._job_done(conn, then, future))
            for session in adopted:
                try:
                    conn = self._take(session)
                except Exception:
                    LOG.exception("%s: session ended by an internal error", session.describe())
                    session.end()
                    continue
                self._guarded(conn, self._commands)  # lines pipelined behind the login
            for key, mask in self._selector.select(self._wait()):
                if key.data is None:
                    self._drain_wake()
                else:
                    self._guarded(key.data, lambda conn, mask=mask: self._service(conn, mask))
            self._expire()

    def _guarded(self, conn: _Connection, step: Callable[[_Connection], None]) -> None:
        """Run ``step`` for ``conn``; a bug ends that session, never the loop."""
        try:
            step(conn)
        except Exception:
            LOG.exception("%s: session ended by an internal error", conn.session.describe())
            self._end(conn)

    def _wait(self) -> float:
        return max(0.0, min(SCAN_SECONDS, self._next_scan - time.monotonic()))

    def _drain_wake(self) -> None:
        try:
            while self._wake_in.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _take(self, session: Any) -> _Connection:
        old = session.io
        old.sock.setblocking(False)
        io = LoopIO(old.sock, old.buffer, old.bytes_in, old.bytes_out)
        session.io = io
        conn = _Connection(session, io)
        self._between_commands(conn)  # idle: a stop now says goodbye to it
        self._touch(conn)
        self._selector.register(io.sock, selectors.EVENT_READ, conn)
        self._connections.add(conn)
        return conn

    def _touch(self, conn: _Connection) -> None:
        conn.deadline = time.monotonic() + conn.io.timeout

    def _service(self, conn: _Connection, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._touch(conn)  # the client reads: progress
            if self._flush(conn):
                self._commands(conn)  # what the client sent while we were writing
        elif mask & selectors.EVENT_READ:
            self._read(conn)

    def _read(self, conn: _Connection) -> None:
        try:
            size = conn.io.sock.recv_into(self._scratch)
        except BlockingIOError:
            return
        except OSError:
            size = 0
        if not size:
            conn.session.peer_closed()
            self._flush(conn, ending=True)
            return
        conn.io.bytes_in += size
        conn.io.buffer += self._scratch[:size]
        self._touch(conn)
        self._commands(conn)

    def _commands(self, conn: _Connection) -> None:
        """Run the complete command lines in the buffer until the session ends, moves
        to a thread, waits for more input or a worker, or has more replies queued than
        the socket takes."""
        session, io = conn.session, conn.io
        buffer = io.buffer
        while True:
            waiting = False  # for more input
            while not session.done and not io.backlogged():
                if io.job is not None:
                    if not self._offload(conn):
                        return
                    continue
                if io.reader is not None:
                    reader, then = io.reader
                    if not reader.feed(buffer):
                        waiting = True
                        break
                    io.reader = None
                    session.continue_command(then)
                    self._between_commands(conn)
                    continue
                index = buffer.find(b"\n")
                if index < 0:
                    if conn.discarding or len(buffer) > session.max_line:
                        buffer.clear()  # inside a line over the limit: dropped to its end
                        conn.discarding = True
                    waiting = True
                    break
                if conn.discarding or index + 1 > session.max_line:
                    del buffer[:index + 1]
                    conn.discarding = False
                    session.line_too_long()
                    continue
                line = bytes(buffer[:index])
                if line.endswith(b"\r"):
                    line = line[:-1]
                if not session.loop_command(line):
                    if io.pending:
                        break  # its earlier replies first
                    self._hand_back(conn)
                    return
                del buffer[:index + 1]
                if session.begin_command():
                    session.dispatch(line)
                    self._between_commands(conn)
            if not self._flush(conn, ending=session.done) or waiting:
                return

    @staticmethod
    def _between_commands(conn: _Connection) -> None:
        """After a command: unless it waits for data or a worker, the session is idle
        and waits for its next command within its own timeout."""
        if not conn.io.waits():
            conn.session.idle = True
            conn.io.settimeout(conn.session.timeout())

    def _offload(self, conn: _Connection) -> bool:
        """Run the session's job on a worker, its input not read meanwhile (False); or
        here and now when it is the loop's only session, where a worker would only add
        two thread wake-ups to its wait (True: the session goes on)."""
        assert conn.io.job is not None
        (job, then), conn.io.job = conn.io.job, None
        # Earlier replies go first; a peer that has gone ends the session here.
        if not self._flush(conn) and conn not in self._connections:
            return False
        if len(self._connections) == 1:
            conn.session.continue_command(lambda: then(job()))
            self._between_commands(conn)
            return True
        self._selector.unregister(conn.io.sock)
        conn.busy = True
        conn.deadline = float("inf")
        future = self._workers.submit(job)
        future.add_done_callback(lambda done: self._job_finished(conn, then, done))
        return False

    def _job_finished(self, conn: _Connection, then: Callable[[Any], None],
                      future: Future[Any]) -> None:
        """On the worker: hand the result back to the loop's thread."""
        with self._lock:
            self._finished.append((conn, then, future))
        self._wake()

    def _job_done(self, conn: _Connection, then: Callable[[Any], None],
                  future: Future[Any]) -> None:
        conn.busy = False
        self._selector.register(conn.io.sock, selectors.EVENT_WRITE if conn.writing
                                else selectors.EVENT_READ, conn)
        self._touch(conn)
        conn.session.continue_command(lambda: then(future.result()))
        self._between_commands(conn)
        self._commands(conn)

    def _flush(self, conn: _Connection, ending: bool = False) -> bool:
        """Send queued replies; True when all went and the session reads on.  Otherwise
        it waits for the socket to take more, or it has ended."""
        try:
            done = conn.io.flush()
        except OSError:
            self._end(conn)
            return False
        if done and (ending or conn.session.done):
            self._end(conn)
            return False
        if done == conn.writing:  # switch between waiting to write and to read
            conn.writing = not done
            if conn.busy:
                return done  # registered again, the right way, when its job is done
            self._selector.modify(conn.io.sock, selectors.EVENT_WRITE if conn.writing
                                  else selectors.EVENT_READ, conn)
        return done

    def _hand_back(self, conn: _Connection) -> None:
        """The next command may block: the session goes on on a thread of its own."""
        session, io = conn.session, conn.io
        self._forget(conn)
        io.sock.setblocking(True)
        lineio = LineIO(io.sock, session.cfg.BUFFER_SOCK)
        lineio.buffer, lineio.bytes_in, lineio.bytes_out = io.buffer, io.bytes_in, io.bytes_out
        session.io = lineio
        threading.Thread(target=session.resume, name=f"{session.protocol}-{session.describe()}",
                         daemon=True).start()

    def _expire(self) -> None:
        now = time.monotonic()
        if now < self._next_scan:
            return
        self._next_scan = now + SCAN_SECONDS
        for conn in [c for c in self._connections if c.deadline <= now]:
            if conn.writing:
                conn.session.log.info("timeout %s writing to a client that does not read",
                                      conn.session.describe())
                self._end(conn)
                continue
            conn.session.timed_out()
            self._flush(conn, ending=True)
            if conn in self._connections:
                self._end(conn)  # the reply did not fit: goodbye without it

    def _forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        try:
            self._selector.unregister(conn.io.sock)
        except (KeyError, ValueError):
            pass

    def _end(self, conn: _Connection) -> None:
        if conn not in self._connections:
            return
        self._forget(conn)
        try:
            conn.session.end()
        except Exception:
            LOG.exception("%s: ending the session failed", conn.session.describe())
