"""One catalogue of protocol replies and the exception that carries one.

A policy check or a command handler raises :class:`Refusal` with a :class:`Reply`; the
session's command loop catches it once per command and sends it (STYLE.md habit 3).
SMTP replies carry an RFC 3463 enhanced status code; POP3 and management replies are
``+OK``/``-ERR`` lines made with :func:`ok` and :func:`err`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: basic code (RFC 5321 4.2), enhanced code (RFC 3463) and text."""

    code: int
    enhanced: str
    text: str

    def format(self, text: str | None = None) -> bytes:
        """The reply as wire bytes; a text with several lines becomes a multi-line reply."""
        lines = (text if text is not None else self.text).split("\n")
        prefix = f"{self.enhanced} " if self.enhanced else ""
        out = []
        for index, line in enumerate(lines):
            sep = " " if index == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8", "replace")

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}".replace("  ", " ")


class Refusal(Exception):
    """Stop this command (or recipient) with the reply it carries."""

    def __init__(self, reply: Reply, text: str | None = None) -> None:
        self.reply = reply.with_text(text) if text is not None else reply
        super().__init__(str(self.reply))


class Disconnect(Exception):
    """End the session after sending the reply it carries (if any)."""

    def __init__(self, reply: Reply | None = None, line: bytes | None = None) -> None:
        self.reply = reply
        self.line = line
        super().__init__(str(reply) if reply else "disconnect")


def ok(text: str) -> bytes:
    return f"+OK {text}\r\n".encode("utf-8", "replace")


def err(text: str) -> bytes:
    return f"-ERR {text}\r\n".encode("utf-8", "replace")


# ---- SMTP catalogue (RFC 5321 4.2.3 codes, RFC 3463 enhanced codes) ----
SERVICE_READY = Reply(220, "", "ESMTP eXtremail ready")
CLOSING = Reply(221, "2.0.0", "Bye")
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RCPT_OK = Reply(250, "2.1.5", "Recipient OK")
QUEUED = Reply(250, "2.0.0", "Message accepted")
RESET = Reply(250, "2.0.0", "Reset state")
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
HELP = Reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP HELP VRFY QUIT")

SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
TOO_BUSY = Reply(421, "4.3.2", "Too many connections, try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
DISK_FULL = Reply(452, "4.3.1", "Insufficient system storage, try again later")
TOO_MANY_RCPTS = Reply(452, "4.5.3", "Too many recipients")
OVER_QUOTA_TEMP = Reply(452, "4.2.2", "Mailbox full")
RELAY_TEMP = Reply(451, "4.4.0", "Temporary failure, try again later")

SYNTAX = Reply(500, "5.5.2", "Syntax error, command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.6", "Line too long")
BAD_ARGS = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_ADDRESS = Reply(501, "5.1.3", "Bad address syntax")
PATH_TOO_LONG = Reply(501, "5.1.3", "Path too long")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
PARAM_NOT_IMPLEMENTED = Reply(555, "5.5.4", "Parameter not recognized or not implemented")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
DENIED = Reply(550, "5.7.1", "Access denied")
CONNECT_DENIED = Reply(554, "5.7.1", "Access denied")
OVER_QUOTA = Reply(552, "5.2.2", "Mailbox full")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
LOOP = Reply(554, "5.4.6", "Routing loop detected: too many Received headers")
NO_VALID_RCPTS = Reply(554, "5.5.1", "No valid recipients")
TEXT_LINE_TOO_LONG = Reply(500, "5.5.6", "Message text line too long (RFC 5321 4.5.3.1.6)")
