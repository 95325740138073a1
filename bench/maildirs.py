"""Maildir files for the benchmark: the durable writer the aiosmtpd peer uses, the
pre-filled mailboxes the POP3 scenario reads, and the count that decides when a
scenario's messages have arrived (only files in ``new/`` count).

The writer follows the Maildir protocol (tmp/ -> fsync -> rename into new/ -> fsync
of the directory), the durability every server in the benchmark is held to.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

from extremail.durable import fsync_directory

_serial = itertools.count(1)
HOST = socket.gethostname().replace("/", "_").replace(":", "_") or "localhost"


def make(path: str) -> str:
    """Create a Maildir (tmp, new, cur) and return its path."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    return path


def unique_name() -> str:
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_serial)}.{HOST}"


def deliver(maildirs: list[str], data: bytes, durable: bool = True) -> None:
    """Write ``data`` once and place it in every Maildir of ``maildirs`` (hard links for
    the second and later ones); with ``durable`` every file and directory is fsynced
    before this returns."""
    name = unique_name()
    first = os.path.join(maildirs[0], "tmp", name)
    fd = os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    for maildir in maildirs[1:]:
        os.link(first, os.path.join(maildir, "new", name))
        if durable:
            fsync_directory(os.path.join(maildir, "new"))
    os.rename(first, os.path.join(maildirs[0], "new", name))
    if durable:
        fsync_directory(os.path.join(maildirs[0], "new"))


def count(maildirs: list[str]) -> int:
    """Messages in the ``new/`` directories of ``maildirs`` (missing ones hold none)."""
    total = 0
    for maildir in maildirs:
        try:
            total += len(os.listdir(os.path.join(maildir, "new")))
        except FileNotFoundError:
            pass
    return total


def prefill(maildir: str, messages: list[bytes]) -> None:
    """Fill a Maildir for the POP3 scenario (not timed, so not fsynced); names carry the
    sizes the way Dovecot writes them, which both POP3 servers understand."""
    make(maildir)
    for data in messages:
        lf = data.replace(b"\r\n", b"\n")
        name = f"{unique_name()},S={len(lf)},W={len(data)}"
        with open(os.path.join(maildir, "new", name), "wb") as handle:
            handle.write(lf)


def chown_tree(path: str, uid: int, gid: int) -> None:
    """Give a delivery tree to the user a peer delivers or reads as."""
    os.chown(path, uid, gid)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(top, name), uid, gid)
