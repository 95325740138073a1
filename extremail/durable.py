"""Durable file writes: the one place that writes, fsyncs and renames (DESIGN.md rule 1).

Everything the server acknowledges or keeps (spool files, Maildir messages, data files)
is written through here, so the order "write, fsync the file, rename, fsync the
directory" is implemented once.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable


def fsync_directory(path: str) -> None:
    """Make a rename or a new name in ``path`` survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _GroupSync:
    """Directory fsyncs shared by concurrent writers (group commit).

    Each caller takes a ticket after its rename.  An fsync that starts once tickets up to
    N were taken makes all of those renames durable, so a caller whose ticket is covered
    by a completed fsync returns at once, and one that arrives while an fsync runs waits
    for the next one instead of queueing its own: 20 sessions delivering into one Maildir
    share a few fsyncs instead of making 20.  A caller with renames in several directories
    takes all its tickets first and fsyncs whichever of them nobody else is fsyncing, so
    while it fsyncs one, fsyncs that others started in the rest cover it too.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.tickets: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.running: set[str] = set()

    def sync(self, paths: list[str]) -> None:
        with self.cond:
            pending = {}
            for path in dict.fromkeys(paths):
                pending[path] = self.tickets[path] = self.tickets.get(path, 0) + 1
        while True:
            with self.cond:
                while True:
                    # A directory forgotten meanwhile was forgotten because every ticket was covered.
                    pending = {path: ticket for path, ticket in pending.items()
                               if path in self.tickets and self.done.get(path, 0) < ticket}
                    if not pending:
                        return
                    path = next((p for p in pending if p not in self.running), "")
                    if path:  # nobody fsyncs this one now: do it, and wait for the others after
                        self.running.add(path)
                        covers = self.tickets[path]
                        break
                    self.cond.wait()
            self._fsync(path, covers)

    def _fsync(self, path: str, covers: int) -> None:
        synced = False
        try:
            fsync_directory(path)
            synced = True
        finally:
            with self.cond:
                self.running.discard(path)
                if synced:
                    self.done[path] = max(self.done.get(path, 0), covers)
                    if self.done[path] == self.tickets[path]:  # nobody waits: forget the directory
                        del self.done[path], self.tickets[path]
                self.cond.notify_all()


_group = _GroupSync()


def sync_directories(paths: list[str]) -> None:
    """fsync every directory in ``paths`` after renames into them, sharing the fsyncs with
    concurrent callers."""
    _group.sync(paths)


def sync_directory(path: str) -> None:
    """fsync ``path`` after a rename into it, sharing the fsync with concurrent callers."""
    _group.sync([path])


def publish(tmp: str, path: str, data: bytes, mode: int = 0o600) -> None:
    """Create the new file ``path`` holding ``data``, fsynced, that nobody sees before it is
    whole (the Maildir rule, and the spool's commit), and never in place of another file;
    the caller fsyncs its directory.  On failure nothing is left at either place.

    The file is written, named ``tmp``, fsynced, and renamed to ``path``.  It has a name
    before its fsync because that fsync writes the inode, link count included: a file
    fsynced without a name is written with a count of 0, and ext4 without a journal (like
    ext2) writes that inode again only with its periodic writeback, half a minute later,
    so a power cut before then would have fsck free the acknowledged message as a
    deleted file.
    """
    _write_and_rename(tmp, path, data, mode, _rename_new)


def _write_and_rename(tmp: str, path: str, data: bytes, mode: int,
                      rename: Callable[[str, str], None]) -> None:
    """Write ``data`` to a new file named ``tmp``, fsync it, and ``rename`` it to ``path``;
    on failure nothing is left at ``tmp``."""
    fd = _named(tmp, data, mode)
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        rename(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


def _named(tmp: str, data: bytes, mode: int) -> int:
    """An open file holding ``data`` and named ``tmp``, not yet fsynced.

    Where the kernel allows, it is a spare opened ahead without a name (O_TMPFILE, made on
    the file system of ``tmp``) and linked at ``tmp`` once written, so no inode is
    allocated on a message's path; otherwise it is created at ``tmp``.
    """
    if _anonymous.usable:
        directory = os.path.dirname(tmp)
        try:
            fd = _spares.take(directory, mode)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
            _anonymous.usable = False
        else:
            try:
                _write_all(fd, data)
                linked = _anonymous.link(fd, tmp)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    os.close(fd)
                    raise
                linked = False
            except BaseException:
                os.close(fd)
                raise
            if linked:
                return fd
            os.close(fd)
            if _spares.set_apart(directory):  # the spare was made on another mount of its device
                return _named(tmp, data, mode)
            _anonymous.usable = False
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    return fd


def _rename_new(source: str, target: str) -> None:
    """Rename ``source`` to ``target``, which must not exist (FileExistsError): with
    ``renameat2(RENAME_NOREPLACE)``, or where a file system lacks it, a link and an unlink."""
    if _noreplace.usable:
        if _noreplace.rename(os.fsencode(source), os.fsencode(target)) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), target)
        _noreplace.usable = False
    os.link(source, target)
    unlink_quietly(source)  # published all the same; a name left in tmp is only clutter


def unlink_quietly(path: str) -> None:
    """Remove ``path`` if it can be; for clean-ups whose failure changes nothing."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _open_unnamed(directory: str, mode: int) -> int:
    return os.open(directory, os.O_WRONLY | os.O_TMPFILE, mode)


class _SpareFiles:
    """Unnamed files opened ahead of need, a stock for each file system written on.

    Why: ext4 without a journal passes over every inode freed in the last minutes before
    it hands one out (``recently_deleted`` in its allocator), so after a mass delete
    creating a file costs about a millisecond of CPU.  A thread of its own creates the
    next files while sessions wait on the network or on fsync, so that cost is not on a
    message's path.  An unnamed file may be linked into any directory of the mount it was
    made on, so one stock serves every Maildir of a file system, however many receive
    mail at once; it is made in the directory used last.  A directory on another mount
    of the same device (a bind mount) refuses the link and is set apart: it gets files
    of its own.  An unused spare vanishes with the process: it has no name.
    """

    KEEP = 32  # spares per (device, mode); made again once half are taken
    REMEMBER = 10000  # directories whose device is known without a stat

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: dict[tuple[int, int], list[int]] = {}  # (st_dev, mode) -> fds
        self._where: dict[tuple[int, int], str] = {}        # where more are made
        self._apart: set[str] = set()
        self._devices: dict[str, int] = {}
        self._thread: threading.Thread | None = None

    def take(self, directory: str, mode: int) -> int:
        """An unnamed file for ``directory``: a spare, or opened there now."""
        if directory in self._apart:
            return _open_unnamed(directory, mode)
        device = self._devices.get(directory)
        if device is None:  # a stale entry only costs a refused link (set apart) or ENOENT
            if len(self._devices) >= self.REMEMBER:
                self._devices.clear()
            device = self._devices[directory] = os.stat(directory).st_dev
        key = (device, mode)
        with self._cond:
            spares = self._ready.setdefault(key, [])
            self._where[key] = directory
            fd = spares.pop() if spares else -1
            if len(spares) < self.KEEP // 2:  # in batches: one wake-up for many files
                if self._thread is None:
                    self._thread = threading.Thread(target=self._refill, name="spare-files",
                                                    daemon=True)
                    self._thread.start()
                self._cond.notify()
        return fd if fd >= 0 else _open_unnamed(directory, mode)

    def set_apart(self, directory: str) -> bool:
        """Make ``directory``'s files there from now on; False when it already was."""
        with self._cond:
            if directory in self._apart:
                return False
            self._apart.add(directory)
            return True

    def _refill(self) -> None:
        while True:
            with self._cond:
                while not (short := [(key, self._where[key]) for key, fds in self._ready.items()
                                     if len(fds) < self.KEEP]):
                    self._cond.wait()
            for key, directory in short:
                try:
                    fd = _open_unnamed(directory, key[1])
                except OSError:  # gone, full, or not possible: take() opens and reports
                    with self._cond:
                        for spare in self._ready.pop(key, []):
                            os.close(spare)
                    continue
                with self._cond:
                    spares = self._ready.get(key)
                    if spares is None:
                        os.close(fd)  # given up meanwhile
                    else:
                        spares.append(fd)


_spares = _SpareFiles()


_libc = ctypes.CDLL(None, use_errno=True)

# What O_TMPFILE's open fails with where a file system or kernel lacks it.
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)


