"""Domains, users, aliases, deny entries, mailing lists and list members.

Each kind lives in one text file at its FILE_* path: a header comment naming the fields,
then one record a line, fields separated by a tab.  A change is checked completely first,
then written to a temporary file, fsynced and renamed over the old one (under an
``fcntl`` lock), so a file is always either the old or the new version.  Readers take
the current immutable mapping without locking; writers replace it (copy on write).

Attack surface: values arrive from the management port; every name that can become a
path or a field is validated by :mod:`extremail.names` before it is stored.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import threading
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any, Generic, TypeVar
from collections.abc import Callable, Iterable, Mapping

from . import log, names
from .config import Config
from .durable import atomic_write

LOG = log.get("store")


class StoreError(Exception):
    """A change that cannot be made; nothing was written.  The text names the object."""


@dataclass(frozen=True)
class Domain:
    name: str
    defmaxinmailsize: int = 0
    defmaxoutmailsize: int = 0
    maxinmailsize: int = 0
    maxoutmailsize: int = 0
    defmailbox: str = ""
    mailinfooter: str = ""
    mailoutfooter: str = ""
    showfooter: int = 0


@dataclass(frozen=True)
class User:
    name: str
    domain: str
    dir: str = ""
    password: str = ""  # scrypt hash, never the clear password
    quota: int = 0
    forward: str = ""
    copy: str = ""
    maxinmailsize: int = 0
    maxoutmailsize: int = 0

    @property
    def address(self) -> str:
        return f"{self.name}@{self.domain}"


@dataclass(frozen=True)
class Alias:
    name: str
    domain: str
    forward: str = ""
    pipe: str = ""

    @property
    def address(self) -> str:
        return f"{self.name}@{self.domain}"


DENY_KINDS = ("IPIN", "IPOUT", "DOMAININ", "DOMAINOUT", "MAILBOXIN", "MAILBOXOUT")


@dataclass(frozen=True)
class Deny:
    kind: str
    value: str


@dataclass(frozen=True)
class MList:
    name: str
    domain: str
    access: int = 1
    members: int = 1

    @property
    def address(self) -> str:
        return f"{self.name}@{self.domain}"


@dataclass(frozen=True)
class MListUser:
    mailbox: str
    listname: str
    listdomain: str
    type: int = 1


R = TypeVar("R")


class Table(Generic[R]):
    """One data file: records of one dataclass, keyed by ``key``."""

    def __init__(self, path: str, kind: type[R], key: Callable[[R], Any],
                 check: Callable[[R], R] | None = None) -> None:
        self.path = path
        self.kind = kind
        self.key = key
        self.check = check
        self.names = [f.name for f in fields(kind)]  # type: ignore[arg-type]
        self.types = [f.type for f in fields(kind)]  # type: ignore[arg-type]
        self.rows: Mapping[Any, R] = MappingProxyType({})

    def parse(self, content: str) -> dict[Any, R]:
        rows: dict[Any, R] = {}
        for number, line in enumerate(content.split("\n"), 1):
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) != len(self.names):
                raise StoreError(f"{self.path}:{number}: expected {len(self.names)} fields, "
                                 f"found {len(parts)}")
            try:
                values = [int(p) if t in ("int", int) else p for p, t in zip(parts, self.types, strict=True)]
            except ValueError:
                raise StoreError(f"{self.path}:{number}: a number field is not a number") from None
            record = self.kind(*values)
            if self.check is not None:
                try:
                    record = self.check(record)
                except ValueError as exc:  # InvalidName too
                    raise StoreError(f"{self.path}:{number}: {exc}") from None
            rows[self.key(record)] = record
        return rows

    def load(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            raw = b""
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise StoreError(f"{self.path}:{line}: not UTF-8 text") from None
        self.rows = MappingProxyType(self.parse(content))

    def render(self, rows: Iterable[R]) -> bytes:
        lines = [f"# eXtremail {os.path.basename(self.path)}: " + "\t".join(self.names)]
        for record in rows:
            lines.append("\t".join(str(getattr(record, n)) for n in self.names))
        return ("\n".join(lines) + "\n").encode("utf-8")


# A hand-edited data file is checked like the management commands check their values,
# so no name read back on SIGHUP can reach outside the base directory or break a record.
def _check_domain(r: Domain) -> Domain:
    return replace(r, name=names.domain(r.name))


def _check_local(r: Any) -> Any:
    return replace(r, name=names.local_part(r.name), domain=names.domain(r.domain))


def _check_user(r: User) -> User:
    """What USER ADD checks besides the name: sizes are not negative, DIR is an absolute
    path, FORWARD and COPY are mailboxes."""
    for size in ("quota", "maxinmailsize", "maxoutmailsize"):
        if getattr(r, size) < 0:
            raise ValueError(f"{size.upper()} must not be negative")
    return replace(_check_local(r), dir=r.dir and names.directory(r.dir),
                   forward=r.forward and names.mailbox(r.forward),
                   copy=r.copy and names.mailbox(r.copy))


def _check_deny(r: Deny) -> Deny:
    if r.kind not in DENY_KINDS:
        raise ValueError(f"unknown deny kind {r.kind[:20]!r}")
    return replace(r, value=names.deny_value(r.kind, r.value))


def _check_member(r: MListUser) -> MListUser:
    return replace(r, mailbox=names.mailbox(r.mailbox), listname=names.local_part(r.listname),
                   listdomain=names.domain(r.listdomain))


class Store:
    """Every data file of the server, with the manual's rules between them."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._write_lock = threading.RLock()
        self.domains: Table[Domain] = Table(cfg.FILE_DOMAIN_DATA, Domain, lambda r: r.name,
                                            _check_domain)
        self.users: Table[User] = Table(cfg.FILE_USER_DATA, User, lambda r: (r.name, r.domain),
                                        _check_user)
        self.aliases: Table[Alias] = Table(cfg.FILE_ALIAS_DATA, Alias,
                                           lambda r: (r.name, r.domain), _check_local)
        self.denies: Table[Deny] = Table(cfg.FILE_DENY_DATA, Deny, lambda r: (r.kind, r.value),
                                         _check_deny)
        self.mlists: Table[MList] = Table(cfg.FILE_MLIST_DATA, MList,
                                          lambda r: (r.name, r.domain), _check_local)
        self.mlistusers: Table[MListUser] = Table(
            cfg.FILE_MLISTUSER_DATA, MListUser, lambda r: (r.mailbox, r.listname, r.listdomain),
            _check_member)
        self.tables: tuple[Table[Any], ...] = (self.domains, self.users, self.aliases, self.denies,
                                               self.mlists, self.mlistusers)

    def writing(self) -> threading.RLock:
        """The writers' lock: hold it to check and then change the data as one step."""
        return self._write_lock

    # ---- loading ----
    def load(self) -> list[str]:
        """(Re)read every file.  A file that cannot be parsed keeps its previous contents;
        the problems are returned (and logged) so SIGHUP never empties a table by accident."""
        problems = []
        with self._write_lock:
            for table in self.tables:
                try:
                    table.load()
                except (StoreError, OSError) as exc:
                    problems.append(str(exc))
                    LOG.error("data file not loaded, previous contents kept: %s", exc)
        return problems

    # ---- writing ----
    def _commit(self, changes: list[tuple[Table[Any], dict[Any, Any]]]) -> None:
        """Write each changed table (dependent ones first, as given) and publish it."""
        for table, rows in changes:
            os.makedirs(os.path.dirname(table.path), exist_ok=True)
            lock_path = os.path.join(os.path.dirname(table.path), ".lock")
            with open(lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                atomic_write(table.path, table.render(rows.values()))
            table.rows = MappingProxyType(rows)

    def _local_taken(self, name: str, domain: str) -> str | None:
        key = (name, domain)
        if key in self.users.rows:
            return "user"
        if key in self.aliases.rows:
            return "alias"
        if key in self.mlists.rows:
            return "mailing list"
        return None

    def find_domain(self, domain: str) -> Domain:
        try:
            return self.domains.rows[domain]
        except KeyError:
            raise StoreError(f"domain {domain} does not exist") from None

    _need_domain = find_domain

    def _check_free(self, name: str, domain: str, kind: str) -> None:
        """A local address is one user, alias or mailing list, never two."""
        taken = self._local_taken(name, domain)
        if taken == kind:
            raise StoreError(f"{kind} {name}@{domain} already exists")
        if taken:
            article = "an" if taken == "alias" else "a"
            raise StoreError(f"{name}@{domain} already exists as {article} {taken}")

    # ---- domains ----
    def add_domain(self, record: Domain) -> None:
        with self._write_lock:
            if record.name in self.domains.rows:
                raise StoreError(f"domain {record.name} already exists")
            rows = dict(self.domains.rows)
            rows[record.name] = record
            self._commit([(self.domains, rows)])

    def mod_domain(self, name: str, **changes: Any) -> Domain:
        with self._write_lock:
            record = replace(self._need_domain(name), **changes)
            rows = dict(self.domains.rows)
            rows[name] = record
            self._commit([(self.domains, rows)])
            return record

    def del_domain(self, name: str) -> list[User]:
        """Delete a domain with its users, aliases and lists; returns the users removed
        (the caller removes their mailboxes)."""
        with self._write_lock:
            self._need_domain(name)
            users = {k: v for k, v in self.users.rows.items() if v.domain != name}
            gone = [v for v in self.users.rows.values() if v.domain == name]
            aliases = {k: v for k, v in self.aliases.rows.items() if v.domain != name}
            mlists = {k: v for k, v in self.mlists.rows.items() if v.domain != name}
            members = {k: v for k, v in self.mlistusers.rows.items() if v.listdomain != name}
            domains = {k: v for k, v in self.domains.rows.items() if k != name}
            self._commit([(self.users, users), (self.aliases, aliases), (self.mlistusers, members),
                          (self.mlists, mlists), (self.domains, domains)])
            return gone

    # ---- users ----
    def add_user(self, record: User) -> User:
        """Add a user; the domain's DEFMAXINMAILSIZE/DEFMAXOUTMAILSIZE fill sizes not given."""
        with self._write_lock:
            domain = self._need_domain(record.domain)
            self._check_free(record.name, record.domain, "user")
            record = replace(record,
                             maxinmailsize=record.maxinmailsize or domain.defmaxinmailsize,
                             maxoutmailsize=record.maxoutmailsize or domain.defmaxoutmailsize)
            rows = dict(self.users.rows)
            rows[(record.name, record.domain)] = record
            self._commit([(self.users, rows)])
            return record

    def find_user(self, name: str, domain: str) -> User:
        try:
            return self.users.rows[(name, domain)]
        except KeyError:
            raise StoreError(f"user {name}@{domain} does not exist") from None

    def mod_user(self, name: str, domain: str, **changes: Any) -> User:
        with self._write_lock:
            record = replace(self.find_user(name, domain), **changes)
            rows = dict(self.users.rows)
            rows[(name, domain)] = record
            self._commit([(self.users, rows)])
            return record

    def del_user(self, name: str, domain: str) -> User:
        with self._write_lock:
            record = self.find_user(name, domain)
            rows = {k: v for k, v in self.users.rows.items() if k != (name, domain)}
            self._commit([(self.users, rows)])
            return record

    # ---- aliases ----
    def add_alias(self, record: Alias) -> None:
        with self._write_lock:
            self._need_domain(record.domain)
            self._check_free(record.name, record.domain, "alias")
            rows = dict(self.aliases.rows)
            rows[(record.name, record.domain)] = record
            self._commit([(self.aliases, rows)])

    def find_alias(self, name: str, domain: str) -> Alias:
        try:
            return self.aliases.rows[(name, domain)]
        except KeyError:
            raise StoreError(f"alias {name}@{domain} does not exist") from None

    def mod_alias(self, name: str, domain: str, **changes: Any) -> Alias:
        with self._write_lock:
            record = replace(self.find_alias(name, domain), **changes)
            rows = dict(self.aliases.rows)
            rows[(name, domain)] = record
            self._commit([(self.aliases, rows)])
            return record

    def del_alias(self, name: str, domain: str) -> None:
        with self._write_lock:
            self.find_alias(name, domain)
            rows = {k: v for k, v in self.aliases.rows.items() if k != (name, domain)}
            self._commit([(self.aliases, rows)])

    # ---- deny entries ----
    def add_deny(self, record: Deny) -> None:
        with self._write_lock:
            key = (record.kind, record.value)
            if key in self.denies.rows:
                raise StoreError(f"deny entry {record.kind}={record.value} already exists")
            rows = dict(self.denies.rows)
            rows[key] = record
            self._commit([(self.denies, rows)])

    def del_denies(self, match: Callable[[Deny], bool]) -> int:
        with self._write_lock:
            rows = {k: v for k, v in self.denies.rows.items() if not match(v)}
            removed = len(self.denies.rows) - len(rows)
            if removed:
                self._commit([(self.denies, rows)])
            return removed

    # ---- mailing lists ----
    def add_mlist(self, record: MList) -> None:
        with self._write_lock:
            self._need_domain(record.domain)
            self._check_free(record.name, record.domain, "mailing list")
            rows = dict(self.mlists.rows)
            rows[(record.name, record.domain)] = record
            self._commit([(self.mlists, rows)])

    def find_mlist(self, name: str, domain: str) -> MList:
        try:
            return self.mlists.rows[(name, domain)]
        except KeyError:
            raise StoreError(f"mailing list {name}@{domain} does not exist") from None

    def mod_mlist(self, name: str, domain: str, **changes: Any) -> MList:
        with self._write_lock:
            record = replace(self.find_mlist(name, domain), **changes)
            rows = dict(self.mlists.rows)
            rows[(name, domain)] = record
            self._commit([(self.mlists, rows)])
            return record

    def del_mlists(self, match: Callable[[MList], bool]) -> int:
        """Delete the lists that match, with their members."""
        with self._write_lock:
            gone = {k for k, v in self.mlists.rows.items() if match(v)}
            if not gone:
                return 0
            lists = {k: v for k, v in self.mlists.rows.items() if k not in gone}
            members = {k: v for k, v in self.mlistusers.rows.items()
                       if (v.listname, v.listdomain) not in gone}
            self._commit([(self.mlistusers, members), (self.mlists, lists)])
            return len(gone)

    def add_mlistuser(self, record: MListUser) -> None:
        with self._write_lock:
            self.find_mlist(record.listname, record.listdomain)
            key = (record.mailbox, record.listname, record.listdomain)
            if key in self.mlistusers.rows:
                raise StoreError(f"{record.mailbox} is already in mailing list "
                                 f"{record.listname}@{record.listdomain}")
            rows = dict(self.mlistusers.rows)
            rows[key] = record
            self._commit([(self.mlistusers, rows)])

    def mod_mlistuser(self, mailbox: str, listname: str, listdomain: str, **changes: Any) -> None:
        with self._write_lock:
            key = (mailbox, listname, listdomain)
            if key not in self.mlistusers.rows:
                raise StoreError(f"{mailbox} is not in mailing list {listname}@{listdomain}")
            rows = dict(self.mlistusers.rows)
            rows[key] = dataclasses.replace(rows[key], **changes)
            self._commit([(self.mlistusers, rows)])

    def del_mlistusers(self, match: Callable[[MListUser], bool]) -> int:
        with self._write_lock:
            rows = {k: v for k, v in self.mlistusers.rows.items() if not match(v)}
            removed = len(self.mlistusers.rows) - len(rows)
            if removed:
                self._commit([(self.mlistusers, rows)])
            return removed

    # ---- lookups used by routing ----
    def user_dir(self, user: User) -> str:
        """The user's Maildir: DIR, or DIR_USER_MBOX/<domain>/<user>."""
        return user.dir or os.path.join(self.cfg.DIR_USER_MBOX, user.domain, user.name)

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.domains.rows
