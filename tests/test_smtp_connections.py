"""The outbound connection cache's rules with stand-in sessions and a hand-set clock:
idle limit, reuse limit, the bound on parked sessions, most recent first, stop."""

from __future__ import annotations

from extremail.smtp import connections
from extremail.smtp.connections import ConnectionCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSession:
    def __init__(self, opened: float, alive: bool = True) -> None:
        self.opened = opened
        self.is_alive = alive
        self.closed = False

    def alive(self) -> bool:
        return self.is_alive

    def close(self) -> None:
        self.closed = True


def test_take_returns_the_most_recent_live_session_of_its_address():
    clock = Clock()
    cache = ConnectionCache(clock)
    older, newer, other = FakeSession(clock.now), FakeSession(clock.now), FakeSession(clock.now)
    cache.put("127.0.0.2", 25, older)
    cache.put("127.0.0.2", 25, newer)
    cache.put("127.0.0.3", 25, other)
    assert cache.take("127.0.0.2", 25) is newer
    assert cache.take("127.0.0.2", 26) is None
    assert cache.idle() == 2 and not any(s.closed for s in (older, newer, other))


def test_sessions_idle_too_long_are_closed_by_prune_and_never_taken():
    clock = Clock()
    cache = ConnectionCache(clock)
    stale, fresh = FakeSession(clock.now), FakeSession(clock.now)
    cache.put("127.0.0.2", 25, stale)
    clock.now += connections.IDLE_SECONDS - 0.5
    cache.put("127.0.0.2", 25, fresh)
    clock.now += 0.6  # stale is now past the idle limit, fresh is not
    cache.prune()
    assert stale.closed and not fresh.closed and cache.idle() == 1
    clock.now += connections.IDLE_SECONDS
    assert cache.take("127.0.0.2", 25) is None and fresh.closed


def test_a_dead_session_is_closed_and_the_next_one_taken():
    clock = Clock()
    cache = ConnectionCache(clock)
    good, dead = FakeSession(clock.now), FakeSession(clock.now, alive=False)
    cache.put("127.0.0.2", 25, good)
    cache.put("127.0.0.2", 25, dead)
    assert cache.take("127.0.0.2", 25) is good
    assert dead.closed


def test_a_session_past_the_reuse_limit_is_not_parked():
    clock = Clock()
    cache = ConnectionCache(clock)
    old = FakeSession(clock.now - connections.REUSE_SECONDS)
    cache.put("127.0.0.2", 25, old)
    assert old.closed and cache.idle() == 0


def test_parked_sessions_are_bounded(monkeypatch):
    monkeypatch.setattr(connections, "MAX_IDLE", 3)
    clock = Clock()
    cache = ConnectionCache(clock)
    sessions = [FakeSession(clock.now) for _ in range(5)]
    for session in sessions:
        cache.put("127.0.0.2", 25, session)
    assert cache.idle() == 3
    assert [s.closed for s in sessions] == [False, False, False, True, True]


def test_stop_closes_every_parked_session_and_refuses_new_ones():
    clock = Clock()
    cache = ConnectionCache(clock)
    parked, late = FakeSession(clock.now), FakeSession(clock.now)
    cache.put("127.0.0.2", 25, parked)
    cache.stop()
    cache.put("127.0.0.2", 25, late)
    assert parked.closed and late.closed and cache.idle() == 0
