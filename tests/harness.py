"""A real eXtremail server for tests: its own base directory, free loopback ports, started
as a separate process (so a test can stop it, ``kill -9`` it and start it again)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT_PARAMS = ("PORT_SMTP", "PORT_POP3", "PORT_REMT")


def wait_until(condition: Callable[[], object], timeout: float = 15.0, what: str = "condition",
               interval: float = 0.02) -> object:
    """Poll ``condition`` until it returns something true, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _port_block() -> range:
    """This pytest worker's own ports, below the kernel's ephemeral range: a port the kernel
    hands out (``bind`` to 0) can be taken by any test's client connection before the server
    binds it, and the server then fails to start."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    size = (low - 10000) // max(workers, 1)
    start = 10000 + (int(worker) if worker.isdigit() else 0) * size
    return range(start, start + size)


_PORTS = _port_block()
_next_port = random.randrange(len(_PORTS)) if len(_PORTS) > 0 else 0


def free_port() -> int:
    """A loopback port nothing listens on, and that no client socket will take."""
    global _next_port
    for _ in range(len(_PORTS)):
        port = _PORTS[_next_port]
        _next_port = (_next_port + 1) % len(_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # no room below the ephemeral range
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env_for(base: str) -> dict[str, str]:
    env = dict(os.environ)
    env["EXTREMAIL_HOME"] = base
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(base: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``smtpd ARGS`` (or another entry point with ``-m``) against ``base``."""
    return subprocess.run([sys.executable, "-m", "extremail", *args], env=env_for(base),
                          capture_output=True, text=True, timeout=timeout)


def run_tool(base: str, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``bin/adduser`` or ``bin/adddomain``."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "bin", tool), *args],
                          env=env_for(base), capture_output=True, text=True, timeout=timeout)


class Admin:
    """A management-protocol client that keeps its connection."""

    def __init__(self, port: int, password: str | None = "system") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()
        if password is not None:
            answer = self.cmd(f"LOGIN {password}")
            assert answer.startswith("+OK"), answer

    def line(self) -> str:
        raw = self.file.readline()
        if not raw:
            raise ConnectionError("closed")
        return raw.decode("utf-8").rstrip("\r\n")

    def send(self, text: str | bytes) -> None:
        self.sock.sendall(text if isinstance(text, bytes) else text.encode() + b"\r\n")

    def cmd(self, text: str | bytes) -> str:
        self.send(text)
        return self.line()

    def listing(self, text: str) -> tuple[str, list[str]]:
        """A command whose +OK reply carries a listing ending in a lone '.'."""
        first = self.cmd(text)
        if not first.startswith("+OK"):
            return first, []
        rows = []
        while True:
            row = self.line()
            if row == ".":
                return first, rows
            rows.append(row[1:] if row.startswith("..") else row)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class ServerProcess:
    """One server under test."""

    def __init__(self, base: str, **settings: str) -> None:
        self.base = base
        self.ports = {name: free_port() for name in PORT_PARAMS}
        self.settings = {"PORT_IMAP": "0", "PORT_SUBMISSION": "0", "CFG_BIND": "127.0.0.1",
                         "CFG_HOSTNAME": "mx.local.test", "CFG_LOCALDOMAIN": "local.test",
                         "CFG_POSTMASTER": "postmaster@local.test",
                         **{k: str(v) for k, v in self.ports.items()}}
        self.settings.update({k: str(v) for k, v in settings.items()})
        self.proc: subprocess.Popen | None = None
        self.write_config()

    def write_config(self) -> None:
        os.makedirs(os.path.join(self.base, "conf"), exist_ok=True)
        with open(os.path.join(self.base, "conf", "eXtremail.conf"), "w") as handle:
            for name, value in self.settings.items():
                handle.write(f"{name}={value}\n")

    def port(self, name: str) -> int:
        return int(self.settings[name])

    @property
    def smtp_port(self) -> int:
        return self.port("PORT_SMTP")

    @property
    def pop3_port(self) -> int:
        return self.port("PORT_POP3")

    @property
    def remt_port(self) -> int:
        return self.port("PORT_REMT")

    def path(self, *parts: str) -> str:
        return os.path.join(self.base, *parts)

    def start(self) -> None:
        self.stderr = open(self.path("stderr.log"), "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen([sys.executable, "-m", "extremail", "start", "--foreground"],
                                     env=env_for(self.base), stdout=subprocess.DEVNULL,
                                     stderr=self.stderr)
        wait_until(self._ready, 30, "the server to listen")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            with open(self.path("stderr.log"), errors="replace") as handle:
                stderr = handle.read()[-3000:]
            raise AssertionError(f"server exited with {self.proc.returncode}: "
                                 f"{self.log_text()[-3000:]}{stderr}")
        try:
            with socket.create_connection(("127.0.0.1", self.remt_port), timeout=1) as sock:
                sock.recv(100)
            return True
        except OSError:
            return False

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        finally:
            self.stderr.close()
        self.proc = None
        return code

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(30)
            self.stderr.close()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def admin(self, password: str | None = "system") -> Admin:
        return Admin(self.remt_port, password)

    def log_text(self) -> str:
        directory = self.path("log")
        if not os.path.isdir(directory):
            return ""
        return "".join(open(os.path.join(directory, name), encoding="utf-8", errors="replace").read()
                       for name in sorted(os.listdir(directory)))

    def logged(self, text: str, timeout: float = 10) -> bool:
        """Wait until the log holds ``text``: the server writes its log from a thread of its
        own, a moment after the event a client saw."""
        wait_until(lambda: text in self.log_text(), timeout, f"{text!r} in the log")
        return True

    def admin_do(self, *commands: str) -> None:
        """Run management commands that must each answer +OK."""
        admin = self.admin()
        for command in commands:
            answer = admin.cmd(command)
            assert answer.startswith("+OK"), (command, answer)
        admin.close()

    def setup_mail(self, domains: dict[str, dict[str, str]]) -> None:
        """Create domains and users: ``{"acme.test": {"mick": "secret"}}``."""
        admin = self.admin()
        for domain, users in domains.items():
            answer = admin.cmd(f"DOMAIN ADD NAME={domain}")
            assert answer.startswith("+OK"), answer
            for user, password in users.items():
                answer = admin.cmd(f"USER ADD NAME={user} DOMAIN={domain} PASS={password}")
                assert answer.startswith("+OK"), answer
        admin.close()

    def maildir(self, user: str, domain: str) -> str:
        return self.path("mbox", domain, user)
