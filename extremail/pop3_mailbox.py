"""The maildrop as one POP3 session sees it: the mailbox lock, the numbered snapshot, the
UPDATE state, and the message text on the wire.

* :class:`LockTable`: one session per mailbox at a time, process-wide, keyed by the
  Maildir's real path (RFC 1939 section 8: the server should lock the maildrop).
* :class:`Maildrop`: the messages as they were at login (RFC 1939 section 4: numbers
  stay fixed for the session; mail arriving meanwhile shows up at the next login), the
  DELE marks, and :meth:`Maildrop.update`, the UPDATE state run by QUIT only
  (RFC 1939 section 6): marked messages are removed, the others that were retrieved move
  from new/ to cur/ with the ``S`` (seen) flag, keeping their unique id.
* :func:`retr_chunks` and :func:`top_text`: the LF-form file as CRLF, dot-stuffed wire
  data (RFC 1939 section 3), through the one helper in :mod:`extremail.net.lineio`.

Attack surface: message numbers come from the client and are checked here; paths come
from :meth:`extremail.mailbox.Maildir.scan` of the logged-in user's own Maildir.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from typing import BinaryIO

from .mailbox import Entry
from .net.lineio import dot_stuff, to_crlf
from .durable import fsync_directory

# Large messages are read and sent in pieces of about this size, so a session holds at
# most one piece (and one line) in memory whatever the message size.
CHUNK = 1 << 20
END_MARK = b".\r\n"
# RFC 1939 section 7 (UIDL): 1 to 70 characters in the range 0x21 to 0x7E.
_UNIQUE_ID = re.compile(r"[\x21-\x7e]{1,70}")


class LockTable:
    """Which Maildirs have a POP3 session in the transaction state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[str] = set()

    @staticmethod
    def key(path: str) -> str:
        return os.path.realpath(path)

    def acquire(self, path: str) -> bool:
        """True when the caller now holds the mailbox; False when another session does."""
        key = self.key(path)
        with self._lock:
            if key in self._held:
                return False
            self._held.add(key)
            return True

    def release(self, path: str) -> None:
        with self._lock:
            self._held.discard(self.key(path))


LOCKS = LockTable()


class NoSuchMessage(LookupError):
    """A message number out of range or marked as deleted (RFC 1939 section 5)."""


