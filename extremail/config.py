"""eXtremail.conf: every parameter, its default, its validation.

The file holds ``NAME=value`` lines; ``#`` starts a comment.  Every default path of the
manual is relative to the base directory (``/home/eXtremail`` or ``$EXTREMAIL_HOME``),
and a relative path written in the file is taken relative to it too.  Loading yields an
immutable :class:`Config` snapshot; SIGHUP reloads data files, not this file.

Attack surface: none on the wire; the file is written by the administrator.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from collections.abc import Callable, Mapping

from . import names

DEFAULT_BASE = "/home/eXtremail"


class ConfigError(Exception):
    """A configuration file that cannot be used; the text names the line."""


def base_directory() -> str:
    """The base directory: ``$EXTREMAIL_HOME`` or the manual's ``/home/eXtremail``."""
    return os.path.abspath(os.environ.get("EXTREMAIL_HOME") or DEFAULT_BASE)


# ---- value parsers: each takes the text and returns the value or raises ValueError ----

def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    wanted = f"must be an integer {low}" + (f"..{high}" if high is not None else " or more")

    def parse(text: str) -> int:
        digits = text[1:] if low < 0 and text.startswith("-") else text
        if not (digits.isascii() and digits.isdigit()):  # int() also takes "1_0", "+1", "\\u0661"
            raise ValueError(wanted)
        value = int(text, 10)
        if value < low or (high is not None and value > high):
            raise ValueError(wanted)
        return value
    return parse


def _text(text: str) -> str:
    if any(ord(ch) < 32 for ch in text):
        raise ValueError("control characters are not allowed")
    return text


def _address(text: str) -> str:
    if not text:
        raise ValueError("an address is required")
    ipaddress.ip_address(text)
    return text


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CFG_LOCALIP: comma list of addresses or ``a.b.c.d/n`` networks."""
    nets = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            nets.append(ipaddress.ip_network(item, strict=False))
    return tuple(nets)


def _hostports(default_port: int) -> Callable[[str], tuple[tuple[str, int], ...]]:
    def parse(text: str) -> tuple[tuple[str, int], ...]:
        result = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            host, port = split_hostport(item, default_port)
            result.append((host, port))
        return tuple(result)
    return parse


def split_hostport(item: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif item.count(":") == 1:
        host, port_text = item.split(":")
        port = int(port_text)
    else:
        host, port = item, default_port
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad host or port in {item!r}")
    return host, port


def _mailbox(text: str) -> str:
    if "@" not in text or any(ord(ch) < 33 for ch in text):
        raise ValueError("must be a mailbox user@domain")
    return text


def _hostname(text: str) -> str:
    """A domain name (RFC 1035 labels, as :func:`extremail.names.domain` checks them)."""
    try:
        return names.domain(text)
    except names.InvalidName:
        raise ValueError("must be a host name") from None


def _hostname_or_empty(text: str) -> str:
    """CFG_HOSTNAME: empty means the machine's own name."""
    return _hostname(text) if text else ""


@dataclass(frozen=True)
class Param:
    name: str
    default: str
    parse: Callable[[str], Any]
    section: str
    help: str
    kind: str = "value"  # "file" or "dir": a path taken relative to the base directory


PORT = _int_range(0, 65535)
SECS = _int_range(1, 86400)
COUNT = _int_range(1, 10000)

