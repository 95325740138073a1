"""The benchmark (bench/run, issue 7) in its smoke mode, so it cannot rot.

Not a timed test: it runs every scenario with tiny counts once against eXtremail and
every peer installed here, then checks the shape of ``latest.json`` and that every
server delivered (or retrieved) every message of every scenario it took part in.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from bench import loadgen, scenarios
from bench.main import PEERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_run_delivers_everything_and_writes_the_issue_shape(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.main", "--smoke", "--results",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "xm/" in done.stdout  # the table with eXtremail's ratios was printed
    document = json.loads((tmp_path / "latest.json").read_text())
    run = document["run"]
    assert run["mode"] == "smoke" and "extremail" in run["servers"]
    rows, _ = scenarios.plan("smoke")
    letters = sorted({row.letter for row in rows} - set(run["skipped"]))
    assert letters and set("abcdfh") <= set(letters)
    for letter in letters:
        entry = document[letter]
        assert entry["unit"] == ("MB" if letter == "h" else "msg/s")
        expected = {s for s in run["servers"] if letter in PEERS[s].scenarios}
        assert set(entry) - {"unit"} == expected
        for server in expected:
            assert isinstance(entry[server], float | int) and entry[server] > 0, (letter, server)
    for row in rows:
        if row.letter not in letters:
            continue
        for server in run["servers"]:
            if row.letter in PEERS[server].scenarios:
                figures = document["details"][row.key][server]
                assert "error" not in figures, (row.key, server, figures)
                assert figures["messages"] == row.messages, (row.key, server)
    assert {check["target"][:3] for check in document["targets"]} >= {"(a)", "(h)"}
    assert document["machine"]["fsync_4k_ms"] > 0
    assert run["python"].startswith("Python 3.")


def test_load_generator_gives_up_on_a_server_that_never_answers():
    """Its sockets block with the kernel's time limit instead of Python's: a silent server
    still ends the session with an error (an OSError, as the sessions catch) in time."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        conn = loadgen.Connection(server.getsockname()[1], timeout=0.3)
        try:
            began = time.monotonic()
            with pytest.raises(OSError):
                conn.reply(b"220")
            assert 0.2 < time.monotonic() - began < 5
        finally:
            conn.close()
