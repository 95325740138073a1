"""Loopback helpers the servers need during the benchmark: the SMTP sink that relayed
mail of scenario (e) goes to, and a DNS server that answers every query locally, so no
server under test ever asks the system's resolver about the benchmark's domains.

The sink is Postfix's ``smtp-sink`` writing one file per accepted message into one
directory; a relay run is done when the count of files there has grown by its messages.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

from .peer import free_port, wait_listening

SMTP_SINK = "/usr/sbin/smtp-sink"
DNSMASQ = "/usr/sbin/dnsmasq"
SINK_USER = "postfix"


class Sink:
    """``smtp-sink`` on a loopback high port, capturing every message to a file."""

    def __init__(self, workdir: str) -> None:
        self.directory = os.path.join(workdir, "sink")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> str | None:
        if not os.path.exists(SMTP_SINK):
            return "smtp-sink (Debian's postfix) is not installed"
        if os.geteuid() != 0:
            return f"smtp-sink runs as {SINK_USER}, which needs root"
        try:
            pwd.getpwnam(SINK_USER)
        except KeyError:
            return f"no {SINK_USER} user for smtp-sink"
        return None

    def start(self) -> None:
        os.makedirs(self.directory, mode=0o755)
        owner = pwd.getpwnam(SINK_USER)
        os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", SINK_USER, "-d", os.path.join(self.directory, "%H%M%S."),
             f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_listening(self.port, proc=self.proc, what="smtp-sink")

    def count(self) -> int:
        return len(os.listdir(self.directory))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(20)
            self.proc = None


class LoopbackDNS:
    """dnsmasq answering every name from nothing (NXDOMAIN at once), forwarding nowhere."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> str | None:
        return None if shutil.which(DNSMASQ) else "dnsmasq (dnsmasq-base) is not installed"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [DNSMASQ, "--conf-file=/dev/null", "--keep-in-foreground", f"--port={self.port}",
             "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
             "--local=/#/", "--pid-file="],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(20)
            self.proc = None
