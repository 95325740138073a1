"""A real POP3 client, Debian's fetchmail, reads a mailbox filled over SMTP: byte-exact
messages (fetchmail hands an MDA the text with LF line ends and dot-stuffing undone, as
the Maildir stores it), UIDL-based "seen" tracking across runs, and an empty mailbox
afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from extremail.mailbox import Maildir
from test_pop3 import USERS, deliver, message

pytestmark = pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail not installed")


def corpus() -> list[bytes]:
    """Messages that exercise the wire form: dots, long and 8-bit lines, a large body."""
    return [
        message("plain"),
        message("dots", ".\n..\n.leading dot\ntrailing dot.\n.\n"),
        message("utf8", "Grüße aus Köln — ünïcödé\n" + "x" * 990 + "\n"),
        message("large", "".join(f"line {i:06d} {'abc' * 20}\n" for i in range(20000))),
        message("empty body", ""),
    ]


def fetch(server, home: str, out: str, keep: bool) -> subprocess.CompletedProcess:
    """One fetchmail run (TOOLS.md), delivering each message to its own file."""
    rc = ("set invisible\n"  # no Received: line of its own, so files compare byte for byte
          f"poll 127.0.0.1 service {server.pop3_port} protocol pop3 uidl "
          f'user "mick.acme.test" password "secret" sslproto "" '
          f'{"keep" if keep else "nokeep"} mda "cat > {out}/msg.$$"\n')
    return subprocess.run(["fetchmail", "-f", "-", "--nodetach", "--idfile", f"{home}/ids"],
                          input=rc, text=True, capture_output=True, timeout=120,
                          env={**os.environ, "FETCHMAILHOME": home})


def fetched(out: str) -> list[bytes]:
    result = []
    for name in os.listdir(out):
        with open(os.path.join(out, name), "rb") as handle:
            result.append(handle.read())
    return sorted(result)


def test_fetchmail_keeps_then_fetches_and_empties_the_mailbox(make_server, tmp_path):
    server = make_server()
    server.setup_mail(USERS)
    sent = [deliver(server, "mick", "acme.test", data) for data in corpus()]
    home, first, second, third = (str(tmp_path / name) for name in ("home", "a", "b", "c"))
    for directory in (home, first, second, third):
        os.makedirs(directory, mode=0o700)

    run = fetch(server, home, first, keep=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert fetched(first) == sorted(sent)
    assert len(Maildir(server.maildir("mick", "acme.test")).scan()) == len(sent)

    # the UIDs fetchmail remembered are the same in the next session: nothing is new
    run = fetch(server, home, second, keep=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert fetched(second) == []

    late = deliver(server, "mick", "acme.test", message("late"))
    os.unlink(f"{home}/ids")  # forget what was seen: fetch everything and delete it
    run = fetch(server, home, third, keep=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert fetched(third) == sorted([*sent, late])
    assert Maildir(server.maildir("mick", "acme.test")).scan() == []
    assert server.logged(f"{len(sent) + 1} messages deleted at QUIT")
