"""Where eXtremail's time goes during a scenario: py-spy (PyPI) sampling the running
server, one collapsed-stack file per scenario row, and a summary of the functions that
take the most samples (their own time and with what they call).

``bench/run --profile`` records every eXtremail row; read the summary it prints, or
feed the ``.txt`` files to a flame graph tool.  Sampling slows the server a little, so
figures of a profiled run are not the benchmark's figures.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter

PY_SPY = os.path.join(os.path.dirname(sys.executable), "py-spy")
# Leaf frames of a thread that waits for work or for its peer, not for the server:
# left out of the summary (the raw file keeps them).
WAITING = ("Condition.wait ", "Event.wait ", "socket.accept ", "LineIO._fill ",
           "select ", "Thread.join ")


def available() -> str | None:
    if not (os.path.exists(PY_SPY) or shutil.which("py-spy")):
        return "py-spy is not installed (pip install py-spy)"
    return None


class Profiler:
    """py-spy recording one process (all its threads, idle ones left out) until stopped,
    without pausing it to sample (``--nonblocking``): pausing a threaded server holds its
    locks for the pause and makes lock waits look far larger than they are."""

    def __init__(self, pid: int, path: str, rate: int = 200) -> None:
        self.path = path
        binary = PY_SPY if os.path.exists(PY_SPY) else "py-spy"
        self.proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--nonblocking", "--output", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def summary(path: str, top: int = 12) -> list[str]:
    """The functions with the most busy samples, own ("self") and including what they
    call ("total"); blocking calls such as fsync count as busy."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    try:
        with open(path) as handle:
            for line in handle:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not count.isdigit():
                    continue
                frames = stack.split(";")
                if frames[-1].startswith(WAITING):
                    continue
                samples += int(count)
                if frames:
                    own[frames[-1]] += int(count)
                for frame in set(frames):
                    total[frame] += int(count)
    except OSError:
        return []
    if not samples:
        return []
    lines = [f"{samples} busy samples (waits for work or for the client left out); "
             "self% total% function"]
    for frame, count in own.most_common(top):
        lines.append(f"{100 * count / samples:5.1f} {100 * total[frame] / samples:5.1f}  {frame}")
    lines.append("by total%:")
    for frame, count in total.most_common(top):
        lines.append(f"{100 * own[frame] / samples:5.1f} {100 * count / samples:5.1f}  {frame}")
    return lines
