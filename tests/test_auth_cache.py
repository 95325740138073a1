"""The login cache (extremail.auth.LoginCache): a password already verified for a user
and its current stored hash skips scrypt; anything else costs a full derivation.

The units count derivations with ``auth.derivations``; through the wire, the server's
own CPU time (from /proc) shows which logins did the scrypt work, and a password change
over the management port takes effect at once."""

from __future__ import annotations

import os
import poplib
import threading
from types import SimpleNamespace

import pytest

from extremail import auth, login
from extremail.store import User
from test_pop3 import USERS, Wire, pop


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counted(check) -> tuple[object, int]:
    """What ``check()`` returned and how many scrypt derivations it did."""
    before = auth.derivations
    result = check()
    return result, auth.derivations - before


@pytest.fixture(scope="module")
def stored() -> str:
    return auth.hash_password("pw")


def test_second_login_with_the_same_password_skips_scrypt(stored):
    cache = auth.LoginCache(clock=Clock())
    assert counted(lambda: cache.verify("mick", "pw", stored)) == (True, 1)
    assert counted(lambda: cache.verify("mick", "pw", stored)) == (True, 0)


def test_wrong_passwords_always_cost_a_derivation_and_are_not_cached(stored):
    cache = auth.LoginCache(clock=Clock())
    assert cache.verify("mick", "pw", stored)
    for _ in range(2):
        assert counted(lambda: cache.verify("mick", "bad", stored)) == (False, 1)
    assert counted(lambda: cache.verify("mick", "pw", stored)) == (True, 0)  # still cached
    # an unknown user (no stored hash) costs the same as a wrong password
    assert counted(lambda: cache.verify("ghost", "pw", None)) == (False, 1)


def test_a_new_stored_hash_invalidates_the_entry(stored):
    cache = auth.LoginCache(clock=Clock())
    assert cache.verify("mick", "pw", stored)
    changed = auth.hash_password("new")
    assert counted(lambda: cache.verify("mick", "pw", changed)) == (False, 1)  # at once
    assert counted(lambda: cache.verify("mick", "new", changed)) == (True, 1)
    assert counted(lambda: cache.verify("mick", "new", None)) == (False, 1)  # user deleted
    # added again with the same password: a new salt, so verified again in full
    again = auth.hash_password("new")
    assert counted(lambda: cache.verify("mick", "new", again)) == (True, 1)
    assert counted(lambda: cache.verify("mick", "new", again)) == (True, 0)


def test_entries_expire_after_the_ttl_however_often_they_are_used(stored):
    clock = Clock()
    cache = auth.LoginCache(ttl=3600.0, clock=clock)
    assert cache.verify("mick", "pw", stored)
    clock.now += 3599.0
    assert counted(lambda: cache.verify("mick", "pw", stored)) == (True, 0)
    clock.now += 1.0
    assert counted(lambda: cache.verify("mick", "pw", stored)) == (True, 1)
    assert counted(lambda: cache.verify("mick", "pw", stored)) == (True, 0)
    assert auth.CACHE_TTL == 3600.0


def test_the_least_recently_used_user_is_dropped_beyond_the_bound(stored):
    cache = auth.LoginCache(size=2, clock=Clock())
    assert cache.verify("a", "pw", stored) and cache.verify("b", "pw", stored)
    assert counted(lambda: cache.verify("a", "pw", stored)) == (True, 0)  # a used last
    assert cache.verify("c", "pw", stored)  # over the bound: b goes
    assert counted(lambda: cache.verify("a", "pw", stored)) == (True, 0)
    assert counted(lambda: cache.verify("c", "pw", stored)) == (True, 0)
    assert counted(lambda: cache.verify("b", "pw", stored)) == (True, 1)


def test_concurrent_logins_of_one_user_all_succeed(stored):
    cache = auth.LoginCache(clock=Clock())
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(cache.verify("mick", "pw", stored)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 8
    assert counted(lambda: cache.verify("mick", "pw", stored)) == (True, 0)


def test_authenticate_uses_the_cache_and_still_throttles_failures():
    user = User("cached", "acme.test", password=auth.hash_password("pw"))
    ctx = SimpleNamespace(throttle=auth.Throttle(), stopping=threading.Event(),
                          cfg=SimpleNamespace(CFG_LOCALDOMAIN="local.test"),
                          store=SimpleNamespace(users=SimpleNamespace(rows={(user.name, user.domain): user}),
                                                is_local_domain=lambda domain: domain == "acme.test"))

    def attempt(name: str, password: str) -> tuple[object, int]:
        outcome, spent = counted(lambda: login.authenticate(ctx, "192.0.2.9", name, password))
        return outcome.user, spent

    assert attempt("cached@acme.test", "pw") == (user, 1)
    assert attempt("cached.acme.test", "pw") == (user, 0)  # the same user, another form
    for password in ("bad", "worse", "worst"):
        assert attempt("cached@acme.test", password) == (None, 1)
    assert ctx.throttle.delay("192.0.2.9") > 0


# ---- through the wire ----
def server_cpu(server) -> float:
    """The server process's user + system CPU seconds (all its threads), from /proc."""
    with open(f"/proc/{server.proc.pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def refused(server, password: str) -> None:
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        pop(server, password=password)


def test_repeated_pop3_logins_cost_no_scrypt_until_the_password_changes(make_server):
    server = make_server()
    server.setup_mail(USERS)
    pop(server).quit()  # verified with scrypt, now cached

    def cpu_of(attempts) -> float:
        before = server_cpu(server)
        for attempt in attempts:
            attempt()
        return server_cpu(server) - before

    cached = cpu_of([lambda: pop(server).quit()] * 3)

    def wrong() -> None:  # from an address of its own, below the throttle's free failures
        wire = Wire(server.pop3_port, "127.0.0.41")
        wire.cmd("USER mick@acme.test")
        assert wire.cmd("PASS not-secret") == "-ERR [AUTH] Authentication failed"
        wire.close()

    scrypt = cpu_of([wrong] * 3)
    # three scrypt checks take 150 ms or more of the server's CPU; three cached logins
    # only the sessions' own few milliseconds
    assert cached < scrypt / 3, (cached, scrypt)

    server.admin_do("USER MOD NAME=mick DOMAIN=acme.test PASS=changed")
    refused(server, "secret")  # the cached password stops working at once
    pop(server, password="changed").quit()
    pop(server, password="changed").quit()
    server.admin_do("USER DEL NAME=mick DOMAIN=acme.test")
    refused(server, "changed")
