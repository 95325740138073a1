"""The SMTP session's message data on its own thread and in the event loop: the same
script gives the same replies both ways (STYLE.md habit 9: a session over a socket pair).

On a thread, ``DATA`` reads the message and accepts it at once; in the event loop the
message is fed to a :class:`~extremail.net.lineio.DataReader` as it arrives and accepted
on a worker thread, while the loop serves other sessions.  Acceptance is replaced here by
a recorder: what is tested is the protocol around it (the wire tests deliver for real).
"""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import pytest

from extremail import config
from extremail import reply as reply_module
from extremail.control import Context
from extremail.net.eventloop import EventLoop
from extremail.reply import Refusal, Reply
from extremail.smtp.server import SMTPSession
from extremail.store import Store


@pytest.fixture(params=["thread", "loop", "loop-alone"])
def smtp(request, tmp_path):
    """A session after EHLO.  "loop": the event loop serves another session too, so the
    acceptance runs on a worker; "loop-alone": it runs in the loop's own thread."""
    cfg = config.build(str(tmp_path), {"CFG_HOSTNAME": "mx.loop.test", "CFG_MAX_MAIL_SIZE": "1",
                                       "TIMEOUT_SMTP5": "1"})
    ctx = Context(cfg=cfg, store=Store(cfg))
    others = []
    if request.param != "thread":
        ctx.loop = EventLoop()
        ctx.loop.start()
    if request.param == "loop":
        other, other_client = socket.socketpair()
        threading.Thread(target=SMTPSession(ctx, other, ("127.0.0.1", 2526)).run, daemon=True).start()
        other_client.sendall(b"EHLO other.test\r\n")
        others = [other_client, other_client.makefile("rb")]
        assert others[1].readline().startswith(b"220 ")
        while others[1].readline()[3:4] == b"-":
            pass  # the EHLO reply: that session is in the loop now
    server_end, client_end = socket.socketpair()
    session = SMTPSession(ctx, server_end, ("127.0.0.1", 2525))
    accepted: list[tuple[bytes, str]] = []

    def accept(data: bytes, ident: str) -> Reply:
        accepted.append((data, threading.current_thread().name))
        return Reply(250, "2.0.0", f"Ok: queued as {ident}")
    session.accept = accept
    session.check_recipient = lambda recipient: None
    ended = threading.Event()
    session.on_end = ended.set
    threading.Thread(target=session.run, name="smtp-session", daemon=True).start()
    client_end.settimeout(10)
    client = SimpleNamespace(sock=client_end, reader=client_end.makefile("rb"), accepted=accepted,
                             ended=ended, mode=request.param, session=session)
    assert reply(client).startswith(b"220 ")
    client.sock.sendall(b"EHLO client.test\r\n")
    assert reply(client).startswith(b"250 ")
    yield client
    client.reader.close()  # the socket closes with its last user
    client_end.close()
    for item in reversed(others):
        item.close()
    assert ended.wait(10)
    if ctx.loop is not None:
        ctx.loop.stop()


def reply(client) -> bytes:
    """One whole reply (the last line of a multi-line one)."""
    while True:
        line = client.reader.readline()
        if line[3:4] != b"-":
            return line


def codes(client, count: int) -> list[int]:
    return [int(reply(client)[:3]) for _ in range(count)]


def test_message_in_pieces_with_the_next_transaction_pipelined_behind_its_end(smtp) -> None:
    smtp.sock.sendall(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    assert codes(smtp, 3) == [250, 250, 354]
    stream = (b"Subject: s\r\n\r\n..dotted\r\nline\r\n.\r\n"
              b"MAIL FROM:<c@x.test>\r\nRCPT TO:<d@y.test>\r\nDATA\r\n")
    for start in range(0, len(stream), 5):
        smtp.sock.sendall(stream[start:start + 5])
    assert codes(smtp, 4) == [250, 250, 250, 354]
    smtp.sock.sendall(b".\r\nQUIT\r\n")  # an empty message, then goodbye in the same write
    assert codes(smtp, 2) == [250, 221]
    assert smtp.ended.wait(10)
    assert [data for data, _ in smtp.accepted] == [b"Subject: s\r\n\r\n.dotted\r\nline\r\n", b""]
    where = {"thread": "smtp-", "loop": "event-loop-worker", "loop-alone": "event-loop"}[smtp.mode]
    assert all(name.startswith(where) and (where == "event-loop-worker") == ("worker" in name)
               for _, name in smtp.accepted)


def test_too_big_is_refused_and_the_session_goes_on(smtp) -> None:
    smtp.sock.sendall(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    assert codes(smtp, 3) == [250, 250, 354]
    smtp.sock.sendall(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 30 + b".\r\n")
    assert reply(smtp).startswith(b"552 5.3.4 ")
    smtp.sock.sendall(b"MAIL FROM:<a@x.test>\r\n")  # the transaction was reset: MAIL is next
    assert codes(smtp, 1) == [250]
    assert smtp.accepted == []


def test_a_client_silent_in_the_middle_of_data_is_timed_out(smtp) -> None:
    smtp.sock.sendall(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    assert codes(smtp, 3) == [250, 250, 354]
    smtp.sock.sendall(b"Subject: half\r\n")
    assert reply(smtp).startswith(b"421 4.4.2 ")  # TIMEOUT_SMTP5, 1 s here
    assert smtp.reader.readline() == b""
    assert smtp.ended.wait(10) and smtp.accepted == []


def test_a_client_leaving_in_the_middle_of_data_ends_its_session_only(smtp) -> None:
    smtp.sock.sendall(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    assert codes(smtp, 3) == [250, 250, 354]
    smtp.sock.sendall(b"Subject: cut\r\n\r\nno end mark")
    smtp.sock.shutdown(socket.SHUT_WR)
    assert smtp.ended.wait(10) and smtp.accepted == []


def test_a_quota_check_runs_where_the_acceptance_runs(smtp, monkeypatch) -> None:
    """RCPT for a user with a QUOTA lists a Maildir: on a worker when the loop serves other
    sessions too.  Its refusal and pipelined replies keep their order."""
    where: list[str] = []

    def full_mailbox() -> None:
        where.append(threading.current_thread().name)
        raise Refusal(reply_module.OVER_QUOTA_TEMP)

    def check(recipient: str):
        return full_mailbox if recipient.startswith("full@") else None
    smtp.session.check_recipient = check
    smtp.sock.sendall(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<full@y.test>\r\nRCPT TO:<b@y.test>\r\n"
                      b"RCPT TO:<full@y.test>\r\nDATA\r\n")
    assert codes(smtp, 5) == [250, 452, 250, 452, 354]
    smtp.sock.sendall(b"Subject: s\r\n\r\nbody\r\n.\r\n")
    assert codes(smtp, 1) == [250]
    prefix = {"thread": "smtp-", "loop": "event-loop-worker", "loop-alone": "event-loop"}[smtp.mode]
    assert len(where) == 2 and all(name.startswith(prefix) for name in where)
    assert all((prefix == "event-loop-worker") == ("worker" in name) for name in where)
