"""Unit tests beside the wire tests: login names, AUTH PLAIN decoding, the maildrop
snapshot and its UPDATE, and the wire form of stored messages."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from types import SimpleNamespace
from typing import BinaryIO

import pytest

from extremail import auth, login, mailbox, pop3_mailbox
from extremail.net.lineio import to_crlf
from extremail.mailbox import Maildir
from extremail.pop3 import AUTH_FAILED, BAD_BASE64, _plain_credentials
from extremail.pop3_mailbox import LockTable, Maildrop, NoSuchMessage, retr_chunks, top_text
from extremail.reply import Refusal
from extremail.store import User


class FakeStore:
    def __init__(self, domains: set[str], users: dict[tuple[str, str], User]) -> None:
        self.domains = domains
        self.users = SimpleNamespace(rows=users)

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.domains


@pytest.mark.parametrize(("typed", "meant"), [
    ("mick@acme.test", ("mick", "acme.test")),
    ("Mick@ACME.test", ("mick", "acme.test")),
    ("mick.acme.test", ("mick", "acme.test")),
    ("mick.eu.acme.test", ("mick", "eu.acme.test")),      # longest local suffix
    ("bob.smith.acme.test", ("bob.smith", "acme.test")),  # dotted user name
    ("mick", ("mick", "local.test")),                     # CFG_LOCALDOMAIN
    ("mick.unknown.test", ("mick.unknown.test", "local.test")),
    ("a@b@acme.test", ("a@b", "acme.test")),
    (".acme.test", (".acme.test", "local.test")),
])
def test_login_names(typed, meant):
    store = FakeStore({"acme.test", "eu.acme.test"}, {})
    assert login.resolve(store, "local.test", typed) == meant


def _ctx(users: dict) -> SimpleNamespace:
    return SimpleNamespace(throttle=auth.Throttle(), stopping=threading.Event(),
                           store=FakeStore({"acme.test"}, users),
                           cfg=SimpleNamespace(CFG_LOCALDOMAIN="local.test"))


def test_authenticate_needs_a_user_with_that_password():
    users = {("mick", "acme.test"): User("mick", "acme.test", password=auth.hash_password("pw")),
             ("nopass", "acme.test"): User("nopass", "acme.test")}
    ctx = _ctx(users)
    assert login.authenticate(ctx, "192.0.2.1", "mick.acme.test", "pw").user.name == "mick"
    assert login.authenticate(ctx, "192.0.2.1", "mick@acme.test", "bad").user is None
    assert login.authenticate(ctx, "192.0.2.1", "nopass@acme.test", "").user is None  # no password
    assert login.authenticate(ctx, "192.0.2.1", "ghost@acme.test", "pw").user is None
    assert ctx.throttle.delay("192.0.2.1") > 0  # three failures counted
    assert ctx.throttle.delay("192.0.2.2") == 0


def test_clear_text_passwords_survive_undecodable_bytes():
    assert login.clear_text("p\udcffw") == "p\ufffdw"
    assert auth.verify_password(login.clear_text("p\udcffw"), None) is False


def test_at_most_a_few_password_checks_run_at_once(monkeypatch):
    """Each scrypt takes 16 MB: twenty logins at once must not take twenty of them."""
    stored = auth.hash_password("pw")
    active, peak, guard = [0], [0], threading.Lock()
    real = hashlib.scrypt

    def counting(*args, **kwargs):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.02)  # long enough for the other threads to pile up
            return real(*args, **kwargs)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(auth.hashlib, "scrypt", counting)
    results: list[bool] = []
    checks = [threading.Thread(target=lambda i=i: results.append(
        auth.verify_password("pw" if i % 2 else "bad", None if i % 3 == 0 else stored)))
        for i in range(3 * auth.MAX_DERIVATIONS)]
    for thread in checks:
        thread.start()
    for thread in checks:
        thread.join()
    assert peak[0] == auth.MAX_DERIVATIONS
    assert results.count(True) == len([i for i in range(3 * auth.MAX_DERIVATIONS)
                                       if i % 2 and i % 3])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_plain_credentials():
    assert _plain_credentials(_b64(b"\0mick@acme.test\0pass word")) == ("mick@acme.test", "pass word")
    assert _plain_credentials(_b64(b"Mick@acme.test\0mick@acme.test\0pw")) == ("mick@acme.test", "pw")
    for bad, reply in ((_b64(b"only\0two"), AUTH_FAILED), ("=", AUTH_FAILED),
                       (_b64(b"\0\0pw"), AUTH_FAILED), (_b64(b"other\0mick\0pw"), AUTH_FAILED),
                       ("abc$", BAD_BASE64), ("abc", BAD_BASE64)):
        with pytest.raises(Refusal) as caught:
            _plain_credentials(bad)
        assert caught.value.reply == reply, bad


def test_lock_table_is_per_mailbox(tmp_path):
    locks = LockTable()
    path = str(tmp_path / "mbox")
    os.makedirs(path)
    assert locks.acquire(path)
    assert not locks.acquire(path + "/")  # the same directory, spelt differently
    assert locks.acquire(str(tmp_path / "other"))
    locks.release(path)
    assert locks.acquire(path)


def test_maildrop_marks_then_updates(tmp_path):
    maildir = Maildir(str(tmp_path / "m"))
    for text in (b"Subject: a\n\na\n", b"Subject: b\n\nb\n", b"Subject: c\n\nc\n"):
        maildir.deliver(text)
    drop = Maildrop(maildir.scan())
    uids = [entry.uid for entry in drop.entries]
    assert drop.stat() == (3, sum(entry.vsize for entry in drop.entries))
    drop.delete(2)
    with pytest.raises(NoSuchMessage):
        drop.get(2)
    with pytest.raises(NoSuchMessage):
        drop.delete(4)
    drop.reset()
    assert drop.get(2).uid == uids[1]
    drop.delete(1)
    drop.retrieved.update({1, 3})
    maildir.deliver(b"Subject: d\n\nd\n")  # not in this snapshot: untouched by UPDATE
    assert drop.update() == ([uids[0]], [])
    after = maildir.scan()
    assert [entry.uid for entry in after][:2] == uids[1:]
    names = {os.path.basename(os.path.dirname(e.path)) + "/" + os.path.basename(e.path)
             for e in after}
    assert sum(name.startswith("cur/") and name.endswith(":2,S") for name in names) == 1
    assert sum(name.startswith("new/") for name in names) == 2


def test_update_finds_messages_another_reader_moved(tmp_path):
    maildir = Maildir(str(tmp_path / "m"))
    maildir.deliver(b"Subject: a\n\na\n")
    maildir.deliver(b"Subject: b\n\nb\n")
    drop = Maildrop(maildir.scan())
    first, second = drop.entries
    os.rename(first.path, os.path.join(maildir.path, "cur", os.path.basename(first.path) + ":2,F"))
    os.unlink(second.path)  # an IMAP client expunged it meanwhile
    drop.retrieved.add(1)
    drop.delete(2)
    assert drop.update() == ([second.uid], [])
    (only,) = os.listdir(os.path.join(maildir.path, "cur"))
    assert only.endswith(":2,FS")


def test_seen_path_keeps_the_unique_id_and_flags():
    assert pop3_mailbox.seen_path("/m/new/123.M4P5.host,S=10,W=12") == "/m/cur/123.M4P5.host,S=10,W=12:2,S"
    assert pop3_mailbox.seen_path("/m/cur/1.x,S=1:2,RF") == "/m/cur/1.x,S=1:2,FRS"
    assert pop3_mailbox.seen_path("/m/cur/1.x:2,S") == "/m/cur/1.x:2,S"


def test_unique_ids_fit_rfc_1939():
    short = "1795413010.M211583P19344Q1.mx"
    assert pop3_mailbox.unique_id(short) == short
    for odd in ("1795413010.M211583P19344Q1." + "long-host-name." * 4, "with space", "ünï"):
        uid = pop3_mailbox.unique_id(odd)
        assert uid == pop3_mailbox.unique_id(odd) and len(uid) == 40 and uid.isalnum()


def test_maildir_names_list_in_delivery_order(monkeypatch):
    names = []
    for now in (1795413010_099999_000, 1795413010_100000_000, 1795413011_000000_000):
        monkeypatch.setattr(mailbox.time, "time_ns", lambda now=now: now)
        names.append(mailbox.unique_name(10, 12))
    assert sorted(names) == names and ".M099999P" in names[0] and names[0].endswith(",S=10,W=12")


def _file(path) -> BinaryIO:
    """The message file opened as POP3 opens it (the reader closes it)."""
    return open(path, "rb", buffering=0)


def _wire(tmp_path, data: bytes, chunk: int | None = None) -> bytes:
    path = tmp_path / "msg"
    path.write_bytes(data)
    if chunk is not None:
        pop3_mailbox.CHUNK = chunk
    try:
        return b"".join(retr_chunks(_file(path)))
    finally:
        pop3_mailbox.CHUNK = 1 << 20


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 5, 7, 64])
def test_retr_chunks_stuff_dots_and_end_the_same_whatever_the_piece_size(tmp_path, chunk):
    data = b"Subject: x\n\n.\n..a\nb.\n.c\r\nlong line here\n.\nend"
    assert _wire(tmp_path, data, chunk) == \
        b"Subject: x\r\n\r\n..\r\n...a\r\nb.\r\n..c\r\nlong line here\r\n..\r\nend\r\n.\r\n"


def test_retr_of_empty_and_newline_terminated_messages(tmp_path):
    assert _wire(tmp_path, b"") == b".\r\n"
    assert _wire(tmp_path, b"a\n", 1) == b"a\r\n.\r\n"


def test_retr_chunks_carry_the_end_mark_in_the_last_piece(tmp_path):
    """One write per RETR: a lone ``.`` segment would wait for the client's delayed ACK."""
    path = tmp_path / "msg"
    path.write_bytes(b"Subject: x\n\nbody\n")
    assert list(retr_chunks(_file(path))) == [b"Subject: x\r\n\r\nbody\r\n.\r\n"]
    pop3_mailbox.CHUNK = 8
    try:
        pieces = list(retr_chunks(_file(path)))
    finally:
        pop3_mailbox.CHUNK = 1 << 20
    assert len(pieces) > 1 and pieces[-1] != b".\r\n" and pieces[-1].endswith(b"\r\n.\r\n")


def test_top_text(tmp_path):
    path = tmp_path / "msg"
    path.write_bytes(b"A: 1\nB: 2\n\n.one\ntwo\nthree\n")
    assert top_text(_file(path), 0) == b"A: 1\r\nB: 2\r\n\r\n.\r\n"
    assert top_text(_file(path), 2) == b"A: 1\r\nB: 2\r\n\r\n..one\r\ntwo\r\n.\r\n"
    assert top_text(_file(path), 9) == b"A: 1\r\nB: 2\r\n\r\n..one\r\ntwo\r\nthree\r\n.\r\n"
    path.write_bytes(b"A: 1\nno body")
    assert top_text(_file(path), 1) == b"A: 1\r\nno body\r\n.\r\n"


@pytest.mark.parametrize("data", [b"", b"a\nb\n", b"a\r\nb\n", b"c\r", b"\r\r\n", b"x\ry\n\r\n"])
def test_virtual_size_is_the_size_on_the_wire(data: bytes) -> None:
    assert mailbox.virtual_size(data) == len(to_crlf(data))
