"""Delivery status notifications: RFC 3464 reports in an RFC 6522 multipart/report.

A report has three parts: a human-readable text (FILE_DSN_FAIL or FILE_DSN_DELA, with
the placeholders ``{hostname}``, ``{postmaster}``, ``{hours}`` and ``{expire}``), a
``message/delivery-status`` part (RFC 3464 2.2 per-message and 2.3 per-recipient
fields), and the original message's headers as ``text/rfc822-headers`` (RFC 6522 4).
It comes from the postmaster with the null envelope sender (RFC 5321 4.5.5), so a
report is never answered by another one, and none is ever made about a message whose
own sender was null (no bounce loops).

API for every part of the server that learns a final or delayed outcome:

* :func:`build` returns the report's bytes (CRLF), pure apart from reading the text file;
* :func:`send` builds it and injects it like any mail (a local sender gets it in its
  Maildir, a remote one through the spool); it returns the injection's reply.

``recipients`` are objects with ``address``, ``original``, ``reply`` (``"550 5.1.1 ..."``),
``remote_mta`` and ``last_attempt`` (epoch, 0 = unknown): :class:`~extremail.queue.spool.Recipient`.

Attack surface: the reply texts and the original headers come from the network; they are
copied into the report as data, with control characters removed from single-line fields.
"""

from __future__ import annotations

import re
import secrets
import textwrap
import time
from email.utils import formatdate, make_msgid
from typing import Any, Protocol

from . import delivery, layout, log
from .envelope import Envelope
from .reply import Reply

LOG = log.get("dsn")

FAILED, DELAYED = "failed", "delayed"
_TEXT_PARAM = {FAILED: ("FILE_DSN_FAIL", "dsn_fail"), DELAYED: ("FILE_DSN_DELA", "dsn_dela")}
_SUBJECT = {FAILED: "Undelivered Mail Returned to Sender",
            DELAYED: "Delayed Mail (still being retried)"}
_STATUS_RE = re.compile(r"^\s*(\d)\d\d[ -]+([245]\.\d{1,3}\.\d{1,3})\b")
_CODE_RE = re.compile(r"^\s*([245])\d\d\b")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
MAX_TEXT = 2000  # characters of a remote reply kept in a report
WIDTH = 78       # RFC 5322 2.1.1: lines SHOULD be at most 78 characters


class Outcomes(Protocol):
    address: str
    original: str
    reply: str
    remote_mta: str
    last_attempt: float


def status_code(reply_text: str, kind: str) -> str:
    """The RFC 3463 status of a reply: its enhanced code, or one made from its basic code."""
    match = _STATUS_RE.match(reply_text)
    if match and match.group(2)[0] == match.group(1):  # RFC 3463 2: the classes agree
        return match.group(2)
    match = _CODE_RE.match(reply_text)
    if match and match.group(1) in "45":
        return f"{match.group(1)}.0.0"
    return "4.0.0" if kind == DELAYED else "5.0.0"


def _field(value: str) -> str:
    """One line of printable ASCII, at most :data:`MAX_TEXT` characters (a remote reply may
    run to 200 KB)."""
    text = _CONTROL.sub(" ", value).strip().encode("ascii", "replace").decode("ascii")
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 3] + "..."


def _folded(line: str, indent: str, end: str) -> str:
    """``line`` in lines of at most :data:`WIDTH` characters, each after the first starting
    with ``indent`` (RFC 5322 2.1.1 and 2.2.3: a field folds at white space)."""
    return end.join(textwrap.wrap(line, WIDTH, subsequent_indent=indent, break_on_hyphens=False))


def _date(when: float) -> str:
    return formatdate(when, usegmt=True)


def _human_text(cfg: Any, kind: str) -> str:
    param, shipped = _TEXT_PARAM[kind]
    try:
        with open(getattr(cfg, param), "rb") as handle:
            raw = handle.read()
    except OSError:
        raw = layout.shipped(shipped)
    text = raw.decode("utf-8", "replace")
    for name, value in (("hostname", cfg.hostname), ("postmaster", cfg.postmaster),
                        ("hours", str(cfg.CFG_HOR_DELAY_DSN)), ("expire", str(cfg.CFG_HOR_RETRY_MAIL))):
        text = text.replace("{" + name + "}", value)
    return text.replace("\r\n", "\n").rstrip("\n") + "\n"


