"""Local delivery through the wire: a real server, smtplib, the Maildirs on disk.

Return-Path/Delivered-To, hard links for identical copies, the same name in two domains,
FORWARD, COPY, alias FORWARD, DEFMAILBOX, postmaster, mailing lists, QUOTA (452 at RCPT,
552 at DATA), MAXINMAILSIZE, partial failures (250 plus a failed DSN), total failure (5xx)."""

from __future__ import annotations

import email
import glob
import os
import smtplib
from email import policy

import pytest

from harness import ServerProcess, wait_until

BODY = b"Subject: test\r\nMessage-ID: <t1@remote.test>\r\n\r\nHello there\r\n.dot line\r\n"


def files(server: ServerProcess, user: str, domain: str) -> list[str]:
    return sorted(glob.glob(os.path.join(server.maildir(user, domain), "new", "*")))


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def send(server: ServerProcess, sender: str, recipients: list[str], data: bytes = BODY,
         declare_size: bool = True) -> dict:
    """Send one message; ``declare_size=False`` greets with HELO, so no SIZE= is declared and
    the size checks happen at the end of DATA."""
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
        if not declare_size:
            client.helo()
        return client.sendmail(sender, recipients, data)


@pytest.fixture
def mail(make_server) -> ServerProcess:
    server = make_server()
    server.setup_mail({"acme.test": {"mick": "x", "ann": "y", "bob": "z"},
                       "other.test": {"mick": "w"}, "local.test": {"postmaster": "p"}})
    return server


def test_one_recipient_gets_return_path_delivered_to_and_lf_file(mail: ServerProcess) -> None:
    assert send(mail, "sender@remote.test", ["mick@acme.test"]) == {}
    [path] = files(mail, "mick", "acme.test")
    data = read(path)
    head, _, rest = data.partition(b"\nReceived: ")
    assert head == b"Return-Path: <sender@remote.test>\nDelivered-To: mick@acme.test"
    assert b"\r" not in data
    assert rest.endswith(b"\n\nHello there\n.dot line\n")  # dot-unstuffed, LF form
    assert f"S={len(data)}" in path and files(mail, "mick", "other.test") == []


def test_identical_copies_are_written_once_and_hard_linked(mail: ServerProcess) -> None:
    send(mail, "", ["mick@acme.test", "ann@acme.test", "mick@other.test"])
    paths = [files(mail, u, d)[0] for u, d in (("mick", "acme.test"), ("ann", "acme.test"),
                                               ("mick", "other.test"))]
    assert len({os.stat(p).st_ino for p in paths}) == 1 and os.stat(paths[0]).st_nlink == 3
    assert read(paths[0]).startswith(b"Return-Path: <>\nReceived: ")


def test_same_name_in_two_domains_is_kept_apart(mail: ServerProcess) -> None:
    send(mail, "a@remote.test", ["mick@other.test"])
    assert len(files(mail, "mick", "other.test")) == 1 and files(mail, "mick", "acme.test") == []


def test_forward_copy_alias_defmailbox_and_postmaster(mail: ServerProcess) -> None:
    mail.admin_do("USER MOD NAME=mick DOMAIN=acme.test FORWARD=bob@acme.test",
             "USER MOD NAME=ann DOMAIN=acme.test COPY=mick@other.test",
             "ALIAS ADD NAME=sales DOMAIN=acme.test FORWARD=ann@acme.test",
             "DOMAIN MOD NAME=other.test DEFMAILBOX=mick@other.test")
    send(mail, "a@remote.test", ["mick@acme.test"])
    assert files(mail, "mick", "acme.test") == [] and len(files(mail, "bob", "acme.test")) == 1
    send(mail, "a@remote.test", ["sales@acme.test"])
    assert len(files(mail, "ann", "acme.test")) == 1 and len(files(mail, "mick", "other.test")) == 1
    send(mail, "a@remote.test", ["nobody@other.test"])
    assert len(files(mail, "mick", "other.test")) == 2
    send(mail, "a@remote.test", ["postmaster", "postmaster@acme.test"])
    assert len(files(mail, "postmaster", "local.test")) == 1  # two addresses, one mailbox
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(mail, "a@remote.test", ["nobody@acme.test"])
    assert refused.value.recipients["nobody@acme.test"][0] == 550
    assert b"5.1.1" in refused.value.recipients["nobody@acme.test"][1]


