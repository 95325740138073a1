"""Mail and mailboxes under concurrent use, all over the wire on loopback.

* SMTP sessions deliver to one user while POP3 sessions of that user log in, list,
  retrieve, delete some and QUIT, again and again: every message acknowledged with 250 is
  retrieved-and-deleted or still in the Maildir, exactly once; no RETR is partial; UIDLs
  never change; the log has no traceback.
* Simultaneous POP3 logins to one mailbox: the manual ("Lock the POP3 user when she is
  retrieving mails. That is: not allow the same user connected twice.") and RFC 1939
  section 8: exactly one session holds the maildrop, the others get ``-ERR [IN-USE]`` and
  can delete nothing.
* DELE of everything, then the connection is lost (FIN, RST, a QUIT without its line end):
  nothing is deleted (RFC 1939 section 6).
* Management changes (DOMAIN ADD, USER ADD/MOD/DEL) interleaved with deliveries and POP3
  logins: no 250 for a user deleted before its RCPT was sent, nothing lost for the users
  that exist throughout, data files that a restart reads back.
* SIGHUP during deliveries: no session fails.
"""

from __future__ import annotations

import functools
import poplib
import re
import signal
import smtplib
import socket
import struct
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from extremail.envelope import Envelope
from extremail.mailbox import Maildir
from harness import wait_until

DOMAIN = "acme.test"
JOIN = 60  # seconds any worker thread may take before the test gives up on it


# ---------------------------------------------------------------- helpers
def body_lines(token: str) -> list[str]:
    """The body of message ``token``: long enough to need several TCP segments."""
    return [f"{token} line {n:02d} " + "x" * 70 for n in range(40)] + [f"END {token}"]


def make_message(token: str, to: str) -> bytes:
    head = (f"From: sender@remote.test\r\nTo: {to}\r\nSubject: token {token}\r\n"
            f"Message-ID: <{token}@remote.test>\r\n\r\n")
    return (head + "\r\n".join(body_lines(token)) + "\r\n").encode()


TOKEN = re.compile(rb"^Subject: token (\S+)", re.M)


def token_of(data: bytes) -> str | None:
    found = TOKEN.search(data)
    return found.group(1).decode() if found else None


def maildir_tokens(server, user: str, domain: str = DOMAIN) -> Counter:
    """How many times each token is in the user's Maildir (new/ and cur/)."""
    counts: Counter = Counter()
    for entry in Maildir(server.maildir(user, domain)).scan():
        try:
            with open(entry.path, "rb") as handle:
                counts[token_of(handle.read())] += 1
        except FileNotFoundError:  # removed by a QUIT meanwhile
            continue
    return counts


def check_retrieved(lines: list[bytes], octets: int, listed: int) -> str:
    """A RETR answer is the whole message: its header, the exact body, the listed size."""
    text = b"\r\n".join(lines) + b"\r\n"
    token = token_of(text)
    assert token is not None, text[:300]
    _, sep, body = text.partition(b"\r\n\r\n")
    assert sep, f"no header/body separator in {token}"
    assert body.decode().split("\r\n")[:-1] == body_lines(token), f"partial RETR of {token}"
    assert octets == listed == len(text), (token, octets, listed, len(text))
    return token


def pop_login(server, user: str, password: str, tries: float = 20.0) -> poplib.POP3:
    """Log in, waiting while another session holds the mailbox ([IN-USE])."""
    deadline = time.monotonic() + tries
    while True:
        client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
        try:
            client.user(f"{user}@{DOMAIN}")
            client.pass_(password)
            return client
        except poplib.error_proto as exc:
            client.close()
            if b"[IN-USE]" not in exc.args[0] or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def log_is_clean(server) -> None:
    text = server.log_text()
    assert "Traceback" not in text, text[text.find("Traceback") - 500:][:3000]
    assert "internal error" not in text, text[text.find("internal error") - 300:][:2000]


