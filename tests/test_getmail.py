"""A real POP3 client, Debian's getmail6, reads a mailbox filled over SMTP into a Maildir
of its own with RETR and DELE: byte-exact messages (getmail writes its own Return-Path line only when the
message has none; the server's delivery wrote one) and an empty mailbox afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from extremail.mailbox import Maildir
from test_fetchmail import corpus
from test_pop3 import USERS, deliver

pytestmark = pytest.mark.skipif(shutil.which("getmail") is None, reason="getmail6 not installed")


@pytest.fixture
def destination():
    """A Maildir getmail can write to: as root it delivers as ``nobody`` (TOOLS.md), who
    cannot enter pytest's private temporary directories."""
    top = tempfile.mkdtemp(prefix="getmail-")
    os.chmod(top, 0o755)
    path = os.path.join(top, "Maildir")
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub))
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "nobody", path], check=True)
    yield path
    shutil.rmtree(top)


def test_getmail_fetches_everything_and_empties_the_mailbox(make_server, tmp_path, destination):
    server = make_server()
    server.setup_mail(USERS)
    sent = [deliver(server, "mick", "acme.test", data) for data in corpus()]
    rcfile = tmp_path / "getmailrc"
    rcfile.write_text(
        "[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\n"
        f"port = {server.pop3_port}\nusername = mick@acme.test\npassword = secret\n\n"
        f"[destination]\ntype = Maildir\npath = {destination}/\n"
        + ("user = nobody\n" if os.geteuid() == 0 else "")
        + "\n[options]\ndelete = true\nread_all = true\nverbose = 2\n"
          "delivered_to = false\nreceived = false\n")
    run = subprocess.run(["getmail", "--getmaildir", str(tmp_path), "--rcfile", str(rcfile)],
                         capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert f"{len(sent)} messages" in output and "retrieved" in output, output
    assert output.count(", deleted") == len(sent), output
    got = []
    for name in os.listdir(os.path.join(destination, "new")):
        with open(os.path.join(destination, "new", name), "rb") as handle:
            got.append(handle.read())
    assert all(data.startswith(b"Return-Path: <alice@remote.test>\n") for data in sent)
    assert sorted(got) == sorted(sent)
    assert Maildir(server.maildir("mick", "acme.test")).scan() == []
    assert server.logged(f"{len(sent)} messages deleted at QUIT")
