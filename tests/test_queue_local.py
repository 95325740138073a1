"""The queue with local destinations, through the wire: alias PIPE programs (exit 0, 75 =
retry, other = failed with a DSN), QUEUE SHOW / RESEND / DEL, and recovery after kill -9."""

from __future__ import annotations

import email
import glob
import os
import re
import smtplib
import sys
from email import policy

import pytest

from harness import ServerProcess, wait_until

PROGRAM = r'''
import os, sys
out = sys.argv[1]
data = sys.stdin.buffer.read()
n = len(os.listdir(out))
with open(os.path.join(out, f"run{n}"), "wb") as handle:
    handle.write(repr([sys.argv[2:], os.environ.get("SENDER"), os.environ.get("RECIPIENT"),
                       sorted(os.environ)]).encode() + b"\n" + data)
code = open(os.path.join(os.path.dirname(out), "exitcode")).read().strip()
print(f"program says exit {code}")
print("second line")
sys.exit(int(code))
'''
DATE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


@pytest.fixture
def piped(make_server, tmp_path):
    """A server with mick@acme.test and an alias pipe@acme.test running PROGRAM."""
    server = make_server(CFG_MIN_QUEUE="1")
    server.setup_mail({"acme.test": {"mick": "x"}})
    script, out = tmp_path / "prog.py", tmp_path / "out"
    script.write_text(PROGRAM)
    out.mkdir()
    set_exit(tmp_path, 0)
    admin = server.admin()
    command = f"{sys.executable} {script} {out} 'two words' '$(touch {tmp_path}/pwned);x'"
    assert admin.cmd(f'ALIAS ADD NAME=pipe DOMAIN=acme.test PIPE="{command}"').startswith("+OK")
    admin.close()
    return server, out, tmp_path


def set_exit(tmp_path, code: int) -> None:
    (tmp_path / "exitcode").write_text(str(code))


def runs(out) -> list[bytes]:
    return [open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))]