def run_all(jobs, workers: int) -> list:
    """Run the callables in parallel; re-raise the first failure; bounded by JOIN."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result(timeout=JOIN) for future in futures]


@pytest.fixture
def server(make_server):
    # loopback may not relay: a RCPT to a domain not (yet) local is refused, not queued
    server = make_server(CFG_DNS_SERVERS=f"127.0.0.1:{_dead_port()}", CFG_LOCALIP="192.0.2.1")
    server.setup_mail({DOMAIN: {"mick": "secret", "ann": "pw-ann", "bob": "pw-bob"}})
    return server


def _dead_port() -> int:
    from harness import free_port
    return free_port()


# ---------------------------------------------------------------- SMTP in, POP3 out
def test_deliveries_and_pop3_sessions_at_once_lose_and_duplicate_nothing(server):
    sessions, per_session = 10, 16
    acked: list[str] = []
    refused: list[tuple[str, object]] = []
    deleted: list[str] = []         # by a QUIT that answered +OK
    uid_of: dict[str, str] = {}     # token -> UIDL, over every session
    token_of_uid: dict[str, str] = {}
    guard = threading.Lock()
    sending = threading.Event()
    sending.set()

    def send(session: int) -> None:
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as client:
            for number in range(per_session):
                token = f"s{session}m{number}"
                try:
                    client.sendmail("", ["mick@acme.test"], make_message(token, "mick@acme.test"))
                except smtplib.SMTPException as exc:
                    with guard:
                        refused.append((token, exc))
                    continue
                with guard:
                    acked.append(token)

    def one_pop3_session() -> None:
        client = pop_login(server, "mick", "secret")
        _, uidl, _ = client.uidl()
        _, listing, _ = client.list()
        sizes = {int(n): int(s) for n, s in (line.split() for line in listing)}
        mine = []
        for line in uidl:
            number, uid = line.decode().split()
            _, lines, octets = client.retr(int(number))
            token = check_retrieved(lines, octets, sizes[int(number)])
            with guard:
                assert uid_of.setdefault(token, uid) == uid, f"UIDL of {token} changed"
                assert token_of_uid.setdefault(uid, token) == token, f"UIDL {uid} reused"
            if int(token.split("m")[1]) % 3 == 0:  # delete a third, keep the rest
                client.dele(int(number))
                mine.append(token)
        assert client.quit().startswith(b"+OK")
        with guard:
            deleted.extend(mine)

    def reader() -> int:
        rounds = 0
        while sending.is_set() or rounds < 2:
            one_pop3_session()
            rounds += 1
        return rounds

    with ThreadPoolExecutor(max_workers=sessions + 2) as pool:
        readers = [pool.submit(reader) for _ in range(2)]
        senders = [pool.submit(send, n) for n in range(sessions)]
        for future in senders:
            future.result(timeout=JOIN)
        sending.clear()
        pop3_sessions = sum(future.result(timeout=JOIN) for future in readers)

    assert not refused, refused[:5]
    assert len(acked) == sessions * per_session
    remaining = maildir_tokens(server, "mick")
    gone = Counter(deleted)
    problems = {token: (gone[token], remaining[token]) for token in acked
                if gone[token] + remaining[token] != 1}
    assert not problems, f"not exactly once (deleted, in the Maildir): {problems}"
    assert set(remaining) <= set(acked), set(remaining) - set(acked)
    assert gone, "the POP3 sessions deleted nothing: the test did not exercise DELE"
    assert pop3_sessions >= 4 and len(uid_of) > len(acked) // 3, (pop3_sessions, len(uid_of))
    # the UIDLs seen are the Maildir's unique ids, still the same after everything
    for entry in Maildir(server.maildir("mick", DOMAIN)).scan():
        with open(entry.path, "rb") as handle:
            token = token_of(handle.read())
        if token in uid_of:
            assert uid_of[token] == entry.uid, token
    log_is_clean(server)


# ---------------------------------------------------------------- one mailbox, many logins
def test_simultaneous_logins_one_holds_the_mailbox_and_the_others_delete_nothing(server):
    for number in range(6):
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as client:
            client.sendmail("", ["ann@acme.test"], make_message(f"a{number}m{number}",
                                                                "ann@acme.test"))
    contenders = 6
    for round_number in range(3):
        before = maildir_tokens(server, "ann")
        def contend(barrier: threading.Barrier, barrier_after: threading.Barrier
                    ) -> tuple[str, bytes, str | None]:
            sock = socket.create_connection(("127.0.0.1", server.pop3_port), timeout=30)
            reader = sock.makefile("rb")
            try:
                assert reader.readline().startswith(b"+OK")
                sock.sendall(b"USER ann@acme.test\r\n")
                assert reader.readline().startswith(b"+OK")
                barrier.wait(timeout=20)
                sock.sendall(b"PASS pw-ann\r\n")
                answer = reader.readline()
                if answer.startswith(b"+OK"):
                    barrier_after.wait(timeout=20)  # every loser has had its answer
                    sock.sendall(b"UIDL 1\r\n")
                    uid = reader.readline().split()[-1].decode()
                    sock.sendall(b"DELE 1\r\n")
                    assert reader.readline().startswith(b"+OK")
                    sock.sendall(b"QUIT\r\n")
                    return "won", reader.readline(), uid
                # refused: a DELE must not work, and its QUIT must not free the winner's lock
                sock.sendall(b"DELE 1\r\n")
                dele = reader.readline()
                sock.sendall(b"QUIT\r\n")
                reader.readline()
                barrier_after.wait(timeout=20)
                return "lost", answer + dele, None
            finally:
                reader.close()
                sock.close()

        gates = threading.Barrier(contenders), threading.Barrier(contenders)
        results = run_all([functools.partial(contend, *gates)] * contenders, contenders)
        winners = [r for r in results if r[0] == "won"]
        losers = [r for r in results if r[0] == "lost"]
        assert len(winners) == 1, results
        for _, answers, _ in losers:
            first, dele = answers.split(b"\r\n")[:2]
            assert first.startswith(b"-ERR [IN-USE]"), answers
            assert dele.startswith(b"-ERR"), answers
        (_, quit_answer, uid), = winners
        assert quit_answer.startswith(b"+OK"), quit_answer
        after = maildir_tokens(server, "ann")
        assert sum(before.values()) - sum(after.values()) == 1, (round_number, before, after)
        assert uid not in {e.uid for e in Maildir(server.maildir("ann", DOMAIN)).scan()}
    log_is_clean(server)


def test_a_refused_login_does_not_release_the_holders_lock(server):
    """The loser's session ends (QUIT, or the connection dropped): the first session still
    holds the mailbox, so a third login is refused too."""
    holder = pop_login(server, "bob", "pw-bob")
    loser = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    loser.user("bob@acme.test")
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        loser.pass_("pw-bob")
    loser.quit()
    third = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    third.user("bob.acme.test")
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        third.pass_("pw-bob")
    third.close()
    holder.quit()
    pop_login(server, "bob", "pw-bob").quit()


# ---------------------------------------------------------------- connection lost: no UPDATE
@pytest.mark.parametrize("ending", ["fin", "rst", "quit-without-line-end", "rset-then-fin"])
def test_dele_everything_then_the_connection_is_lost_deletes_nothing(server, ending):
    for number in range(4):
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as client:
            client.sendmail("", ["bob@acme.test"], make_message(f"b{number}m{number}",
                                                                "bob@acme.test"))
    before = maildir_tokens(server, "bob")
    assert sum(before.values()) == 4
    sock = socket.create_connection(("127.0.0.1", server.pop3_port), timeout=30)
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"USER bob@acme.test\r\nPASS pw-bob\r\n")
    assert reader.readline().startswith(b"+OK") and reader.readline().startswith(b"+OK")
    sock.sendall(b"RETR 2\r\n")
    assert reader.readline().startswith(b"+OK")
    while reader.readline() != b".\r\n":
        pass
    sock.sendall(b"".join(b"DELE %d\r\n" % n for n in range(1, 5)))
    for _ in range(4):
        assert reader.readline().startswith(b"+OK")
    if ending == "quit-without-line-end":
        sock.sendall(b"QUIT")  # no CRLF: not a command (RFC 1939: commands end in CRLF)
    if ending == "rset-then-fin":
        sock.sendall(b"RSET\r\nDELE 3\r\n")
        assert reader.readline().startswith(b"+OK") and reader.readline().startswith(b"+OK")
    if ending == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        sock.shutdown(socket.SHUT_WR)
    reader.close()
    sock.close()
    # the session ends and releases the mailbox; then the mail must all be there
    pop_login(server, "bob", "pw-bob").quit()
    assert maildir_tokens(server, "bob") == before
    assert not server.log_text().count("messages deleted at QUIT")
    log_is_clean(server)


# ---------------------------------------------------------------- management meanwhile
def test_management_changes_interleaved_with_deliveries_and_logins(server):
    """A churn thread adds a domain and a user, modifies and deletes it, again and again;
    senders write to the churned user and to users that exist throughout; POP3 logins
    of a user whose record is being modified go on.  Timestamps decide what must hold: a
    RCPT sent after USER DEL answered, and answered before the next USER ADD was sent,
    must not get 250."""
    rounds = 25
    events: list[tuple[str, int, float]] = []   # ("add"/"deleting"/"del", round, time)
    rcpts: list[tuple[str, float, float, int]] = []  # (address, sent, answered, code)
    acked: dict[str, list[str]] = {"mick": [], "ann": []}
    admin_failures: list[tuple[str, str]] = []
    guard = threading.Lock()
    done = threading.Event()

    def churn() -> None:
        admin = server.admin()
        try:
            for number in range(rounds):
                for command in (f"DOMAIN ADD NAME=d{number}.test",
                                f"USER ADD NAME=churn{number} DOMAIN=d{number}.test PASS=x",
                                f"USER MOD NAME=mick DOMAIN={DOMAIN} QUOTA={100000 + number}",
                                f"USER MOD NAME=ann DOMAIN={DOMAIN} PASS=pw-ann"):
                    answer = admin.cmd(command)
                    if not answer.startswith("+OK"):
                        admin_failures.append((command, answer))
                with guard:
                    events.append(("add", number, time.monotonic()))
                time.sleep(0.01)  # let some RCPTs find the user
                with guard:
                    events.append(("deleting", number, time.monotonic()))
                answer = admin.cmd(f"USER DEL NAME=churn{number} DOMAIN=d{number}.test")
                if not answer.startswith("+OK"):
                    admin_failures.append(("USER DEL", answer))
                with guard:
                    events.append(("del", number, time.monotonic()))
                time.sleep(0.01)  # and some find it gone
        finally:
            admin.close()
            done.set()

    def sender(index: int) -> None:
        number = 0
        while not done.is_set():
            with guard:
                current = max((n for kind, n, _ in events), default=0)
            target = f"churn{current}@d{current}.test"
            keeper = ("mick", "ann")[(index + number) % 2]
            token = f"k{index}m{number}"
            number += 1
            # a session per message: refused RCPTs count against a session's error budget
            with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as client:
                client.ehlo()
                client.mail("")
                sent = time.monotonic()
                code, _ = client.rcpt(target)
                answered = time.monotonic()
                with guard:
                    rcpts.append((target, sent, answered, code))
                code_keep, text = client.rcpt(f"{keeper}@{DOMAIN}")
                assert code_keep == 250, (keeper, code_keep, text)
                code_data, text = client.data(make_message(token, f"{keeper}@{DOMAIN}"))
                assert code_data == 250, (token, code_data, text)
            with guard:
                acked[keeper].append(token)

    def popper() -> None:
        while not done.is_set():
            client = pop_login(server, "ann", "pw-ann")
            client.stat()
            client.quit()
            time.sleep(0.005)

    run_all([churn, popper] + [lambda i=i: sender(i) for i in range(4)], 6)
    assert not admin_failures, admin_failures

    added = {n: t for kind, n, t in events if kind == "add"}
    removed = {n: t for kind, n, t in events if kind == "del"}
    deleting = {n: t for kind, n, t in events if kind == "deleting"}
    wrong = []
    for address, sent, answered, code in rcpts:
        number = int(address.split("@")[0][5:])
        if code == 250 and number in removed and sent > removed[number]:
            wrong.append((address, code, sent - removed[number]))
        if code >= 500 and number in added and sent > added[number] \
                and answered < deleting.get(number, float("inf")):
            wrong.append((address, code, "refused while it existed"))
    assert not wrong, f"RCPT answers inconsistent with USER ADD/DEL: {wrong[:5]}"
    assert sum(code == 250 for *_, code in rcpts) > 0, "no RCPT ever found a churned user"
    def missing() -> dict[str, list[str]]:
        """A copy deferred (the churned user's Maildir vanished under a shared write) is
        delivered by the queue a moment later: allowed, as long as it arrives."""
        return {keeper: [t for t in tokens if maildir_tokens(server, keeper)[t] < 1]
                for keeper, tokens in acked.items()}

    try:
        wait_until(lambda: not any(missing().values()), 15, "every acknowledged message")
    except AssertionError:
        raise AssertionError(f"acknowledged but not delivered: {missing()}") from None
    twice = {keeper: [t for t in tokens if maildir_tokens(server, keeper)[t] > 1]
             for keeper, tokens in acked.items()}
    assert not any(twice.values()), f"delivered more than once: {twice}"

    # the data files read back after a restart: exactly the final state
    server.restart()
    admin = server.admin()
    first, domains = admin.listing("DOMAIN LIST ALL")
    assert first.startswith("+OK"), first
    assert sorted(domains) == sorted([DOMAIN] + [f"d{n}.test" for n in range(rounds)])
    first, users = admin.listing("USER LIST ALL")
    assert first.startswith("+OK"), first
    assert sorted(users) == sorted(f"{u}@{DOMAIN}" for u in ("mick", "ann", "bob"))
    first, mick = admin.listing(f"USER LIST NAME=mick DOMAIN={DOMAIN}")
    assert first.startswith("+OK"), first
    assert f"Quota:\t{100000 + rounds - 1}" in mick, mick
    admin.close()
    pop_login(server, "ann", "pw-ann").quit()
    log_is_clean(server)


# ---------------------------------------------------------------- SIGHUP meanwhile
def test_sighup_during_deliveries_fails_no_session(server):
    sessions, per_session = 8, 12
    sending = threading.Event()
    sending.set()
    signals = [0]

    def send(session: int) -> list[str]:
        tokens = []
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as client:
            for number in range(per_session):
                token = f"h{session}m{number}"
                user = ("mick", "ann", "bob")[number % 3]
                refused = client.sendmail("", [f"{user}@{DOMAIN}"],
                                          make_message(token, f"{user}@{DOMAIN}"))
                assert refused == {}
                tokens.append((user, token))
        return tokens

    def hup() -> None:
        while sending.is_set():
            server.proc.send_signal(signal.SIGHUP)
            signals[0] += 1
            time.sleep(0.02)

    with ThreadPoolExecutor(max_workers=sessions + 1) as pool:
        hupper = pool.submit(hup)
        futures = [pool.submit(send, n) for n in range(sessions)]
        try:
            results = [future.result(timeout=JOIN) for future in futures]
        finally:
            sending.clear()
        hupper.result(timeout=JOIN)
    assert signals[0] >= 3
    wait_until(lambda: "SIGHUP: data files reloaded" in server.log_text(), 10, "a reload")
    for user in ("mick", "ann", "bob"):
        counts = maildir_tokens(server, user)
        expected = [t for batch in results for u, t in batch if u == user]
        assert sorted(counts.elements()) == sorted(expected), user
    # the users are all still there, and POP3 logins work after the storm of reloads
    for user, password in (("mick", "secret"), ("ann", "pw-ann"), ("bob", "pw-bob")):
        pop_login(server, user, password).quit()
    assert "problems)" not in server.log_text()
    log_is_clean(server)


# ---------------------------------------------------------------- the race above, made exact (fixed)
def test_a_vanished_co_recipient_does_not_duplicate_mail(tmp_path, monkeypatch):
    """What the interleaved test above hits now and then over the wire (an acknowledged
    message in ann's Maildir twice, once without and once with Delivered-To:): a message
    for churn and ann; USER DEL removes churn's Maildir after the file was written and
    linked into ann's new/, before the directories are fsynced."""
    import shutil

    from extremail import config, delivery, durable, layout
    from extremail.control import Context
    from extremail.store import Domain, Store, User

    cfg = config.build(str(tmp_path), {"CFG_LOCALDOMAIN": "local.test",
                                       "CFG_POSTMASTER": "postmaster@local.test"})
    layout.ensure(cfg)
    store = Store(cfg)
    store.load()
    store.add_domain(Domain(DOMAIN))
    churn, ann = store.add_user(User("churn", DOMAIN)), store.add_user(User("ann", DOMAIN))
    ctx = Context(cfg=cfg, store=store)
    spooled: list[list[str]] = []

    class Queue:
        def submit(self, envelope, data, recipients):
            spooled.append([r.address for r in recipients])
            return type("Queued", (), {"id": "q1"})()

    ctx.queue = Queue()
    real_sync = durable.sync_directories

    def user_del_meanwhile(paths):
        shutil.rmtree(store.user_dir(churn))  # what USER DEL does to the mailbox
        return real_sync(paths)

    monkeypatch.setattr(delivery, "sync_directories", user_del_meanwhile)
    envelope = Envelope("", [churn.address, ann.address])
    answer = delivery.accept(ctx, envelope, make_message("dup1", ann.address))
    assert answer.code == 250
    in_mailbox = sum(maildir_tokens_at(store.user_dir(ann)).values())
    again = sum(ann.address in group for group in spooled)
    assert in_mailbox + again == 1, (f"ann's copy: {in_mailbox} in the Maildir and "
                                     f"{again} more queued for delivery")


def maildir_tokens_at(path: str) -> Counter:
    counts: Counter = Counter()
    for entry in Maildir(path).scan():
        with open(entry.path, "rb") as handle:
            counts[token_of(handle.read())] += 1
    return counts
