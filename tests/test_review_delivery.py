"""Review findings in delivery and routing, through the wire.

* A spool that cannot store a message must answer 452 before any local mailbox got a copy:
  the client retries, and a copy delivered before the 452 would arrive twice.
* ``postmaster`` of a local domain whose address is CFG_POSTMASTER itself (and no user or
  alias of that name) goes to the domain's DEFMAILBOX instead of being refused (RFC 5321
  4.5.1: postmaster is always accepted)."""

from __future__ import annotations

import glob
import os
import shutil
import smtplib

import pytest

from harness import ServerProcess

BODY = b"Subject: review\r\n\r\nbody\r\n"


def new_files(server: ServerProcess, user: str, domain: str) -> list[str]:
    return glob.glob(os.path.join(server.maildir(user, domain), "new", "*"))


def test_spool_error_answers_452_before_any_mailbox_gets_a_copy(make_server) -> None:
    server = make_server()
    server.setup_mail({"acme.test": {"mick": "x"}})
    server.admin_do('ALIAS ADD NAME=prog DOMAIN=acme.test PIPE="/bin/true"')
    msg_dir = server.path("queue", "msg")
    shutil.rmtree(msg_dir)
    open(msg_dir, "w").close()  # the spool cannot commit anything now
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as client, \
            pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("a@remote.test", ["mick@acme.test", "prog@acme.test"], BODY)
    assert refused.value.smtp_code == 452
    assert new_files(server, "mick", "acme.test") == []  # the client's retry is the only copy
    os.unlink(msg_dir)
    os.mkdir(msg_dir, 0o700)
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
        client.sendmail("a@remote.test", ["mick@acme.test", "prog@acme.test"], BODY)
    assert len(new_files(server, "mick", "acme.test")) == 1


def test_postmaster_that_is_cfg_postmaster_falls_back_to_defmailbox(make_server) -> None:
    server = make_server(CFG_POSTMASTER="postmaster@acme.test")
    server.setup_mail({"acme.test": {"mick": "x"}})
    server.admin_do("DOMAIN MOD NAME=acme.test DEFMAILBOX=mick@acme.test")
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
        client.ehlo()
        client.mail("a@remote.test")
        assert client.rcpt("postmaster")[0] == 250
        assert client.rcpt("postmaster@acme.test")[0] == 250
        assert client.data(BODY)[0] == 250
    assert len(new_files(server, "mick", "acme.test")) == 1
