"""Group commit of directory fsyncs: every caller returns only after an fsync that started
after its rename, and concurrent callers share fsyncs."""

from __future__ import annotations

import threading
import time

from extremail import durable


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
