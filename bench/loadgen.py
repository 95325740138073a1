"""The one load generator driven at every server: SMTP senders, POP3 retrievers and
idle connections, one thread per session, all on loopback.

SMTP sessions go in lock step (EHLO, then MAIL, RCPT..., DATA, the message and its
final dot per transaction, RFC 5321 3.3) with no pipelining, so every server sees the
same conversation.  The latency kept per message is the time from the final dot leaving
the client to the server's reply to it (RFC 5321 4.1.1.4): the time a sender waits for a
server to make the message durable.  POP3 sessions log in with USER/PASS and RETR
each message in turn (RFC 1939); the latency of a RETR is until its terminating dot.
A POP3 login (USER sent to the reply to PASS) is timed on its own, and the RETRs start
only once every session of the scenario is logged in, so retrieval is measured without
the password checks.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TIMEOUT = 120.0
LINE = b"X" * 74 + b"\r\n"  # a 76-byte body line; no line starts with '.', so no dot-stuffing


class ProtocolError(Exception):
    """A server answered something the load generator did not expect."""


def body(size: int) -> bytes:
    """A message body of about ``size`` bytes, in CRLF lines."""
    lines = max(1, size // len(LINE))
    return LINE * lines


def header(index: int, sender: str, rcpts: list[str]) -> bytes:
    return (f"From: <{sender}>\r\nTo: <{rcpts[0]}>\r\nSubject: bench message {index}\r\n"
            f"Message-ID: <{index}.{time.monotonic_ns()}@bench.test>\r\n\r\n").encode()


class Connection:
    """A buffered line reader over one socket: reads arrive in large pieces.

    The socket blocks, its time limit kept by the kernel (SO_RCVTIMEO, SO_SNDTIMEO):
    Python's own socket timeout polls before every recv and send, two system calls more
    per command in the load generator's share of every server's figures."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        whole = int(timeout)
        limit = struct.pack("@ll", whole, int((timeout - whole) * 1_000_000))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        self.buffer = b""

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(262144)
        except BlockingIOError:  # SO_RCVTIMEO ran out
            raise TimeoutError("no reply from the server") from None
        if not chunk:
            raise ProtocolError("connection closed by the server")
        self.buffer += chunk

    def line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
                return line
            self._fill()

    def reply(self, expect: bytes) -> bytes:
        """One SMTP reply (its continuation lines, RFC 5321 4.2.1); its code must start
        with ``expect``."""
        while True:
            line = self.line()
            if line[3:4] != b"-":
                break
        if not line.startswith(expect):
            raise ProtocolError(line.decode("ascii", "replace"))
        return line

    def multiline(self) -> int:
        """A POP3 status line and, on +OK, the dot-terminated body (RFC 1939 3);
        returns the bytes received."""
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                break
            self._fill()
        if not self.buffer.startswith(b"+OK"):
            raise ProtocolError(self.buffer[:end].decode("ascii", "replace"))
        start = end  # the terminator "\r\n.\r\n" may follow the status line at once
        while True:
            stop = self.buffer.find(b"\r\n.\r\n", start)
            if stop >= 0:
                size = stop + 5
                self.buffer = self.buffer[size:]
                return size
            start = max(end, len(self.buffer) - 4)
            self._fill()

    def send_all(self, *parts: bytes) -> None:
        """Small pieces go out joined in one segment, large ones without a copy."""
        if sum(map(len, parts)) < 65536:
            self.sock.sendall(b"".join(parts))
            return
        for part in parts:
            self.sock.sendall(part)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Tally:
    """What the sessions of one scenario did."""

    messages: int = 0
    bytes: int = 0
    latencies: list[float] = field(default_factory=list)
    logins: list[float] = field(default_factory=list)  # POP3: USER to the reply to PASS
    finished: float = 0.0  # POP3: when the last RETR's final dot arrived
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, messages: int, size: int, latencies: list[float], finished: float = 0.0) -> None:
        with self.lock:
            self.messages += messages
            self.bytes += size
            self.latencies.extend(latencies)
            self.finished = max(self.finished, finished)

    def login(self, seconds: float) -> None:
        with self.lock:
            self.logins.append(seconds)

    def fail(self, error: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{type(error).__name__}: {error}")


def smtp_session(port: int, count: int, size: int, sender: str, rcpts: list[str],
                 tally: Tally, start: threading.Barrier) -> None:
    """Send ``count`` messages of about ``size`` bytes, each to all of ``rcpts``."""
    text = body(size)
    latencies = []
    sent = volume = 0
    try:
        start.wait()
        conn = Connection(port)
        try:
            conn.reply(b"220")
            conn.send_all(b"EHLO loadgen.bench.test\r\n")
            conn.reply(b"250")
            for index in range(count):
                conn.send_all(f"MAIL FROM:<{sender}>\r\n".encode())
                conn.reply(b"250")
                for rcpt in rcpts:
                    conn.send_all(f"RCPT TO:<{rcpt}>\r\n".encode())
                    conn.reply(b"25")
                conn.send_all(b"DATA\r\n")
                conn.reply(b"354")
                head = header(index, sender, rcpts)
                conn.send_all(head, text, b".\r\n")
                began = time.perf_counter()
                conn.reply(b"250")
                latencies.append(time.perf_counter() - began)
                sent += 1
                volume += len(head) + len(text)
            conn.send_all(b"QUIT\r\n")
            conn.reply(b"221")
        finally:
            conn.close()
    except (OSError, ProtocolError, threading.BrokenBarrierError) as error:
        tally.fail(error)
    tally.add(sent, volume, latencies)


def pop3_session(port: int, user: str, password: str, count: int, tally: Tally,
                 start: threading.Barrier) -> None:
    """Log in, wait for every other session to be logged in too, then RETR messages
    1..``count``, keeping them on the server."""
    latencies = []
    got = received = 0
    finished = 0.0
    try:
        conn = Connection(port)
        try:
            conn.line()
            began = time.perf_counter()
            for command in (f"USER {user}", f"PASS {password}"):
                conn.send_all(command.encode() + b"\r\n")
                answer = conn.line()
                if not answer.startswith(b"+OK"):
                    raise ProtocolError(f"{command.split()[0]}: {answer!r}")
            tally.login(time.perf_counter() - began)
            start.wait()
            for number in range(1, count + 1):
                began = time.perf_counter()
                conn.send_all(b"RETR %d\r\n" % number)
                received += conn.multiline()
                finished = time.perf_counter()
                latencies.append(finished - began)
                got += 1
            conn.send_all(b"QUIT\r\n")
            conn.line()
        finally:
            conn.close()
    except (OSError, ProtocolError, threading.BrokenBarrierError) as error:
        tally.fail(error)
        start.abort()  # the sessions still waiting to start need not wait for this one
    tally.add(got, received, latencies, finished)


def run_sessions(target, jobs: list[tuple],
                 at_start: Callable[[], None] | None = None) -> tuple[Tally, float, float]:
    """Run ``target(*job, tally, barrier)`` for every job on its own thread.  The timed
    part starts when every session has reached the barrier (an SMTP session at once, a
    POP3 one once logged in): ``at_start()`` runs then, before any session goes on.
    Returns the tally, the start time and the time the last session ended."""
    tally = Tally()
    began: list[float] = []

    def start() -> None:
        if at_start is not None:
            at_start()
        began.append(time.perf_counter())

    barrier = threading.Barrier(len(jobs), action=start, timeout=TIMEOUT)
    threads = [threading.Thread(target=target, args=(*job, tally, barrier), daemon=True)
               for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ended = time.perf_counter()
    return tally, began[0] if began else ended, ended


def split(total: int, parts: int) -> list[int]:
    """``total`` messages shared out between ``parts`` sessions as evenly as possible."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def hold_idle(port: int, count: int) -> list[Connection]:
    """Open ``count`` SMTP connections and read each greeting; the caller closes them."""
    held = []
    try:
        for _ in range(count):
            conn = Connection(port, timeout=30)
            held.append(conn)
            conn.reply(b"220")
    except BaseException:
        for conn in held:
            conn.close()
        raise
    return held
