"""``smtpd`` through the real command line: start, stop, status, version, login."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from extremail import VERSION, auth, config
from harness import Admin, ServerProcess, env_for, run_cli, wait_until


@pytest.fixture
def daemon(tmp_path):
    """A configured base directory (free loopback ports); whatever runs there is stopped."""
    server = ServerProcess(str(tmp_path / "base"))
    yield server
    if running_pid(server):
        run_cli(server.base, "stop")


def running_pid(server: ServerProcess) -> int | None:
    try:
        with open(server.path("data", "pid")) as handle:
            pid = int(handle.read().strip())
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as handle:
            if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None
        return pid
    except (OSError, ValueError):
        return None


def greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.makefile("rb").readline()


def test_start_detaches_and_returns_once_listening(daemon: ServerProcess) -> None:
    result = run_cli(daemon.base, "start")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"eXtremail {VERSION} started (pid ")
    # no waiting: the listener is bound when start returns
    assert greeting(daemon.remt_port).startswith(b"+OK eXtremail")
    pid = running_pid(daemon)
    assert pid and f"(pid {pid})" in result.stdout
    status = run_cli(daemon.base, "status")
    assert (status.returncode, status.stdout.strip()) == (0, f"eXtremail is running (pid {pid})")
    again = run_cli(daemon.base, "start")
    assert again.returncode == 1 and f"already running (pid {pid})" in again.stderr
    stop = run_cli(daemon.base, "stop")
    assert stop.returncode == 0 and stop.stdout.strip() == f"eXtremail stopped (pid {pid})"
    assert running_pid(daemon) is None
    status = run_cli(daemon.base, "status")
    assert (status.returncode, status.stdout.strip()) == (3, "eXtremail is stopped")
    stop = run_cli(daemon.base, "stop")
    assert stop.returncode == 1 and "not running" in stop.stderr


def test_first_start_creates_the_whole_layout(tmp_path) -> None:
    ports = ServerProcess(str(tmp_path / "settings"))  # only for its free ports and settings
    conf = tmp_path / "elsewhere.conf"
    conf.write_text("".join(f"{k}={v}\n" for k, v in ports.settings.items()))
    base = str(tmp_path / "new" / "base")
    result = run_cli(base, "-c", str(conf), "start")
    try:
        assert result.returncode == 0, result.stderr
        for sub in ("conf", "data", "mbox", "queue", "tmp", "log"):
            assert os.path.isdir(os.path.join(base, sub)), sub
        with open(os.path.join(base, "conf", "eXtremail.conf")) as handle:
            assert handle.read() == config.render_default_file()
        for name in ("dsn_fail", "dsn_dela"):
            assert os.path.getsize(os.path.join(base, "data", name)) > 0
        with open(os.path.join(base, "data", "remt_login")) as handle:
            stored = handle.read().strip()
        assert stored.startswith("$scrypt$") and "system" not in stored
        assert auth.verify_password("system", stored)
        Admin(ports.remt_port, "system").close()
    finally:
        assert run_cli(base, "-c", str(conf), "stop").returncode == 0


def test_start_fails_when_a_port_is_taken(daemon: ServerProcess) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", daemon.remt_port))
        taken.listen(1)
        result = run_cli(daemon.base, "start")
    assert result.returncode == 1
    assert f"PORT_REMT={daemon.remt_port}" in result.stderr
    assert running_pid(daemon) is None
    assert run_cli(daemon.base, "status").returncode == 3


@pytest.mark.parametrize("line, words", [
    ("NOT_A_PARAMETER=1", "unknown parameter 'NOT_A_PARAMETER'"),
    ("CFG_LOG_LEVEL=9", "CFG_LOG_LEVEL=9"),
])
def test_start_refuses_a_bad_configuration_naming_the_line(daemon: ServerProcess, line: str,
                                                           words: str) -> None:
    with open(daemon.path("conf", "eXtremail.conf"), "a") as handle:
        handle.write(f"# extra\n{line}\n")
    result = run_cli(daemon.base, "start")
    lineno = len(daemon.settings) + 2
    assert result.returncode == 1
    assert f"eXtremail.conf:{lineno}:" in result.stderr and words in result.stderr
    assert running_pid(daemon) is None


def test_a_stale_pid_file_after_kill_9_does_not_block_the_next_start(daemon: ServerProcess) -> None:
    assert run_cli(daemon.base, "start").returncode == 0
    pid = running_pid(daemon)
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: running_pid(daemon) is None, what="the killed daemon to go")
    assert os.path.exists(daemon.path("data", "pid"))  # left behind
    assert run_cli(daemon.base, "status").returncode == 3
    result = run_cli(daemon.base, "start")
    assert result.returncode == 0, result.stderr
    assert running_pid(daemon) not in (None, pid)
    assert greeting(daemon.remt_port).startswith(b"+OK")


def test_stop_lets_a_session_say_goodbye(daemon: ServerProcess) -> None:
    assert run_cli(daemon.base, "start").returncode == 0
    client = daemon.admin()
    assert run_cli(daemon.base, "stop").returncode == 0
    assert client.line() == "-ERR server shutting down, bye"
    assert client.file.readline() == b""
    assert daemon.logged("eXtremail stopped")


def test_version() -> None:
    result = run_cli("/nonexistent-base", "version")
    assert (result.returncode, result.stdout) == (0, f"eXtremail {VERSION}\n")


def test_login_changes_the_management_password(daemon: ServerProcess) -> None:
    assert run_cli(daemon.base, "start").returncode == 0
    result = run_cli(daemon.base, "login", "N3w pass")
    assert result.returncode == 0
    with open(daemon.path("data", "remt_login")) as handle:
        assert "N3w" not in handle.read()
    old = daemon.admin(password=None)
    assert old.cmd("LOGIN system") == "-ERR login failed"
    assert old.cmd('LOGIN "N3w pass"') == "+OK logged in"
    old.close()


def test_foreground_logs_to_stderr_and_stops_cleanly(daemon: ServerProcess) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "extremail", "start", "--foreground"],
                            env=env_for(daemon.base), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith(f"eXtremail {VERSION} started (pid {proc.pid})")
        assert run_cli(daemon.base, "status").stdout.strip() == \
            f"eXtremail is running (pid {proc.pid})"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert "eXtremail stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert run_cli(daemon.base, "status").returncode == 3


def test_daily_log_file_and_log_level(make_server) -> None:
    server = make_server()
    server.admin().close()
    server.stop()
    day = time.strftime("%Y%m%d", time.gmtime())
    assert os.path.exists(server.path("log", f"eXtremail-{day}.log"))
    assert " INFO " in server.log_text() and "management login" in server.log_text()
    quiet = make_server(CFG_LOG_LEVEL="1")
    quiet.admin().cmd("LOGIN wrong")
    quiet.stop()
    assert " INFO " not in quiet.log_text() and " WARNING " not in quiet.log_text()


def test_postmaster_outside_the_local_domains_is_warned_at_start(make_server) -> None:
    """The shipped default (Postmaster@localdomain, no such domain) would send postmaster
    mail away; the administrator is told at every start until it is fixed."""
    server = make_server(CFG_POSTMASTER="postmaster@elsewhere.test")
    wait_until(lambda: "CFG_POSTMASTER=postmaster@elsewhere.test is not in a local domain"
               in server.log_text(), 10, "the postmaster warning")
    server.setup_mail({"elsewhere.test": {}})
    server.restart()
    wait_until(lambda: server.log_text().count("listening for remt") == 2, 10, "the second start")
    assert server.log_text().count("is not in a local domain") == 1
