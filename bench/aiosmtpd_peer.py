"""aiosmtpd (PyPI) with a Maildir handler: the asyncio Python peer of scenarios (a)-(d), (h).

Run as a program (``python -m bench.aiosmtpd_peer --port P --mail DIR``) it serves
SMTP on loopback and, for each message, writes one file into the first recipient's
Maildir, hard-links it into the others' and fsyncs every file and directory before it
returns ``250`` (the same durability the other servers give).  The blocking writes run
in the event loop's thread pool, so sessions wait on their own fsyncs concurrently.
Imported, :class:`Aiosmtpd` starts and stops that program for the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys

from . import maildirs
from .peer import DOMAIN, Peer, free_port, wait_listening

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MaildirHandler:
    """aiosmtpd handler: accept recipients of the benchmark's domain, deliver durably."""

    def __init__(self, mail: str) -> None:
        self.mail = mail
        self.made: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if not address.lower().endswith("@" + DOMAIN):
            return "550 5.1.1 not a local recipient"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def _deliver(self, rcpts: list[str], data: bytes) -> None:
        paths = [os.path.join(self.mail, DOMAIN, rcpt.split("@")[0].lower()) for rcpt in rcpts]
        for path in paths:
            if path not in self.made:
                self.made.add(maildirs.make(path))
        maildirs.deliver(paths, data.replace(b"\r\n", b"\n"))

    async def handle_DATA(self, server, session, envelope):
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._deliver, envelope.rcpt_tos, envelope.content)
        return "250 2.0.0 OK delivered"


def main() -> None:
    from aiosmtpd.smtp import SMTP

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mail", required=True)
    args = parser.parse_args()
    handler = MaildirHandler(args.mail)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="aiosmtpd.bench.test"), "127.0.0.1", args.port,
            backlog=100)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


class Aiosmtpd(Peer):
    name = "aiosmtpd"
    scenarios = frozenset("abcdh")

    @staticmethod
    def available() -> str | None:
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            return "aiosmtpd is not installed in this Python (bench/run installs it)"
        return None

    def __init__(self, workdir: str, users: list[str], sink_port: int, dns_port: int = 0) -> None:
        super().__init__(workdir, users, sink_port, dns_port)
        self.smtp_port = free_port()

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT)
        with open(os.path.join(self.workdir, "stderr.log"), "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.aiosmtpd_peer", "--port", str(self.smtp_port),
                 "--mail", self.mail], env=env, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)
        wait_listening(self.smtp_port, proc=self.proc, what="aiosmtpd")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait(20)
        self.proc = None



if __name__ == "__main__":
    main()
