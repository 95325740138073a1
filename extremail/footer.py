"""Domain footers (the manual's MAILINFOOTER, MAILOUTFOOTER, SHOWFOOTER) added so the
message stays valid MIME.

Which footer: MAILINFOOTER of a local destination domain whose SHOWFOOTER is 1 or 3;
MAILOUTFOOTER of the sender's local domain whose SHOWFOOTER is 2 or 3, whatever the
destination.  The value names a file (relative paths from the base directory) whose text
is the footer; a missing file is logged and ignored.

How (RFC 2045, RFC 2046), on the CRLF wire form, touching as few bytes as possible:

* ``text/plain`` single part: the text is appended in the part's own
  Content-Transfer-Encoding (7bit/8bit: appended; quoted-printable: the footer encoded QP;
  base64: decoded, appended, re-encoded);
* ``multipart/*``: a new ``text/plain`` part before the closing delimiter (RFC 2046
  5.1.1), every other byte unchanged; ``multipart/signed`` and ``multipart/encrypted``
  (RFC 1847: exactly two parts) are wrapped instead;
* anything else (``text/html``, images, a text part that cannot carry the footer's
  characters): the whole body becomes the first part of a new ``multipart/mixed`` whose
  second part is the footer.

Attack surface: message headers and bodies come from the network; parsing uses the
standard ``email`` header parser, and anything it cannot make sense of is wrapped.
"""

from __future__ import annotations

import base64
import binascii
import os
import quopri
import re
import secrets
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

from . import log
from .net.lineio import to_crlf

LOG = log.get("footer")

SHOW_IN, SHOW_OUT, SHOW_BOTH = 1, 2, 3
MAX_LINE = 998  # RFC 5322 2.1.1: at most 998 characters a line
_PLAIN_CTE = ("", "7bit", "8bit", "binary")
_UTF8 = ("utf-8", "utf8")
_ASCII_INCOMPATIBLE = ("utf-16", "utf-32", "utf-7", "ucs-2", "ucs-4")
_CONTENT_HEADERS = (b"content-", b"mime-version:")


# ---- which footer ----