PARAMS: tuple[Param, ...] = (
    Param("PORT_SMTP", "25", PORT, "Ports", "SMTP port"),
    Param("PORT_POP3", "110", PORT, "Ports", "POP3 port"),
    Param("PORT_REMT", "4501", PORT, "Ports", "Remote management port"),
    Param("PORT_IMAP", "143", PORT, "Ports", "IMAP4 port (served once IMAP lands)"),
    Param("PORT_SMTP_OUT", "25", _int_range(1, 65535), "Ports",
          "Port used when connecting to remote MX hosts"),
    Param("PORT_SUBMISSION", "587", PORT, "Ports",
          "Message submission port, AUTH required (served once AUTH lands); 0 = off"),
    Param("PORT_SMTPS", "0", PORT, "Ports", "Implicit-TLS SMTP port; 0 = off"),
    Param("PORT_POP3S", "0", PORT, "Ports", "Implicit-TLS POP3 port; 0 = off"),
    Param("PORT_IMAPS", "0", PORT, "Ports", "Implicit-TLS IMAP port; 0 = off"),
    Param("CFG_LOG_LEVEL", "3", _int_range(0, 5), "Log",
          "Log level: 0 nothing, 1 errors, 2 warnings, 3 sessions and deliveries, 4 details, 5 debug"),
    Param("FILE_USER_DATA", "data/user_data", _text, "Files", "Users datafile", "file"),
    Param("FILE_DOMAIN_DATA", "data/domain_data", _text, "Files", "Domain datafile", "file"),
    Param("FILE_ALIAS_DATA", "data/alias_data", _text, "Files", "Aliases datafile", "file"),
    Param("FILE_DENY_DATA", "data/deny_data", _text, "Files", "Deny entries datafile", "file"),
    Param("FILE_MLIST_DATA", "data/mlist_data", _text, "Files", "Mailing lists datafile", "file"),
    Param("FILE_MLISTUSER_DATA", "data/mlistuser_data", _text, "Files",
          "Mailing list members datafile", "file"),
    Param("FILE_DSN_FAIL", "data/dsn_fail", _text, "Files", "Failed delivery DSN text", "file"),
    Param("FILE_DSN_DELA", "data/dsn_dela", _text, "Files", "Delayed delivery DSN text", "file"),
    Param("FILE_PID", "data/pid", _text, "Files", "PID file", "file"),
    Param("FILE_LOGIN", "data/remt_login", _text, "Files",
          "Remote management login file (scrypt hash)", "file"),
    Param("FILE_DNS_CACHE", "data/dns_cache", _text, "Files",
          "Where the DNS cache is kept across restarts", "file"),
    Param("FILE_TLS_CERT", "conf/server.crt", _text, "Files", "PEM certificate chain", "file"),
    Param("FILE_TLS_KEY", "conf/server.key", _text, "Files", "PEM private key", "file"),
    Param("DIR_LOG", "log/", _text, "Directories", "Log directory", "dir"),
    Param("DIR_USER_MBOX", "mbox/", _text, "Directories", "User mailboxes directory", "dir"),
    Param("DIR_QUEUE_MBOX", "queue/", _text, "Directories", "Queued mailboxes directory", "dir"),
    Param("DIR_TMP", "tmp/", _text, "Directories", "Temporary directory", "dir"),
    Param("QUEUE_SMTP", "10", COUNT, "Queued socket connections (listen backlog)",
          "Over SMTP connections"),
    Param("QUEUE_POP3", "10", COUNT, "Queued socket connections (listen backlog)",
          "Over POP3 connections"),
    Param("QUEUE_IMAP", "10", COUNT, "Queued socket connections (listen backlog)",
          "Over IMAP connections"),
    Param("QUEUE_REMT", "10", COUNT, "Queued socket connections (listen backlog)",
          "Over management connections"),
    Param("TIMEOUT_SMTP1", "300", SECS, "Timeouts (seconds)", "SMTP: waiting for HELO/EHLO"),
    Param("TIMEOUT_SMTP2", "300", SECS, "Timeouts (seconds)", "SMTP: waiting for MAIL"),
    Param("TIMEOUT_SMTP3", "300", SECS, "Timeouts (seconds)", "SMTP: waiting for RCPT"),
    Param("TIMEOUT_SMTP4", "120", SECS, "Timeouts (seconds)", "SMTP: waiting for DATA"),
    Param("TIMEOUT_SMTP5", "600", SECS, "Timeouts (seconds)", "SMTP: mail data"),
    Param("TIMEOUT_POP3", "600", SECS, "Timeouts (seconds)", "POP3 idle session"),
    Param("TIMEOUT_IMAP", "1800", SECS, "Timeouts (seconds)", "IMAP idle session"),
    Param("TIMEOUT_REMT", "60", SECS, "Timeouts (seconds)", "Remote management idle session"),
    Param("TIMEOUT_SOCK", "60", SECS, "Timeouts (seconds)", "Remote socket opening and reads"),
    Param("TIMEOUT_DNS", "60", SECS, "Timeouts (seconds)", "DNS query"),
    Param("BUFFER_SOCK", "10000", _int_range(512, 16 * 1024 * 1024), "Reading buffers",
          "Reading from sockets (bytes)"),
    Param("BUFFER_MAIL", "10000", _int_range(512, 16 * 1024 * 1024), "Reading buffers",
          "Reading from files (bytes)"),
    Param("CFG_NUM_QUEUE", "10", _int_range(1, 500), "General",
          "Number of queue delivery threads"),
    Param("CFG_NUM_DELIVERY", "5", _int_range(1, 100), "General",
          "Delivery threads for one message with many remote recipients"),
    Param("CFG_MIN_QUEUE", "10", _int_range(1, 10080), "General",
          "Minutes between queue retries"),
    Param("CFG_MIN_CONTROL", "5", _int_range(1, 1440), "General",
          "Minutes between control jobs (cache expiry, cleanups)"),
    Param("CFG_HOR_RETRY_MAIL", "48", _int_range(1, 8760), "General",
          "Hours a queued mail is retried before it fails"),
    Param("CFG_HOR_DELAY_DSN", "4", _int_range(0, 8760), "General",
          "Hours in queue before a delayed DSN is sent; 0 = never"),
    Param("CFG_ANTI_RELY", "1", _int_range(0, 2), "General",
          "Relay policy: 0 open (dangerous), 1 only from CFG_LOCALIP, 2 also POP/IMAP-before-SMTP"),
    Param("CFG_RELY_TIMEOUT", "15", _int_range(1, 10080), "General",
          "Minutes a POP3/IMAP login allows relaying from its IP (CFG_ANTI_RELY=2)"),
    Param("CFG_POSTMASTER", "Postmaster@localdomain", _mailbox, "General",
          "Postmaster mailbox: receives postmaster@ mail and signs DSNs"),
    Param("CFG_LOCALDOMAIN", "localdomain", _hostname, "General",
          "Domain of the server's own mail and of logins given without a domain"),
    Param("CFG_LOCALIP", "127.0.0.1", _networks, "General",
          "Addresses or a.b.c.d/n networks allowed to relay (comma list)"),
    Param("CFG_BIND", "0.0.0.0", _address, "General", "Address every mail listener binds to"),
    Param("CFG_REMT_BIND", "127.0.0.1", _address, "General",
          "Address the management port binds to"),
    Param("CFG_HOSTNAME", "", _hostname_or_empty, "General",
          "Name in greetings, Received: and HELO; empty = the machine's FQDN"),
    Param("CFG_DNS_SERVERS", "", _hostports(53), "General",
          "Comma list of ip[:port] resolvers; empty = the system's"),
    Param("CFG_SMART_HOST", "", _hostports(25), "General",
          "host[:port] all remote mail goes through instead of MX; empty = MX"),
    Param("CFG_MAX_CONN", "200", _int_range(1, 100000), "General",
          "Simultaneous connections per listener"),
    Param("CFG_MAX_MAIL_SIZE", "10240", _int_range(0), "General",
          "Global message size limit in KB (0 = none), advertised with SIZE"),
    Param("CFG_MAX_RCPT", "1000", _int_range(100, 100000), "General",
          "Recipients accepted in one SMTP transaction (RFC 5321 4.5.3.1.8: at least 100)"),
    Param("CFG_VRFY", "0", _int_range(0, 1), "General", "Answer SMTP VRFY (1) or not (0)"),
)

