"""What a server's process tree costs: CPU seconds and memory, read from /proc.

CPU is the sum over the tree of each process's own and reaped children's clock ticks
(``/proc/PID/stat`` fields utime, stime, cutime, cstime), so a worker that exits during a
run still counts once its parent has reaped it.  Memory is the tree's RSS when the server
is one process and the sum of PSS (``/proc/PID/smaps_rollup``) when it is several, so the
pages that Postfix's or Dovecot's processes share are not counted once per process.
A :class:`MemorySampler` thread keeps the peak while a scenario runs.
"""

from __future__ import annotations

import os
import threading

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2:].split()


def _parents() -> dict[int, int]:
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                parents[int(name)] = int(fields[1])
    return parents


def tree(roots: list[int]) -> list[int]:
    """``roots`` and every live descendant of them."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [pid for pid in roots if os.path.exists(f"/proc/{pid}")]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU of the tree, including children already reaped."""
    ticks = 0
    for pid in tree(roots):
        fields = _stat_fields(pid)
        if fields is not None:
            # Fields 14-17 of proc(5): utime stime cutime cstime (indices after the name).
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / TICKS


def _rollup(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def memory_bytes(roots: list[int]) -> int:
    """RSS of a one-process server, the tree's summed PSS of a multi-process one."""
    pids = tree(roots)
    if len(pids) == 1:
        return _rollup(pids[0]).get("Rss", 0)
    return sum(_rollup(pid).get("Pss", 0) for pid in pids)


class MemorySampler:
    """Samples :func:`memory_bytes` every ``interval`` seconds and keeps the peak."""

    def __init__(self, roots: list[int], interval: float = 0.2) -> None:
        self.roots = roots
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, memory_bytes(self.roots))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, memory_bytes(self.roots))
