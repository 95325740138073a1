"""POP3 through the wire (RFC 1939, RFC 2449 CAPA, RFC 5034 AUTH PLAIN) against a real
server, with poplib and, where poplib hides the bytes, a raw socket."""

from __future__ import annotations

import base64
import os
import poplib
import smtplib
import socket
import threading
import time

import pytest

from extremail.mailbox import Maildir
from harness import wait_until

USERS = {"acme.test": {"mick": "secret", "bob": "hunter2"}}


# ---- helpers shared with the fetchmail and getmail tests ----
def deliver(server, user: str, domain: str, data: bytes) -> bytes:
    """Send ``data`` (LF line ends) to the user over SMTP; returns the message as the
    server stored it (with its trace headers, LF line ends)."""
    maildir = Maildir(server.maildir(user, domain))
    before = {entry.uid for entry in maildir.scan()}
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=60) as client:
        client.sendmail("alice@remote.test", [f"{user}@{domain}"], data.replace(b"\n", b"\r\n"),
                        mail_options=["BODY=8BITMIME"])
    (entry,) = wait_until(lambda: [e for e in maildir.scan() if e.uid not in before], 30,
                          "the message in the mailbox")
    with open(entry.path, "rb") as handle:
        return handle.read()


def store_directly(server, data: bytes) -> None:
    """A message file as another program may write it (CRLF, no final line end)."""
    Maildir(server.maildir("mick", "acme.test")).deliver(data)