def send(server: ServerProcess, sender: str, recipients: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
        assert client.sendmail(sender, recipients, b"Subject: piped\r\n\r\nline one\r\nline two\r\n") == {}


def queue_rows(server: ServerProcess) -> list[list[str]]:
    admin = server.admin()
    first, rows = admin.listing("QUEUE SHOW ALL")
    admin.close()
    assert first.startswith("+OK"), first
    return [row.split("\t") for row in rows]


def maildir_files(server: ServerProcess, user: str = "mick") -> list[str]:
    return sorted(glob.glob(os.path.join(server.maildir(user, "acme.test"), "new", "*")))


def test_pipe_gets_the_message_on_stdin_without_a_shell(piped) -> None:
    server, out, tmp_path = piped
    send(server, "a@remote.test", ["pipe@acme.test"])
    [run] = wait_until(lambda: runs(out), what="the program to run")
    head, _, data = run.partition(b"\n")
    args, sender, recipient, env_names = eval(head.decode())  # our own repr() from PROGRAM
    assert args == ["two words", f"$(touch {tmp_path}/pwned);x"] and not (tmp_path / "pwned").exists()
    assert (sender, recipient) == ("a@remote.test", "pipe@acme.test")
    assert "EXTREMAIL_HOME" not in env_names  # the server's environment is not passed on
    assert data.startswith(b"Return-Path: <a@remote.test>\nDelivered-To: pipe@acme.test\nReceived: ")
    assert data.endswith(b"\n\nline one\nline two\n") and b"\r" not in data
    wait_until(lambda: queue_rows(server) == [], what="the queue to empty")
    assert server.logged("relay=pipe status=delivered (250 2.0.0 Delivered to program: program says "
                         "exit 0)")


def test_exit_75_is_retried_and_listed_then_delivered_on_resend(piped) -> None:
    server, out, tmp_path = piped
    set_exit(tmp_path, 75)
    send(server, "a@remote.test", ["pipe@acme.test", "mick@acme.test"])
    assert len(maildir_files(server)) == 1  # the local copy went straight in
    [row] = wait_until(lambda: [r for r in queue_rows(server) if r[7] == "1"], what="one attempt")
    sender, rcpt, entry, retry, last, secs, size, attempts, status = row
    assert (sender, rcpt, attempts, status) == ("a@remote.test", "pipe@acme.test", "1", "queued")
    assert all(re.fullmatch(DATE, d) for d in (entry, retry, last)) and retry > last
    assert 0 <= int(secs) < 60 and int(size) > 40
    # The attempt is on record before the program runs: wait for its result before the
    # program is told to succeed, or the first attempt itself may deliver.
    assert server.logged("relay=pipe status=deferred")
    set_exit(tmp_path, 0)
    admin = server.admin()
    assert admin.cmd("QUEUE RESEND ALL") == "+OK 1 queued mail scheduled for delivery now"
    admin.close()
    wait_until(lambda: queue_rows(server) == [], what="the retry to deliver")
    assert len(runs(out)) == 2 and len(maildir_files(server)) == 1


def _report(server: ServerProcess) -> email.message.EmailMessage:
    [path] = wait_until(lambda: maildir_files(server), what="a DSN in mick's Maildir")
    with open(path, "rb") as handle:
        return email.message_from_bytes(handle.read(), policy=policy.default)


def test_exit_1_fails_with_a_dsn_to_the_local_sender(piped) -> None:
    server, _out, tmp_path = piped
    set_exit(tmp_path, 1)
    send(server, "mick@acme.test", ["pipe@acme.test"])
    report = _report(server)
    fields = report.get_payload()[1].get_payload()[1]
    assert fields["Final-Recipient"] == "rfc822; pipe@acme.test" and fields["Action"] == "failed"
    assert "exit 1" in fields["Diagnostic-Code"] and "program says exit 1" in fields["Diagnostic-Code"]
    assert "second line" not in fields["Diagnostic-Code"]
    wait_until(lambda: queue_rows(server) == [], what="the failed message to leave the queue")


def test_queue_del_fails_the_recipient_with_a_dsn(piped) -> None:
    server, out, tmp_path = piped
    set_exit(tmp_path, 75)
    send(server, "mick@acme.test", ["pipe@acme.test"])
    wait_until(lambda: runs(out), what="the first attempt")
    admin = server.admin()
    assert admin.cmd("QUEUE DEL DOMAIN=other.test") == "+OK 0 queued mails deleted"
    assert admin.cmd("QUEUE DEL MAILBOX=pipe@acme.test") == "+OK 1 queued mail deleted"
    assert admin.cmd("QUEUE DEL ID=0123") == "-ERR no queued mail 0123"
    admin.close()
    fields = _report(server).get_payload()[1].get_payload()[1]
    assert fields["Diagnostic-Code"] == "smtp; 550 5.0.0 Deleted from the queue by the administrator"
    assert queue_rows(server) == [] and os.listdir(server.path("queue", "env")) == []


def attempt_finished_on_disk(server) -> bool:
    """Some committed state file records one attempt together with its reply (a temp file
    still being renamed into place is not committed: recovery discards it)."""
    for path in glob.glob(server.path("queue", "env", "*")):
        if ".tmp." in os.path.basename(path):
            continue
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                fields = line.rstrip("\n").split("\t")
                if fields[0] == "RCPT" and fields[5] == "1" and fields[9]:
                    return True
    return False


def test_queued_pipe_survives_kill_9_and_is_delivered_once(piped) -> None:
    server, out, tmp_path = piped
    set_exit(tmp_path, 75)
    send(server, "a@remote.test", ["pipe@acme.test"])
    # Wait for the attempt's outcome on disk, not just the attempt in memory: killed in
    # the middle of an attempt, the restarted server would retry at once.
    wait_until(lambda: attempt_finished_on_disk(server), what="one finished attempt")
    server.kill9()
    set_exit(tmp_path, 0)
    server.start()
    rows = queue_rows(server)
    assert [(r[1], r[7]) for r in rows] == [("pipe@acme.test", "1")]  # recovered, retry not due yet
    admin = server.admin()
    admin.cmd("QUEUE RESEND MAILBOX=pipe@acme.test")
    admin.close()
    wait_until(lambda: queue_rows(server) == [], what="the recovered message to be delivered")
    assert len(runs(out)) == 2  # one temporary failure, one delivery: never twice delivered
    assert server.logged("1 message(s) recovered from the spool")


def test_unwritable_maildir_goes_to_the_spool_and_is_retried(make_server, tmp_path) -> None:
    server = make_server()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the Maildir's parent should be")
    admin = server.admin()
    for command in ("DOMAIN ADD NAME=acme.test", "USER ADD NAME=mick DOMAIN=acme.test PASS=x",
                    f"USER ADD NAME=lost DOMAIN=acme.test PASS=x DIR={blocker}/lost"):
        assert admin.cmd(command).startswith("+OK"), command
    admin.close()
    send(server, "a@remote.test", ["lost@acme.test", "mick@acme.test"])  # 250: the spool has it
    assert len(maildir_files(server)) == 1
    [row] = wait_until(lambda: [r for r in queue_rows(server) if r[7] == "1"], what="a failed attempt")
    assert row[1] == "lost@acme.test" and row[8] == "queued"
    assert server.logged("Mailbox not writable")
    blocker.unlink()
    blocker.mkdir()
    admin = server.admin()
    admin.cmd("QUEUE RESEND DOMAIN=acme.test")
    admin.close()
    wait_until(lambda: queue_rows(server) == [], what="the retry")
    assert len(glob.glob(str(blocker / "lost" / "new" / "*"))) == 1