class _AnonymousFiles:
    """How an unnamed file gets its name: ``linkat(fd, "", AT_EMPTY_PATH)`` (needs
    CAP_DAC_READ_SEARCH, which a daemon started as root has), else a link of
    ``/proc/self/fd/N``; when neither works here, :func:`publish` stops trying."""

    def __init__(self) -> None:
        self.usable = hasattr(os, "O_TMPFILE")
        self._empty_path = True
        self._linkat = _libc.linkat
        self._linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                 ctypes.c_int]

    def link(self, fd: int, path: str) -> bool:
        """Give the file open as ``fd`` the name ``path``; False when this process cannot."""
        if self._empty_path:
            if self._linkat(fd, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) == 0:
                return True
            code = ctypes.get_errno()
            if code not in (errno.ENOENT, errno.EPERM) or _no_directory(path):
                raise OSError(code, os.strerror(code), path)
            self._empty_path = False  # ENOENT, EPERM: without CAP_DAC_READ_SEARCH
        try:
            os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)
            return True
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EXDEV, errno.EPERM) or _no_directory(path):
                raise
        return False


def _no_directory(path: str) -> bool:
    """True when ``path``'s directory is missing: an ENOENT that is the caller's, not a
    missing capability."""
    return not os.path.isdir(os.path.dirname(path))


class _NoReplace:
    """``renameat2(..., RENAME_NOREPLACE)`` (Linux 3.15, glibc 2.28): a rename that refuses
    to replace a file, in one step; :func:`_rename_new` stops trying where it is lacking."""

    def __init__(self) -> None:
        self._renameat2 = getattr(_libc, "renameat2", None)
        self.usable = self._renameat2 is not None
        if self._renameat2 is not None:
            self._renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                        ctypes.c_char_p, ctypes.c_uint]

    def rename(self, source: bytes, target: bytes) -> int:
        """0, or -1 with the reason in ``ctypes.get_errno()``."""
        return self._renameat2(_AT_FDCWD, source, _AT_FDCWD, target, _RENAME_NOREPLACE)


_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_RENAME_NOREPLACE = 1
_anonymous = _AnonymousFiles()
_noreplace = _NoReplace()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix."""
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    unlink_quietly(tmp)  # left by a crash of an earlier process with the same pid
    _write_and_rename(tmp, path, data, mode, os.rename)
    fsync_directory(os.path.dirname(path) or ".")
