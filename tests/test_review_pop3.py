"""Review findings in POP3 and Maildir scanning, through the wire.

A file in the Maildir whose ``S=`` size is not an ASCII number (another program named it,
``S=²``) made the scan raise: the login failed with a local error and the mailbox lock
taken for it was never released, so every later login got ``[IN-USE]`` until a restart.
Such a size is now ignored (the file's own size is used), and a scan that fails for any
reason releases the lock."""

from __future__ import annotations

import os
import poplib
import smtplib

from harness import ServerProcess


def login(server: ServerProcess) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=20)
    client.user("mick@acme.test")
    client.pass_("secret")
    return client


def test_odd_size_in_a_maildir_name_neither_fails_nor_locks_the_mailbox(make_server) -> None:
    server = make_server()
    server.setup_mail({"acme.test": {"mick": "secret"}})
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
        client.sendmail("a@remote.test", ["mick@acme.test"], b"Subject: one\r\n\r\nbody\r\n")
    odd = os.path.join(server.maildir("mick", "acme.test"), "cur",
                       "1700000000.M1P1Q1.host,S=\u00b2,W=9:2,S")
    with open(odd, "wb") as handle:
        handle.write(b"a: b\n\nc\n")
    for _ in range(2):  # the second login proves the first released its lock
        client = login(server)
        assert client.stat()[0] == 2
        client.quit()
