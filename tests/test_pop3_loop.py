"""POP3 sessions after login are served by the event loop (extremail/net/eventloop.py):
through the wire, what must hold whoever serves them: one slow client never holds the
others, replies stay in order and byte-exact, errors, timeouts, the stop and the
connection limit work as on a thread."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from extremail.net.eventloop import LoopIO
from extremail.net.lineio import dot_stuff, to_crlf
from harness import wait_until
from test_pop3 import USERS, Wire, _can_log_in, pop, store_directly

BIG = 24 << 20  # well past what loopback socket buffers hold


@pytest.fixture
def server(make_server):
    server = make_server(TIMEOUT_POP3="3")
    server.setup_mail(USERS)
    return server


def big_message() -> bytes:
    line = b"." + b"x" * 98 + b"\n"  # every line needs dot-stuffing
    return b"Subject: big\n\n" + line * (BIG // len(line))


def login(server, user: str = "mick@acme.test", password: str = "secret") -> Wire:
    wire = Wire(server.pop3_port)
    assert wire.cmd(f"USER {user}").startswith("+OK")
    assert wire.cmd(f"PASS {password}").startswith("+OK")
    return wire


def read_exactly(sock: socket.socket, count: int) -> bytes:
    out = bytearray()
    while len(out) < count:
        chunk = sock.recv(min(1 << 20, count - len(out)))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {count} bytes")
        out += chunk
    return bytes(out)


def test_a_client_that_does_not_read_a_big_retr_holds_only_its_own_session(make_server):
    server = make_server()
    server.setup_mail(USERS)
    data = big_message()
    store_directly(server, data)
    slow = login(server)
    slow.send("RETR 1")  # and read nothing for now
    time.sleep(0.5)  # let the server fill the socket buffers and wait for the reader
    for _ in range(3):  # another mailbox is served meanwhile
        other = pop(server, "bob@acme.test", "hunter2")
        assert other.stat() == (0, 0)
        assert other.noop().startswith(b"+OK")
        other.quit()
    expected = b"+OK %d octets\r\n" % len(to_crlf(data)) + dot_stuff(to_crlf(data))
    slow.file.close()  # read the raw socket from here
    assert read_exactly(slow.sock, len(expected)) == expected
    slow.send("QUIT")
    assert read_exactly(slow.sock, 5) == b"+OK e"


def test_a_client_that_stops_reading_is_cut_off_and_its_mailbox_freed(server):
    store_directly(server, big_message())
    slow = login(server)
    slow.send("RETR 1")
    wait_until(lambda: _can_log_in(server), 20, "the stalled session to be cut off")
    assert server.logged("writing to a client that does not read")
    slow.close()


def test_a_client_vanishing_mid_retr_frees_its_mailbox_and_its_slot(server):
    store_directly(server, big_message())
    gone = login(server)
    gone.send("RETR 1")
    gone.sock.recv(1000)  # the retrieval has begun
    gone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    gone.close()  # reset the connection
    wait_until(lambda: _can_log_in(server), 10, "the mailbox to be released")
    admin = server.admin()
    wait_until(lambda: admin.listing("CONN POP3 SHOW")[0] == "+OK 0 POP3 connections", 10,
               "the session to end")
    admin.close()


def test_errors_and_long_lines_in_the_transaction_state(server):
    wire = login(server)
    assert wire.cmd("X" * 3000) == "-ERR Line too long"
    wire.send(b"NOOP " + b"y" * 1500)  # a line over the limit in two pieces
    time.sleep(0.2)
    wire.send(b"z" * 1500 + b"\r\n")
    assert wire.line() == "-ERR Line too long"
    assert wire.cmd("NOOP") == "+OK NOOP"
    assert wire.cmd("RETR 99") == "-ERR No such message"
    assert wire.cmd("PASS secret") == "-ERR Command not valid in this state"
    replies = [wire.cmd("BOGUS") for _ in range(17)]
    assert replies == ["-ERR Unknown command"] * 17
    assert wire.cmd("BOGUS") == "-ERR Too many errors, bye"
    assert wire.closed()


def test_idle_session_after_login_times_out_with_its_reply(server):
    wire = login(server)
    begun = time.monotonic()
    assert wire.line() == "-ERR Timeout, closing connection"
    assert wire.closed()
    assert 2.5 < time.monotonic() - begun < 15
    assert _can_log_in(server)


def test_idle_session_before_login_times_out_on_its_thread(server):
    """Before login the session has a thread whose reads the kernel bounds (SO_RCVTIMEO)."""
    wire = Wire(server.pop3_port)
    assert wire.cmd("USER mick@acme.test").startswith("+OK")
    begun = time.monotonic()
    assert wire.line() == "-ERR Timeout, closing connection"
    assert wire.closed()
    assert 2.5 < time.monotonic() - begun < 15


def test_stop_says_goodbye_to_a_logged_in_session(server):
    wire = login(server)
    assert wire.cmd("STAT") == "+OK 0 0"
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    assert wire.line() == "-ERR [SYS/TEMP] Server shutting down, try again later"
    assert wire.closed()
    stopper.join(60)
    assert not stopper.is_alive()


def test_the_connection_limit_counts_sessions_after_login(make_server):
    server = make_server(CFG_MAX_CONN="2")
    server.setup_mail(USERS)
    first, second = login(server), login(server, "bob@acme.test", "hunter2")
    third = Wire(server.pop3_port)
    assert third.greeting.startswith("-ERR [SYS/TEMP] Too many POP3 connections")
    third.close()
    assert first.cmd("QUIT").startswith("+OK")
    first.close()

    def admitted() -> bool:
        wire = Wire(server.pop3_port)
        try:
            return wire.greeting.startswith("+OK")
        finally:
            wire.close()
    wait_until(admitted, 10, "a slot to be free again")
    second.close()  # gone without QUIT: its slot comes back as well
    wait_until(lambda: _can_log_in(server, "bob@acme.test", "hunter2"), 10, "bob's slot")


def test_loop_io_sends_bytes_and_chunks_in_the_order_written():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    io = LoopIO(ours, bytearray(), 0, 0)
    io.write(b"a")
    io.write(b"b")
    io.write_chunks(iter([b"c" * 300_000, b"d"]))
    io.write(b"e")
    assert io.backlogged()
    received = bytearray()
    theirs.settimeout(10)
    while not io.flush():
        received += theirs.recv(1 << 20)
    while len(received) < 300_004:
        received += theirs.recv(1 << 20)
    assert bytes(received) == b"ab" + b"c" * 300_000 + b"de"
    assert io.bytes_out == 300_004 and not io.backlogged()
    io.close()
    theirs.close()
