"""Review finding in ``smtpd``: a PID file left by ``kill -9`` whose number now belongs to
another program.  ``smtpd status`` called that program "eXtremail is running", ``smtpd stop``
sent it SIGTERM, and ``smtpd start`` refused to start."""

from __future__ import annotations

import os
import subprocess

from harness import ServerProcess, run_cli


def test_pid_file_naming_another_program_is_stale(tmp_path) -> None:
    server = ServerProcess(str(tmp_path / "base"))
    other = subprocess.Popen(["sleep", "120"])
    try:
        os.makedirs(server.path("data"), exist_ok=True)
        with open(server.path("data", "pid"), "w") as handle:
            handle.write(f"{other.pid}\n")
        assert run_cli(server.base, "status").returncode == 3
        assert run_cli(server.base, "stop").returncode == 1
        assert other.poll() is None  # never signalled
        result = run_cli(server.base, "start")
        assert result.returncode == 0, result.stderr
        assert run_cli(server.base, "stop").returncode == 0
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
