"""eXtremail under test: ``python -m extremail start --foreground`` in a fresh base directory,
started, configured and stopped through the test suite's :class:`harness.ServerProcess`
(the same way the tests run it), with its users created over the management port.

Remote mail goes to the benchmark's sink as the smart host, names are resolved by the
benchmark's loopback DNS server, and the listen backlog and connection limit are raised
to the figures the peers run with (Postfix: backlog 100, 300 processes).
"""

from __future__ import annotations

import os
import sys

from .peer import DOMAIN, PASSWORD, Peer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import harness  # noqa: E402  (tests/harness.py: one way to run the server, shared with the tests)


class Extremail(Peer):
    name = "extremail"
    scenarios = frozenset("abcdefh")

    def __init__(self, workdir: str, users: list[str], sink_port: int, dns_port: int = 0) -> None:
        super().__init__(workdir, users, sink_port, dns_port)
        settings = {"CFG_SMART_HOST": f"127.0.0.1:{sink_port}", "CFG_MAX_CONN": "1000",
                    "QUEUE_SMTP": "100", "QUEUE_POP3": "100"}
        if dns_port:
            settings["CFG_DNS_SERVERS"] = f"127.0.0.1:{dns_port}"
        self.server = harness.ServerProcess(os.path.join(workdir, "base"), **settings)
        self.smtp_port = self.server.smtp_port
        self.pop3_port = self.server.pop3_port

    def start(self) -> None:
        self.server.start()
        self.server.setup_mail({DOMAIN: {user: PASSWORD for user in self.users}})

    def stop(self) -> None:
        if self.server.proc is not None:
            try:
                self.server.stop()
            finally:
                self.kill()

    def roots(self) -> list[int]:
        return [self.server.proc.pid] if self.server.proc is not None else []

    def maildir(self, user: str) -> str:
        return self.server.maildir(user, DOMAIN)