PARAM_BY_NAME: Mapping[str, Param] = MappingProxyType({p.name: p for p in PARAMS})
ALIASES = {"TIMEOUT SOCK": "TIMEOUT_SOCK", "BUFFER SOCK": "BUFFER_SOCK"}


class Config:
    """An immutable snapshot of the configuration: attribute per parameter (``cfg.PORT_SMTP``).

    ``text`` keeps each parameter as written, for the CONF management command.
    """

    def __init__(self, base: str, values: Mapping[str, Any], text: Mapping[str, str],
                 path: str | None) -> None:
        # Plain instance attributes: sessions read several parameters per command, and a
        # lookup that falls through to __getattr__ costs several times as much.
        self.__dict__.update(values)
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "text", MappingProxyType(dict(text)))

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)  # for type checkers: every parameter is an attribute

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is immutable")

    def replace(self, **changes: str) -> Config:
        """A copy with some parameters set from text (tests and the demo use it)."""
        merged = dict(self.text)
        merged.update(changes)
        return build(self.base, merged, self.path)

    @property
    def hostname(self) -> str:
        """CFG_HOSTNAME, or the machine's FQDN, looked up once (it may cost a DNS query)."""
        cached = self.__dict__.get("_hostname")
        if cached is None:
            cached = self.CFG_HOSTNAME or socket.getfqdn().lower() or "localhost"
            object.__setattr__(self, "_hostname", cached)
        return cached

    @property
    def postmaster(self) -> str:
        return self.CFG_POSTMASTER


