"""The envelope of a message: who sent it, to whom, and from where (RFC 5321 2.3.1)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Envelope:
    sender: str                      # reverse-path; "" for the null sender <>
    recipients: list[str]            # forward-paths as accepted at RCPT
    client_ip: str = ""
    helo: str = ""
    authenticated: str = ""          # user@domain after SMTP AUTH, else ""
    arrived: float = field(default_factory=time.time)
    body_8bit: bool = False          # MAIL FROM ... BODY=8BITMIME
