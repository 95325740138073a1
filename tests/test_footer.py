"""Footers (MAILINFOOTER / MAILOUTFOOTER / SHOWFOOTER): unit tests of the MIME surgery in
extremail/footer.py (each result parsed back with the email package), then through the
wire: a real server, smtplib, the Maildir."""

from __future__ import annotations

import base64
import email
import glob
import os
import smtplib
from email import policy

import pytest

from extremail import footer
from harness import wait_until

FOOT = "-- \nACME Corp, 1 Road\n"
FOOT_UTF8 = "-- \nGrüße aus Köln\n"


def crlf(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)


def body_text(part) -> str:
    """The decoded text of a part, line ends normalised to LF."""
    raw = part.get_payload(decode=True).decode(part.get_content_charset() or "ascii")
    return raw.replace("\r\n", "\n")


def content(part) -> str:
    return part.get_content().replace("\r\n", "\n")


def test_plain_7bit_gets_the_text_appended() -> None:
    out = footer.add(crlf("Subject: s\n\nHello\n"), FOOT)
    assert out == crlf("Subject: s\n\nHello\n-- \nACME Corp, 1 Road\n")
    assert content(parse(out)) == "Hello\n-- \nACME Corp, 1 Road\n"


def test_plain_without_final_newline_and_without_headers_or_body() -> None:
    assert footer.add(crlf("Subject: s\n\nno newline"), FOOT).endswith(b"no newline\r\n-- \r\n"
                                                                      b"ACME Corp, 1 Road\r\n")
    out = footer.add(b"Subject: only headers\r\n", FOOT)
    assert content(parse(out)) == "-- \nACME Corp, 1 Road\n"


def test_quoted_printable_footer_is_encoded_qp() -> None:
    message = crlf("Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable"
                   "\n\nCaf=C3=A9 ok\nlong line soft=\nbreak=\n")
    out = footer.add(message, FOOT_UTF8)
    text = body_text(parse(out))
    assert text == "Café ok\nlong line softbreak\n-- \nGrüße aus Köln\n"
    assert "ü".encode() not in out  # stays 7-bit: the footer went in as QP


def test_base64_is_decoded_appended_reencoded() -> None:
    original = "Hällo\r\nWorld\r\n".encode()
    message = crlf("Content-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: base64\n\n") \
        + base64.encodebytes(original).replace(b"\n", b"\r\n")
    out = footer.add(message, FOOT_UTF8)
    assert body_text(parse(out)) == "Hällo\nWorld\n-- \nGrüße aus Köln\n"
    assert all(len(line) <= 76 for line in out.split(b"\r\n"))


def test_8bit_utf8_gets_a_non_ascii_footer_inline() -> None:
    message = crlf("Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
                   "Grüß dich\n")
    out = footer.add(message, FOOT_UTF8)
    assert body_text(parse(out)) == "Grüß dich\n-- \nGrüße aus Köln\n"


@pytest.mark.parametrize("headers", [
    "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit",
    "Content-Type: text/plain; charset=us-ascii",
    "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit",
])
def test_non_ascii_footer_on_a_part_that_cannot_carry_it_goes_in_its_own_part(headers) -> None:
    body = b"Hej d\xe5\r\n" if "8859" in headers else b"Hi\r\n"
    out = footer.add(crlf(headers + "\nSubject: s\n\n") + body, FOOT_UTF8)
    msg = parse(out)
    assert msg.get_content_type() == "multipart/mixed" and msg["Subject"] == "s"
    first, second = msg.get_payload()
    assert first.get_payload(decode=True) == body  # the original, byte for byte
    assert first.get_content_type() == "text/plain"
    assert body_text(second) == FOOT_UTF8
    assert msg.defects == [] and first.defects == [] and second.defects == []


def test_multipart_gets_a_new_part_before_the_closing_delimiter_rest_byte_identical() -> None:
    head = crlf('MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="XX"\n\n')
    body = crlf("preamble\n--XX\nContent-Type: text/plain\n\nplain\n--XX\nContent-Type: text/html\n\n"
                "<p>html</p>\n--XX--\nepilogue\n")
    out = footer.add(head + body, FOOT)
    closing = body.index(b"--XX--")
    assert out.startswith(head + body[:closing]) and out.endswith(body[closing:])
    msg = parse(out)
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html", "text/plain"]
    assert body_text(parts[0]) == "plain" and body_text(parts[2]) == FOOT
    assert msg.defects == []


def test_multipart_without_closing_delimiter_is_closed() -> None:
    message = crlf('Content-Type: multipart/mixed; boundary=b1\n\n--b1\n\nfirst\n')
    parts = parse(footer.add(message, FOOT)).get_payload()
    assert len(parts) == 2 and body_text(parts[1]) == FOOT


