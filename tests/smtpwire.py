"""Helpers for the SMTP tests: a raw-socket SMTP client and a module-wide mail server."""

from __future__ import annotations

import os
import re
import socket

from harness import ServerProcess, wait_until

# RFC 5321 4.2: "250-text" continues, "250 text" ends; RFC 3463 class.subject.detail
_REPLY_LINE = re.compile(rb"^(\d{3})([ -])(.*)$")
ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3} ")
OUTSIDE = "127.0.0.2"   # a loopback source address that plays a host on the internet


class Raw:
    """An SMTP client on a plain socket, to send exactly the bytes a test wants."""

    def __init__(self, port: int, source: str | None = None, timeout: float = 20) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data if isinstance(data, bytes) else data.encode() + b"\r\n")

    def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: its code and its lines joined by newlines."""
        lines = []
        while True:
            raw = self.file.readline()
            if not raw:
                raise ConnectionError("connection closed")
            match = _REPLY_LINE.match(raw.rstrip(b"\r\n"))
            assert match, f"not an SMTP reply line: {raw!r}"
            lines.append(match.group(3).decode())
            if match.group(2) == b" ":
                return int(match.group(1)), "\n".join(lines)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.send(line)
        return self.reply()

    def closed(self) -> bool:
        """True when the server has closed the connection (no more bytes)."""
        return self.file.read() == b""

    def close(self) -> None:
        self.sock.close()


def start(base: str, **settings: str) -> ServerProcess:
    """A running server with acme.test (mick, joe) and the relay trust of ``settings``."""
    server = ServerProcess(base, **settings)
    server.start()
    server.setup_mail({"acme.test": {"mick": "secret", "joe": "secret"}})
    return server


def messages(server: ServerProcess, user: str = "mick", domain: str = "acme.test") -> dict[str, bytes]:
    """The messages in a user's Maildir/new by file name."""
    directory = os.path.join(server.maildir(user, domain), "new")
    if not os.path.isdir(directory):
        return {}
    out = {}
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as handle:
            out[name] = handle.read()
    return out


def new_messages(server: ServerProcess, before: dict[str, bytes], user: str = "mick",
                 domain: str = "acme.test") -> list[bytes]:
    """Wait for messages that were not in ``before`` (a :func:`messages` snapshot)."""
    def arrived() -> list[bytes]:
        return [data for name, data in messages(server, user, domain).items() if name not in before]
    return wait_until(arrived, what=f"new mail for {user}@{domain}")
