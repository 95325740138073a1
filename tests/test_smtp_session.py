"""The SMTP session over a socket pair (STYLE.md habit 9): RFC 2920 reply batching, seen
from the number of writes the session makes."""

from __future__ import annotations

import socket
import threading

import pytest

from extremail import config
from extremail.control import Context
from extremail.smtp.server import SMTPSession
from extremail.store import Store


@pytest.fixture
def pair(tmp_path):
    cfg = config.build(str(tmp_path), {"CFG_HOSTNAME": "mx.pair.test"})
    ctx = Context(cfg=cfg, store=Store(cfg))
    server_end, client_end = socket.socketpair()
    session = SMTPSession(ctx, server_end, ("127.0.0.1", 2525))
    writes: list[bytes] = []
    real_write = session.io.write

    def counting_write(data: bytes) -> None:
        writes.append(data)
        real_write(data)

    session.io.write = counting_write
    thread = threading.Thread(target=session.run, daemon=True)
    thread.start()
    client_end.settimeout(10)
    reader = client_end.makefile("rb")
    assert reader.readline().startswith(b"220 mx.pair.test ")
    yield client_end, reader, writes
    client_end.close()
    thread.join(10)


def test_batched_replies_go_out_in_one_write(pair):
    client, reader, writes = pair
    client.sendall(b"EHLO client.test\r\n")
    while not reader.readline().startswith(b"250 "):
        pass
    writes.clear()
    client.sendall(b"NOOP\r\nRSET\r\nNOOP\r\nNOOP\r\n")   # one pipelined group
    replies = [reader.readline() for _ in range(4)]
    assert replies == [b"250 2.0.0 OK\r\n", b"250 2.0.0 Reset state\r\n", b"250 2.0.0 OK\r\n",
                       b"250 2.0.0 OK\r\n"]
    assert len(writes) == 1


def test_other_commands_flush_at_once(pair):
    """HELP is not in RFC 2920's list: its reply (and any held before it) goes out at once."""
    client, reader, writes = pair
    writes.clear()
    client.sendall(b"NOOP\r\nHELP\r\nNOOP\r\n")
    replies = [reader.readline() for _ in range(3)]
    assert replies[0] == b"250 2.0.0 OK\r\n" and replies[1].startswith(b"214 ")
    assert len(writes) == 2   # NOOP+HELP, then the last NOOP
    client.sendall(b"QUIT\r\n")
    assert reader.readline().startswith(b"221 ")