@pytest.mark.parametrize("headers,body", [
    ("Content-Type: text/html; charset=utf-8", b"<p>hi</p>\r\n"),
    ("Content-Type: image/png\nContent-Transfer-Encoding: base64\nContent-Disposition: attachment; "
     "filename=a.png", base64.encodebytes(b"\x89PNG\x00\x01" * 40).replace(b"\n", b"\r\n")),
    ('Content-Type: multipart/signed; protocol="application/pgp-signature"; boundary=s', crlf(
        "--s\nContent-Type: text/plain\n\nsigned\n--s\nContent-Type: application/pgp-signature\n\nSIG\n"
        "--s--\n")),
])
def test_other_single_parts_are_wrapped_in_multipart_mixed(headers, body) -> None:
    message = crlf("From: a@b.test\nSubject: wrap\nMIME-Version: 1.0\n" + headers + "\n\n") + body
    out = footer.add(message, FOOT)
    msg = parse(out)
    assert msg.get_content_type() == "multipart/mixed" and msg["From"] == "a@b.test"
    assert out.count(b"MIME-Version") == 1
    first, second = msg.get_payload()
    original = parse(message)
    assert first.get_content_type() == original.get_content_type()
    assert first.as_bytes().split(b"\n\n", 1)[1].replace(b"\n", b"\r\n").rstrip(b"\r\n") \
        == body.rstrip(b"\r\n")
    assert first.get("Content-Disposition") == original.get("Content-Disposition")
    assert body_text(second) == FOOT


def test_footer_part_for_non_ascii_is_qp_utf8() -> None:
    part = parse(footer.footer_part("Grüße\n"))
    assert part.get_content_charset() == "utf-8" and part["Content-Transfer-Encoding"] == \
        "quoted-printable" and body_text(part) == "Grüße\n"


# ---- through the wire ----

def _files(server, user: str, domain: str) -> list[bytes]:
    paths = sorted(glob.glob(os.path.join(server.maildir(user, domain), "new", "*")))
    return [open(p, "rb").read() for p in paths]


def test_domain_footers_through_the_wire(make_server, tmp_path) -> None:
    server = make_server()
    infoot, outfoot = tmp_path / "in.txt", tmp_path / "out.txt"
    infoot.write_text("-- \nIncoming footer of acme\n")
    outfoot.write_text("-- \nSent from beta.test\n")
    admin = server.admin()
    for command in (f"DOMAIN ADD NAME=acme.test MAILINFOOTER={infoot} SHOWFOOTER=1",
                    f"DOMAIN ADD NAME=beta.test MAILOUTFOOTER={outfoot} MAILINFOOTER={infoot} "
                    "SHOWFOOTER=2",
                    "DOMAIN ADD NAME=plain.test",
                    "USER ADD NAME=mick DOMAIN=acme.test PASS=x",
                    "USER ADD NAME=bob DOMAIN=beta.test PASS=x",
                    "USER ADD NAME=joe DOMAIN=plain.test PASS=x"):
        assert admin.cmd(command).startswith("+OK"), command
    html = crlf("Subject: html\nMIME-Version: 1.0\nContent-Type: text/html\n\n<p>x</p>\n")
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
        # to acme (in-footer), to beta (SHOWFOOTER=2: no in-footer), to plain (none)
        client.sendmail("x@remote.test", ["mick@acme.test", "bob@beta.test", "joe@plain.test"],
                        b"Subject: one\r\n\r\nbody\r\n")
        client.sendmail("bob@beta.test", ["mick@acme.test", "joe@plain.test"], html)
    wait_until(lambda: len(_files(server, "mick", "acme.test")) == 2, what="two deliveries")
    first, second = (parse(d) for d in _files(server, "mick", "acme.test"))
    assert content(first) == "body\n-- \nIncoming footer of acme\n"
    assert content(parse(_files(server, "bob", "beta.test")[0])) == "body\n"
    assert content(parse(_files(server, "joe", "plain.test")[0])) == "body\n"
    # from beta (out-footer) to acme (in-footer too): html wrapped once, both footers inside
    assert second.get_content_type() == "multipart/mixed"
    texts = [content(p) for p in second.iter_parts()]
    assert texts[0] == "<p>x</p>\n" and "Sent from beta.test" in texts[1]
    assert "Incoming footer of acme" in texts[2]
    joe = parse(_files(server, "joe", "plain.test")[1])
    assert [p.get_content_type() for p in joe.iter_parts()] == ["text/html", "text/plain"]
    assert "Incoming" not in joe.as_string()
