"""Group commit of directory fsyncs: every caller returns only after an fsync that started
after its rename, and concurrent callers share fsyncs.  Publishing a new file: whole or
absent, by an unnamed file where the kernel allows, through a name in tmp otherwise."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time

import pytest

from extremail import durable
from harness import wait_until


def run_together(target, count: int) -> None:
    """``count`` threads running ``target`` at once, joined."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def test_shared_directory_fsync_covers_every_caller(monkeypatch, tmp_path) -> None:
    lock = threading.Lock()
    state = {"renamed": 0, "durable": 0, "fsyncs": 0}

    def slow_fsync(path: str) -> None:
        with lock:
            seen = state["renamed"]  # renames done before this fsync started
            state["fsyncs"] += 1
        time.sleep(0.005)
        with lock:
            state["durable"] = max(state["durable"], seen)

    monkeypatch.setattr(durable, "fsync_directory", slow_fsync)
    failures = []

    def writer() -> None:
        for _ in range(20):
            with lock:
                state["renamed"] += 1
                mine = state["renamed"]
            durable.sync_directory(str(tmp_path))
            with lock:
                if state["durable"] < mine:
                    failures.append((mine, state["durable"]))

    run_together(writer, 10)
    assert not failures, failures[:5]
    assert state["renamed"] == 200
    assert state["fsyncs"] < 200  # shared, not one each


def test_a_failed_fsync_is_not_taken_for_a_durable_one(monkeypatch, tmp_path) -> None:
    calls = []

    def failing_then_ok(path: str) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise OSError(5, "I/O error")

    monkeypatch.setattr(durable, "fsync_directory", failing_then_ok)
    try:
        durable.sync_directory(str(tmp_path))
    except OSError:
        pass
    else:
        raise AssertionError("the error must reach the caller")
    durable.sync_directory(str(tmp_path))  # must fsync again, not trust the failed one
    assert len(calls) == 2


def test_several_directories_at_once_are_each_covered_and_shared(monkeypatch, tmp_path) -> None:
    dirs = [str(tmp_path / f"box{index}") for index in range(5)]
    lock = threading.Lock()
    renamed = dict.fromkeys(dirs, 0)
    durable_upto = dict.fromkeys(dirs, 0)
    fsyncs: list[str] = []

    def slow_fsync(path: str) -> None:
        with lock:
            seen = renamed[path]
            fsyncs.append(path)
        time.sleep(0.002)
        with lock:
            durable_upto[path] = max(durable_upto[path], seen)

    monkeypatch.setattr(durable, "fsync_directory", slow_fsync)
    failures = []

    def writer() -> None:
        for _ in range(20):
            with lock:
                mine = {}
                for path in dirs:
                    renamed[path] += 1
                    mine[path] = renamed[path]
            durable.sync_directories([*dirs, dirs[0]])  # a repeated directory is one ticket
            with lock:
                failures.extend(p for p in dirs if durable_upto[p] < mine[p])

    run_together(writer, 10)
    assert not failures, failures[:5]
    assert sum(renamed.values()) == 10 * 20 * 5
    assert len(fsyncs) < 10 * 20 * 5 / 2  # shared across writers and directories
    assert set(fsyncs) == set(dirs)


# ---- publish: a new file that is whole or absent ----
def _publish_and_check(tmp_path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "new").mkdir()
    durable.publish(str(tmp_path / "tmp" / "m1"), str(tmp_path / "new" / "m1"), b"hello\n")
    assert (tmp_path / "new" / "m1").read_bytes() == b"hello\n"
    assert list((tmp_path / "tmp").iterdir()) == []
    with pytest.raises(FileNotFoundError):  # no such target directory: nothing left behind
        durable.publish(str(tmp_path / "tmp" / "m2"), str(tmp_path / "gone" / "m2"), b"x")
    assert list((tmp_path / "tmp").iterdir()) == []
    with pytest.raises(FileExistsError):  # never replaces a file
        durable.publish(str(tmp_path / "tmp" / "m1"), str(tmp_path / "new" / "m1"), b"other")
    assert (tmp_path / "new" / "m1").read_bytes() == b"hello\n"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_publish_from_a_spare_unnamed_file(tmp_path) -> None:
    """Where O_TMPFILE and a link of it work (here, as root), that is the way taken."""
    if not durable._anonymous.usable:
        pytest.skip("this kernel or process cannot link unnamed files")
    _publish_and_check(tmp_path)
    assert durable._anonymous.usable


