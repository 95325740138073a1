"""Validation of the names that become file paths or data-file fields.

User names, domains and mailboxes end up in paths under DIR_USER_MBOX and in tab-separated
data files, so anything that could reach outside the base directory (``/``, ``..``, NUL,
control characters) or break a record (tab, newline) is refused here, once.
"""

from __future__ import annotations

import ipaddress
import os
import re

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+$")


class InvalidName(ValueError):
    """A name that cannot be accepted; the text says why."""


def domain(text: str) -> str:
    """A domain name, lower-cased (RFC 1035 labels, at most 253 characters)."""
    value = text.strip()
    if not value.isascii():  # before lower(): the Kelvin sign would become "k"
        raise InvalidName(f"bad domain {text[:80]!r}")
    value = value.lower().rstrip(".")
    if not value or len(value) > 253:
        raise InvalidName(f"bad domain {text[:80]!r}")
    if not all(_LABEL.match(label) for label in value.split(".")):
        raise InvalidName(f"bad domain {text[:80]!r}")
    return value


def local_part(text: str) -> str:
    """A dot-atom local part (RFC 5322 3.2.3), at most 64 characters, lower-cased."""
    value = text.strip()
    if not value or len(value) > 64 or value.startswith(".") or value.endswith(".") \
            or ".." in value or not all(_ATOM.match(atom) for atom in value.split(".")):
        raise InvalidName(f"bad user name {text[:80]!r}")
    return value.lower()


def mailbox(text: str) -> str:
    """``local@domain`` with both parts valid; returns it normalised."""
    local, sep, dom = text.strip().rpartition("@")
    if not sep:
        raise InvalidName(f"bad mailbox {text[:80]!r}: expected user@domain")
    try:
        return f"{local_part(local)}@{domain(dom)}"
    except InvalidName:
        raise InvalidName(f"bad mailbox {text[:80]!r}") from None


def split_mailbox(text: str) -> tuple[str, str]:
    local, _, dom = mailbox(text).rpartition("@")
    return local, dom


def directory(text: str) -> str:
    """A user's Maildir chosen by the administrator: an absolute path without ``..`` that
    is not the root, normalised."""
    field(text, "directory")
    if not text.startswith("/"):
        raise InvalidName("must be an absolute path")
    if ".." in text.split("/"):
        raise InvalidName("'..' is not allowed")
    path = os.path.normpath(text)
    if not path.strip("/"):  # normpath keeps "//" (POSIX lets it mean something else)
        raise InvalidName("not the root directory")
    return path


def deny_value(kind: str, text: str) -> str:
    """The value of a deny entry of ``kind``, normalised so ADD and DEL of the same text
    match: IPIN/IPOUT an address or ``address/mask`` (the manual's 194.30.30.11/16 means
    the network 194.30.0.0/16), DOMAIN* a domain, MAILBOX* a mailbox."""
    if kind in ("IPIN", "IPOUT"):
        try:
            if "/" in text:
                return str(ipaddress.ip_network(text, strict=False))
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise InvalidName(f"bad {text[:80]!r}: expected an IP address or ip/mask") from None
    if kind in ("DOMAININ", "DOMAINOUT"):
        return domain(text)
    return mailbox(text)


def field(text: str, what: str = "value") -> str:
    """Free text stored in a data file: no control characters (tab, newline, NUL)."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise InvalidName(f"bad {what}: control characters are not allowed")
    return text
