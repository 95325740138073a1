"""The scenarios of issue 7 and how one of them is run against one server.

(a) 1 session, 2,000 messages of 2 KB; (b) 20 sessions, 2,000 of 2 KB; (c) 10 sessions,
200 of 1 MB; (d) 20 sessions of 100 messages, each to 10 local recipients; (e) 2,000
messages relayed through the server's queue to the loopback sink; (f) POP3: one session
RETRieving 2,000 messages, then 20 sessions RETRieving 100 each; (h) 200 idle SMTP
connections held open: the server's memory.  (g is kept for IMAP.)

A message counts only once it is a file in the recipient's Maildir ``new/`` (or, for
(e), in the sink's directory): after the last session ends, the directories are polled
until every message is there, and the scenario's time runs until then.

(f) measures retrieval apart from login: every session logs in (USER/PASS) first, and
the row's time starts only once the last session is logged in and ends at the last
RETR's final dot, so msg/s is RETRs over that time.  The server's and the load
generator's CPU are counted from the same start to the end of the sessions (their QUITs
included); p50/p99 are the RETRs' own; the logins' latencies are kept apart
(``login_p50``/``login_p99``); peak memory covers the whole row, logins included.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass

from . import loadgen, maildirs, procstat
from .peer import DOMAIN, Peer

KB = 1024
SENDER = "loadgen@sender.bench.test"
REMOTE = "remote.bench.example"  # relayed in (e): neither server is its destination
DELIVERY_TIMEOUT = 300.0


@dataclass(frozen=True)
class Scenario:
    """One measured row: ``key`` names the row, ``letter`` the issue's scenario."""

    key: str
    letter: str
    kind: str        # "smtp", "relay", "pop3" or "idle"
    sessions: int
    messages: int    # in all sessions together (idle: connections)
    size: int = 2 * KB
    rcpts: int = 1
    title: str = ""

    def users(self) -> list[str]:
        """The mailboxes this row delivers to or reads from."""
        if self.kind == "smtp":
            return [f"{self.key}{index}" for index in range(self.rcpts)]
        if self.kind == "pop3":
            return [f"{self.key}s{index}" for index in range(self.sessions)]
        return []


# Counts per mode: (a, b, c, d messages per session, e, f single, f per session, h, reps)
MODES = {
    # Five repetitions in full, as the reference figures: this machine's disk and CPU
    # swing within minutes, and a median of three lets one slow stretch decide a row.
    "full": (2000, 2000, 200, 100, 2000, 2000, 100, 200, 5),
    "quick": (200, 300, 20, 8, 300, 200, 10, 200, 3),
    "smoke": (10, 20, 4, 2, 10, 10, 5, 20, 1),
}


def plan(mode: str) -> tuple[list[Scenario], int]:
    """The rows of a run in ``mode`` and its number of repetitions."""
    a, b, c, d, e, f1, f20, h, reps = MODES[mode]
    wide, fan = (4, 3) if mode == "smoke" else (20, 10)  # sessions; recipients in (d)
    rows = [
        Scenario("h", "h", "idle", 1, h, title=f"{h} idle SMTP connections"),
        Scenario("a", "a", "smtp", 1, a, title=f"1 session, {a} x 2 KB"),
        Scenario("b", "b", "smtp", wide, b, title=f"{wide} sessions, {b} x 2 KB"),
        Scenario("c", "c", "smtp", min(10, c), c, size=1024 * KB,
                 title=f"{min(10, c)} sessions, {c} x 1 MB"),
        Scenario("d", "d", "smtp", wide, wide * d, rcpts=fan,
                 title=f"{wide} sessions x {d}, {fan} recipients"),
        Scenario("e", "e", "relay", wide, e, title=f"{wide} sessions, {e} relayed to the sink"),
        Scenario("f1", "f", "pop3", 1, f1, title=f"POP3 1 session, {f1} RETR"),
        Scenario("f20", "f", "pop3", wide, wide * f20, title=f"POP3 {wide} sessions x {f20} RETR"),
    ]
    return rows, reps


WARM = Scenario("warm", "", "smtp", 10, 10, title="warm-up")


@dataclass
class Result:
    """One row run once against one server."""

    messages: int = 0
    seconds: float = 0.0
    bytes: int = 0
    p50: float | None = None
    p99: float | None = None
    login_p50: float | None = None  # POP3 rows: USER sent to the reply to PASS
    login_p99: float | None = None
    memory: int = 0
    cpu: float = 0.0
    client_cpu: float = 0.0  # the load generator's own CPU seconds, to judge the figures
    error: str | None = None

    def figures(self) -> dict[str, float | None]:
        """The figures the report keeps, in its units."""
        if self.error:
            return {"error": self.error}
        rate = self.messages / self.seconds if self.seconds else None
        figures: dict[str, float | None] = {
            "messages": self.messages,
            "msg_per_s": rate,
            "MB_per_s": self.bytes / self.seconds / 1e6 if self.seconds else None,
            "p50_ms": self.p50 * 1000 if self.p50 is not None else None,
            "p99_ms": self.p99 * 1000 if self.p99 is not None else None,
            "memory_MB": self.memory / 1e6,
            "cpu_ms_per_msg": self.cpu / self.messages * 1000 if self.messages else None,
            "client_cpu_ms_per_msg": (self.client_cpu / self.messages * 1000 if self.messages
                                      else None),
        }
        if self.login_p50 is not None and self.login_p99 is not None:
            figures["login_p50_ms"] = self.login_p50 * 1000
            figures["login_p99_ms"] = self.login_p99 * 1000
        return figures


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wait_count(counter, target: int) -> tuple[bool, float]:
    """Poll ``counter()`` until it reaches ``target``; (reached, when).  Polls are spaced
    ten times as far apart as one count takes, so counting stays a small load beside the
    server still delivering on the same cores."""
    deadline = time.perf_counter() + DELIVERY_TIMEOUT
    while True:
        began = time.perf_counter()
        reached = counter() >= target
        now = time.perf_counter()
        if reached or now > deadline:
            return reached, now
        time.sleep(max(0.01, 10 * (now - began)))


