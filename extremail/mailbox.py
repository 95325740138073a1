"""Maildir mailboxes (tmp/new/cur), as Dovecot, mutt and qmail read them.

Delivery follows the Maildir protocol: a uniquely named file is written in ``tmp/`` (a
file opened ahead without a name, where the kernel allows, named once written: see
:func:`extremail.durable.publish`) and fsynced, then renamed into ``new/`` and the
directory fsynced, so a reader never sees a partial message and a crash never loses an
acknowledged one.  What a crash leaves in ``tmp/`` is removed after 36 hours
(:meth:`Maildir.clean_tmp`, at the owner's POP3 login).

Files hold the message with LF line ends (the Maildir convention).  Names carry the
sizes the way Dovecot writes them: ``<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>,W=<size
with CRLF>``, so POP3 STAT/LIST and quota checks need no ``stat`` and no read.  The part
before the first ``,`` or ``:`` is the message's stable unique id (POP3 UIDL).

Attack surface: paths come from the store, whose names are validated.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import threading
import time
from dataclasses import dataclass

from .durable import fsync_directory, publish, sync_directory, unlink_quietly

SUBDIRS = ("tmp", "new", "cur")
# maildir(5): a file in tmp/ untouched for 36 hours is left over from an interrupted
# delivery (here: a crash between the file's fsync and its rename into new/).
STALE_TMP = 36 * 3600
_counter = itertools.count(1)
_counter_lock = threading.Lock()


def _host() -> str:
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


HOST = _host()


def unique_name(size: int, vsize: int) -> str:
    """A Maildir file name; microseconds are zero-padded so ``ls`` lists mail in delivery order."""
    seconds, micro = divmod(time.time_ns() // 1000, 1_000_000)
    with _counter_lock:
        serial = next(_counter)
    return (f"{seconds}.M{micro:06d}P{os.getpid()}Q{serial}.{HOST}"
            f",S={size},W={vsize}")


def virtual_size(data: bytes) -> int:
    """Size of LF-form ``data`` once sent with CRLF line ends.  A CR is rare in it, and
    looking for one costs far less than counting CRLFs."""
    crlf = data.count(b"\r\n") if b"\r" in data else 0
    return len(data) + data.count(b"\n") - crlf


@dataclass(frozen=True)
class Entry:
    """One message file: ``uid`` is stable across sessions, restarts and new/ -> cur/."""

    uid: str
    path: str
    size: int   # bytes on disk (LF form)
    vsize: int  # bytes on the wire (CRLF form)
    mtime: float


def parse_sizes(name: str) -> tuple[int | None, int | None]:
    size = vsize = None
    base = name.split(":", 1)[0]
    for part in base.split(",")[1:]:
        key, _, value = part.partition("=")
        if value.isascii() and value.isdigit():  # "²" is a digit to str.isdigit, not to int
            if key == "S":
                size = int(value)
            elif key == "W":
                vsize = int(value)
    return size, vsize


class Maildir:
    """One user's mailbox directory."""

    def __init__(self, path: str) -> None:
        self.path = path

    def ensure(self) -> None:
        """Create the Maildir if it is missing, all at once: tmp/, new/ and cur/ are made in
        a hidden sibling that is renamed into place, so a reader (POP3, Dovecot, mutt) never
        sees a Maildir without its cur/."""
        if all(os.path.isdir(os.path.join(self.path, sub)) for sub in SUBDIRS):
            return
        parent = os.path.dirname(self.path.rstrip(os.sep)) or "."
        os.makedirs(parent, mode=0o700, exist_ok=True)
        if os.path.isdir(self.path):  # an existing directory missing a subdirectory: complete it
            for sub in SUBDIRS:
                os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)
            return
        with _counter_lock:
            serial = next(_counter)
        building = os.path.join(parent, f".new-maildir.{os.getpid()}.{serial}")
        for sub in SUBDIRS:
            os.makedirs(os.path.join(building, sub), mode=0o700)
        try:
            os.rename(building, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            for sub in SUBDIRS:  # another thread made it first
                os.rmdir(os.path.join(building, sub))
            os.rmdir(building)
        fsync_directory(parent)

    @property
    def new_dir(self) -> str:
        return os.path.join(self.path, "new")

    def deliver(self, data: bytes, sync: bool = True) -> str:
        """Store ``data`` (LF line ends) as a new message; returns its path in new/.
        ``sync=False`` leaves the fsync of new/ to the caller
        (:func:`extremail.delivery.deliver_local` syncs all its Maildirs at once).

        Raises OSError (ENOSPC, EDQUOT, ...) with nothing left behind in new/.
        """
        name = unique_name(len(data), virtual_size(data))
        final = os.path.join(self.new_dir, name)
        tmp = os.path.join(self.path, "tmp", name)
        try:
            publish(tmp, final, data)
        except FileNotFoundError:
            self.ensure()
            publish(tmp, final, data)
        if sync:
            try:
                sync_directory(self.new_dir)
            except BaseException:
                unlink_quietly(final)
                raise
        return final

    def link(self, source: str, sync: bool = True) -> str:
        """Deliver a copy of an already-delivered message file (a hard link when the
        file system allows, so several local recipients cost one write)."""
        size, vsize = parse_sizes(os.path.basename(source))
        if size is None or vsize is None:
            with open(source, "rb") as handle:
                return self.deliver(handle.read(), sync)
        name = unique_name(size, vsize)
        final = os.path.join(self.new_dir, name)
        try:
            try:
                os.link(source, final)
            except FileNotFoundError:
                self.ensure()
                os.link(source, final)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            with open(source, "rb") as handle:
                return self.deliver(handle.read(), sync)
        if sync:
            sync_directory(self.new_dir)
        return final

    def scan(self) -> list[Entry]:
        """Every message in new/ and cur/, oldest first (then by name, for a stable order)."""
        entries = []
        for sub in ("new", "cur"):
            directory = os.path.join(self.path, sub)
            try:
                items = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue  # no mailbox yet (or its path is blocked): nothing in it
            for item in items:
                if item.name.startswith("."):
                    continue
                try:
                    stat = item.stat()
                except FileNotFoundError:
                    continue  # removed meanwhile by another reader
                size, vsize = parse_sizes(item.name)
                if size is None:
                    size = stat.st_size
                if vsize is None:
                    with open(item.path, "rb") as handle:
                        vsize = virtual_size(handle.read())
                uid = item.name.split(":", 1)[0].split(",", 1)[0]
                entries.append(Entry(uid, item.path, size, vsize, stat.st_mtime))
        entries.sort(key=lambda e: (e.mtime, e.uid))
        return entries

    def clean_tmp(self, now: float | None = None) -> int:
        """Remove the files in tmp/ not modified for :data:`STALE_TMP`; returns how many.
        A delivery in progress writes its file within the second, so none is touched."""
        limit = (time.time() if now is None else now) - STALE_TMP
        removed = 0
        try:
            items = list(os.scandir(os.path.join(self.path, "tmp")))
        except (FileNotFoundError, NotADirectoryError):
            return 0
        for item in items:
            try:
                if item.is_file(follow_symlinks=False) and item.stat().st_mtime < limit:
                    os.unlink(item.path)
                    removed += 1
            except FileNotFoundError:
                continue  # removed meanwhile by another reader
        return removed

    def usage(self) -> int:
        """Bytes used, for quotas (from the S= sizes in the names)."""
        return sum(entry.size for entry in self.scan())
