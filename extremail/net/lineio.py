"""The one line reader and writer of every protocol: bounded lines, CRLF, dot-stuffing.

* Command lines end in LF (a CR before it is dropped), so telnet clients that send LF
  alone or one character per packet work; a line over its limit is consumed to its end
  and reported as :class:`LineTooLong`, the session goes on.
* Message data (SMTP DATA, RFC 5321 4.1.1.4) ends with ``<CRLF>.<CRLF>`` only: a bare
  ``<LF>.<LF>`` or ``<CR>.<CR>`` inside the body never ends it (SMTP smuggling).
* Timeouts raise :class:`Timeout`; a closed peer raises :class:`Closed`.
* :meth:`LineIO.starttls` drops anything buffered before the handshake (RFC 3207 4.2).

Attack surface: everything a peer sends passes through here first; no read is unbounded.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
CRLF = b"\r\n"
# RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
MAX_TEXT_LINE = 1000


class Closed(Exception):
    """The peer closed the connection."""


class Timeout(Exception):
    """No input within the current timeout."""


class LineTooLong(Exception):
    """A line exceeded its limit; it has been consumed."""


class DataTooBig(Exception):
    """Message data exceeded its limit; it has been consumed up to the end-of-data mark."""


class DataLineTooLong(Exception):
    """Message data contained a text line over 1000 octets; it has been consumed."""


class LineIO:
    """Buffered, bounded reads and whole writes on one connected socket."""

    def __init__(self, sock: socket.socket, bufsize: int = 65536) -> None:
        self.sock = sock
        self.bufsize = max(bufsize, 65536)  # BUFFER_SOCK is a floor: fewer recv calls per message
        self.buffer = bytearray()
        self.bytes_in = 0
        self.bytes_out = 0
        self._timeout: float | None = -1.0  # none set yet

    # ---- reading ----
    def settimeout(self, seconds: float | None) -> None:
        """Bound every later read and write by ``seconds`` (None: no bound).

        The kernel keeps the bound (SO_RCVTIMEO and SO_SNDTIMEO on a blocking socket):
        Python's own socket timeout polls before every recv and send, one system call and
        one hand-over of the GIL more each, at every command of every session.  A TLS
        socket keeps Python's timeout, which its reads need to tell a timeout from an
        error.
        """
        if seconds == self._timeout:
            return
        self._timeout = seconds
        if isinstance(self.sock, ssl.SSLSocket) or (seconds is not None and seconds <= 0):
            self.sock.settimeout(seconds)
            return
        if self.sock.gettimeout() is not None:
            self.sock.settimeout(None)
        whole = int(seconds or 0)
        value = struct.pack("@ll", whole, int(((seconds or 0) - whole) * 1_000_000))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)

    @property
    def timeout(self) -> float | None:
        """The bound of each read and write (:meth:`settimeout`), None when unbounded."""
        return self._timeout if self._timeout is not None and self._timeout > 0 else None

    def _fill(self, deadline: float | None = None) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise Timeout()
        try:
            chunk = self.sock.recv(self.bufsize)
        except (TimeoutError, BlockingIOError):  # BlockingIOError: SO_RCVTIMEO ran out
            raise Timeout() from None
        except ssl.SSLError as exc:
            raise Closed(str(exc)) from None
        except OSError as exc:
            raise Closed(str(exc)) from None
        if not chunk:
            raise Closed("peer closed the connection")
        self.bytes_in += len(chunk)
        self.buffer += chunk

    def readline(self, limit: int, deadline: float | None = None) -> bytes:
        """One line without its line ending; at most ``limit`` bytes including CRLF.  With a
        ``deadline`` (``time.monotonic()``), input still arriving past it is a Timeout."""
        scanned = 0
        while True:
            index = self.buffer.find(b"\n", scanned)
            if index >= 0:
                if index + 1 > limit:
                    del self.buffer[:index + 1]
                    raise LineTooLong()
                line = bytes(self.buffer[:index])
                del self.buffer[:index + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buffer) > limit:
                self._discard_line(deadline)
                raise LineTooLong()
            scanned = len(self.buffer)
            self._fill(deadline)

    def _discard_line(self, deadline: float | None) -> None:
        while True:
            index = self.buffer.find(b"\n")
            if index >= 0:
                del self.buffer[:index + 1]
                return
            self.buffer.clear()
            self._fill(deadline)

    def has_pending(self) -> bool:
        """True when the peer has already sent more input (pipelining)."""
        return bool(self.buffer)

    # ---- the calls a session shares with the event loop's LoopIO ----
    def collect(self, reader: DataReader, then: Callable[[], None]) -> None:
        """Feed the input to ``reader`` until it has all it wants, then call ``then``; here
        at once, in the event loop as the input arrives."""
        while not reader.feed(self.buffer):
            self._fill()
        then()

    def offload(self, job: Callable[[], T], then: Callable[[T], None]) -> None:
        """``then(job())``: here on this thread; the event loop runs ``job`` on a worker."""
        then(job())

    # ---- writing ----
    def write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (TimeoutError, BlockingIOError):  # BlockingIOError: SO_SNDTIMEO ran out
            raise Timeout() from None
        except OSError as exc:
            raise Closed(str(exc)) from None
        self.bytes_out += len(data)

    def write_chunks(self, chunks: Iterable[bytes]) -> None:
        """Write each chunk in turn (a long message is never whole in memory)."""
        for chunk in chunks:
            self.write(chunk)

    # ---- TLS ----
    def starttls(self, context: ssl.SSLContext, server_side: bool = True,
                 server_hostname: str | None = None) -> None:
        self.buffer.clear()  # nothing sent before STARTTLS survives it
        if self._timeout != -1.0:
            self.sock.settimeout(self._timeout)  # TLS keeps Python's timeout (see settimeout)
        self.sock = context.wrap_socket(self.sock, server_side=server_side,
                                        server_hostname=server_hostname)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class DataReader:
    """SMTP message data (RFC 5321 4.1.1.4), fed as it arrives: up to ``<CRLF>.<CRLF>``,
    dot-unstuffed, CRLF line ends.

    One left-to-right search for ``<CRLF>.`` finds both the end mark and whether any line
    was dot-stuffed, so a message without such lines is never scanned again for them.
    ``max_size`` (0 = none) bounds what is kept; the rest is read and dropped so the
    session stays in step, and :meth:`result` raises :class:`DataTooBig`.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._at_start = True  # ".<CRLF>" right away is an empty message
        self._scanned = 0
        self._stuffed = False  # a line after the first starts with a dot
        self._too_big = False
        self._body: bytes | None = None

    def feed(self, buf: bytearray) -> bool:
        """Take what ``buf`` holds of the data out of it; True once the end mark was taken."""
        if self._at_start:
            if len(buf) < 3 and b".\r\n".startswith(bytes(buf)):
                return False
            self._at_start = False
            if buf.startswith(b".\r\n"):
                del buf[:3]
                self._body = b""
                return True
        while True:
            index = buf.find(b"\r\n.", self._scanned)
            if index < 0 or index + 5 > len(buf):
                break
            if buf[index + 3:index + 5] == CRLF:
                with memoryview(buf) as view:
                    self._body = bytes(view[:index + 2])  # one copy, not a slice and a copy
                del buf[:index + 5]
                return True
            self._stuffed = True
            self._scanned = index + 3
        # More is needed: a "<CRLF>." without what follows it, or a CRLF at the very end,
        # may begin the end mark.
        self._scanned = index if index >= 0 else max(self._scanned, len(buf) - 2)
        if self.max_size and len(buf) > self.max_size + 5:
            self._too_big = True
            del buf[:len(buf) - 4]  # keep what could start the end-of-data mark
            self._scanned = 0
        return False

    def result(self) -> bytes:
        """The message; raises :class:`DataTooBig` or :class:`DataLineTooLong`."""
        body = self._body
        assert body is not None, "result() before the end of the data"
        if self._too_big or (self.max_size and len(body) > self.max_size):
            raise DataTooBig()
        if has_line_over(body, MAX_TEXT_LINE - 1):  # the limit counts the CR, not the LF
            raise DataLineTooLong()
        # RFC 5321 4.5.2: a leading dot that the client doubled is removed.
        if body.startswith(b".."):
            body = body[1:]
        return body.replace(b"\r\n..", b"\r\n.") if self._stuffed else body


def has_line_over(data: bytes, limit: int) -> bool:
    """True when ``data`` holds more than ``limit`` octets with no LF among them.

    Every such run covers a multiple of ``limit``, so only the lines under those probes
    are measured: two bounded searches per ``limit`` octets, where a split would make an
    object per line (a regular expression backtracks at every octet: ~50 ms per MB).
    """
    size = len(data)
    for probe in range(0, size, limit):
        before = data.rfind(b"\n", max(0, probe - limit), probe + 1)
        start = before + 1 if before >= 0 else max(0, probe - limit)
        after = data.find(b"\n", probe, probe + limit + 1)
        end = after if after >= 0 else min(size, probe + limit + 1)
        if end - start > limit:
            return True
    return False


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency for sending: double a dot at the start of a line,
    make sure the data ends in CRLF, and append the end-of-data mark."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(CRLF):
        data += CRLF
    return data + b".\r\n"


def to_crlf(data: bytes) -> bytes:
    """LF line ends (how Maildir stores mail) to CRLF (how protocols send it)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def to_lf(data: bytes) -> bytes:
    """CRLF line ends to LF, for Maildir files."""
    return data.replace(b"\r\n", b"\n")
