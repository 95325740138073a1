"""Management commands (the manual's USER, DOMAIN, ALIAS, DENY, MLIST, MLISTUSER, QUEUE,
DNS, CONN, STATUS, CONF, HELP): check the parameters, act on the store, answer.

Placeholder table: completed by the management-commands work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .parser import Command


@dataclass
class Answer:
    ok: bool
    text: str
    listing: list[str] | None = None

    def render(self) -> bytes:
        lines = [("+OK " if self.ok else "-ERR ") + self.text]
        if self.listing is not None:
            lines += ["." + item if item.startswith(".") else item for item in self.listing]
            lines.append(".")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def execute(ctx: Any, command: Command, logged_in: bool) -> Answer:
    if command.verb != "HELP" and not logged_in:
        return Answer(False, "login first")
    return Answer(False, f"unknown command {command.verb}")


def summary(command: Command) -> str:
    return " ".join(command.words)
