"""What every server in the benchmark looks like to the scenarios: a private instance in
its own work directory on loopback high ports, started and stopped by the benchmark.

A peer is told its mail users before it starts (Postfix and Dovecot read their maps at
start-up), says where a user's Maildir is, and names the processes whose CPU and memory
are its cost.  Every process a peer starts runs in its own process group, so
:meth:`Peer.kill` can end all of them even when a graceful stop fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from . import procstat

DOMAIN = "bench.test"
PASSWORD = "bench-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None,
                   what: str = "server") -> None:
    """Wait until something accepts connections on the loopback ``port``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} is not listening on port {port}") from None
            time.sleep(0.05)


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a setup command; a failure raises with its output."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): "
                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done


class Peer:
    """Base of the servers under test."""

    name = "peer"
    scenarios: frozenset[str] = frozenset()  # the letters this server takes part in

    def __init__(self, workdir: str, users: list[str], sink_port: int, dns_port: int = 0) -> None:
        self.workdir = workdir
        self.users = users
        self.sink_port = sink_port  # where relayed mail goes
        self.dns_port = dns_port    # a loopback DNS server, for peers that resolve names
        self.smtp_port = 0
        self.pop3_port = 0
        self.mail = os.path.join(workdir, "mail")    # Maildirs: mail/<domain>/<user>
        self.proc: subprocess.Popen | None = None  # the server's main process, if one
        os.makedirs(workdir, exist_ok=True)

    @staticmethod
    def available() -> str | None:
        """Why this server cannot run here, or None when it can."""
        return None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def roots(self) -> list[int]:
        """The processes (with their descendants) that make up the running server."""
        return [self.proc.pid] if self.proc is not None else []

    def maildir(self, user: str) -> str:
        return os.path.join(self.mail, DOMAIN, user)

    def prepared(self) -> None:
        """Called once the POP3 scenario's Maildirs are pre-filled."""

    def address(self, user: str) -> str:
        return f"{user}@{DOMAIN}"

    def pop3_login(self, user: str) -> tuple[str, str]:
        return self.address(user), PASSWORD

    def kill(self) -> None:
        """Last resort: SIGKILL every process of the server's tree."""
        for pid in procstat.tree(self.roots()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
