"""The POP3 session over a socket pair, in this process: what a login leaves behind in
the shared context (the POP-before-SMTP table the relay policy reads, the statistics)."""

from __future__ import annotations

import socket
import threading

import pytest

from extremail import auth, config, policy
from extremail.control import Context
from extremail.pop3 import POP3Session
from extremail.store import Domain, Store, User


@pytest.fixture
def ctx(tmp_path):
    cfg = config.build(str(tmp_path), {"CFG_ANTI_RELY": "2", "CFG_LOCALIP": "127.0.0.1/32",
                                       "CFG_LOCALDOMAIN": "local.test"})
    store = Store(cfg)
    store.load()
    store.add_domain(Domain("acme.test"))
    store.add_user(User("mick", "acme.test", password=auth.hash_password("secret")))
    return Context(cfg=cfg, store=store)


class Peer:
    """A session served by a thread on one end of a socket pair, as from ``ip``."""

    def __init__(self, ctx: Context, ip: str) -> None:
        self.ours, theirs = socket.socketpair()
        self.ours.settimeout(30)
        self.file = self.ours.makefile("rb")
        self.thread = threading.Thread(target=POP3Session(ctx, theirs, (ip, 40000)).run)
        self.thread.start()
        self.greeting = self.line()

    def line(self) -> str:
        return self.file.readline().decode().rstrip("\r\n")

    def cmd(self, text: str) -> str:
        self.ours.sendall(text.encode() + b"\r\n")
        return self.line()

    def quit(self) -> None:
        assert self.cmd("QUIT").startswith("+OK")
        self.thread.join(30)
        self.file.close()
        self.ours.close()


def test_login_allows_relaying_from_that_ip_only(ctx):
    """CFG_ANTI_RELY=2: a successful POP3 login lets its IP relay for CFG_RELY_TIMEOUT."""
    assert not policy.may_relay(ctx.cfg, ctx.relay, "127.0.0.2")
    failed = Peer(ctx, "127.0.0.2")
    failed.cmd("USER mick@acme.test")
    assert failed.cmd("PASS wrong").startswith("-ERR [AUTH]")
    failed.quit()
    assert not policy.may_relay(ctx.cfg, ctx.relay, "127.0.0.2")

    peer = Peer(ctx, "127.0.0.2")
    peer.cmd("USER mick@acme.test")
    assert peer.cmd("PASS secret").startswith("+OK")
    peer.quit()
    assert policy.may_relay(ctx.cfg, ctx.relay, "127.0.0.2")
    assert not policy.may_relay(ctx.cfg, ctx.relay, "127.0.0.3")
    assert ctx.stats.get("pop3") == 2
    assert ctx.registry.count("pop3") == 0