def _resolve_path(base: str, value: str, kind: str) -> str:
    path = value if os.path.isabs(value) else os.path.join(base, value)
    path = os.path.normpath(path)
    return path + os.sep if kind == "dir" else path


def build(base: str, text: Mapping[str, str], path: str | None = None,
          lines: Mapping[str, int] | None = None) -> Config:
    """Validate every parameter (defaults filled in) and return the snapshot."""
    values: dict[str, Any] = {}
    full_text: dict[str, str] = {}
    for param in PARAMS:
        raw = text.get(param.name, param.default)
        try:
            value = param.parse(raw)
        except ValueError as exc:
            reason = str(exc) if str(exc) and "invalid literal" not in str(exc) else "bad value"
            raise ConfigError(f"{_where(path, lines, param.name)}{param.name}={_shown(raw)}: "
                              f"{reason}") from None
        if param.kind in ("file", "dir"):
            if not raw:
                raise ConfigError(f"{_where(path, lines, param.name)}{param.name}: a path is required")
            value = _resolve_path(base, raw, param.kind)
        values[param.name] = value
        full_text[param.name] = raw
    return Config(base, values, full_text, path)


def _where(path: str | None, lines: Mapping[str, int] | None, name: str) -> str:
    """``FILE:LINE: `` of parameter ``name``, when it came from a file."""
    return f"{path}:{lines[name]}: " if lines and name in lines else ""


def _shown(raw: str) -> str:
    """A value as an error message shows it: short, control characters escaped."""
    text = raw if len(raw) <= 80 else raw[:77] + "..."
    return text if text.isprintable() else repr(text)


def parse_text(content: str, path: str) -> tuple[dict[str, str], dict[str, int]]:
    """Split the file into NAME -> raw value, refusing unknown names and malformed lines.
    Lines end at LF only (``splitlines`` would also end them at a form feed or U+2028, and
    every later line number would be off)."""
    found: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(content.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        name = ALIASES.get(name.strip(), name.strip())
        if not sep:
            raise ConfigError(f"{path}:{number}: expected NAME=value, got {stripped[:60]!r}")
        if name not in PARAM_BY_NAME:
            raise ConfigError(f"{path}:{number}: unknown parameter {name[:60]!r}")
        if name in found:
            raise ConfigError(f"{path}:{number}: {name} given twice (first on line {lines[name]})")
        found[name] = value.strip()
        lines[name] = number
    return found, lines


def default_path(base: str | None = None) -> str:
    return os.path.join(base or base_directory(), "conf", "eXtremail.conf")


def load(path: str | None = None, base: str | None = None) -> Config:
    """Read and validate the configuration file; a missing file means all defaults."""
    base = base or base_directory()
    path = path or default_path(base)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raw = b""
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        content = raw.decode("utf-8-sig")  # a byte order mark from a Windows editor is skipped
    except UnicodeDecodeError as exc:
        number = raw.count(b"\n", 0, exc.start) + 1
        line = raw.split(b"\n")[number - 1]
        name = line.partition(b"=")[0].strip().decode("ascii", "replace")
        raise ConfigError(f"{path}:{number}: {_shown(name)}: not UTF-8 text") from None
    found, lines = parse_text(content, path)
    return build(base, found, path, lines)


def render_default_file() -> str:
    """The shipped eXtremail.conf: every parameter, commented, with its default."""
    out = ["# eXtremail configuration file: NAME=value, '#' starts a comment.",
           "# Relative paths are taken from the base directory (/home/eXtremail or $EXTREMAIL_HOME).",
           "# Every line below shows the default; uncomment and edit to change it."]
    section = None
    for param in PARAMS:
        if param.section != section:
            section = param.section
            out += ["", f"# ---- {section} ----"]
        out.append(f"# {param.help}")
        out.append(f"#{param.name}={param.default}")
    return "\n".join(out) + "\n"
