"""Durable file writes: the one place that writes, fsyncs and renames (DESIGN.md rule 1).

Everything the server acknowledges or keeps (spool files, Maildir messages, data files)
is written through here, so the order "write, fsync the file, rename, fsync the
directory" is implemented once.
"""

from __future__ import annotations

import os
import threading


def fsync_directory(path: str) -> None:
    """Make a rename or a new name in ``path`` survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: str, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` exclusively, write all of ``data`` and fsync it; on failure
    nothing is left at ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix."""
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    try:
        os.unlink(tmp)  # left by a crash of an earlier process with the same pid
    except FileNotFoundError:
        pass
    write_new(tmp, data, mode)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_directory(os.path.dirname(path) or ".")