def _read(base: str, path: str) -> str | None:
    full = path if os.path.isabs(path) else os.path.join(base, path)
    try:
        with open(full, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        LOG.warning("footer file %s cannot be read: %s", full, exc.strerror or exc)
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    return text + "\n" if text else None


def incoming(store, base: str, domain: str) -> str | None:
    """The MAILINFOOTER text for mail destined to local ``domain``, if it shows one."""
    record = store.domains.rows.get(domain.lower())
    if record is None or record.showfooter not in (SHOW_IN, SHOW_BOTH) or not record.mailinfooter:
        return None
    return _read(base, record.mailinfooter)


def outgoing(store, base: str, sender: str) -> str | None:
    """The MAILOUTFOOTER text for mail sent from a local domain, if it shows one."""
    domain = sender.rpartition("@")[2].lower()
    record = store.domains.rows.get(domain) if domain else None
    if record is None or record.showfooter not in (SHOW_OUT, SHOW_BOTH) or not record.mailoutfooter:
        return None
    return _read(base, record.mailoutfooter)


# ---- adding one ----

@dataclass(frozen=True)
class _Content:
    maintype: str
    subtype: str
    charset: str
    cte: str
    boundary: str | None


def _split(message: bytes) -> tuple[bytes, bytes]:
    """(header block ending in CRLF or empty, body) of a CRLF message."""
    if message.startswith(b"\r\n"):
        return b"", message[2:]
    index = message.find(b"\r\n\r\n")
    if index < 0:
        return (message if message.endswith(b"\r\n") else message + b"\r\n"), b""
    return message[:index + 2], message[index + 4:]


def _headers(head: bytes) -> list[bytes]:
    """The header fields, each with its folded continuation lines (RFC 5322 2.2.3)."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1] if head else []:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


def _content(head: bytes) -> _Content:
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head + b"\r\n")
    boundary = parsed.get_param("boundary")
    return _Content(parsed.get_content_maintype(), parsed.get_content_subtype(),
                    (parsed.get_content_charset() or "us-ascii").lower(),
                    str(parsed.get("Content-Transfer-Encoding", "")).strip().lower(),
                    str(boundary) if boundary else None)


def _crlf_end(data: bytes) -> bytes:
    return data if not data or data.endswith(b"\r\n") else data + b"\r\n"


def _qp(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 6.7) of LF-form ``data``, with CRLF line ends."""
    return to_crlf(quopri.encodestring(data))


def footer_part(text: str) -> bytes:
    """The footer as a MIME body part (headers, blank line, body ending in CRLF)."""
    if text.isascii() and all(len(line) <= MAX_LINE for line in text.split("\n")):
        headers = b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n"
        body = to_crlf(text.encode("ascii"))
    else:
        headers = (b"Content-Type: text/plain; charset=utf-8\r\n"
                   b"Content-Transfer-Encoding: quoted-printable\r\n")
        body = _qp(text.encode("utf-8"))
    return headers + b"Content-Disposition: inline\r\n\r\n" + _crlf_end(body)


def _append_text(body: bytes, content: _Content, text: str) -> bytes | None:
    """The text/plain ``body`` with the footer appended in its own encoding, or None when
    the part cannot carry the footer's characters."""
    charset = content.charset
    if charset.startswith(_ASCII_INCOMPATIBLE) or (not text.isascii() and charset not in _UTF8):
        return None
    raw = text.encode("utf-8")
    if content.cte in _PLAIN_CTE:
        if not text.isascii() and content.cte in ("", "7bit"):
            return None  # 8-bit octets may not appear in a 7bit part (RFC 2045 2.7)
        return _crlf_end(body) + to_crlf(raw)
    if content.cte == "quoted-printable":
        body = _crlf_end(body)
        if body.rstrip(b"\r\n").endswith(b"="):
            body += b"\r\n"  # the last line ended in a soft break: start the footer on a new line
        return body + _qp(raw)
    if content.cte == "base64":
        try:
            decoded = base64.b64decode(re.sub(rb"\s+", b"", body), validate=True)
        except (binascii.Error, ValueError):
            return None
        if decoded and not decoded.endswith(b"\n"):
            decoded += b"\r\n"
        return to_crlf(base64.encodebytes(decoded + to_crlf(raw)))
    return None


def _new_boundary(body: bytes) -> str:
    while True:
        boundary = f"=_eXtremail_{secrets.token_hex(12)}"
        if boundary.encode() not in body:
            return boundary


def _insert_part(body: bytes, boundary: str, part: bytes) -> bytes:
    """Add ``part`` just before the closing delimiter of a multipart body (RFC 2046 5.1.1)."""
    delimiter = b"--" + boundary.encode("ascii", "replace")
    closing = None
    for match in re.finditer(rb"(?:^|\r\n)(" + re.escape(delimiter) + rb"--)[ \t]*(?:\r\n|$)", body):
        closing = match.start(1)
    if closing is None:  # no closing delimiter: add ours at the end
        return _crlf_end(body) + delimiter + b"\r\n" + part + b"\r\n" + delimiter + b"--\r\n"
    if closing == 0:
        return delimiter + b"\r\n" + part + b"\r\n" + body
    return body[:closing] + delimiter + b"\r\n" + part + b"\r\n" + body[closing:]


def _wrap(head: bytes, body: bytes, part: bytes) -> bytes:
    """Make the message multipart/mixed: its own content first, the footer second."""
    fields = _headers(head)
    content_fields = [f for f in fields if f.lower().startswith(b"content-")]
    other = [f for f in fields if not f.lower().startswith(_CONTENT_HEADERS)]
    boundary = _new_boundary(body + part)
    delimiter = b"--" + boundary.encode("ascii")
    new_head = b"".join(other) + (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n"
                                  b'\tboundary="' + boundary.encode("ascii") + b'"\r\n')
    return (new_head + b"\r\n" + delimiter + b"\r\n" + b"".join(content_fields) + b"\r\n" + body
            + b"\r\n" + delimiter + b"\r\n" + part + b"\r\n" + delimiter + b"--\r\n")


def add(message: bytes, text: str) -> bytes:
    """``message`` (CRLF wire form) with the footer ``text`` added, still valid MIME."""
    head, body = _split(message)
    content = _content(head)
    part = footer_part(text)
    if (content.maintype == "multipart" and content.boundary
            and content.subtype not in ("signed", "encrypted")):
        return head + b"\r\n" + _insert_part(body, content.boundary, part)
    if (content.maintype, content.subtype) == ("text", "plain"):
        appended = _append_text(body, content, text)
        if appended is not None:
            return head + b"\r\n" + appended
    return _wrap(head, body, part)
