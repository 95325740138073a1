"""Management commands (the manual's USER, DOMAIN, ALIAS, DENY, MLIST, MLISTUSER, QUEUE,
DNS, CONN, STATUS, CONF, HELP): check the parameters, act on the store, answer.

Every command is one :class:`Spec` in :data:`TABLE`: its words, the parameters it takes
(required and optional, or a list of alternative *forms* such as ``ALL | NAME= |
DOMAIN=``), its handler and the manual's syntax line that HELP prints.  :func:`execute`
checks a command against its spec before the handler runs, so a handler only sees known
parameters; handlers validate every value before they call the store, so a refused
command changes nothing.  A refusal is a :class:`CommandError` (or a ``StoreError`` /
``InvalidName`` from below); its text names the parameter or the object.

Components that land later are looked up lazily on the context (or the server), so they
plug in without touching this file:

* ``ctx.queue`` (or ``ctx.server.queue``): ``show(kind, value) -> rows``,
  ``resend(kind, value) -> int`` and ``delete(kind, value) -> int``, where ``kind`` is
  ``ALL`` (value None), ``MAILBOX``, ``DOMAIN`` or (for delete) ``ID``;
* ``ctx.dns`` (or ``ctx.server.dns``): ``cache_show(domain|None) -> rows``,
  ``cache_flush(domain|None) -> int``, ``resolve(domain) -> rows``.

A row is a string or a sequence of fields (joined with a tab).  A component may raise
:class:`CommandError`, ``LookupError`` or ``ValueError`` to refuse with its text.  Until
a component exists its commands answer ``-ERR not available yet``.

Attack surface: everything a logged-in administrator sends; values become data-file
fields and paths, so names go through :mod:`extremail.names` and paths are checked here.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .. import VERSION, auth, log, names
from ..config import PARAMS
from ..names import InvalidName
from ..store import DENY_KINDS, Alias, Deny, Domain, MList, MListUser, StoreError, User
from .parser import Command

LOG = log.get("remt")

MAX_NUMBER = 2 ** 40        # sizes and quotas are in KB: 1 PB is plenty
MAX_PATH = 4096             # PATH_MAX
MAX_PIPE = 4096
NOT_AVAILABLE = "not available yet"
NOT_SET = "(not set)"
SECRET_PARAMS = frozenset({"PASS"})


class CommandError(Exception):
    """A refused command; the text (naming the parameter or the object) is the -ERR reply."""


@dataclass
class Answer:
    ok: bool
    text: str
    listing: list[str] | None = None

    def render(self) -> bytes:
        lines = [("+OK " if self.ok else "-ERR ") + _one_line(self.text)]
        if self.listing is not None:
            for item in self.listing:
                item = _one_line(item)
                lines.append("." + item if item.startswith(".") else item)
            lines.append(".")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def _one_line(text: str) -> str:
    """A hand-edited data file may hold a stray CR; a reply line must never break."""
    return text.replace("\r", " ").replace("\n", " ")


@dataclass
class Request:
    """One checked command: the words after the command's own, and its parameters."""

    ctx: Any
    spec: Spec
    words: list[str]
    params: dict[str, str]

    def has(self, name: str) -> bool:
        return name in self.params

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.params.get(name, default)


Handler = Callable[[Any, Request], Answer]


