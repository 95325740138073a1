"""Unit tests of extremail/policy.py: relay decisions, deny entries, MAXOUTMAILSIZE.

The same rules are tested through the wire in test_smtp_relay.py and test_smtp_deny.py.
"""

from __future__ import annotations

import pytest

from extremail import config, policy
from extremail.relaytable import RelayTable
from extremail.reply import Refusal
from extremail.store import Deny, Domain, Store, User


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_cfg(tmp_path, **settings: str):
    return config.build(str(tmp_path), settings)


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(make_cfg(tmp_path))
    store.add_domain(Domain("acme.test", maxoutmailsize=20))
    store.add_user(User("mick", "acme.test", maxoutmailsize=5))
    store.add_user(User("joe", "acme.test"))
    return store


def reply_of(call, *args) -> str:
    with pytest.raises(Refusal) as info:
        call(*args)
    return f"{info.value.reply.code} {info.value.reply.enhanced}"


@pytest.mark.parametrize("anti_rely, ip, pop_login, authenticated, allowed", [
    ("0", "192.0.2.7", False, "", True),        # open relay: anyone
    ("1", "10.1.2.3", False, "", True),         # in CFG_LOCALIP network
    ("1", "192.0.2.7", False, "", False),
    ("1", "192.0.2.7", True, "", False),        # POP-before-SMTP is not honoured at 1
    ("1", "192.0.2.7", False, "mick@acme.test", True),   # SMTP AUTH
    ("2", "10.1.2.3", False, "", True),
    ("2", "192.0.2.7", False, "", False),
    ("2", "192.0.2.7", True, "", True),         # fresh POP3 login from that IP
    ("2", "192.0.2.8", True, "", False),        # another IP logged in, not this one
    ("1", "not-an-ip", False, "", False),
])
def test_relay_matrix(tmp_path, anti_rely, ip, pop_login, authenticated, allowed):
    cfg = make_cfg(tmp_path, CFG_ANTI_RELY=anti_rely, CFG_LOCALIP="10.0.0.0/8, 127.0.0.1")
    table = RelayTable()
    if pop_login:
        table.record("192.0.2.7")
    assert policy.may_relay(cfg, table, ip, authenticated) is allowed


def test_pop_before_smtp_expires(tmp_path):
    cfg = make_cfg(tmp_path, CFG_ANTI_RELY="2", CFG_LOCALIP="10.0.0.1", CFG_RELY_TIMEOUT="15")
    clock = Clock()
    table = RelayTable(clock)
    table.configure(cfg.CFG_RELY_TIMEOUT)
    table.record("192.0.2.7")
    clock.now += 14 * 60
    assert policy.may_relay(cfg, table, "192.0.2.7")
    clock.now += 2 * 60
    assert not policy.may_relay(cfg, table, "192.0.2.7")


def test_check_relay_reply(tmp_path):
    class Ctx:
        cfg = make_cfg(tmp_path, CFG_LOCALIP="10.0.0.1")
        relay = RelayTable()
    assert reply_of(policy.check_relay, Ctx, "192.0.2.7") == "550 5.7.1"
    assert policy.check_relay(Ctx, "10.0.0.1") is None


def test_ipin(store):
    store.add_deny(Deny("IPIN", "192.0.2.0/24"))
    store.add_deny(Deny("IPIN", "198.51.100.9"))
    assert reply_of(policy.check_connect, store, "192.0.2.200") == "554 5.7.1"
    assert reply_of(policy.check_connect, store, "198.51.100.9") == "554 5.7.1"
    assert policy.check_connect(store, "198.51.100.10") is None
    assert policy.check_connect(store, "2001:db8::1") is None


def test_sender_denies(store):
    store.add_deny(Deny("DOMAININ", "spam.test"))
    store.add_deny(Deny("MAILBOXIN", "bad@ok.test"))
    assert reply_of(policy.check_sender, store, "x@spam.test") == "550 5.7.1"
    assert reply_of(policy.check_sender, store, "x@mail.SPAM.test") == "550 5.7.1"  # subdomain
    assert reply_of(policy.check_sender, store, "Bad@ok.test") == "550 5.7.1"
    assert policy.check_sender(store, "good@ok.test") is None
    assert policy.check_sender(store, "x@notspam.test") is None
    assert policy.check_sender(store, "") is None   # the null sender
    # the IN entries never apply to recipients
    assert policy.check_recipient(store, "x@spam.test") is None


def test_recipient_denies(store):
    store.add_deny(Deny("DOMAINOUT", "competitor.test"))
    store.add_deny(Deny("MAILBOXOUT", "joe@acme.test"))
    assert reply_of(policy.check_recipient, store, "a@competitor.test") == "550 5.7.1"
    assert reply_of(policy.check_recipient, store, "JOE@acme.test") == "550 5.7.1"
    assert policy.check_recipient(store, "mick@acme.test") is None
    assert policy.check_sender(store, "a@competitor.test") is None


def test_max_out_size(store):
    assert policy.max_out_size(store, "mick@acme.test") == 5 * 1024      # the user's own
    assert policy.max_out_size(store, "joe@acme.test") == 20 * 1024      # the domain's
    assert policy.max_out_size(store, "nobody@acme.test") == 20 * 1024
    assert policy.max_out_size(store, "a@remote.test") == 0              # not a local sender
    assert policy.max_out_size(store, "") == 0
    assert reply_of(policy.check_out_size, store, "mick@acme.test", 5 * 1024 + 1) == "552 5.3.4"
    assert policy.check_out_size(store, "mick@acme.test", 5 * 1024) is None
    assert policy.check_out_size(store, "a@remote.test", 10 ** 9) is None
