"""The data store: atomic files, the manual's rules between tables, reloads that keep old data."""

from __future__ import annotations

import os
import threading

import pytest

from extremail import config
from extremail.store import Alias, Deny, Domain, MList, MListUser, Store, StoreError, User


@pytest.fixture
def store(tmp_path) -> Store:
    cfg = config.build(str(tmp_path), {})
    result = Store(cfg)
    result.load()
    return result


def lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


def refused(call) -> str:
    with pytest.raises(StoreError) as info:
        call()
    return str(info.value)


def test_a_change_rewrites_the_file_atomically(store: Store) -> None:
    store.add_domain(Domain("acme.test", defmailbox="pm@acme.test"))
    path = store.cfg.FILE_DOMAIN_DATA
    content = lines(path)
    assert content[0].startswith("# eXtremail domain_data: name\t")
    assert content[1:] == ["acme.test\t0\t0\t0\t0\tpm@acme.test\t\t\t0"]
    assert not [n for n in os.listdir(os.path.dirname(path)) if ".tmp." in n]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    fresh = Store(store.cfg)
    assert fresh.load() == []
    assert fresh.domains.rows["acme.test"] == store.domains.rows["acme.test"]


def test_new_users_get_the_domain_defaults(store: Store) -> None:
    store.add_domain(Domain("acme.test", defmaxinmailsize=100, defmaxoutmailsize=50))
    mick = store.add_user(User("mick", "acme.test"))
    anne = store.add_user(User("anne", "acme.test", maxinmailsize=7))
    assert (mick.maxinmailsize, mick.maxoutmailsize) == (100, 50)
    assert (anne.maxinmailsize, anne.maxoutmailsize) == (7, 50)
    assert store.user_dir(mick) == os.path.join(store.cfg.DIR_USER_MBOX, "acme.test", "mick")
    assert store.user_dir(User("x", "acme.test", dir="/srv/x")) == "/srv/x"


def test_an_address_is_one_user_alias_or_list(store: Store) -> None:
    store.add_domain(Domain("acme.test"))
    store.add_user(User("mick", "acme.test"))
    store.add_alias(Alias("sales", "acme.test", forward="mick@acme.test"))
    store.add_mlist(MList("team", "acme.test"))
    assert refused(lambda: store.add_user(User("mick", "acme.test"))) \
        == "user mick@acme.test already exists"
    assert refused(lambda: store.add_alias(Alias("mick", "acme.test", forward="x@y.test"))) \
        == "mick@acme.test already exists as a user"
    assert refused(lambda: store.add_mlist(MList("sales", "acme.test"))) \
        == "sales@acme.test already exists as an alias"
    assert refused(lambda: store.add_user(User("team", "acme.test"))) \
        == "team@acme.test already exists as a mailing list"
    assert refused(lambda: store.add_user(User("x", "other.test"))) \
        == "domain other.test does not exist"

def test_deleting_a_domain_takes_everything_of_it(store: Store) -> None:
    for name in ("acme.test", "other.test"):
        store.add_domain(Domain(name))
        store.add_user(User("mick", name))
        store.add_alias(Alias("sales", name, forward="mick@acme.test"))
        store.add_mlist(MList("team", name))
        store.add_mlistuser(MListUser("mick@other.test", "team", name))
    gone = store.del_domain("acme.test")
    assert [u.address for u in gone] == ["mick@acme.test"]
    for table in (store.users, store.aliases, store.mlists):
        assert {r.domain for r in table.rows.values()} == {"other.test"}
    assert {m.listdomain for m in store.mlistusers.rows.values()} == {"other.test"}
    assert list(store.domains.rows) == ["other.test"]
    fresh = Store(store.cfg)
    fresh.load()
    assert list(fresh.users.rows) == [("mick", "other.test")]


def test_a_malformed_file_keeps_the_previous_data(store: Store) -> None:
    store.add_domain(Domain("acme.test"))
    path = store.cfg.FILE_DOMAIN_DATA
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("only\ttwo\n")
    problems = store.load()
    assert len(problems) == 1 and f"{path}:3: expected 9 fields, found 2" in problems[0]
    assert list(store.domains.rows) == ["acme.test"]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("acme.test\tx\t0\t0\t0\t\t\t\t0\n")
    assert "a number field is not a number" in store.load()[0]
    assert list(store.domains.rows) == ["acme.test"]


@pytest.mark.parametrize("table, line", [
    ("FILE_USER_DATA", "../../etc\tacme.test\t\t\t0\t\t\t0\t0"),
    ("FILE_USER_DATA", "mick\t../acme.test\t\t\t0\t\t\t0\t0"),
    ("FILE_USER_DATA", "a/b\tacme.test\t\t\t0\t\t\t0\t0"),
    ("FILE_DOMAIN_DATA", "acme/../x\t0\t0\t0\t0\t\t\t\t0"),
    ("FILE_ALIAS_DATA", "..\tacme.test\tx@y.test\t"),
    ("FILE_DENY_DATA", "HOSTIN\t1.2.3.4"),
    ("FILE_MLISTUSER_DATA", "nobody\tteam\tacme.test\t1"),
])
def test_hand_edited_files_are_checked_like_commands(store: Store, table: str, line: str) -> None:
    path = getattr(store.cfg, table)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(line + "\n")
    problems = store.load()
    assert len(problems) == 1 and f"{path}:1:" in problems[0]


def test_hand_edited_names_are_normalised(store: Store) -> None:
    os.makedirs(os.path.dirname(store.cfg.FILE_USER_DATA), exist_ok=True)
    with open(store.cfg.FILE_USER_DATA, "w", encoding="utf-8") as handle:
        handle.write("Mick\tACME.test\t\t\t0\t\t\t0\t0\n")
    assert store.load() == []
    assert list(store.users.rows) == [("mick", "acme.test")]


def test_deny_entries_and_list_members(store: Store) -> None:
    store.add_deny(Deny("IPIN", "10.0.0.0/8"))
    with pytest.raises(StoreError, match="already exists"):
        store.add_deny(Deny("IPIN", "10.0.0.0/8"))
    store.add_deny(Deny("DOMAINOUT", "spam.test"))
    assert store.del_denies(lambda d: d.kind == "IPIN") == 1
    store.add_domain(Domain("acme.test"))
    store.add_mlist(MList("team", "acme.test"))
    store.add_mlistuser(MListUser("a@b.test", "team", "acme.test"))
    store.mod_mlistuser("a@b.test", "team", "acme.test", type=2)
    assert store.mlistusers.rows[("a@b.test", "team", "acme.test")].type == 2
    assert store.del_mlists(lambda m: True) == 1
    assert not store.mlistusers.rows


def test_concurrent_writers_lose_nothing(store: Store) -> None:
    store.add_domain(Domain("acme.test"))

    def add(first: int) -> None:
        for n in range(first, first + 20):
            store.add_user(User(f"u{n}", "acme.test"))

    threads = [threading.Thread(target=add, args=(i * 100,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    fresh = Store(store.cfg)
    fresh.load()
    assert len(fresh.users.rows) == 80
