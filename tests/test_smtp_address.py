"""Unit tests of the RFC 5321 path and parameter parser (extremail/smtp/address.py)."""

from __future__ import annotations

import pytest

from extremail.reply import Refusal
from extremail.smtp.address import MAX_PATH, Path, parse_bare, parse_mail, parse_rcpt


def refused(call, arg) -> str:
    with pytest.raises(Refusal) as info:
        call(arg)
    return f"{info.value.reply.code} {info.value.reply.enhanced}"


@pytest.mark.parametrize("arg, expected", [
    ("FROM:<a@x.test>", "a@x.test"),
    ("from:<a@x.test>", "a@x.test"),
    ("FROM: <a@x.test>", "a@x.test"),            # lenient: space after the colon
    ("FROM:<a@X.Test>", "a@x.test"),             # domains are case-insensitive
    ("FROM:<Mick.Jones@x.test>", "Mick.Jones@x.test"),  # local parts keep their case
    ("FROM:<>", ""),                              # null reverse-path
    ("FROM:<@relay.test,@b.test:a@x.test>", "a@x.test"),  # source route dropped
    ('FROM:<"mick"@x.test>', "mick@x.test"),      # needless quotes dropped
    ('FROM:<"a b"@x.test>', '"a b"@x.test'),
    ('FROM:<"a\\"b"@x.test>', '"a\\"b"@x.test'),
    ("FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]"),
    ("FROM:<a@[IPv6:2001:DB8::1]>", "a@[IPv6:2001:db8::1]"),
])
def test_mail_paths(arg, expected):
    assert parse_mail(arg).path.address == expected


def test_mail_parameters():
    args = parse_mail("FROM:<a@x.test> SIZE=12345 BODY=8bitmime")
    assert (args.size, args.body_8bit) == (12345, True)
    args = parse_mail("FROM:<a@x.test> body=7BIT")
    assert (args.size, args.body_8bit) == (0, False)


@pytest.mark.parametrize("arg, expected", [
    ("FROM:a@x.test", "501 5.1.7"),               # brackets are required
    ("FROM:<a@x.test", "501 5.1.7"),
    ("FROM:<a>", "501 5.1.7"),                    # a domain is required
    ("FROM:<postmaster>", "501 5.1.7"),           # bare postmaster: recipients only
    ("FROM:<a@@x.test>", "501 5.1.7"),
    ("FROM:<a@x..test>", "501 5.1.7"),
    ("FROM:<a@-x.test>", "501 5.1.7"),
    ("FROM:<a b@x.test>", "501 5.1.7"),
    ("FROM:<a..b@x.test>", "501 5.1.7"),
    ('FROM:<"unterminated@x.test>', "501 5.1.7"),
    ("FROM:<a@[999.1.1.1]>", "501 5.1.7"),
    ("FROM:<@relay.test,a@x.test>", "501 5.1.7"),  # a route must end in ':'
    ("FROM:<@relay.test>", "501 5.1.7"),
    ("FROM:<a@x.test>junk", "501 5.1.7"),
    ("FROM:<m\u00e9@x.test>", "501 5.1.7"),       # no SMTPUTF8 offered
    ("TO:<a@x.test>", "501 5.5.2"),
    ("", "501 5.5.2"),
    ("FROM:<a@x.test> SIZE=big", "501 5.5.4"),
    ("FROM:<a@x.test> SIZE=" + "9" * 21, "501 5.5.4"),
    ("FROM:<a@x.test> BODY=BINARYMIME", "501 5.5.4"),
    ("FROM:<a@x.test> SIZE=1 SIZE=2", "501 5.5.4"),
    ("FROM:<a@x.test> FROB=1", "555 5.5.4"),      # unknown parameter
    ("FROM:<a@x.test> SMTPUTF8", "555 5.5.4"),
])
def test_mail_errors(arg, expected):
    assert refused(parse_mail, arg) == expected


@pytest.mark.parametrize("arg, expected", [
    ("TO:<b@y.test>", "b@y.test"),
    ("TO:<postmaster>", "postmaster"),            # RFC 5321 4.1.1.3
    ("TO:<PostMaster>", "postmaster"),
    ("to: <b@y.test>", "b@y.test"),
    ("TO:<@local.test:user@remote.test>", "user@remote.test"),  # final mailbox judged
    ("TO:<user%remote.test@local.test>", "user%remote.test@local.test"),
    ("TO:<remote.test!user@local.test>", "remote.test!user@local.test"),
    ('TO:<"user@remote.test"@local.test>', '"user@remote.test"@local.test'),
])
def test_rcpt_paths(arg, expected):
    assert parse_rcpt(arg).address == expected


def test_source_route_is_kept_apart():
    path = parse_rcpt("TO:<@a.test,@b.test:user@c.test>")
    assert path == Path("user", "c.test", ("a.test", "b.test"))
    path = parse_rcpt("TO:<@[IPv6:2001:db8::1],@[192.0.2.1]:user@c.test>")
    assert path == Path("user", "c.test", ("[IPv6:2001:db8::1]", "[192.0.2.1]"))


@pytest.mark.parametrize("arg, expected", [
    ("TO:<>", "501 5.1.3"),
    ("TO:b@y.test", "501 5.1.3"),
    ("TO:<b>", "501 5.1.3"),
    ("TO:<@a.test:postmaster>", "501 5.1.3"),
    ("TO:<b@y.test> NOTIFY=NEVER", "555 5.5.4"),   # DSN is not offered
    ("FROM:<b@y.test>", "501 5.5.2"),
])
def test_rcpt_errors(arg, expected):
    assert refused(parse_rcpt, arg) == expected


def test_path_length_limit():
    domain = "x.test"
    fits = "a" * (MAX_PATH - len(domain) - 3)       # <, @, > make 256
    assert parse_rcpt(f"TO:<{fits}@{domain}>").local == fits
    with pytest.raises(Refusal) as info:
        parse_rcpt(f"TO:<{fits}a@{domain}>")
    assert (info.value.reply.code, info.value.reply.enhanced) == (501, "5.1.3")
    assert "too long" in info.value.reply.text


def test_quoted_local_part_with_brackets_inside():
    assert parse_rcpt('TO:<"a>b"@y.test>').address == '"a>b"@y.test'


def test_bare_mailbox_for_vrfy():
    assert parse_bare("mick@acme.test").address == "mick@acme.test"
    assert parse_bare("<mick@acme.test>").address == "mick@acme.test"
    assert parse_bare("Postmaster").address == "postmaster"
    assert refused(parse_bare, "mick@acme.test extra") == "501 5.1.3"
