"""Delivery status notifications (extremail/dsn.py): the RFC 3464 / RFC 6522 structure,
parsed back with the email package; no report about a null-sender message."""

from __future__ import annotations

import email
from email import policy
from types import SimpleNamespace

from extremail import config, dsn
from extremail.envelope import Envelope
from extremail.queue.spool import FAILED, QUEUED, Recipient

ORIGINAL = (b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: a@acme.test\r\n"
            b"Subject: the original\r\nMessage-ID: <orig@acme.test>\r\n\r\nsecret body\r\n")


def cfg(tmp_path, **settings):
    base = str(tmp_path)
    return config.build(base, {"CFG_HOSTNAME": "mx.acme.test", "CFG_POSTMASTER": "pm@acme.test",
                               "CFG_LOCALDOMAIN": "acme.test", **settings})


def parse(data: bytes):
    return email.message_from_bytes(data, policy=policy.default)


def test_failed_report_structure(tmp_path) -> None:
    envelope = Envelope("a@acme.test", ["x@remote.test"], arrived=1_700_000_000)
    recipients = [
        Recipient("x@remote.test", "alias@acme.test", "remote", FAILED, 1, 1_700_000_100, 0,
                  "mx.remote.test", "550 5.1.1 <x@remote.test>: no such user"),
        Recipient("pipe@acme.test", "pipe@acme.test", "pipe", FAILED, 1, 0, 0, "",
                  "554 Program failed (exit 1)"),
    ]
    data = dsn.build(cfg(tmp_path), dsn.FAILED, envelope, ORIGINAL, recipients, now=1_700_000_200)
    assert all(len(line) <= 998 for line in data.split(b"\r\n")) and b"\n" not in data.replace(b"\r\n", b"")
    report = parse(data)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["From"].addresses[0].addr_spec == "pm@acme.test"
    assert report["From"].addresses[0].display_name == "Mail Delivery System"
    assert report["To"].addresses[0].addr_spec == "a@acme.test"
    assert report["Message-ID"].endswith("@acme.test>")
    assert report["Auto-Submitted"] == "auto-replied"
    human, status, headers = report.get_payload()
    text = human.get_content()
    assert "mail system at host mx.acme.test" in text and "pm@acme.test" in text
    assert "<x@remote.test>: 550 5.1.1" in text
    assert status.get_content_type() == "message/delivery-status"
    per_message, first, second = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.acme.test"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert first["Original-Recipient"] == "rfc822; alias@acme.test"
    assert first["Final-Recipient"] == "rfc822; x@remote.test"
    assert (first["Action"], first["Status"]) == ("failed", "5.1.1")
    assert first["Remote-MTA"] == "dns; mx.remote.test"
    assert first["Diagnostic-Code"] == "smtp; 550 5.1.1 <x@remote.test>: no such user"
    assert first["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:15:00 GMT"
    assert second["Status"] == "5.0.0" and second["Remote-MTA"] is None
    assert second["Original-Recipient"] is None  # same as the final recipient
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: the original" in headers.get_content()
    assert b"secret body" not in data


def test_delayed_report_has_texts_and_will_retry_until(tmp_path) -> None:
    settings = cfg(tmp_path, CFG_HOR_DELAY_DSN="4", CFG_HOR_RETRY_MAIL="48")
    with open(tmp_path / "dela", "w") as handle:
        handle.write("Host {hostname}: waited {hours} h, retrying until {expire} h. {unknown}\n")
    settings = settings.replace(FILE_DSN_DELA=str(tmp_path / "dela"))
    envelope = Envelope("a@acme.test", ["x@remote.test"], arrived=0)
    recipient = Recipient("x@remote.test", "x@remote.test", "remote", QUEUED, 3, 3600, 0, "",
                          "451 4.7.1 greylisted")
    report = parse(dsn.build(settings, dsn.DELAYED, envelope, ORIGINAL, [recipient], now=4 * 3600))
    human, status, _ = report.get_payload()
    assert human.get_content().startswith("Host mx.acme.test: waited 4 h, retrying until 48 h. {unknown}")
    fields = status.get_payload()[1]
    assert (fields["Action"], fields["Status"]) == ("delayed", "4.7.1")
    assert fields["Will-Retry-Until"] == "Sat, 03 Jan 1970 00:00:00 GMT"
    assert report["Subject"].startswith("Delayed Mail")


def test_status_codes_from_replies() -> None:
    assert dsn.status_code("550 5.7.1 denied", dsn.FAILED) == "5.7.1"
    assert dsn.status_code("552-5.2.2 full", dsn.FAILED) == "5.2.2"
    assert dsn.status_code("450 busy", dsn.DELAYED) == "4.0.0"
    assert dsn.status_code("garbage", dsn.FAILED) == "5.0.0"
    assert dsn.status_code("", dsn.DELAYED) == "4.0.0"


def test_no_report_about_a_null_sender_message(tmp_path) -> None:
    ctx = SimpleNamespace(cfg=cfg(tmp_path))  # accept() would fail on this bare context
    recipient = Recipient("x@remote.test", "x@remote.test", "remote", FAILED, reply="550 no")
    assert dsn.send(ctx, dsn.FAILED, Envelope("", ["x@remote.test"]), ORIGINAL, [recipient]) is None
