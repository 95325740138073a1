"""Mail-reading logins (POP3, IMAP): which user a login name means, and the password check.

Login names (the manual, "Users"): ``user@domain``, ``user.domain`` (the Netscape form:
the longest suffix after a dot that is a local domain) and a bare ``user`` in
CFG_LOCALDOMAIN (PROTOCOL.md).  The check costs the same whether the user exists or not
(:func:`extremail.auth.verify_password` does the scrypt work on a dummy), and a user with
no password never logs in.  Only a success can be cheaper: a user logging in again with
the password last verified against its current stored hash is answered from
:class:`extremail.auth.LoginCache` without scrypt.  Each IP with recent failures waits
before its next answer (:class:`extremail.auth.Throttle`); only that session waits.

Attack surface: login names and passwords straight from the network; nothing here logs
a password or tells an unknown user from a wrong password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import auth
from .store import User


def resolve(store: Any, localdomain: str, login: str) -> tuple[str, str]:
    """(user name, domain) that ``login`` names; the user may not exist."""
    login = login.strip().lower()
    name, at, domain = login.rpartition("@")
    if at:
        return name, domain
    dot = login.find(".")
    while dot > 0:
        if store.is_local_domain(login[dot + 1:]):
            return login[:dot], login[dot + 1:]
        dot = login.find(".", dot + 1)
    return login, localdomain.lower()


@dataclass(frozen=True)
class Outcome:
    """The result of one login attempt: the user (None on failure) and the wait imposed."""

    user: User | None
    delayed: float


def authenticate(ctx: Any, ip: str, login: str, password: str) -> Outcome:
    """Check ``login``/``password`` for a client at ``ip``; every failure is counted."""
    delay = ctx.throttle.delay(ip)
    if delay:
        ctx.stopping.wait(delay)  # this session waits; a server stop cuts it short
    key = resolve(ctx.store, ctx.cfg.CFG_LOCALDOMAIN, login)
    user = ctx.store.users.rows.get(key)
    # Same work for an unknown user, a user without a password and a wrong password.
    if auth.login_cache.verify(key, password, user.password if user else None) and user is not None:
        return Outcome(user, delay)
    ctx.throttle.failure(ip)
    return Outcome(None, delay)


def clear_text(text: str) -> str:
    """A password as received (surrogate-escaped bytes) as text scrypt can hash."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