def message(subject: str, body: str = "Hello.\n") -> bytes:
    return (f"From: alice@remote.test\nTo: mick@acme.test\nSubject: {subject}\n"
            f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\n\n{body}").encode()


def drop(client: poplib.POP3) -> None:
    """Lose the connection without QUIT (poplib's file object keeps the socket open)."""
    client.sock.shutdown(socket.SHUT_RDWR)
    client.file.close()
    client.sock.close()


def pop(server, login: str = "mick@acme.test", password: str = "secret") -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    client.user(login)
    client.pass_(password)
    return client


class Wire:
    """A raw POP3 client: exact bytes, and a chosen loopback source address."""

    def __init__(self, port: int, source: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30,
                                             source_address=(source, 0) if source else None)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def raw_line(self) -> bytes:
        raw = self.file.readline()
        if not raw:
            raise ConnectionError("closed")
        return raw

    def line(self) -> str:
        return self.raw_line().decode("utf-8").rstrip("\r\n")

    def send(self, text: str | bytes) -> None:
        self.sock.sendall(text if isinstance(text, bytes) else text.encode() + b"\r\n")

    def cmd(self, text: str | bytes) -> str:
        self.send(text)
        return self.line()

    def data(self) -> bytes:
        """The raw bytes of a multi-line reply up to (not including) the ``.`` line."""
        out = []
        while (raw := self.raw_line()) != b".\r\n":
            out.append(raw)
        return b"".join(out)

    def closed(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def plain(authcid: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()


@pytest.fixture
def server(make_server):
    server = make_server()
    server.setup_mail(USERS)
    return server


# ---- greeting, CAPA, states ----
def test_greeting_and_capa_advertise_what_works(server):
    wire = Wire(server.pop3_port)
    assert wire.greeting.startswith("+OK ")
    assert wire.cmd("CAPA").startswith("+OK")
    caps = wire.data().decode().split("\r\n")[:-1]
    assert {"USER", "SASL PLAIN", "TOP", "UIDL", "PIPELINING", "RESP-CODES",
            "AUTH-RESP-CODE"} <= set(caps)
    assert any(cap.startswith("IMPLEMENTATION eXtremail") for cap in caps)
    assert "STLS" not in caps  # no TLS yet: advertise only what works
    assert wire.cmd("USER mick@acme.test").startswith("+OK")
    assert wire.cmd("PASS secret").startswith("+OK")
    assert wire.cmd("CAPA").startswith("+OK")
    after = wire.data().decode().split("\r\n")[:-1]
    assert "USER" not in after and "UIDL" in after  # RFC 2449 5: USER only before login
    wire.close()


def test_commands_outside_their_state_and_unknown_ones_get_err(server):
    wire = Wire(server.pop3_port)
    for command in ("STAT", "LIST", "UIDL", "RETR 1", "TOP 1 0", "DELE 1", "RSET", "NOOP"):
        assert wire.cmd(command).startswith("-ERR"), command
    assert wire.cmd("PASS secret") == "-ERR USER first"
    assert wire.cmd("USER").startswith("-ERR")
    assert wire.cmd("FROB").startswith("-ERR")
    assert wire.cmd(b"X" * 3000 + b"\r\n") == "-ERR Line too long"
    assert wire.cmd("user mick@acme.test").startswith("+OK")  # keywords are case-insensitive
    assert wire.cmd("pass secret").startswith("+OK")
    for command in ("USER mick@acme.test", "PASS secret", "AUTH PLAIN"):
        assert wire.cmd(command).startswith("-ERR"), command
    assert wire.cmd("QUIT").startswith("+OK")
    assert wire.closed()


def test_pipelined_commands_are_answered_in_order(server):
    """RFC 2449 PIPELINING: a whole batch in one write, every reply in order."""
    deliver(server, "mick", "acme.test", message("piped"))
    wire = Wire(server.pop3_port)
    wire.send(b"CAPA\r\nUSER mick@acme.test\r\nPASS secret\r\nSTAT\r\nUIDL\r\nRETR 1\r\n"
              b"DELE 1\r\nNOOP\r\nQUIT\r\n")
    assert wire.line().startswith("+OK")
    assert b"PIPELINING" in wire.data()
    assert [wire.line()[:3] for _ in range(3)] == ["+OK"] * 3
    assert wire.line().startswith("+OK") and wire.data().startswith(b"1 ")
    assert wire.line().startswith("+OK") and b"Subject: piped" in wire.data()
    assert [wire.line() for _ in range(3)] == [
        "+OK Message 1 deleted", "+OK NOOP",
        "+OK eXtremail POP3 server signing off (1 messages deleted)"]
    assert wire.closed()


# ---- logins ----
def test_login_forms(server):
    server.setup_mail({"eu.acme.test": {"anna": "pw-eu"}, "local.test": {"carl": "pw-local"}})
    admin = server.admin()
    assert admin.cmd("USER ADD NAME=bob.smith DOMAIN=acme.test PASS=pw-dotted").startswith("+OK")
    assert admin.cmd('USER ADD NAME=space DOMAIN=acme.test PASS="pass with spaces"').startswith("+OK")
    admin.close()
    for login, password in (("mick@acme.test", "secret"),
                            ("mick.acme.test", "secret"),      # the manual's Netscape form
                            ("MICK.Acme.Test", "secret"),      # names are case-insensitive
                            ("anna.eu.acme.test", "pw-eu"),    # the longest local domain wins
                            ("bob.smith.acme.test", "pw-dotted"),  # a dot in the user name
                            ("carl", "pw-local"),              # CFG_LOCALDOMAIN
                            ("space@acme.test", "pass with spaces")):  # RFC 1939 PASS
        client = pop(server, login, password)
        assert client.stat() == (0, 0)
        client.quit()
    client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    client.user("anna.acme.test")  # eu.acme.test is local, so this is not anna@eu.acme.test
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.pass_("pw-eu")


def test_unknown_user_and_wrong_password_look_the_same(server):
    """Same reply, and the same scrypt work (an unknown user is not answered faster)."""
    def attempt(login: str, password: str, source: str) -> tuple[str, float]:
        wire = Wire(server.pop3_port, source)
        wire.cmd(f"USER {login}")
        begin = time.monotonic()
        answer = wire.cmd(f"PASS {password}")
        spent = time.monotonic() - begin
        wire.close()
        return answer, spent

    # three tries per source address: below the throttle's free failures
    wrong = [attempt("mick@acme.test", "nope", "127.0.0.11") for _ in range(3)]
    unknown = [attempt("nobody@acme.test", "nope", "127.0.0.12") for _ in range(3)]
    no_domain = [attempt("mick@elsewhere.test", "nope", "127.0.0.13") for _ in range(3)]
    replies = {answer for answer, _ in wrong + unknown + no_domain}
    assert replies == {"-ERR [AUTH] Authentication failed"}
    fastest_wrong = min(spent for _, spent in wrong)
    assert min(spent for _, spent in unknown) > 0.3 * fastest_wrong
    assert min(spent for _, spent in no_domain) > 0.3 * fastest_wrong
    log = server.log_text()
    assert "login failed for 'nobody@acme.test'" in log
    assert "nope" not in log  # never the password


def test_repeated_failures_from_one_ip_are_slowed_down(server):
    def failure(source: str) -> float:
        wire = Wire(server.pop3_port, source)
        wire.cmd("USER mick@acme.test")
        begin = time.monotonic()
        assert wire.cmd("PASS wrong") == "-ERR [AUTH] Authentication failed"
        spent = time.monotonic() - begin
        wire.close()
        return spent

    times = [failure("127.0.0.21") for _ in range(5)]
    # the 4th and 5th wait 1 s and 2 s before their answer (auth.Throttle: 3 free)
    assert times[4] - times[0] > 1.5, times
    assert server.logged("after waiting")
    # another client is not slowed down meanwhile, and the right password still works
    assert failure("127.0.0.22") < 1.0
    wire = Wire(server.pop3_port, "127.0.0.22")
    wire.cmd("USER mick@acme.test")
    assert wire.cmd("PASS secret").startswith("+OK")
    wire.close()


def test_twenty_simultaneous_logins_keep_the_server_small(server):
    """scrypt takes 16 MB a login: without a bound (and with glibc keeping each thread's
    block) twenty logins at once took the server to 370 MB."""
    users = {f"u{n}": "pw" for n in range(20)}
    server.setup_mail({"many.test": users})
    barrier = threading.Barrier(len(users))
    answers: list[bytes] = []

    def log_in(name: str) -> None:
        client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=60)
        barrier.wait(30)
        client.user(f"{name}@many.test")
        answers.append(client.pass_("pw"))
        client.quit()

    threads = [threading.Thread(target=log_in, args=(name,)) for name in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == len(users) and all(a.startswith(b"+OK") for a in answers)
    with open(f"/proc/{server.proc.pid}/status") as handle:
        status = dict(line.split(":", 1) for line in handle)
    assert int(status["VmHWM"].split()[0]) < 160 * 1024, status["VmHWM"]  # kB; was 370 MB


def test_three_failures_end_the_session(server):
    wire = Wire(server.pop3_port, "127.0.0.31")
    for _ in range(2):
        wire.cmd("USER mick@acme.test")
        assert wire.cmd("PASS bad").startswith("-ERR [AUTH]")
    wire.cmd("USER mick@acme.test")
    assert wire.cmd("PASS bad").startswith("-ERR [AUTH]")
    assert wire.closed()


def test_auth_plain_initial_response_continuation_and_errors(server):
    wire = Wire(server.pop3_port, "127.0.0.41")
    assert wire.cmd("AUTH").startswith("+OK")
    assert wire.data() == b"PLAIN\r\n"
    assert wire.cmd("AUTH CRAM-MD5").startswith("-ERR")
    assert wire.cmd("AUTH PLAIN") == "+ "
    assert wire.cmd("*") == "-ERR Authentication cancelled"
    assert wire.cmd("AUTH PLAIN") == "+ "
    assert wire.cmd("not base64!") == "-ERR Invalid base64 data"
    assert wire.cmd("AUTH PLAIN " + base64.b64encode(b"no separators").decode()) \
        == "-ERR [AUTH] Authentication failed"
    assert wire.cmd("AUTH PLAIN " + plain("mick@acme.test", "secret", "bob@acme.test")) \
        == "-ERR [AUTH] Authentication failed"  # acting as someone else is not offered
    assert wire.cmd("AUTH PLAIN") == "+ "
    assert wire.cmd(plain("mick@acme.test", "secret")).startswith("+OK")
    assert wire.cmd("STAT") == "+OK 0 0"
    wire.close()

    wire = Wire(server.pop3_port, "127.0.0.42")
    assert wire.cmd("AUTH PLAIN " + plain("bob.acme.test", "hunter2", "bob.acme.test")) \
        .startswith("+OK")
    wire.close()
    wire = Wire(server.pop3_port, "127.0.0.43")
    assert wire.cmd("AUTH PLAIN " + plain("mick@acme.test", "wrong")) \
        == "-ERR [AUTH] Authentication failed"
    wire.close()
    assert server.logged("disconnect 127.0.0.43:")  # the log is complete up to here
    assert "secret" not in server.log_text() and "hunter2" not in server.log_text()


# ---- the mailbox: one session, snapshot, UPDATE at QUIT ----
def test_second_session_gets_in_use_until_the_first_ends(server):
    first = pop(server)
    second = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    second.user("mick.acme.test")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
        second.pass_("secret")
    other = pop(server, "bob@acme.test", "hunter2")  # another mailbox is free
    other.quit()
    first.quit()
    second.user("mick.acme.test")
    assert second.pass_("secret").startswith(b"+OK")
    drop(second)  # without QUIT: the lock goes with the connection
    wait_until(lambda: _can_log_in(server), 10, "the lock to be released")


def _can_log_in(server, login: str = "mick@acme.test", password: str = "secret") -> bool:
    try:
        pop(server, login, password).quit()
        return True
    except poplib.error_proto:
        return False


def test_stat_list_uidl_retr_top_dele_rset_noop(server):
    first, second = message("one"), message("two", "Line 1\nLine 2\nLine 3\n")
    first = deliver(server, "mick", "acme.test", first)
    second = deliver(server, "mick", "acme.test", second)
    client = pop(server)
    sizes = [len(first) + first.count(b"\n"), len(second) + second.count(b"\n")]
    assert client.stat() == (2, sum(sizes))
    _, listing, _ = client.list()
    assert listing == [f"1 {sizes[0]}".encode(), f"2 {sizes[1]}".encode()]
    assert client.list(2) == f"+OK 2 {sizes[1]}".encode()
    _, uids, _ = client.uidl()
    assert [u.split()[0] for u in uids] == [b"1", b"2"] and len(set(uids)) == 2
    assert client.uidl(1) == b"+OK " + uids[0]
    _, lines, octets = client.retr(2)
    assert b"\r\n".join(lines) + b"\r\n" == second.replace(b"\n", b"\r\n")
    assert octets == sizes[1]
    _, lines, _ = client.top(2, 1)
    assert lines[-2:] == [b"", b"Line 1"]
    assert client.noop() == b"+OK NOOP"
    assert client.dele(1).startswith(b"+OK")
    for call in (lambda: client.dele(1), lambda: client.retr(1), lambda: client.list(1),
                 lambda: client.top(1, 0), lambda: client.uidl(1), lambda: client.retr(3),
                 lambda: client.list(0)):
        with pytest.raises(poplib.error_proto, match="No such message"):
            call()
    assert client.stat() == (1, sizes[1])
    assert client.list()[1] == [f"2 {sizes[1]}".encode()]
    assert client.rset().startswith(b"+OK 2 messages")
    assert client.stat() == (2, sum(sizes))
    for bad in ("RETR x", "RETR -1", "RETR 1 2", "DELE", "TOP 1", "TOP 1 x", "TOP 1 -1",
                "LIST one"):
        with pytest.raises(poplib.error_proto, match="Syntax error"):
            client._shortcmd(bad)
    client.quit()
    assert len(Maildir(server.maildir("mick", "acme.test")).scan()) == 2


def test_deletions_happen_at_quit_only(server):
    for index in range(3):
        deliver(server, "mick", "acme.test", message(f"m{index}"))
    client = pop(server)
    client.dele(1)
    client.dele(2)
    drop(client)  # connection lost: nothing is deleted (RFC 1939 section 6)
    wait_until(lambda: _can_log_in(server), 10, "the session to end")
    assert len(Maildir(server.maildir("mick", "acme.test")).scan()) == 3

    client = pop(server)
    client.dele(1)
    client.dele(3)
    assert len(Maildir(server.maildir("mick", "acme.test")).scan()) == 3  # marks only
    assert b"2 messages deleted" in client.quit()
    left = Maildir(server.maildir("mick", "acme.test")).scan()
    assert len(left) == 1
    with open(left[0].path, "rb") as handle:
        assert b"Subject: m1" in handle.read()
    assert server.logged("2 messages deleted at QUIT")


def test_uids_are_stable_across_sessions_reading_and_restarts(server):
    for index in range(3):
        deliver(server, "mick", "acme.test", message(f"u{index}"))
    client = pop(server)
    uids = client.uidl()[1]
    client.retr(1)
    client.retr(2)
    client.dele(2)
    client.quit()
    mailbox = server.maildir("mick", "acme.test")
    uid = [line.split()[1].decode() for line in uids]
    # retrieved and kept: moved to cur/ with the seen flag (like Dovecot), same unique id
    (unread,) = os.listdir(os.path.join(mailbox, "new"))
    (seen,) = os.listdir(os.path.join(mailbox, "cur"))
    assert unread.startswith(uid[2] + ",") and seen.startswith(uid[0] + ",")
    assert seen.endswith(":2,S")

    client = pop(server)
    assert client.uidl()[1] == [f"1 {uid[0]}".encode(), f"2 {uid[2]}".encode()]
    client.quit()
    server.restart()
    client = pop(server)
    assert client.uidl()[1] == [f"1 {uid[0]}".encode(), f"2 {uid[2]}".encode()]
    client.quit()


def test_mail_arriving_during_a_session_waits_for_the_next_one(server):
    deliver(server, "mick", "acme.test", message("early"))
    client = pop(server)
    assert client.stat()[0] == 1
    deliver(server, "mick", "acme.test", message("late"))
    assert client.stat()[0] == 1
    assert len(client.list()[1]) == 1
    with pytest.raises(poplib.error_proto):
        client.retr(2)
    client.dele(1)
    client.quit()
    client = pop(server)
    assert client.stat()[0] == 1
    assert b"Subject: late" in client.retr(1)[1]
    client.quit()


# ---- message text on the wire ----
def test_dot_stuffing_and_line_ends_round_trip(server):
    body = (b".\n..\n.starts with a dot\n. \nmiddle . dot\n.\n"
            b"crlf line\r\nlast line without end")
    data = message("dots").rstrip(b"\n") + b"\n" + body
    store_directly(server, data)
    wire = Wire(server.pop3_port)
    wire.cmd("USER mick@acme.test")
    wire.cmd("PASS secret")
    size = int(wire.cmd("LIST 1").split()[2])
    assert wire.cmd("RETR 1") == f"+OK {size} octets"
    sent = wire.data()
    assert b"\r\n..\r\n...\r\n..starts with a dot\r\n.. \r\nmiddle . dot\r\n..\r\n" in sent
    assert b"\n" not in sent.replace(b"\r\n", b"")  # no bare LF on the wire
    unstuffed = b"".join(line[1:] if line.startswith(b".") else line
                         for line in sent.splitlines(keepends=True))
    # the message's own bytes, CRLF, plus the CRLF that ends the last line on the wire
    assert unstuffed == data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
    assert size == len(unstuffed) - 2
    wire.close()


def test_list_and_stat_sizes_equal_what_retr_sends(server):
    big_line = b"x" * 998 + b"\n"
    big = message("big").rstrip(b"\n") + b"\n" + (big_line * 3100) + b".dot after a chunk\n"
    small = message("crlf stored", "a\r\nb\r\n.c\r\n")  # CRLF stored by another program
    deliver(server, "mick", "acme.test", message("small"))
    deliver(server, "mick", "acme.test", big)
    store_directly(server, small)
    deliver(server, "mick", "acme.test", b"Subject: empty body\n\n")
    client = pop(server)
    count, total = client.stat()
    _, listing, _ = client.list()
    sizes = [int(line.split()[1]) for line in listing]
    assert count == 4 and total == sum(sizes)
    for number, size in enumerate(sizes, 1):
        octets = client.retr(number)[2]
        assert octets == size, number  # poplib counts the unstuffed bytes with CRLF
    assert sizes[1] > 3_000_000  # bigger than one piece of the reader
    client.quit()


def test_top_sends_the_header_and_n_body_lines(server):
    stored = deliver(server, "mick", "acme.test",
                     message("top", "".join(f"line {i}\n" for i in range(10))))
    client = pop(server)
    header = stored.split(b"\n\n")[0].split(b"\n")
    assert client.top(1, 0)[1] == [*header, b""]
    assert client.top(1, 3)[1] == [*header, b"", b"line 0", b"line 1", b"line 2"]
    assert client.top(1, 100)[1][-1] == b"line 9"
    client.quit()


def test_login_removes_files_left_in_tmp_for_36_hours(server):
    store_directly(server, message("kept"))
    tmp = os.path.join(server.maildir("mick", "acme.test"), "tmp")
    stale, fresh = os.path.join(tmp, "1.interrupted"), os.path.join(tmp, "2.in-progress")
    for path in (stale, fresh):
        with open(path, "wb") as handle:
            handle.write(b"Subject: partial\n")
    old = time.time() - 37 * 3600
    os.utime(stale, (old, old))
    client = pop(server)
    assert client.stat()[0] == 1
    client.quit()
    assert not os.path.exists(stale)
    assert os.path.exists(fresh)
    wait_until(lambda: "removed 1 stale files from the tmp/ of mick@acme.test" in server.log_text(),
               10, "the log line")


# ---- idle sessions, observability ----
def test_idle_session_times_out(make_server):
    server = make_server(TIMEOUT_POP3="2")
    server.setup_mail(USERS)
    wire = Wire(server.pop3_port)
    wire.cmd("USER mick@acme.test")
    assert wire.cmd("PASS secret").startswith("+OK")
    begin = time.monotonic()
    assert wire.line() == "-ERR Timeout, closing connection"
    assert wire.closed()
    assert 1.5 < time.monotonic() - begin < 10
    assert _can_log_in(server)  # the timeout released the mailbox


def test_conn_pop3_show_status_and_log_lines(server):
    wire = Wire(server.pop3_port, "127.0.0.51")
    client = pop(server)
    admin = server.admin()
    first, rows = admin.listing("CONN POP3 SHOW")
    assert first == "+OK 2 POP3 connections"
    assert sorted(row.split("\t")[:2] for row in rows) == [["", "127.0.0.51"],
                                                           ["mick@acme.test", "127.0.0.1"]]
    _, status = admin.listing("STATUS")
    assert "POP3:\t2" in status  # connections since the start
    client.quit()
    wire.close()
    wait_until(lambda: admin.listing("CONN POP3 SHOW")[0] == "+OK 0 POP3 connections", 10,
               "the sessions to end")
    admin.close()
    log = server.log_text()
    assert "connect from 127.0.0.51" in log
    assert "login ok for mick@acme.test" in log
    assert "disconnect 127.0.0.1" in log