@dataclass(frozen=True)
class Spec:
    """A command: its words, what it accepts, its handler, and its syntax for HELP.

    Either ``required``/``optional`` parameters, or ``forms``: alternatives such as
    ``("ALL", "NAME=", "NAME= DOMAIN=")`` (a bare word or a ``NAME=`` parameter each);
    the command must match one form exactly.
    """

    words: tuple[str, ...]
    handler: Handler
    syntax: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    forms: tuple[str, ...] = ()
    before_login: bool = False
    form_sets: tuple[frozenset[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "form_sets", tuple(frozenset(f.split()) for f in self.forms))

    @property
    def name(self) -> str:
        return " ".join(self.words)

    def accepted_params(self) -> list[str]:
        if self.forms:
            seen: list[str] = []
            for form in self.forms:
                for token in form.split():
                    if token.endswith("=") and token[:-1] not in seen:
                        seen.append(token[:-1])
            return seen
        return list(self.required + self.optional)

    def accepted_words(self) -> set[str]:
        return {t for form in self.forms for t in form.split() if not t.endswith("=")}


# ---------------------------------------------------------------- small helpers
def _ok(text: str, listing: list[str] | None = None) -> Answer:
    return Answer(True, text, listing)


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def _date(epoch: float) -> str:
    """Listing dates: ``YYYY-MM-DD HH:MM:SS`` in UTC (PROTOCOL.md)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _show(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


def _rows(label_values: Sequence[tuple[str, object]]) -> list[str]:
    return [f"{label}:\t{value}" for label, value in label_values]


def _row(fields: object) -> str:
    if isinstance(fields, str):
        return fields
    return "\t".join("" if f is None else str(f) for f in fields)  # type: ignore[union-attr]


def _component(ctx: Any, name: str, method: str) -> Any:
    """A later component (queue, DNS) if it is there and can do ``method``; else None."""
    for owner in (ctx, getattr(ctx, "server", None)):
        component = getattr(owner, name, None) if owner is not None else None
        if component is not None and callable(getattr(component, method, None)):
            return component
    return None


# ---------------------------------------------------------------- value checks
_NUMBER = re.compile(r"^[0-9]{1,15}$")


def _number(req: Request, name: str, low: int = 0, high: int = MAX_NUMBER,
            allowed: Sequence[int] | None = None) -> int:
    text = req.params[name]
    if not _NUMBER.match(text):
        raise CommandError(f"bad {name}={_show(text)!r}: must be a whole number "
                           f"({low} or more)")
    value = int(text)
    if allowed is not None and value not in allowed:
        raise CommandError(f"bad {name}={value}: must be one of "
                           + ", ".join(str(a) for a in allowed))
    if value < low or value > high:
        raise CommandError(f"bad {name}={value}: must be {low}..{high}")
    return value


def _local(req: Request, name: str) -> str:
    try:
        return names.local_part(req.params[name])
    except InvalidName as exc:
        raise CommandError(f"{name}: {exc}") from None


def _domain(req: Request, name: str) -> str:
    try:
        return names.domain(req.params[name])
    except InvalidName as exc:
        raise CommandError(f"{name}: {exc}") from None


def _mailbox(req: Request, name: str, empty_ok: bool = False) -> str:
    text = req.params[name]
    if empty_ok and text == "":
        return ""
    try:
        return names.mailbox(text)
    except InvalidName as exc:
        raise CommandError(f"{name}: {exc}") from None


def _directory(req: Request, name: str, empty_ok: bool = False) -> str:
    """An absolute path without ``..``: the user's Maildir, chosen by the administrator."""
    text = req.params[name]
    if empty_ok and text == "":
        return ""
    _clean_text(name, text, MAX_PATH)
    try:
        return names.directory(text)
    except InvalidName as exc:
        raise CommandError(f"bad {name}={_show(text)!r}: {exc}") from None


def _footer_file(req: Request, name: str) -> str:
    """A footer file: an absolute path to an existing regular file (the manual: "must
    point to a valid footer file"); empty clears it."""
    text = req.params[name]
    if text == "":
        return ""
    path = _directory(req, name)
    try:
        info = os.stat(path)
    except OSError:
        raise CommandError(f"{name}: file {_show(path)} does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        raise CommandError(f"{name}: {_show(path)} is not a regular file")
    return path


def _clean_text(name: str, text: str, limit: int) -> str:
    if len(text) > limit:
        raise CommandError(f"bad {name}: longer than {limit} characters")
    try:
        return names.field(text, name)
    except InvalidName as exc:
        raise CommandError(str(exc)) from None


def _pipe(req: Request, name: str = "PIPE") -> str:
    """A command run without a shell: stored as given, but it must split into words."""
    text = req.params[name]
    _clean_text(name, text, MAX_PIPE)
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise CommandError(f"bad {name}: {exc}") from None
    if not argv or not argv[0].strip():
        raise CommandError(f"bad {name}: a command is required")
    return text


def _password(req: Request) -> str:
    text = req.params["PASS"]
    if not text:
        raise CommandError("bad PASS: must not be empty")
    if len(text) > 1024:
        raise CommandError("bad PASS: longer than 1024 characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise CommandError("bad PASS: control characters are not allowed")
    return auth.hash_password(text)


def _deny_value(kind: str, text: str) -> str:
    try:
        return names.deny_value(kind, text)
    except InvalidName as exc:
        raise CommandError(f"{kind}: {exc}") from None


# ---------------------------------------------------------------- mailbox removal
# What a Maildir holds besides the messages: Maildir++ and Dovecot's files.  Nothing
# else is ever removed, so a DIR that points at a home directory loses only its mail.
_MAILDIR_FILES = frozenset({"maildirsize", "maildirfolder", "subscriptions", "courierimapkeywords",
                            "courierimapuiddb", "courierimapacl"})
_MAILDIR_FILE_PREFIXES = ("dovecot", "extremail")


def _looks_like_maildir(path: str) -> bool:
    return all(os.path.isdir(os.path.join(path, sub)) for sub in ("cur", "new", "tmp")) \
        or os.path.isfile(os.path.join(path, "maildirfolder"))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty (something that is not mail) or already gone: keep it


def remove_maildir(path: str) -> None:
    """Delete a Maildir's mail: cur/new/tmp contents, Maildir++ ``.Folder`` subdirectories,
    Dovecot/Courier index files; then the directory itself if nothing else is in it.

    Never a recursive delete of an arbitrary directory: symlinks are unlinked, not
    followed, and anything unknown stays (and keeps its directory).
    """
    if os.path.islink(path) or not os.path.isdir(path):
        return
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        if entry.name in ("cur", "new", "tmp") and entry.is_dir(follow_symlinks=False):
            for item in os.scandir(entry.path):
                if not item.is_dir(follow_symlinks=False):
                    _unlink(item.path)
            _rmdir(entry.path)
        elif entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
            if _looks_like_maildir(entry.path):
                remove_maildir(entry.path)
        elif entry.is_file(follow_symlinks=False) and (
                entry.name in _MAILDIR_FILES or entry.name.startswith(_MAILDIR_FILE_PREFIXES)):
            _unlink(entry.path)
    _rmdir(path)


def _effective_dir(ctx: Any, user: User) -> str:
    return os.path.normpath(ctx.store.user_dir(user))


def _dir_conflict(ctx: Any, path: str, exclude: tuple[str, str] | None) -> User | None:
    """Another user whose Maildir is ``path``, inside it, or contains it: two users must
    never share mail (deleting one would delete the other's)."""
    path = os.path.normpath(path)
    for key, other in ctx.store.users.rows.items():
        if key == exclude:
            continue
        theirs = _effective_dir(ctx, other)
        if path == theirs or path.startswith(theirs + os.sep) or theirs.startswith(path + os.sep):
            return other
    return None


def _delete_mail(ctx: Any, users: Iterable[User]) -> None:
    """Remove the Maildirs of users just deleted, unless a remaining user still uses one."""
    for user in users:
        path = _effective_dir(ctx, user)
        if _dir_conflict(ctx, path, None) is not None:
            LOG.warning("mailbox %s of deleted user %s kept: another user still uses it",
                        path, user.address)
            continue
        try:
            remove_maildir(path)
        except OSError as exc:
            LOG.error("cannot remove the mailbox %s of %s: %s", path, user.address, exc)


# ---------------------------------------------------------------- USER
_USER_FIELDS = ("DIR", "PASS", "QUOTA", "FORWARD", "COPY", "MAXINMAILSIZE", "MAXOUTMAILSIZE")


def _user_changes(req: Request, adding: bool) -> dict[str, Any]:
    """The USER fields given, checked; MOD may clear DIR/FORWARD/COPY with an empty value."""
    changes: dict[str, Any] = {}
    if req.has("DIR"):
        changes["dir"] = _directory(req, "DIR", empty_ok=not adding)
    if req.has("PASS"):
        changes["password"] = None  # hashed last, once everything else is known to be fine
    if req.has("QUOTA"):
        changes["quota"] = _number(req, "QUOTA")
    for param in ("FORWARD", "COPY"):
        if req.has(param):
            changes[param.lower()] = _mailbox(req, param, empty_ok=not adding)
    for param in ("MAXINMAILSIZE", "MAXOUTMAILSIZE"):
        if req.has(param):
            changes[param.lower()] = _number(req, param)
    return changes


def user_add(ctx: Any, req: Request) -> Answer:
    name, domain = _local(req, "NAME"), _domain(req, "DOMAIN")
    changes = _user_changes(req, adding=True)
    store = ctx.store
    store.find_domain(domain)
    if (name, domain) in store.users.rows:
        raise CommandError(f"user {name}@{domain} already exists")
    record = User(name, domain, **{k: v for k, v in changes.items() if k != "password"})
    other = _dir_conflict(ctx, _effective_dir(ctx, record), None)
    if other is not None:
        raise CommandError(f"DIR: the mailbox directory of {name}@{domain} would overlap "
                           f"the one of user {other.address}")
    if req.has("PASS"):
        record = replace(record, password=_password(req))
    store.add_user(record)
    return _ok(f"user {record.address} added")


def _find_user(ctx: Any, req: Request) -> User:
    name = _local(req, "NAME")
    if req.has("DOMAIN"):
        return ctx.store.find_user(name, _domain(req, "DOMAIN"))
    matches = sorted((u for u in ctx.store.users.rows.values() if u.name == name),
                     key=lambda u: u.domain)
    if not matches:
        raise CommandError(f"user {name} does not exist")
    if len(matches) > 1:
        raise CommandError(f"user {name} exists in several domains "
                           f"({', '.join(u.domain for u in matches)}): give DOMAIN=")
    return matches[0]


def user_mod(ctx: Any, req: Request) -> Answer:
    """USER MOD: DOMAIN= identifies the user, it does not move it.

    The manual calls DOMAIN "the new local domain of the user", but a name alone does not
    say which user to change once the same name lives in several domains, and moving a
    user would also have to move its mail.  So DOMAIN= picks the user (it is required
    only when the name exists in several domains); to move a user, add it to the new
    domain and delete the old one.  An empty DIR=, FORWARD= or COPY= clears the field.
    """
    user = _find_user(ctx, req)
    changes = _user_changes(req, adding=False)
    if not changes:
        raise CommandError("USER MOD needs something to change ("
                           + ", ".join(p + "=" for p in _USER_FIELDS) + ")")
    if "dir" in changes:
        probe = User(user.name, user.domain, dir=changes["dir"])
        other = _dir_conflict(ctx, _effective_dir(ctx, probe), (user.name, user.domain))
        if other is not None:
            raise CommandError(f"DIR: the mailbox directory would overlap the one of user "
                               f"{other.address}")
    if "password" in changes:
        changes["password"] = _password(req)
    ctx.store.mod_user(user.name, user.domain, **changes)
    return _ok(f"user {user.address} modified")


def user_list(ctx: Any, req: Request) -> Answer:
    store = ctx.store
    if req.has("NAME"):
        user = _find_user(ctx, req)
        return _ok(f"user {user.address}", _rows((
            ("Name", user.name), ("Domain", user.domain), ("Dir", store.user_dir(user)),
            ("Pass", "(set)" if user.password else NOT_SET), ("Quota", user.quota),
            ("Forward", user.forward), ("Copy", user.copy),
            ("MaxInMailSize", user.maxinmailsize), ("MaxOutMailSize", user.maxoutmailsize))))
    users = list(store.users.rows.values())
    if req.has("DOMAIN"):
        domain = _domain(req, "DOMAIN")
        store.find_domain(domain)
        users = [u for u in users if u.domain == domain]
    rows = sorted(u.address for u in users)
    return _ok(_plural(len(rows), "user"), rows)


def user_del(ctx: Any, req: Request) -> Answer:
    name, domain = _local(req, "NAME"), _domain(req, "DOMAIN")
    user = ctx.store.del_user(name, domain)
    _delete_mail(ctx, [user])
    return _ok(f"user {user.address} deleted with its mail")


# ---------------------------------------------------------------- DOMAIN
_DOMAIN_FIELDS = ("DEFMAXINMAILSIZE", "DEFMAXOUTMAILSIZE", "MAXINMAILSIZE", "MAXOUTMAILSIZE",
                  "DEFMAILBOX", "DEFAULTMAILBOX", "MAILINFOOTER", "MAILOUTFOOTER", "SHOWFOOTER")


def _domain_changes(req: Request) -> dict[str, Any]:
    """DEFAULTMAILBOX (the manual's name in its parameter list) is DEFMAILBOX (its syntax)."""
    changes: dict[str, Any] = {}
    for param in ("DEFMAXINMAILSIZE", "DEFMAXOUTMAILSIZE", "MAXINMAILSIZE", "MAXOUTMAILSIZE"):
        if req.has(param):
            changes[param.lower()] = _number(req, param)
    if req.has("DEFMAILBOX") and req.has("DEFAULTMAILBOX"):
        raise CommandError("give DEFMAILBOX= or DEFAULTMAILBOX=, not both")
    for param in ("DEFMAILBOX", "DEFAULTMAILBOX"):
        if req.has(param):
            changes["defmailbox"] = _mailbox(req, param, empty_ok=True)
    for param in ("MAILINFOOTER", "MAILOUTFOOTER"):
        if req.has(param):
            changes[param.lower()] = _footer_file(req, param)
    if req.has("SHOWFOOTER"):
        changes["showfooter"] = _number(req, "SHOWFOOTER", 0, 3)
    return changes


def domain_add(ctx: Any, req: Request) -> Answer:
    name = _domain(req, "NAME")
    record = Domain(name, **_domain_changes(req))
    ctx.store.add_domain(record)
    return _ok(f"domain {name} added")


def domain_mod(ctx: Any, req: Request) -> Answer:
    name = _domain(req, "NAME")
    changes = _domain_changes(req)
    if not changes:
        raise CommandError("DOMAIN MOD needs something to change ("
                           + ", ".join(p + "=" for p in _DOMAIN_FIELDS) + ")")
    ctx.store.mod_domain(name, **changes)
    return _ok(f"domain {name} modified")


def domain_list(ctx: Any, req: Request) -> Answer:
    store = ctx.store
    if req.has("NAME"):
        d = store.find_domain(_domain(req, "NAME"))
        users = sum(1 for u in store.users.rows.values() if u.domain == d.name)
        return _ok(f"domain {d.name}", _rows((
            ("Name", d.name), ("DefaultMailbox", d.defmailbox),
            ("DefMaxInMailSize", d.defmaxinmailsize), ("DefMaxOutMailSize", d.defmaxoutmailsize),
            ("MaxInMailSize", d.maxinmailsize), ("MaxOutMailSize", d.maxoutmailsize),
            ("MailInFooter", d.mailinfooter), ("MailOutFooter", d.mailoutfooter),
            ("ShowFooter", d.showfooter), ("Users", users))))
    rows = sorted(store.domains.rows)
    return _ok(_plural(len(rows), "domain"), rows)


def domain_del(ctx: Any, req: Request) -> Answer:
    """The manual: the domain's users are deleted first (with their mail), then the domain;
    its aliases, lists and list members go with it."""
    name = _domain(req, "NAME")
    gone = ctx.store.del_domain(name)
    _delete_mail(ctx, gone)
    _rmdir(os.path.join(ctx.cfg.DIR_USER_MBOX, name))
    return _ok(f"domain {name} deleted with {_plural(len(gone), 'user')} and their mail")


# ---------------------------------------------------------------- ALIAS
def _alias_target(req: Request) -> dict[str, str]:
    if not req.has("FORWARD") and not req.has("PIPE"):
        raise CommandError(f"{req.spec.name} needs FORWARD= or PIPE=")
    target = {"forward": "", "pipe": ""}
    if req.has("FORWARD"):
        target["forward"] = _mailbox(req, "FORWARD")
    if req.has("PIPE"):
        target["pipe"] = _pipe(req)
    return target


def alias_add(ctx: Any, req: Request) -> Answer:
    name, domain = _local(req, "NAME"), _domain(req, "DOMAIN")
    record = Alias(name, domain, **_alias_target(req))
    ctx.store.add_alias(record)  # the store refuses a missing domain or a taken address
    return _ok(f"alias {record.address} added")


def alias_mod(ctx: Any, req: Request) -> Answer:
    """ALIAS MOD (named but not described by the manual): FORWARD= and/or PIPE= replace the
    alias's target; the one not given is cleared."""
    name, domain = _local(req, "NAME"), _domain(req, "DOMAIN")
    target = _alias_target(req)
    record = ctx.store.mod_alias(name, domain, **target)
    return _ok(f"alias {record.address} modified")


def alias_list(ctx: Any, req: Request) -> Answer:
    store = ctx.store
    if req.has("NAME"):
        a = store.find_alias(_local(req, "NAME"), _domain(req, "DOMAIN"))
        return _ok(f"alias {a.address}", _rows((
            ("Name", a.name), ("Domain", a.domain), ("Forward", a.forward), ("Pipe", a.pipe))))
    aliases = list(store.aliases.rows.values())
    if req.has("DOMAIN"):
        domain = _domain(req, "DOMAIN")
        store.find_domain(domain)
        aliases = [a for a in aliases if a.domain == domain]
    rows = sorted(a.address for a in aliases)
    return _ok(_plural(len(rows), "alias", "aliases"), rows)


def alias_del(ctx: Any, req: Request) -> Answer:
    name, domain = _local(req, "NAME"), _domain(req, "DOMAIN")
    ctx.store.del_alias(name, domain)
    return _ok(f"alias {name}@{domain} deleted")


# ---------------------------------------------------------------- DENY
def _deny_param(req: Request) -> tuple[str, str]:
    (kind, text), = req.params.items()  # the forms allow exactly one
    return kind, _deny_value(kind, text)


def deny_add(ctx: Any, req: Request) -> Answer:
    kind, value = _deny_param(req)
    ctx.store.add_deny(Deny(kind, value))
    return _ok(f"deny entry {kind}={value} added")


def deny_list(ctx: Any, req: Request) -> Answer:
    """ALL: ``KIND<tab>entry`` rows (the manual's "Text: entry"); one kind: the entries."""
    (word,) = req.words
    entries = sorted(ctx.store.denies.rows.values(),
                     key=lambda d: (DENY_KINDS.index(d.kind) if d.kind in DENY_KINDS else 99,
                                    d.value))
    if word == "ALL":
        rows = [f"{d.kind}\t{d.value}" for d in entries]
    else:
        rows = [d.value for d in entries if d.kind == word]
    return _ok(_plural(len(rows), "deny entry", "deny entries"), rows)


def deny_del(ctx: Any, req: Request) -> Answer:
    store = ctx.store
    if req.params:
        kind, value = _deny_param(req)
        if (kind, value) not in store.denies.rows:
            raise CommandError(f"deny entry {kind}={value} does not exist")
        store.del_denies(lambda d: (d.kind, d.value) == (kind, value))
        return _ok(f"deny entry {kind}={value} deleted")
    (word,) = req.words
    removed = store.del_denies(lambda d: word == "ALL" or d.kind == word)
    return _ok(_plural(removed, "deny entry", "deny entries") + " deleted")


# ---------------------------------------------------------------- MLIST
ACCESS_VALUES = (1, 2, 4)
MEMBERS_VALUES = (1, 2, 4)
TYPE_VALUES = (1, 2)


def _mlist_changes(req: Request) -> dict[str, int]:
    changes = {}
    if req.has("ACCESS"):
        changes["access"] = _number(req, "ACCESS", allowed=ACCESS_VALUES)
    if req.has("MEMBERS"):
        changes["members"] = _number(req, "MEMBERS", allowed=MEMBERS_VALUES)
    return changes


def mlist_add(ctx: Any, req: Request) -> Answer:
    name, domain = _local(req, "NAME"), _domain(req, "DOMAIN")
    record = MList(name, domain, **_mlist_changes(req))
    ctx.store.add_mlist(record)  # the store refuses a missing domain or a taken address
    return _ok(f"mailing list {record.address} added")


def mlist_mod(ctx: Any, req: Request) -> Answer:
    name, domain = _local(req, "NAME"), _domain(req, "DOMAIN")
    changes = _mlist_changes(req)
    if not changes:
        raise CommandError("MLIST MOD needs ACCESS= or MEMBERS=")
    record = ctx.store.mod_mlist(name, domain, **changes)
    return _ok(f"mailing list {record.address} modified")


def _mlist_row(m: MList) -> str:
    return f"{m.address}\t{m.access}\t{m.members}"


def mlist_list(ctx: Any, req: Request) -> Answer:
    """ALL and DOMAIN=: the manual's ``name@domain<tab>access<tab>members``; NAME= DOMAIN=:
    the list's fields and its member count."""
    store = ctx.store
    if req.has("NAME"):
        m = store.find_mlist(_local(req, "NAME"), _domain(req, "DOMAIN"))
        count = sum(1 for u in store.mlistusers.rows.values()
                    if (u.listname, u.listdomain) == (m.name, m.domain))
        return _ok(f"mailing list {m.address}", _rows((
            ("Name", m.name), ("Domain", m.domain), ("Access", m.access),
            ("Members", m.members), ("Users", count))))
    lists = list(store.mlists.rows.values())
    if req.has("DOMAIN"):
        domain = _domain(req, "DOMAIN")
        store.find_domain(domain)
        lists = [m for m in lists if m.domain == domain]
    rows = [_mlist_row(m) for m in sorted(lists, key=lambda m: (m.domain, m.name))]
    return _ok(_plural(len(rows), "mailing list"), rows)


def mlist_del(ctx: Any, req: Request) -> Answer:
    store = ctx.store
    if req.has("NAME"):
        m = store.find_mlist(_local(req, "NAME"), _domain(req, "DOMAIN"))
        store.del_mlists(lambda x: (x.name, x.domain) == (m.name, m.domain))
        return _ok(f"mailing list {m.address} deleted")
    if req.has("DOMAIN"):
        domain = _domain(req, "DOMAIN")
        store.find_domain(domain)
        removed = store.del_mlists(lambda x: x.domain == domain)
    else:
        removed = store.del_mlists(lambda x: True)
    return _ok(_plural(removed, "mailing list") + " deleted")


# ---------------------------------------------------------------- MLISTUSER
def _list_of(req: Request) -> MList:
    return req.ctx.store.find_mlist(_local(req, "MLISTNAME"), _domain(req, "MLISTDOMAIN"))


def mlistuser_add(ctx: Any, req: Request) -> Answer:
    """MEMBERS of the list decides who may join: 1 any mailbox, 2 mailboxes of a local
    domain, 4 mailboxes of the list's own domain."""
    mailbox = _mailbox(req, "MAILBOX")
    kind = _number(req, "TYPE", allowed=TYPE_VALUES) if req.has("TYPE") else 1
    m = _list_of(req)
    member_domain = mailbox.rpartition("@")[2]
    if m.members == 2 and not ctx.store.is_local_domain(member_domain):
        raise CommandError(f"MAILBOX: mailing list {m.address} takes only mailboxes of "
                           f"local domains (MEMBERS=2)")
    if m.members == 4 and member_domain != m.domain:
        raise CommandError(f"MAILBOX: mailing list {m.address} takes only mailboxes of "
                           f"{m.domain} (MEMBERS=4)")
    ctx.store.add_mlistuser(MListUser(mailbox, m.name, m.domain, kind))
    return _ok(f"{mailbox} added to mailing list {m.address}")


def mlistuser_mod(ctx: Any, req: Request) -> Answer:
    mailbox = _mailbox(req, "MAILBOX")
    kind = _number(req, "TYPE", allowed=TYPE_VALUES)
    m = _list_of(req)
    ctx.store.mod_mlistuser(mailbox, m.name, m.domain, type=kind)
    return _ok(f"{mailbox} in mailing list {m.address} modified")


def mlistuser_list(ctx: Any, req: Request) -> Answer:
    """The manual's ``mailbox<tab>type<tab>mailinglist`` rows, for all lists or one."""
    members = list(ctx.store.mlistusers.rows.values())
    if req.has("MLISTNAME"):
        m = _list_of(req)
        members = [u for u in members if (u.listname, u.listdomain) == (m.name, m.domain)]
    members.sort(key=lambda u: (u.listdomain, u.listname, u.mailbox))
    rows = [f"{u.mailbox}\t{u.type}\t{u.listname}@{u.listdomain}" for u in members]
    return _ok(_plural(len(rows), "mailing list user"), rows)


def mlistuser_del(ctx: Any, req: Request) -> Answer:
    store = ctx.store
    if req.has("MAILBOX") and req.has("MLISTNAME"):
        mailbox = _mailbox(req, "MAILBOX")
        m = _list_of(req)
        if (mailbox, m.name, m.domain) not in store.mlistusers.rows:
            raise CommandError(f"{mailbox} is not in mailing list {m.address}")
        store.del_mlistusers(lambda u: (u.mailbox, u.listname, u.listdomain)
                             == (mailbox, m.name, m.domain))
        return _ok(f"{mailbox} deleted from mailing list {m.address}")
    if req.has("MAILBOX"):
        mailbox = _mailbox(req, "MAILBOX")
        removed = store.del_mlistusers(lambda u: u.mailbox == mailbox)
        if not removed:
            raise CommandError(f"{mailbox} is not in any mailing list")
    elif req.has("MLISTNAME"):
        m = _list_of(req)
        removed = store.del_mlistusers(lambda u: (u.listname, u.listdomain) == (m.name, m.domain))
    else:
        removed = store.del_mlistusers(lambda u: True)
    return _ok(_plural(removed, "mailing list user") + " deleted")


# ---------------------------------------------------------------- QUEUE and DNS (plug-ins)
def _selector(req: Request) -> tuple[str, str | None]:
    if req.words:
        return "ALL", None
    if req.has("MAILBOX"):
        return "MAILBOX", _mailbox(req, "MAILBOX")
    if req.has("DOMAIN"):
        return "DOMAIN", _domain(req, "DOMAIN")
    text = req.params["ID"]
    if not re.match(r"^[A-Za-z0-9._-]{1,128}$", text):
        raise CommandError(f"bad ID={_show(text)!r}")
    return "ID", text


def _call(component: Any, method: str, *args: Any) -> Any:
    try:
        return getattr(component, method)(*args)
    except (LookupError, ValueError) as exc:
        raise CommandError(str(exc) or type(exc).__name__) from None


def queue_show(ctx: Any, req: Request) -> Answer:
    kind, value = _selector(req)
    queue = _component(ctx, "queue", "show")
    if queue is None:
        return Answer(False, NOT_AVAILABLE)
    rows = [_row(r) for r in _call(queue, "show", kind, value)]
    return _ok(_plural(len(rows), "queued mail"), rows)


def queue_resend(ctx: Any, req: Request) -> Answer:
    kind, value = _selector(req)
    queue = _component(ctx, "queue", "resend")
    if queue is None:
        return Answer(False, NOT_AVAILABLE)
    count = _call(queue, "resend", kind, value)
    return _ok(_plural(int(count), "queued mail") + " scheduled for delivery now")


def queue_del(ctx: Any, req: Request) -> Answer:
    kind, value = _selector(req)
    queue = _component(ctx, "queue", "delete")
    if queue is None:
        return Answer(False, NOT_AVAILABLE)
    count = _call(queue, "delete", kind, value)
    return _ok(_plural(int(count), "queued mail") + " deleted")


def _dns_domain(req: Request) -> str | None:
    return _domain(req, "DOMAIN") if req.has("DOMAIN") else None


def dns_cache_show(ctx: Any, req: Request) -> Answer:
    domain = _dns_domain(req)
    dns = _component(ctx, "dns", "cache_show")
    if dns is None:
        return Answer(False, NOT_AVAILABLE)
    rows = [_row(r) for r in _call(dns, "cache_show", domain)]
    return _ok(_plural(len(rows), "cache entry", "cache entries"), rows)


def dns_cache_flush(ctx: Any, req: Request) -> Answer:
    domain = _dns_domain(req)
    dns = _component(ctx, "dns", "cache_flush")
    if dns is None:
        return Answer(False, NOT_AVAILABLE)
    count = _call(dns, "cache_flush", domain)
    return _ok(_plural(int(count), "cache entry", "cache entries") + " flushed")


def dns_resolv(ctx: Any, req: Request) -> Answer:
    domain = _domain(req, "DOMAIN")
    dns = _component(ctx, "dns", "resolve")
    if dns is None:
        return Answer(False, NOT_AVAILABLE)
    rows = [_row(r) for r in _call(dns, "resolve", domain)]
    return _ok(f"{domain}: {_plural(len(rows), 'record')}", rows)


# ---------------------------------------------------------------- CONN
def _age(session: Any, now: float) -> tuple[str, int]:
    started = getattr(session, "started", None) or now
    return _date(started), max(0, int(now - started))


def conn_smtp_show(ctx: Any, req: Request) -> Answer:
    """The manual's ``helo<tab>IP<tab>mail from<tab>rcpt to<tab>date<tab>secs`` per live
    SMTP session (several recipients are separated by commas)."""
    now = time.time()
    rows = []
    for session in ctx.registry.sessions("smtp"):
        date, secs = _age(session, now)
        rcpts = getattr(session, "rcpts", None) or []
        rows.append("\t".join((str(getattr(session, "helo", "") or ""),
                               str(getattr(session, "peer_ip", "") or ""),
                               str(getattr(session, "mail_from", "") or ""),
                               ",".join(str(r) for r in rcpts), date, str(secs))))
    return _ok(_plural(len(rows), "SMTP connection"), rows)


def _conn_login_show(ctx: Any, protocol: str, label: str) -> Answer:
    """``user<tab>IP<tab>date<tab>secs`` per live session (user empty before login)."""
    now = time.time()
    rows = []
    for session in ctx.registry.sessions(protocol):
        date, secs = _age(session, now)
        rows.append("\t".join((str(getattr(session, "user", "") or ""),
                               str(getattr(session, "peer_ip", "") or ""), date, str(secs))))
    return _ok(_plural(len(rows), f"{label} connection"), rows)


def conn_pop3_show(ctx: Any, req: Request) -> Answer:
    return _conn_login_show(ctx, "pop3", "POP3")


def conn_imap_show(ctx: Any, req: Request) -> Answer:
    return _conn_login_show(ctx, "imap", "IMAP")


# ---------------------------------------------------------------- STATUS, CONF, HELP
def _temporary_files(directory: str) -> int:
    count = 0
    for _, _, files in os.walk(directory):
        count += len(files)
    return count


def status(ctx: Any, req: Request) -> Answer:
    stats = ctx.stats
    return _ok("status", _rows((
        ("Version", VERSION),
        ("Date start", _date(stats.started)),
        ("Time running", stats.uptime()),
        ("Mails sent", stats.get("mails_sent")),
        ("Mails received", stats.get("mails_received")),
        ("Users", len(ctx.store.users.rows)),
        ("SMTP in connections", stats.get("smtp_in")),
        ("SMTP out", stats.get("smtp_out")),
        ("POP3", stats.get("pop3")),
        ("Active threads", ctx.active_threads()),
        ("Temporary files", _temporary_files(ctx.cfg.DIR_TMP)))))


def conf(ctx: Any, req: Request) -> Answer:
    """Every parameter as ``NAME<tab>value`` (as written, defaults filled in); the file
    holds no secret (the management password lives hashed in FILE_LOGIN)."""
    rows = [f"{p.name}\t{ctx.cfg.text.get(p.name, p.default)}" for p in PARAMS]
    return _ok(f"{len(rows)} parameters", rows)


def help_all(ctx: Any, req: Request) -> Answer:
    if req.words:
        (group,) = req.words
        return _group_help(group)
    lines = ["LOGIN <password>", "QUIT"]
    for group in GROUPS:
        lines += [spec.syntax for spec in TABLE if spec.words[0] == group and spec.syntax]
    return _ok("help", lines)


def _group_help(group: str) -> Answer:
    return _ok(f"{group} help", [spec.syntax for spec in TABLE if spec.words[0] == group])


def group_help(ctx: Any, req: Request) -> Answer:
    return _group_help(req.spec.words[0])


# ---------------------------------------------------------------- the table
_USER_OPT = ("DIR", "PASS", "QUOTA", "FORWARD", "COPY", "MAXINMAILSIZE", "MAXOUTMAILSIZE")
_DOMAIN_OPT = _DOMAIN_FIELDS
_DENY_WORDS = " | ".join(DENY_KINDS)
_DENY_VALUE_NAMES = {"IPIN": "ip/mask", "IPOUT": "ip/mask", "DOMAININ": "domain",
                     "DOMAINOUT": "domain", "MAILBOXIN": "mailbox", "MAILBOXOUT": "mailbox"}
_DENY_PARAMS = " | ".join(f"{k}=<{_DENY_VALUE_NAMES[k]}>" for k in DENY_KINDS)
DATA_GROUPS = frozenset({"USER", "DOMAIN", "ALIAS", "DENY", "MLIST", "MLISTUSER"})
HELP_TOPICS = ("USER", "DOMAIN", "ALIAS", "DENY", "MLIST", "MLISTUSER", "QUEUE", "DNS", "CONN")
_SELECT = ("ALL", "MAILBOX=", "DOMAIN=")

TABLE: tuple[Spec, ...] = (
    Spec(("USER", "ADD"), user_add,
         "USER ADD NAME=<username> DOMAIN=<domainname> [DIR=<userdir>] [PASS=<userpassword>] "
         "[QUOTA=<spacequota>] [FORWARD=<forward>] [COPY=<copy>] [MAXINMAILSIZE=<size>] "
         "[MAXOUTMAILSIZE=<size>]",
         required=("NAME", "DOMAIN"), optional=_USER_OPT),
    Spec(("USER", "MOD"), user_mod,
         "USER MOD NAME=<username> [DOMAIN=<domainname>] [DIR=<userdir>] [PASS=<userpassword>] "
         "[QUOTA=<spacequota>] [FORWARD=<forward>] [COPY=<copy>] [MAXINMAILSIZE=<size>] "
         "[MAXOUTMAILSIZE=<size>]",
         required=("NAME",), optional=("DOMAIN", *_USER_OPT)),
    Spec(("USER", "LIST"), user_list, "USER LIST ALL | NAME=<username> [DOMAIN=<domain>] | "
         "DOMAIN=<domain>", forms=("ALL", "NAME=", "NAME= DOMAIN=", "DOMAIN=")),
    Spec(("USER", "DEL"), user_del, "USER DEL NAME=<username> DOMAIN=<domainname>",
         required=("NAME", "DOMAIN")),
    Spec(("USER", "HELP"), group_help, "USER HELP"),
    Spec(("DOMAIN", "ADD"), domain_add,
         "DOMAIN ADD NAME=<domain> [DEFMAXINMAILSIZE=<size>] [DEFMAXOUTMAILSIZE=<size>] "
         "[MAXINMAILSIZE=<size>] [MAXOUTMAILSIZE=<size>] [DEFMAILBOX=<mailbox>] "
         "[MAILINFOOTER=<file>] [MAILOUTFOOTER=<file>] [SHOWFOOTER=0|1|2|3]",
         required=("NAME",), optional=_DOMAIN_OPT),
    Spec(("DOMAIN", "MOD"), domain_mod,
         "DOMAIN MOD NAME=<domain> [DEFMAXINMAILSIZE=<size>] [DEFMAXOUTMAILSIZE=<size>] "
         "[MAXINMAILSIZE=<size>] [MAXOUTMAILSIZE=<size>] [DEFMAILBOX=<mailbox>] "
         "[MAILINFOOTER=<file>] [MAILOUTFOOTER=<file>] [SHOWFOOTER=0|1|2|3]",
         required=("NAME",), optional=_DOMAIN_OPT),
    Spec(("DOMAIN", "LIST"), domain_list, "DOMAIN LIST ALL | NAME=<domain>",
         forms=("ALL", "NAME=")),
    Spec(("DOMAIN", "DEL"), domain_del, "DOMAIN DEL NAME=<domain>", required=("NAME",)),
    Spec(("DOMAIN", "HELP"), group_help, "DOMAIN HELP"),
    Spec(("ALIAS", "ADD"), alias_add,
         "ALIAS ADD NAME=<username> DOMAIN=<domain> FORWARD=<mailbox> | PIPE=<externalprogram>",
         required=("NAME", "DOMAIN"), optional=("FORWARD", "PIPE")),
    Spec(("ALIAS", "MOD"), alias_mod,
         "ALIAS MOD NAME=<username> DOMAIN=<domain> FORWARD=<mailbox> | PIPE=<externalprogram>",
         required=("NAME", "DOMAIN"), optional=("FORWARD", "PIPE")),
    Spec(("ALIAS", "LIST"), alias_list,
         "ALIAS LIST ALL | NAME=<mailbox> DOMAIN=<domain> | DOMAIN=<domain>",
         forms=("ALL", "NAME= DOMAIN=", "DOMAIN=")),
    Spec(("ALIAS", "DEL"), alias_del, "ALIAS DEL NAME=<mailbox> DOMAIN=<domain>",
         required=("NAME", "DOMAIN")),
    Spec(("ALIAS", "HELP"), group_help, "ALIAS HELP"),
    Spec(("DENY", "ADD"), deny_add, f"DENY ADD {_DENY_PARAMS}",
         forms=tuple(f"{k}=" for k in DENY_KINDS)),
    Spec(("DENY", "LIST"), deny_list, f"DENY LIST ALL | {_DENY_WORDS}",
         forms=("ALL", *DENY_KINDS)),
    Spec(("DENY", "DEL"), deny_del, f"DENY DEL ALL | {_DENY_WORDS} | {_DENY_PARAMS}",
         forms=("ALL", *DENY_KINDS, *tuple(f"{k}=" for k in DENY_KINDS))),
    Spec(("DENY", "HELP"), group_help, "DENY HELP"),
    Spec(("MLIST", "ADD"), mlist_add,
         "MLIST ADD NAME=<name> DOMAIN=<domain> [ACCESS=1|2|4] [MEMBERS=1|2|4]",
         required=("NAME", "DOMAIN"), optional=("ACCESS", "MEMBERS")),
    Spec(("MLIST", "MOD"), mlist_mod,
         "MLIST MOD NAME=<name> DOMAIN=<domain> [ACCESS=1|2|4] [MEMBERS=1|2|4]",
         required=("NAME", "DOMAIN"), optional=("ACCESS", "MEMBERS")),
    Spec(("MLIST", "LIST"), mlist_list,
         "MLIST LIST ALL | DOMAIN=<domain> | NAME=<name> DOMAIN=<domain>",
         forms=("ALL", "DOMAIN=", "NAME= DOMAIN=")),
    Spec(("MLIST", "DEL"), mlist_del,
         "MLIST DEL ALL | DOMAIN=<domain> | NAME=<name> DOMAIN=<domain>",
         forms=("ALL", "DOMAIN=", "NAME= DOMAIN=")),
    Spec(("MLIST", "HELP"), group_help, "MLIST HELP"),
    Spec(("MLISTUSER", "ADD"), mlistuser_add,
         "MLISTUSER ADD MAILBOX=<mailbox> MLISTNAME=<name> MLISTDOMAIN=<domain> [TYPE=1|2]",
         required=("MAILBOX", "MLISTNAME", "MLISTDOMAIN"), optional=("TYPE",)),
    Spec(("MLISTUSER", "MOD"), mlistuser_mod,
         "MLISTUSER MOD MAILBOX=<mailbox> MLISTNAME=<name> MLISTDOMAIN=<domain> TYPE=1|2",
         required=("MAILBOX", "MLISTNAME", "MLISTDOMAIN", "TYPE")),
    Spec(("MLISTUSER", "LIST"), mlistuser_list,
         "MLISTUSER LIST ALL | MLISTNAME=<name> MLISTDOMAIN=<domain>",
         forms=("ALL", "MLISTNAME= MLISTDOMAIN=")),
    Spec(("MLISTUSER", "DEL"), mlistuser_del,
         "MLISTUSER DEL ALL | MLISTNAME=<name> MLISTDOMAIN=<domain> | MAILBOX=<mailbox> "
         "[MLISTNAME=<name> MLISTDOMAIN=<domain>]",
         forms=("ALL", "MLISTNAME= MLISTDOMAIN=", "MAILBOX=", "MAILBOX= MLISTNAME= MLISTDOMAIN=")),
    Spec(("MLISTUSER", "HELP"), group_help, "MLISTUSER HELP"),
    Spec(("QUEUE", "SHOW"), queue_show, "QUEUE SHOW ALL | MAILBOX=<mailbox> | DOMAIN=<domainname>",
         forms=_SELECT),
    Spec(("QUEUE", "RESEND"), queue_resend,
         "QUEUE RESEND ALL | MAILBOX=<mailbox> | DOMAIN=<domainname>", forms=_SELECT),
    Spec(("QUEUE", "DEL"), queue_del,
         "QUEUE DEL ALL | ID=<id> | MAILBOX=<mailbox> | DOMAIN=<domainname>",
         forms=(*_SELECT, "ID=")),
    Spec(("QUEUE", "HELP"), group_help, "QUEUE HELP"),
    Spec(("DNS", "CACHE", "SHOW"), dns_cache_show, "DNS CACHE SHOW ALL | DOMAIN=<domain>",
         forms=("ALL", "DOMAIN=")),
    Spec(("DNS", "CACHE", "FLUSH"), dns_cache_flush, "DNS CACHE FLUSH ALL | DOMAIN=<domain>",
         forms=("ALL", "DOMAIN=")),
    Spec(("DNS", "RESOLV"), dns_resolv, "DNS RESOLV DOMAIN=<domain>", required=("DOMAIN",)),
    Spec(("DNS", "HELP"), group_help, "DNS HELP"),
    Spec(("CONN", "SMTP", "SHOW"), conn_smtp_show, "CONN SMTP SHOW"),
    Spec(("CONN", "POP3", "SHOW"), conn_pop3_show, "CONN POP3 SHOW"),
    Spec(("CONN", "IMAP", "SHOW"), conn_imap_show, "CONN IMAP SHOW"),
    Spec(("CONN", "HELP"), group_help, "CONN HELP"),
    Spec(("STATUS",), status, "STATUS"),
    Spec(("CONF",), conf, "CONF"),
    Spec(("HELP",), help_all, "HELP [" + " | ".join(HELP_TOPICS) + "]",
         forms=("", *HELP_TOPICS), before_login=True),
)

GROUPS: tuple[str, ...] = tuple(dict.fromkeys(spec.words[0] for spec in TABLE))
_BY_WORDS: dict[tuple[str, ...], Spec] = {spec.words: spec for spec in TABLE}


def _subcommands(group: str) -> list[str]:
    return [" ".join(spec.words[1:]) for spec in TABLE if spec.words[0] == group]


def _find(words: list[str]) -> tuple[Spec, list[str]]:
    """The spec for the longest matching word prefix, and the words left over."""
    group = words[0]
    if group not in GROUPS:
        raise CommandError(f"unknown command {_show(group, 40)}")
    for length in range(min(len(words), 3), 0, -1):
        spec = _BY_WORDS.get(tuple(words[:length]))
        if spec is not None:
            return spec, words[length:]
    subs = ", ".join(_subcommands(group))
    if len(words) == 1:
        raise CommandError(f"{group} needs a subcommand ({subs})")
    raise CommandError(f"unknown {group} subcommand {_show(' '.join(words[1:]), 40)} ({subs})")


def _check(spec: Spec, rest: list[str], params: dict[str, str]) -> None:
    """Refuse unknown words and parameters, missing parameters and invalid combinations."""
    accepted = spec.accepted_params()
    for name in params:
        if name not in accepted:
            known = ", ".join(p + "=" for p in accepted) or "none"
            raise CommandError(f"unknown parameter {_show(name, 40)}= for {spec.name} "
                               f"(accepted: {known})")
    words = spec.accepted_words()
    for word in rest:
        if word not in words:
            raise CommandError(f"unexpected word {_show(word, 40)} in {spec.name}")
    if spec.forms:
        given = frozenset(rest) | frozenset(p + "=" for p in params)
        if len(rest) > 1 or given not in spec.form_sets:
            alternatives = " | ".join(f for f in spec.forms if f) or "nothing"
            raise CommandError(f"{spec.name} needs one of: {alternatives}")
        return
    for name in spec.required:
        if name not in params:
            raise CommandError(f"{spec.name} needs {name}=")


def execute(ctx: Any, command: Command, logged_in: bool) -> Answer:
    """Run one parsed command; every refusal comes back as an ``-ERR`` answer."""
    if not logged_in and command.verb != "HELP":
        return Answer(False, "login first")
    if not command.words:
        return Answer(False, "a command is required before the parameters")
    try:
        spec, rest = _find(command.words)
        _check(spec, rest, command.params)
        request = Request(ctx, spec, rest, dict(command.params))
        if spec.words[0] in DATA_GROUPS:
            # checks and changes as one step: two sessions cannot both pass a check
            # (a free DIR, a free name) and then both write
            with ctx.store.writing():
                return spec.handler(ctx, request)
        return spec.handler(ctx, request)
    except (CommandError, StoreError, InvalidName) as exc:
        return Answer(False, str(exc))


def summary(command: Command) -> str:
    """The command for the log: secret values (PASS) replaced by ``****``."""
    parts = list(command.words)
    for name, value in command.params.items():
        if name in SECRET_PARAMS:
            value = "****"
        elif not value or any(ch in value for ch in ' "\\\t'):
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{name}={_show(value, 200)}")
    return " ".join(parts)