class Maildrop:
    """The numbered snapshot of one mailbox, taken at login."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()

    def get(self, number: int) -> Entry:
        """Message ``number`` (1-based), unless it does not exist or is marked deleted."""
        if not 1 <= number <= len(self.entries) or number in self.deleted:
            raise NoSuchMessage(number)
        return self.entries[number - 1]

    def live(self) -> list[tuple[int, Entry]]:
        return [(n, e) for n, e in enumerate(self.entries, 1) if n not in self.deleted]

    def stat(self) -> tuple[int, int]:
        """(count, octets) of the messages not marked deleted (RFC 1939 STAT)."""
        live = self.live()
        return len(live), sum(entry.vsize for _, entry in live)

    def delete(self, number: int) -> None:
        self.get(number)
        self.deleted.add(number)

    def reset(self) -> None:
        self.deleted.clear()

    def update(self) -> tuple[list[str], list[str]]:
        """RFC 1939 section 6: remove the marked messages, mark the retrieved ones seen.

        Returns (unique ids removed, problems); a message another reader already removed
        counts as removed.
        """
        removed: list[str] = []
        problems: list[str] = []
        touched: set[str] = set()
        for number in sorted(self.deleted):
            entry = self.entries[number - 1]
            path = locate(entry)
            try:
                if path is not None:
                    os.unlink(path)
                    touched.add(os.path.dirname(path))
                removed.append(entry.uid)
            except OSError as exc:
                problems.append(f"cannot remove {entry.uid}: {exc.strerror or exc}")
        for number in sorted(self.retrieved - self.deleted):
            path = locate(self.entries[number - 1])
            if path is None:
                continue
            target = seen_path(path)
            if target == path:
                continue
            try:
                os.rename(path, target)
                touched.update((os.path.dirname(path), os.path.dirname(target)))
            except OSError as exc:
                problems.append(f"cannot mark {os.path.basename(path)} seen: {exc.strerror or exc}")
        for directory in touched:
            try:
                fsync_directory(directory)
            except OSError as exc:
                problems.append(f"cannot sync {directory}: {exc.strerror or exc}")
        return removed, problems


def unique_id(uid: str) -> str:
    """The Maildir unique id as RFC 1939 allows it; a long one (a long host name) or an
    odd one (a file another program named) is replaced by its SHA-1, just as stable."""
    if _UNIQUE_ID.fullmatch(uid):
        return uid
    return hashlib.sha1(uid.encode("utf-8", "surrogateescape")).hexdigest()


def locate(entry: Entry) -> str | None:
    """Where ``entry`` is now: another reader (IMAP, mutt) may have moved it from new/ to
    cur/ or changed its flags since the snapshot; the unique id stays the same."""
    if os.path.exists(entry.path):
        return entry.path
    maildir = os.path.dirname(os.path.dirname(entry.path))
    for sub in ("cur", "new"):
        directory = os.path.join(maildir, sub)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if name.split(":", 1)[0].split(",", 1)[0] == entry.uid:
                return os.path.join(directory, name)
    return None


def seen_path(path: str) -> str:
    """The cur/ name of a message with the Maildir ``S`` flag added (``:2,S``), as Dovecot
    does once a POP3 client has retrieved it."""
    directory, name = os.path.split(path)
    base, _, info = name.partition(":")
    flags = set(info[2:]) if info.startswith("2,") else set()
    flags.add("S")
    maildir = os.path.dirname(directory)
    return os.path.join(maildir, "cur", f"{base}:2,{''.join(sorted(flags))}")


def open_message(entry: Entry) -> BinaryIO | None:
    """Message ``entry`` opened where it is now (None once another reader removed it):
    its snapshot path first, without a stat; :func:`locate` only when that fails."""
    try:
        return open(entry.path, "rb", buffering=0)
    except FileNotFoundError:
        path = locate(entry)
    return None if path is None else open(path, "rb", buffering=0)


def retr_chunks(handle: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    """The whole message in ``handle`` (closed at the end) as wire data ending in the
    ``.`` line, in pieces of at most :data:`CHUNK` bytes, each cut after a line end so
    dot-stuffing sees line starts.  ``size`` (the file's size as listed) only sets how
    much each read asks for: small messages take one read plus the one that sees EOF.

    The end mark travels in the last piece, so a message under :data:`CHUNK` is one
    piece (one write with its status line): a ``.`` line written on its own would wait
    for the client's delayed ACK (Nagle), about 40 ms per RETR.
    """
    piece = min(CHUNK, max(size + 1, 65536))
    with handle:
        carry = b""
        block = handle.read(piece)
        while True:
            following = handle.read(piece) if block else b""
            data = carry + block
            if not following:
                yield wire(data)
                return
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]  # cut == 0: one line longer than a piece, read on to its end
            if cut:
                # ``data[:cut]`` ends in a line end, so dot_stuff adds only the end mark.
                yield dot_stuff(to_crlf(data[:cut]))[:-len(END_MARK)]
            block = following


def top_text(handle: BinaryIO, lines: int) -> bytes:
    """RFC 1939 TOP: the header, the blank line, then ``lines`` lines of the body."""
    out = []
    with handle:
        in_header = True
        for line in handle:
            if in_header:
                out.append(line)
                in_header = line not in (b"\n", b"\r\n")
                continue
            if lines <= 0:
                break
            out.append(line)
            lines -= 1
    return wire(b"".join(out))


def wire(data: bytes) -> bytes:
    """LF-form text as CRLF, dot-stuffed data with its end mark (RFC 1939 section 3)."""
    return dot_stuff(to_crlf(data)) if data else END_MARK