def _original_headers(original: bytes) -> bytes:
    index = original.find(b"\r\n\r\n")
    head = original if index < 0 else original[:index + 2]
    return head if head.endswith(b"\r\n") else head + b"\r\n"


def build(cfg: Any, kind: str, envelope: Envelope, original: bytes, recipients: list[Outcomes],
          now: float | None = None) -> bytes:
    """The report (CRLF wire form) about ``recipients`` of the message ``original``."""
    now = time.time() if now is None else now
    boundary = f"=_eXtremail_dsn_{secrets.token_hex(10)}"
    delimiter = f"--{boundary}"
    human = _human_text(cfg, kind)
    human += "\n" + "".join(_folded(f"<{_field(r.address)}>: {_field(r.reply)}", "    ", "\n") + "\n"
                             for r in recipients)
    human_bytes = human.encode("utf-8")
    human_cte = "7bit" if human.isascii() else "8bit"

    # RFC 3464 2.2: per-message fields
    status = [f"Reporting-MTA: dns; {cfg.hostname}", f"Arrival-Date: {_date(envelope.arrived)}"]
    for r in recipients:
        # RFC 3464 2.3: per-recipient fields, a blank line before each group
        status.append("")
        if r.original and r.original.lower() != r.address.lower():
            status.append(f"Original-Recipient: rfc822; {_field(r.original)}")
        status.append(f"Final-Recipient: rfc822; {_field(r.address)}")
        status.append(f"Action: {kind}")
        status.append(f"Status: {status_code(r.reply, kind)}")
        if r.remote_mta:
            status.append(f"Remote-MTA: dns; {_field(r.remote_mta)}")
        if r.reply:
            status.append(_folded(f"Diagnostic-Code: smtp; {_field(r.reply)}", " ", "\r\n"))
        if r.last_attempt:
            status.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if kind == DELAYED:
            until = envelope.arrived + cfg.CFG_HOR_RETRY_MAIL * 3600
            status.append(f"Will-Retry-Until: {_date(until)}")
    status_bytes = ("\r\n".join(status) + "\r\n").encode("ascii")

    head = "\r\n".join([
        f"From: Mail Delivery System <{cfg.postmaster}>",
        f"To: <{_field(envelope.sender)}>",
        f"Subject: {_SUBJECT[kind]}",
        f"Date: {_date(now)}",
        f"Message-ID: {make_msgid('dsn', domain=cfg.CFG_LOCALDOMAIN)}",
        "Auto-Submitted: auto-replied",  # RFC 3834 5
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
    ]) + "\r\n\r\n"
    parts = [
        head.encode("ascii"),
        f"{delimiter}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: {human_cte}\r\nContent-Description: Notification\r\n\r\n"
        .encode("ascii"),
        human_bytes.replace(b"\n", b"\r\n"),
        f"\r\n{delimiter}\r\nContent-Type: message/delivery-status\r\n"
        f"Content-Description: Delivery report\r\n\r\n".encode("ascii"),
        status_bytes,
        f"\r\n{delimiter}\r\nContent-Type: text/rfc822-headers\r\n"
        f"Content-Description: Undelivered Message Headers\r\n\r\n".encode("ascii"),
        _original_headers(original),
        f"\r\n{delimiter}--\r\n".encode("ascii"),
    ]
    return b"".join(parts)


def send(ctx: Any, kind: str, envelope: Envelope, original: bytes,
         recipients: list[Outcomes]) -> Reply | None:
    """Build a report for the sender of ``envelope`` and inject it.  Returns the reply of
    the injection (a 4xx means: not stored, try again later), or None when no report is
    due (null sender, nobody to report on)."""
    if not envelope.sender or not recipients:
        return None
    data = build(ctx.cfg, kind, envelope, original, recipients)
    report = Envelope(sender="", recipients=[envelope.sender], helo=ctx.cfg.hostname)
    answer = delivery.accept(ctx, report, data, footers=False)
    LOG.info("dsn: %s report to <%s> about %d recipient(s): %s", kind, envelope.sender,
             len(recipients), answer)
    return answer