def test_mailing_list_members_and_posting_rights(mail: ServerProcess) -> None:
    mail.admin_do("MLIST ADD NAME=team DOMAIN=acme.test ACCESS=2",
             "MLISTUSER ADD MAILBOX=ann@acme.test MLISTNAME=team MLISTDOMAIN=acme.test",
             "MLISTUSER ADD MAILBOX=mick@other.test MLISTNAME=team MLISTDOMAIN=acme.test")
    send(mail, "ann@acme.test", ["team@acme.test"])
    assert len(files(mail, "ann", "acme.test")) == 1 and len(files(mail, "mick", "other.test")) == 1
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(mail, "stranger@remote.test", ["team@acme.test"])
    assert refused.value.recipients["team@acme.test"][0] == 550


def test_quota_temporary_at_rcpt_permanent_at_data(mail: ServerProcess) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 40  # ~3.3 KB
    mail.admin_do("USER MOD NAME=mick DOMAIN=acme.test QUOTA=2")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(mail, "a@remote.test", ["mick@acme.test"], big)
    assert refused.value.smtp_code == 552 and b"5.2.2" in refused.value.smtp_error
    send(mail, "a@remote.test", ["mick@acme.test"], big[:1800])
    mail.admin_do("USER MOD NAME=mick DOMAIN=acme.test QUOTA=1")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as full:
        send(mail, "a@remote.test", ["mick@acme.test"])
    assert full.value.recipients["mick@acme.test"][0] == 452
    assert b"4.2.2" in full.value.recipients["mick@acme.test"][1]


def test_maxinmailsize_at_rcpt_with_size_and_at_data(mail: ServerProcess) -> None:
    mail.admin_do("USER MOD NAME=ann DOMAIN=acme.test MAXINMAILSIZE=1")
    with smtplib.SMTP("127.0.0.1", mail.smtp_port) as client:
        client.ehlo()
        assert client.mail("a@remote.test", ["SIZE=5000"])[0] == 250
        code, text = client.rcpt("ann@acme.test")
        assert code == 552 and b"5.3.4" in text
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(mail, "a@remote.test", ["ann@acme.test"], b"Subject: s\r\n\r\n" + b"z" * 900 + b"\r\n" * 200,
             declare_size=False)
    assert refused.value.smtp_code == 552 and b"5.3.4" in refused.value.smtp_error


def _dsn(server: ServerProcess, user: str, domain: str) -> email.message.EmailMessage:
    [path] = wait_until(lambda: files(server, user, domain), what="the DSN")
    return email.message_from_bytes(read(path), policy=policy.default)


def test_partial_failure_is_250_with_a_failed_dsn_to_a_local_sender(mail: ServerProcess) -> None:
    mail.admin_do("USER MOD NAME=mick DOMAIN=acme.test QUOTA=1")
    data = b"Subject: partly\r\nMessage-ID: <p1@acme.test>\r\n\r\n" + (b"q" * 70 + b"\r\n") * 30
    assert send(mail, "bob@acme.test", ["mick@acme.test", "ann@acme.test"], data, declare_size=False) == {}
    assert len(files(mail, "ann", "acme.test")) == 1 and files(mail, "mick", "acme.test") == []
    report = _dsn(mail, "bob", "acme.test")
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["From"].addresses[0].addr_spec == "postmaster@local.test"
    text = read(files(mail, "bob", "acme.test")[0])
    assert text.startswith(b"Return-Path: <>\n")
    status = report.get_payload()[1]
    assert status.get_content_type() == "message/delivery-status"
    fields = status.get_payload()[1]
    assert fields["Final-Recipient"] == "rfc822; mick@acme.test" and fields["Action"] == "failed"
    assert fields["Status"] == "5.2.2"
    assert "Message-ID: <p1@acme.test>" in report.get_payload()[2].get_payload()


def test_every_recipient_failing_gives_the_5xx_and_no_dsn(mail: ServerProcess) -> None:
    mail.admin_do("USER MOD NAME=mick DOMAIN=acme.test MAXINMAILSIZE=1",
             "USER MOD NAME=ann DOMAIN=acme.test MAXINMAILSIZE=1")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(mail, "bob@acme.test", ["mick@acme.test", "ann@acme.test"],
             b"Subject: s\r\n\r\n" + (b"w" * 70 + b"\r\n") * 30, declare_size=False)
    assert refused.value.smtp_code == 552
    assert files(mail, "bob", "acme.test") == []  # the client got the 5xx: no report


def test_null_sender_partial_failure_sends_no_dsn(mail: ServerProcess) -> None:
    mail.admin_do("USER MOD NAME=mick DOMAIN=acme.test MAXINMAILSIZE=1")
    send(mail, "", ["mick@acme.test", "ann@acme.test"], b"Subject: s\r\n\r\n" + (b"w" * 70 + b"\r\n") * 30,
         declare_size=False)
    assert len(files(mail, "ann", "acme.test")) == 1
    assert "dsn:" not in mail.log_text() and files(mail, "postmaster", "local.test") == []