@pytest.mark.parametrize("unnamed", [True, False], ids=["spare", "created"])
def test_a_published_file_is_fsynced_with_its_name(monkeypatch, tmp_path, unnamed) -> None:
    """The fsync that makes the message durable writes its inode with a link count of 1:
    fsynced without a name, a file has 0 on disk, which ext4 without a journal keeps for
    half a minute after the rename, and fsck frees as a deleted file after a power cut."""
    if unnamed and not durable._anonymous.usable:
        pytest.skip("this kernel or process cannot link unnamed files")
    monkeypatch.setattr(durable._anonymous, "usable", unnamed)
    real_fsync = durable.os.fsync
    links: list[int] = []

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            links.append(os.fstat(fd).st_nlink)
        real_fsync(fd)
    monkeypatch.setattr(durable.os, "fsync", fsync)
    _publish_and_check(tmp_path)
    durable.atomic_write(str(tmp_path / "data"), b"table\n")
    assert len(links) >= 2 and set(links) == {1}, links  # messages and a data file


def test_publish_where_a_rename_cannot_refuse_to_replace(monkeypatch, tmp_path) -> None:
    """Without renameat2's RENAME_NOREPLACE (old kernels and C libraries, some file
    systems) a link and an unlink do the rename."""
    monkeypatch.setattr(durable._noreplace, "usable", False)
    _publish_and_check(tmp_path)


def test_publish_through_tmp_where_unnamed_files_cannot_be_linked(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(durable._anonymous, "link", lambda fd, path: False)
    monkeypatch.setattr(durable._anonymous, "usable", True)
    _publish_and_check(tmp_path)
    assert not durable._anonymous.usable  # tried once, then named files only


def test_publish_through_tmp_without_o_tmpfile(monkeypatch, tmp_path) -> None:
    real_open = durable.os.open

    def no_tmpfile(path, flags, mode=0o777):
        if flags & durable.os.O_TMPFILE == durable.os.O_TMPFILE:
            raise OSError(durable.errno.EOPNOTSUPP, "not supported")
        return real_open(path, flags, mode)
    monkeypatch.setattr(durable.os, "open", no_tmpfile)
    monkeypatch.setattr(durable._anonymous, "usable", True)
    monkeypatch.setattr(durable, "_spares", durable._SpareFiles())  # none made before
    _publish_and_check(tmp_path)
    assert not durable._anonymous.usable


def test_spare_unnamed_files_are_made_ahead_and_taken(tmp_path) -> None:
    """One stock per file system: a spare made in one directory is linked into another."""
    if not durable._anonymous.usable:
        pytest.skip("this kernel or process cannot link unnamed files")
    spares = durable._SpareFiles()
    first, second = tmp_path / "d1", tmp_path / "d2"
    first.mkdir()
    second.mkdir()
    key = (os.stat(first).st_dev, 0o600)
    os.close(spares.take(str(first), 0o600))  # none ready yet: opened at once, the thread starts
    wait_until(lambda: len(spares._ready[key]) == spares.KEEP, what="spares made ahead")
    ready = list(spares._ready[key])
    fd = spares.take(str(second), 0o600)  # another directory of the same file system
    assert fd == ready[-1] and len(spares._ready[key]) == spares.KEEP - 1
    durable._write_all(fd, b"hello\n")
    assert durable._anonymous.link(fd, str(second / "m1"))
    os.close(fd)
    assert (second / "m1").read_bytes() == b"hello\n"
    assert len(spares._ready) == 1  # not a stock per directory


def test_a_directory_that_refuses_a_spare_gets_files_of_its_own(monkeypatch, tmp_path) -> None:
    """A link across mounts of one device (a bind mount) fails with EXDEV: the message is
    written again in a file made in its own directory, and so are the next ones."""
    if not durable._anonymous.usable:
        pytest.skip("this kernel or process cannot link unnamed files")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "new").mkdir()
    link = durable._anonymous.link
    taken: list[int] = []
    spares = durable._SpareFiles()
    stock = spares.take

    def take(directory: str, mode: int) -> int:
        taken.append(directory in spares._apart)
        return stock(directory, mode)

    def cross_mount_once(fd: int, path: str) -> bool:
        if not taken[-1]:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), path)
        return link(fd, path)

    monkeypatch.setattr(durable, "_spares", spares)
    monkeypatch.setattr(spares, "take", take)
    monkeypatch.setattr(durable._anonymous, "link", cross_mount_once)
    for name in ("m1", "m2"):
        durable.publish(str(tmp_path / "tmp" / name), str(tmp_path / "new" / name), b"x\n")
        assert (tmp_path / "new" / name).read_bytes() == b"x\n"
    assert taken == [False, True, True] and durable._anonymous.usable
    assert list((tmp_path / "tmp").iterdir()) == []
