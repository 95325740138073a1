"""Where one recipient goes: a local Maildir, a program, a remote domain, or nowhere.

The order of the manual: a local user (with FORWARD: instead to that address; with COPY:
also to that address); an alias (FORWARD to a mailbox, or PIPE to a program); a mailing
list (its members, if the sender may post); ``postmaster`` (RFC 5321 4.5.1: always
accepted, to CFG_POSTMASTER unless a user or alias of that name exists); the domain's
DEFMAILBOX for an unknown user; otherwise unknown (550 5.1.1).  A non-local domain is
remote.  Expansion stops at :data:`MAX_DEPTH` hops and never visits an address twice.

Pure lookups on the store: no I/O, so the SMTP session can ask at RCPT time and the
queue can ask again at delivery time (the data may have changed meanwhile).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import reply
from .reply import Refusal, Reply
from .store import Store, User

MAX_DEPTH = 10
LOCAL, PIPE, REMOTE, FAIL = "local", "pipe", "remote", "fail"
LIST_ANY, LIST_MEMBERS, LIST_ADMINS = 1, 2, 4
MEMBER, ADMIN = 1, 2


@dataclass(frozen=True)
class Target:
    """One final destination of a message."""

    kind: str                 # LOCAL, PIPE, REMOTE or FAIL
    address: str              # the address finally delivered to
    original: str             # the envelope recipient it came from
    user: User | None = None  # LOCAL
    command: str = ""         # PIPE
    reply: Reply | None = None  # FAIL: why


def split(address: str) -> tuple[str, str]:
    """``local@domain`` -> (local lower-cased, domain lower-cased); bare names get ''."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        return address.lower(), ""
    return local.lower(), domain.lower()


def is_local(store: Store, address: str) -> bool:
    local, domain = split(address)
    return (not domain and local == "postmaster") or store.is_local_domain(domain)


def check_recipient(store: Store, postmaster: str, address: str,
                    sender: str | None = None) -> list[Target]:
    """The targets of a local ``address``; raise the first failure's reply (550 5.1.1 for an
    unknown user) if none of them can receive mail."""
    targets = expand(store, postmaster, address, sender)
    if any(target.kind != FAIL for target in targets):
        return targets
    raise Refusal(next((t.reply for t in targets if t.reply), reply.NO_SUCH_USER))


def expand(store: Store, postmaster: str, address: str, sender: str | None = None) -> list[Target]:
    """Every destination of ``address``; unknown local addresses give a FAIL target."""
    targets: list[Target] = []
    seen: set[str] = set()
    _expand(store, postmaster, address, address, sender, 0, seen, targets)
    return targets


def _expand(store: Store, postmaster: str, address: str, original: str, sender: str | None,
            depth: int, seen: set[str], out: list[Target]) -> None:
    local, domain = split(address)
    key = f"{local}@{domain}"
    if key in seen:
        return
    seen.add(key)
    if depth > MAX_DEPTH:
        out.append(Target(FAIL, address, original,
                          reply=Reply(554, "5.4.6", "Too many forwarding hops (alias loop?)")))
        return

    def again(next_address: str) -> None:
        _expand(store, postmaster, next_address, original, sender, depth + 1, seen, out)

    if not domain:
        if local == "postmaster":
            again(postmaster)
        else:
            out.append(Target(FAIL, address, original, reply=reply.NO_SUCH_USER))
        return
    if not store.is_local_domain(domain):
        out.append(Target(REMOTE, address, original))
        return
    user = store.users.rows.get((local, domain))
    if user is not None:
        if user.forward:
            again(user.forward)
        else:
            out.append(Target(LOCAL, user.address, original, user=user))
        if user.copy:
            again(user.copy)
        return
    alias = store.aliases.rows.get((local, domain))
    if alias is not None:
        if alias.pipe:
            out.append(Target(PIPE, alias.address, original, command=alias.pipe))
        if alias.forward:
            again(alias.forward)
        return
    mlist = store.mlists.rows.get((local, domain))
    if mlist is not None:
        _expand_list(store, mlist.name, mlist.domain, mlist.access, sender, again, out, address,
                     original)
        return
    if local == "postmaster" and split(postmaster) != (local, domain):
        again(postmaster)
        return
    # CFG_POSTMASTER itself with no user or alias of that name: the domain's DEFMAILBOX
    defmailbox = store.domains.rows[domain].defmailbox
    if defmailbox:
        again(defmailbox)
        return
    out.append(Target(FAIL, address, original, reply=reply.NO_SUCH_USER))


def _expand_list(store: Store, name: str, domain: str, access: int, sender: str | None,
                 again, out: list[Target], address: str, original: str) -> None:
    """A mailing list: ACCESS 1 anyone may post, 2 members (and admins), 4 admins only."""
    members = [m for m in store.mlistusers.rows.values()
               if m.listname == name and m.listdomain == domain]
    if sender is not None and access != LIST_ANY:
        allowed = {m.mailbox.lower() for m in members
                   if access == LIST_MEMBERS or m.type == ADMIN}
        if sender.lower() not in allowed:
            out.append(Target(FAIL, address, original,
                              reply=Reply(550, "5.7.2", f"Sender may not post to list {address}")))
            return
    for member in members:
        again(member.mailbox)
