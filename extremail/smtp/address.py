"""RFC 5321 paths and ESMTP parameters of ``MAIL FROM:`` and ``RCPT TO:``.

Grammar (RFC 5321 4.1.2)::

    Reverse-path = Path / "<>"
    Forward-path = Path / "<Postmaster>"          (case-insensitive)
    Path         = "<" [ A-d-l ":" ] Mailbox ">"   (A-d-l: a source route, @a,@b)
    Mailbox      = Local-part "@" ( Domain / address-literal )
    Local-part   = Dot-string / Quoted-string

* A source route is parsed and dropped (RFC 5321 4.1.1.3 and appendix C): only the final
  mailbox is kept, so relay policy always judges the real destination.
* A quoted local part keeps its quotes unless it is a plain dot-string (RFC 5321 4.1.2:
  "a Quoted-string SHOULD NOT be used unless necessary"), so ``"user@remote"@local`` stays
  one local part of ``local`` and can never turn into another domain.
* Limits: a path is at most 256 octets with its brackets (RFC 5321 4.5.3.1.3).
* Lenient where real clients stray: a space after the colon is accepted; a path without
  its angle brackets is not (501).
* Parameters (RFC 5321 4.1.2 Mail-parameters): ``SIZE=`` (RFC 1870) and
  ``BODY=7BIT|8BITMIME`` (RFC 6152) on MAIL; none on RCPT.  An unknown keyword gets
  ``555 5.5.4`` (RFC 5321 4.1.1.11), a bad value ``501 5.5.4``.

Attack surface: every MAIL and RCPT argument; parsing is a single bounded left-to-right
scan, errors are :class:`~extremail.reply.Refusal` with the reply to send.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..reply import Refusal, Reply

MAX_PATH = 256         # RFC 5321 4.5.3.1.3, brackets included
MAX_DOMAIN = 255       # RFC 5321 4.5.3.1.2
MAX_SIZE_DIGITS = 20   # RFC 1870: size-value ::= 1*20DIGIT

# RFC 5321 Dot-string = Atom *("."  Atom), Atom = 1*atext
_DOT_STRING = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_UNQUOTED = re.compile(r"[^@>\s]*")
# RFC 5321 sub-domain = Let-dig [Ldh-str]; underscores are tolerated, as in the wild.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?\Z")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")        # RFC 5321 esmtp-keyword
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")             # RFC 5321 esmtp-value
BODY_TYPES = ("7BIT", "8BITMIME")


@dataclass(frozen=True)
class Path:
    """One parsed path: local part as it goes on the wire, domain lower-cased."""

    local: str = ""
    domain: str = ""      # "" for <> and for bare <postmaster>; "[...]" for a literal
    route: tuple[str, ...] = ()   # the source route as given; never used for routing

    @property
    def address(self) -> str:
        """``local@domain``; ``postmaster`` for the bare form; ``""`` for the null path."""
        return f"{self.local}@{self.domain}" if self.domain else self.local

    @property
    def is_null(self) -> bool:
        return not self.local


@dataclass(frozen=True)
class MailArgs:
    """What MAIL FROM carried: the reverse-path and its parameters."""

    path: Path
    size: int = 0              # declared SIZE (RFC 1870), 0 when absent
    body_8bit: bool = False    # BODY=8BITMIME (RFC 6152)


class _Syntax(Exception):
    """A path that does not follow the grammar; the text says where."""


def parse_mail(arg: str) -> MailArgs:
    """``FROM:<path> [params]`` -> :class:`MailArgs`; raise Refusal with the reply."""
    path, params = _parse(arg, "FROM:", sender=True)
    size = 0
    body_8bit = False
    for keyword, value in params.items():
        if keyword == "SIZE":
            # RFC 1870 6: size-value ::= 1*20DIGIT
            if value is None or not value.isdigit() or len(value) > MAX_SIZE_DIGITS:
                raise Refusal(_BAD_PARAM, "SIZE needs a number of octets")
            size = int(value)
        elif keyword == "BODY":
            if value is None or value.upper() not in BODY_TYPES:
                raise Refusal(_BAD_PARAM, "BODY must be 7BIT or 8BITMIME")
            body_8bit = value.upper() == "8BITMIME"
        else:
            raise Refusal(_UNKNOWN_PARAM, f"MAIL parameter {keyword} not recognized")
    return MailArgs(path, size, body_8bit)


def parse_rcpt(arg: str) -> Path:
    """``TO:<path>`` -> :class:`Path`; raise Refusal with the reply."""
    path, params = _parse(arg, "TO:", sender=False)
    if params:
        raise Refusal(_UNKNOWN_PARAM, f"RCPT parameter {next(iter(params))} not recognized")
    return path


def parse_bare(text: str) -> Path:
    """A mailbox with or without angle brackets (the argument of VRFY)."""
    text = text.strip()
    if not text.startswith("<"):
        text = f"<{text}>"
    try:
        path, end = _scan_path(text, 0, sender=False)
    except _Syntax as exc:
        raise Refusal(BAD_RCPT_ADDRESS, str(exc)) from None
    if text[end:].strip():
        raise Refusal(BAD_RCPT_ADDRESS, "unexpected text after the address")
    return path


# ---- replies (RFC 3463: X.1.7 sender syntax, X.1.3 recipient syntax, X.5.4 arguments) ----
BAD_SENDER_ADDRESS = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RCPT_ADDRESS = Reply(501, "5.1.3", "Bad recipient address syntax")
_BAD_PARAM = Reply(501, "5.5.4", "Syntax error in parameters")
_UNKNOWN_PARAM = Reply(555, "5.5.4", "Parameter not recognized")
_BAD_KEYWORD = Reply(501, "5.5.2", "Syntax error")


def _parse(arg: str, keyword: str, sender: bool) -> tuple[Path, dict[str, str | None]]:
    bad = BAD_SENDER_ADDRESS if sender else BAD_RCPT_ADDRESS
    verb = "MAIL FROM:<address>" if sender else "RCPT TO:<address>"
    if arg[:len(keyword)].upper() != keyword:
        raise Refusal(_BAD_KEYWORD, f"Syntax: {verb}")
    start = len(keyword)
    while start < len(arg) and arg[start] == " ":  # lenient: "MAIL FROM: <a@b>"
        start += 1
    if start >= len(arg) or arg[start] != "<":
        raise Refusal(bad, f"Syntax: {verb} (angle brackets required)")
    try:
        path, end = _scan_path(arg, start, sender)
    except _Syntax as exc:
        raise Refusal(bad, str(exc)) from None
    if end - start > MAX_PATH:  # RFC 5321 4.5.3.1.3
        raise Refusal(bad.with_text(f"Path too long (at most {MAX_PATH} octets)"))
    rest = arg[end:]
    if rest and not rest.startswith(" "):
        raise Refusal(bad, "unexpected text after the address")
    return path, _parse_params(rest)


def _parse_params(text: str) -> dict[str, str | None]:
    """RFC 5321 4.1.2: Mail-parameters = esmtp-param *(SP esmtp-param)."""
    params: dict[str, str | None] = {}
    for item in text.split():
        keyword, eq, value = item.partition("=")
        if not _KEYWORD.match(keyword) or (eq and not _VALUE.match(value)):
            raise Refusal(_BAD_PARAM, f"bad parameter {item[:40]}")
        keyword = keyword.upper()
        if keyword in params:
            raise Refusal(_BAD_PARAM, f"parameter {keyword} given twice")
        params[keyword] = value if eq else None
    return params


def _scan_path(text: str, pos: int, sender: bool) -> tuple[Path, int]:
    """Scan ``<...>`` starting at ``text[pos] == '<'``; return the path and the index after '>'."""
    pos += 1
    if text.startswith(">", pos):
        if not sender:
            raise _Syntax("the null path <> is not a recipient")
        return Path(), pos + 1
    route: list[str] = []
    # RFC 5321 4.1.2: A-d-l = At-domain *( "," At-domain ) ":"
    while text.startswith("@", pos):
        end = pos + 1
        if text.startswith("[", end):  # an address literal may hold colons (IPv6)
            end = text.find("]", end) + 1 or len(text)
        while end < len(text) and text[end] not in ",:>":
            end += 1
        route.append(_domain(text[pos + 1:end]))
        if end >= len(text) or text[end] == ">":
            raise _Syntax("source route without a mailbox")
        pos = end + 1
        if text[end] == ":":
            break
        if not text.startswith("@", pos):
            raise _Syntax("bad source route")
    local, pos = _scan_local(text, pos)
    if text.startswith(">", pos):
        # RFC 5321 4.1.1.3: <Postmaster> without a domain, recipients only
        if not sender and not route and local.lower() == "postmaster":
            return Path("postmaster"), pos + 1
        raise _Syntax("a domain is required (user@domain)")
    if not text.startswith("@", pos):
        raise _Syntax("expected @ after the local part")
    end = text.find(">", pos)
    if end < 0:
        raise _Syntax("missing closing angle bracket")
    return Path(local, _domain(text[pos + 1:end]), tuple(route)), end + 1


def _scan_local(text: str, pos: int) -> tuple[str, int]:
    """RFC 5321 Local-part = Dot-string / Quoted-string; returns its wire form."""
    if not text.startswith('"', pos):
        value = _UNQUOTED.match(text, pos).group(0)
        if not _DOT_STRING.match(value):
            raise _Syntax(f"bad local part {value[:64]!r}" if value else "empty local part")
        return value, pos + len(value)
    chars = []
    index = pos + 1
    while index < len(text):
        char = text[index]
        if char == '"':
            break
        if char == "\\":  # quoted-pairSMTP = %d92 %d32-126
            index += 1
            if index >= len(text) or not " " <= text[index] <= "~":
                raise _Syntax("bad quoted pair in the local part")
            char = text[index]
        elif not (" " <= char <= "~"):  # qtextSMTP: printable US-ASCII and space
            raise _Syntax("bad character in the quoted local part")
        chars.append(char)
        index += 1
    else:
        raise _Syntax("unterminated quoted local part")
    return quote_local("".join(chars)), index + 1


def quote_local(local: str) -> str:
    """The wire form of a local part: plain when it is a dot-string, else quoted."""
    if _DOT_STRING.match(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _domain(text: str) -> str:
    """RFC 5321 Domain / address-literal, lower-cased; raise _Syntax if malformed."""
    if not text or len(text) > MAX_DOMAIN:
        raise _Syntax("bad domain")
    if text.startswith("["):
        # RFC 5321 4.1.3: IPv4-address-literal / "IPv6:" IPv6-addr
        if not text.endswith("]"):
            raise _Syntax("bad address literal")
        inner = text[1:-1]
        try:
            if inner[:5].upper() == "IPV6:":
                return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
            return f"[{ipaddress.IPv4Address(inner)}]"
        except ValueError:
            raise _Syntax(f"bad address literal {text[:60]}") from None
    if not all(_LABEL.match(label) for label in text.split(".")):
        raise _Syntax(f"bad domain {text[:80]!r}")
    return text.lower()