def _smtp_jobs(row: Scenario, port: int, rcpts: list[str]) -> list[tuple]:
    return [(port, count, row.size, SENDER, rcpts)
            for count in loadgen.split(row.messages, row.sessions)]


def run_row(row: Scenario, peer: Peer, sink=None) -> Result:
    """Run ``row`` once against the started ``peer`` and measure it."""
    roots = peer.roots()
    if row.kind == "idle":
        return _idle(row, peer)
    counter = None
    if row.kind == "pop3":
        logins = [peer.pop3_login(user) for user in row.users()]
        shares = loadgen.split(row.messages, row.sessions)
        jobs = [(peer.pop3_port, user, password, count)
                for (user, password), count in zip(logins, shares, strict=True)]
    elif row.kind == "relay":
        counter, expected = sink.count, row.messages
        jobs = _smtp_jobs(row, peer.smtp_port, [f"user@{REMOTE}"])
    else:
        boxes = [peer.maildir(user) for user in row.users()]
        counter, expected = (lambda: maildirs.count(boxes)), row.messages * row.rcpts
        jobs = _smtp_jobs(row, peer.smtp_port, [peer.address(user) for user in row.users()])
    start = counter() if counter is not None else 0
    # Replaced by at_start(), which a row whose sessions failed before starting never reaches.
    cpu = {"server": procstat.cpu_seconds(roots), "client": _own_cpu()}

    def at_start() -> None:  # every session ready (POP3: logged in); none has gone on yet
        cpu.update(server=procstat.cpu_seconds(roots), client=_own_cpu())

    with procstat.MemorySampler(roots) as sampler:
        session = loadgen.pop3_session if row.kind == "pop3" else loadgen.smtp_session
        tally, began, ended = loadgen.run_sessions(session, jobs, at_start)
        if row.kind == "pop3":
            ended = tally.finished  # the last RETR: the QUITs are not timed
        reached = True
        if counter is not None:
            reached, ended = _wait_count(counter, start + expected)
    result = Result(messages=tally.messages, seconds=ended - began, bytes=tally.bytes,
                    p50=percentile(tally.latencies, 0.50), p99=percentile(tally.latencies, 0.99),
                    login_p50=percentile(tally.logins, 0.50),
                    login_p99=percentile(tally.logins, 0.99), memory=sampler.peak,
                    cpu=procstat.cpu_seconds(roots) - cpu["server"],
                    client_cpu=_own_cpu() - cpu["client"])
    if tally.errors:
        result.error = f"{len(tally.errors)} session(s) failed: {tally.errors[0]}"
    elif tally.messages != row.messages:
        result.error = f"{tally.messages} of {row.messages} messages accepted"
    elif not reached:
        result.error = (f"{counter() - start} of {expected} deliveries arrived "
                        f"within {DELIVERY_TIMEOUT:.0f}s")
    return result


def _idle(row: Scenario, peer: Peer) -> Result:
    """Hold ``row.messages`` connections open after their greetings, then weigh the server."""
    held = loadgen.hold_idle(peer.smtp_port, row.messages)
    try:
        time.sleep(0.5)  # let the server settle (Postfix forks, Python threads start)
        memory = statistics.median(procstat.memory_bytes(peer.roots()) for _ in range(3))
    finally:
        for conn in held:
            conn.close()
    return Result(messages=len(held), memory=int(memory))


def prefill(rows: list[Scenario], peer: Peer) -> None:
    """Give the POP3 rows' mailboxes their messages (2 KB each, LF on disk)."""
    for row in rows:
        if row.kind != "pop3":
            continue
        for user, count in zip(row.users(), loadgen.split(row.messages, row.sessions),
                               strict=True):
            maildirs.prefill(peer.maildir(user),
                             [loadgen.header(index, SENDER, [f"{user}@{DOMAIN}"])
                              + loadgen.body(row.size) for index in range(count)])
    peer.prepared()


def users(rows: list[Scenario]) -> list[str]:
    names = list(WARM.users())
    for row in rows:
        names.extend(row.users())
    return names


def warm_up(peer: Peer) -> None:
    """A few messages before timing, so every server has its processes and caches up."""
    boxes = [peer.maildir(user) for user in WARM.users()]
    tally, _, _ = loadgen.run_sessions(loadgen.smtp_session,
                                       _smtp_jobs(WARM, peer.smtp_port, [peer.address("warm0")]))
    if tally.errors:
        raise RuntimeError(f"warm-up failed: {tally.errors[0]}")
    if not _wait_count(lambda: maildirs.count(boxes), WARM.messages)[0]:
        raise RuntimeError("warm-up messages were not delivered")
