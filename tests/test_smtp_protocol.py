"""The ESMTP session through the wire: commands, states, limits, pipelining, smuggling,
Received:, loop detection, sizes and timeouts (extremail/smtp/server.py)."""

from __future__ import annotations

import smtplib
import time

import pytest

import smtpwire
from smtpwire import ENHANCED, Raw, messages, new_messages

MESSAGE = b"From: a@x.test\r\nTo: mick@acme.test\r\nSubject: test\r\n\r\nHello.\r\n"


@pytest.fixture(scope="module")
def mx(tmp_path_factory):
    server = smtpwire.start(str(tmp_path_factory.mktemp("mx")), CFG_MAX_RCPT="120")
    admin = server.admin()
    assert admin.cmd("USER ADD NAME=small DOMAIN=acme.test PASS=x MAXOUTMAILSIZE=1").startswith("+OK")
    assert admin.cmd("DOMAIN ADD NAME=tiny.test MAXOUTMAILSIZE=2").startswith("+OK")
    admin.close()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """1 KB messages at most, VRFY on."""
    server = smtpwire.start(str(tmp_path_factory.mktemp("small")), CFG_MAX_MAIL_SIZE="1",
                            CFG_VRFY="1")
    yield server
    server.stop()


@pytest.fixture
def raw(mx):
    client = Raw(mx.smtp_port)
    yield client
    client.close()


def ehlo(client: Raw) -> None:
    assert client.cmd("EHLO client.test")[0] == 250


# ---- greeting, EHLO, HELO ----
def test_greeting_and_ehlo(raw):
    assert raw.greeting[0] == 220
    assert raw.greeting[1].startswith("mx.local.test ESMTP eXtremail")
    code, text = raw.cmd("EHLO client.test")
    lines = text.split("\n")
    assert code == 250 and lines[0].startswith("mx.local.test Hello client.test [127.0.0.1]")
    # advertise only what works (RFC 1870, 2920, 6152, 2034); no STARTTLS/AUTH yet
    assert lines[1:] == ["SIZE 10485760", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "HELP"]


def test_size_without_limit(make_server):
    server = make_server(CFG_MAX_MAIL_SIZE="0")
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
        client.ehlo("client.test")
        assert client.esmtp_features["size"] == ""


def test_helo(raw):
    assert raw.cmd("HELO client.test") == (250, "mx.local.test Hello client.test [127.0.0.1]")
    assert raw.cmd("HELO")[0] == 501
    assert raw.cmd("EHLO \x01bad")[0] == 501


def test_every_reply_carries_an_enhanced_code(raw):
    """RFC 2034: every reply except the greeting and HELO/EHLO carries an RFC 3463 code."""
    commands = ["MAIL FROM:<a@x.test>", "EHLO client.test", "NOOP", "HELP", "VRFY mick",
                "EXPN staff", "FROB", "RCPT TO:<mick@acme.test>", "MAIL FROM:<a@x.test>",
                "MAIL FROM:<a@x.test>", "RCPT TO:<nobody@acme.test>", "RCPT TO:<bad",
                "RCPT TO:<mick@acme.test>", "DATA x", "RSET", "QUIT"]
    for command in commands:
        code, text = raw.cmd(command)
        if not command.startswith("EHLO"):
            assert ENHANCED.match(text), (command, code, text)


# ---- commands and states ----
def test_state_errors(raw):
    assert raw.cmd("MAIL FROM:<a@x.test>") == (503, "5.5.1 Bad sequence of commands: send "
                                                     "HELO/EHLO first")
    ehlo(raw)
    assert raw.cmd("RCPT TO:<mick@acme.test>")[1].startswith("5.5.1")
    assert raw.cmd("DATA")[0] == 503
    assert raw.cmd("MAIL FROM:<a@x.test>")[0] == 250
    assert raw.cmd("MAIL FROM:<a@x.test>") == (503, "5.5.1 Bad sequence of commands: nested "
                                                     "MAIL command")
    assert raw.cmd("DATA") == (554, "5.5.1 No valid recipients")   # none accepted yet
    assert raw.cmd("RCPT TO:<mick@acme.test>")[0] == 250
    assert raw.cmd("RSET") == (250, "2.0.0 Reset state")
    assert raw.cmd("RCPT TO:<mick@acme.test>")[0] == 503          # RSET ended the transaction
    assert raw.cmd("MAIL FROM:<a@x.test>")[0] == 250
    assert raw.cmd("EHLO again.test")[0] == 250                    # EHLO resets too
    assert raw.cmd("RCPT TO:<mick@acme.test>")[0] == 503


def test_small_commands(raw):
    assert raw.cmd("NOOP") == (250, "2.0.0 OK")
    assert raw.cmd("NOOP anything") == (250, "2.0.0 OK")
    assert raw.cmd("HELP")[0] == 214
    assert raw.cmd("VRFY mick@acme.test")[:1] == (252,)          # VRFY off by default
    assert raw.cmd("VRFY")[0] == 501
    for verb in ("EXPN staff", "TURN", "ETRN acme.test", "STARTTLS", "AUTH PLAIN"):
        code, text = raw.cmd(verb)
        assert (code, text[:5]) == (502, "5.5.1"), verb
    assert raw.cmd("FROB") == (500, "5.5.2 Command 'FROB' unrecognized")
    assert raw.cmd("RSET x")[0] == 501
    assert raw.cmd("QUIT")[0] == 221
    assert raw.closed()


def test_vrfy_on(small):
    client = Raw(small.smtp_port)
    assert client.cmd("VRFY mick@acme.test") == (250, "2.1.5 <mick@acme.test>")
    assert client.cmd("VRFY <nobody@acme.test>")[1].startswith("5.1.1")
    assert client.cmd("VRFY someone@remote.test")[0] == 252     # never about other hosts
    client.close()


def test_null_sender(mx):
    before = messages(mx)
    with smtplib.SMTP("127.0.0.1", mx.smtp_port) as client:
        client.ehlo("client.test")
        assert client.mail("<>")[0] == 250
        assert client.rcpt("mick@acme.test")[0] == 250
        assert client.data(MESSAGE)[0] == 250
    assert new_messages(mx, before)


def test_errors_end_the_session(raw):
    ehlo(raw)
    for _ in range(20):
        assert raw.cmd("FROB")[0] == 500
    assert raw.cmd("FROB") == (421, "4.7.0 Too many errors, closing connection")
    assert raw.closed()


def test_rejected_recipients_count_as_errors(raw):
    """A client probing for addresses is sent away (a dictionary attack)."""
    ehlo(raw)
    raw.cmd("MAIL FROM:<a@x.test>")
    codes = [raw.cmd(f"RCPT TO:<guess{n}@acme.test>")[0] for n in range(21)]
    assert codes[:20] == [550] * 20
    assert codes[20] == 550 and raw.reply()[0] == 421
    assert raw.closed()


# ---- limits ----
def test_command_line_limit(raw):
    """RFC 5321 4.5.3.1.4: 512 octets with the CRLF; longer is 500 and the session goes on."""
    ehlo(raw)
    assert raw.cmd("NOOP " + "x" * (512 - 7)) == (250, "2.0.0 OK")
    assert raw.cmd("NOOP " + "x" * (512 - 6)) == (500, "5.5.6 Line too long")
    assert raw.cmd("MAIL FROM:<a@x.test> " + "x" * 5000)[0] == 500
    assert raw.cmd("NOOP")[0] == 250


def test_path_limit(raw):
    ehlo(raw)
    assert raw.cmd("MAIL FROM:<a@x.test>")[0] == 250
    local = "a" * (256 - len("@acme.test") - 2)
    assert raw.cmd(f"RCPT TO:<{local}@acme.test>")[1].startswith("5.1.1")  # fits: unknown user
    code, text = raw.cmd(f"RCPT TO:<{local}a@acme.test>")
    assert (code, text[:5]) == (501, "5.1.3") and "too long" in text


def test_recipient_limit(mx):
    """RFC 5321 4.5.3.1.8: at least 100 recipients; CFG_MAX_RCPT=120 here, then 452 4.5.3."""
    with smtplib.SMTP("127.0.0.1", mx.smtp_port) as client:
        client.ehlo("client.test")
        client.mail("a@x.test")
        codes = [client.rcpt(f"r{n}@remote.test")[0] for n in range(120)]  # 127.0.0.1 may relay
        assert codes == [250] * 120
        assert client.rcpt("mick@acme.test") == (452, b"4.5.3 Too many recipients")
        assert client.rset()[0] == 250
        # a new transaction starts counting again
        client.mail("a@x.test")
        assert client.rcpt("mick@acme.test")[0] == 250


def test_declared_size_too_big(small):
    with smtplib.SMTP("127.0.0.1", small.smtp_port) as client:
        client.ehlo("client.test")
        assert client.esmtp_features["size"] == "1024"
        assert client.mail("a@x.test", ["SIZE=1025"]) == (
            552, b"5.3.4 Message size exceeds the limit of 1024 octets")
        assert client.mail("a@x.test", ["SIZE=1024"])[0] == 250


def test_real_size_too_big(small):
    before = messages(small)
    client = Raw(small.smtp_port)
    ehlo(client)
    client.cmd("MAIL FROM:<a@x.test>")
    client.cmd("RCPT TO:<mick@acme.test>")
    assert client.cmd("DATA")[0] == 354
    code, text = client.cmd(b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 20 + b".\r\n")
    assert (code, text[:5]) == (552, "5.3.4")
    assert client.cmd("NOOP")[0] == 250                     # still in step
    assert client.cmd("RCPT TO:<mick@acme.test>")[0] == 503  # the transaction ended
    client.close()
    assert messages(small) == before


def test_text_line_limit(mx):
    """RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF."""
    client = Raw(mx.smtp_port)
    ehlo(client)
    for length, expected in ((998, 250), (999, 500)):
        client.cmd("MAIL FROM:<a@x.test>")
        client.cmd("RCPT TO:<mick@acme.test>")
        assert client.cmd("DATA")[0] == 354
        code, text = client.cmd(b"Subject: long\r\n\r\n" + b"z" * length + b"\r\n.\r\n")
        assert code == expected, text
    assert client.cmd("NOOP")[0] == 250
    client.close()


def test_max_out_size(mx):
    """MAXOUTMAILSIZE of a local sender: the user's record, else the domain's."""
    with smtplib.SMTP("127.0.0.1", mx.smtp_port) as client:
        client.ehlo("client.test")
        assert client.mail("small@acme.test", ["SIZE=2000"])[0] == 552
        assert client.mail("nobody@tiny.test", ["SIZE=3000"])[0] == 552
        assert client.mail("nobody@tiny.test", ["SIZE=2000"])[0] == 250
        client.rset()
        assert client.mail("a@x.test", ["SIZE=3000"])[0] == 250   # not a local sender
        client.rset()
        # undeclared size: judged at the end of data
        client.mail("small@acme.test")
        client.rcpt("mick@acme.test")
        code, text = client.data(MESSAGE + (b"x" * 98 + b"\r\n") * 11)
        assert (code, text[:5]) == (552, b"5.3.4")
        client.mail("small@acme.test")
        client.rcpt("mick@acme.test")
        assert client.data(MESSAGE)[0] == 250


# ---- message data ----
def test_received_header_and_dot_stuffing(mx):
    before = messages(mx)
    client = Raw(mx.smtp_port)
    assert client.cmd("HELO client.test")[0] == 250
    client.cmd("MAIL FROM:<a@x.test>")
    client.cmd("RCPT TO:<mick@acme.test>")
    client.cmd("DATA")
    code, text = client.cmd(b"Subject: dots\r\n\r\n..leading dot\r\n...\r\n.\r\n")
    assert code == 250 and text.startswith("2.0.0")
    client.close()
    message = new_messages(mx, before)[0]
    assert b"\n.leading dot\n..\n" in message
    received = message[message.index(b"Received:"):message.index(b"Subject:")]
    assert received.startswith(b"Received: from client.test ([127.0.0.1])\n"
                               b"\tby mx.local.test (eXtremail ")
    assert b") with SMTP id " in received          # HELO, not EHLO
    assert b"\tfor <mick@acme.test>; " in received
    assert received.rstrip().endswith(b"+0000")


def test_esmtp_received_has_no_for_with_two_recipients(mx):
    before = messages(mx)
    with smtplib.SMTP("127.0.0.1", mx.smtp_port) as client:
        client.ehlo("client.test")
        client.sendmail("a@x.test", ["mick@acme.test", "joe@acme.test"], MESSAGE)
    message = new_messages(mx, before)[0]
    assert b" with ESMTP id " in message and b"\tfor <" not in message


def test_helo_cannot_forge_received_fields(mx):
    before = messages(mx)
    with smtplib.SMTP("127.0.0.1", mx.smtp_port) as client:
        client.ehlo("x;by(evil)")
        client.sendmail("a@x.test", ["mick@acme.test"], MESSAGE)
    assert b"Received: from x_by_evil_ ([127.0.0.1])\n" in new_messages(mx, before)[0]


def test_eight_bit_body(mx):
    before = messages(mx)
    body = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode()
    with smtplib.SMTP("127.0.0.1", mx.smtp_port) as client:
        client.ehlo("client.test")
        client.sendmail("a@x.test", ["mick@acme.test"], body, mail_options=["BODY=8BITMIME"])
    assert "déjà vu".encode() in new_messages(mx, before)[0]


def test_loop_detection(mx):
    """More than 30 Received: headers is a mail loop (554 5.4.6); 30 are fine."""
    hop = b"Received: from a.test by b.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    with smtplib.SMTP("127.0.0.1", mx.smtp_port) as client:
        client.ehlo("client.test")
        client.mail("a@x.test")
        client.rcpt("mick@acme.test")
        code, text = client.data(hop * 31 + MESSAGE)
        assert (code, text[:5]) == (554, b"5.4.6")
        client.mail("a@x.test")
        client.rcpt("mick@acme.test")
        assert client.data(hop * 30 + MESSAGE)[0] == 250
        # Received: lines in the body do not count
        client.mail("a@x.test")
        client.rcpt("mick@acme.test")
        assert client.data(MESSAGE + hop * 40)[0] == 250


def test_smuggling(mx):
    """Only <CRLF>.<CRLF> ends the data: bare LF.LF, CR.CR and LF.CRLF inside never do, so
    the SMTP commands hidden after them stay message text (SMTP smuggling)."""
    before = messages(mx)
    smuggled = (b"MAIL FROM:<admin@acme.test>\r\nRCPT TO:<joe@acme.test>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nevil\r\n")
    client = Raw(mx.smtp_port)
    ehlo(client)
    client.cmd("MAIL FROM:<a@x.test>")
    client.cmd("RCPT TO:<mick@acme.test>")
    assert client.cmd("DATA")[0] == 354
    body = (b"Subject: carrier\r\n\r\nline\r\n"
            + b"one\n.\n" + smuggled + b"two\r.\r" + smuggled + b"three\r\n.\n" + smuggled
            + b"four\n.\r\n" + smuggled + b"end\r\n.\r\n")
    client.send(body + b"NOOP\r\n")
    assert client.reply()[0] == 250
    assert client.reply() == (250, "2.0.0 OK")      # the NOOP: nothing else was answered
    client.close()
    new = new_messages(mx, before)
    assert len(new) == 1 and b"Subject: carrier" in new[0] and new[0].count(b"smuggled") == 4
    assert not any(b"Subject: smuggled" in m[:200] for m in messages(mx, "joe").values())


# ---- pipelining (RFC 2920) ----
def test_pipelined_transaction(mx):
    before = messages(mx)
    client = Raw(mx.smtp_port)
    ehlo(client)
    client.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<mick@acme.test>\r\nRCPT TO:<nobody@acme.test>\r\n"
                b"RCPT TO:<joe@acme.test>\r\nDATA\r\n")
    codes = [client.reply()[0] for _ in range(5)]
    assert codes == [250, 250, 550, 250, 354]
    client.send(MESSAGE + b".\r\nRSET\r\nMAIL FROM:<b@x.test>\r\nRCPT TO:<x@acme.test>\r\n"
                          b"DATA\r\nQUIT\r\n")
    assert [client.reply()[0] for _ in range(6)] == [250, 250, 250, 550, 554, 221]
    assert client.closed()
    assert len(new_messages(mx, before)) == 1


def test_many_commands_in_one_write(mx):
    client = Raw(mx.smtp_port)
    client.send(b"EHLO client.test\r\n" + b"NOOP\r\n" * 200 + b"QUIT\r\n")
    assert client.reply()[0] == 250
    assert [client.reply()[0] for _ in range(200)] == [250] * 200
    assert client.reply()[0] == 221
    client.close()


def test_session_log(mx):
    with smtplib.SMTP("127.0.0.1", mx.smtp_port) as client:
        client.ehlo("logged.test")
        client.mail("logger@x.test")
        client.rcpt("nobody@acme.test")
        client.rcpt("mick@acme.test")
        client.data(MESSAGE)
    assert mx.logged("from <logger@x.test> to 1 recipient(s)")  # the last line: all are there
    text = mx.log_text()
    assert "EHLO logged.test" in text
    assert "RCPT TO <nobody@acme.test> rejected: 550 5.1.1" in text
    assert "from=<logger@x.test> to=<mick@acme.test>" in text  # the delivery line
    # at CFG_LOG_LEVEL 3 an accepted MAIL or RCPT is no line of its own (level 4 logs it)
    assert "MAIL FROM:<logger@x.test>" not in text and "RCPT TO:<mick@acme.test>" not in text
    # after EHLO the event loop serves the session (the acceptance runs on a worker)
    [data_line] = [line for line in text.splitlines() if "from <logger@x.test> to 1" in line]
    assert " INFO [event-loop] " in data_line


# ---- timeouts (TIMEOUT_SMTP1..5) ----
@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    server = smtpwire.start(str(tmp_path_factory.mktemp("slow")), TIMEOUT_SMTP1="1",
                            TIMEOUT_SMTP2="2", TIMEOUT_SMTP3="2", TIMEOUT_SMTP4="2",
                            TIMEOUT_SMTP5="2")
    yield server
    server.stop()


STEPS = ["EHLO client.test", "MAIL FROM:<a@x.test>", "RCPT TO:<mick@acme.test>", "DATA"]


@pytest.mark.parametrize("stage", range(5))
def test_timeouts(slow, stage):
    """Stage 0 waits for HELO (TIMEOUT_SMTP1 = 1 s), 1..3 for MAIL, RCPT, DATA, 4 inside
    the message data (TIMEOUT_SMTP2..5 = 2 s): each ends with 421 4.4.2 and a close."""
    client = Raw(slow.smtp_port)
    for step in STEPS[:stage]:
        assert client.cmd(step)[0] in (250, 354)
    if stage == 4:
        client.send(b"Subject: half a message\r\n")
    started = time.monotonic()
    assert client.reply() == (421, "4.4.2 Timeout exceeded, closing connection")
    assert time.monotonic() - started >= (0.9 if stage == 0 else 1.9)
    assert client.closed()


# ---- management view ----
def test_conn_smtp_show_and_status(make_server):
    server = smtpwire.start(make_server(start=False).base)
    admin = server.admin()
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
        client.ehlo("shown.test")
        client.mail("a@x.test")
        client.rcpt("mick@acme.test")
        client.rcpt("joe@acme.test")
        first, rows = admin.listing("CONN SMTP SHOW")
        assert first == "+OK 1 SMTP connection"
        fields = rows[0].split("\t")
        assert fields[:4] == ["shown.test", "127.0.0.1", "a@x.test", "mick@acme.test,joe@acme.test"]
        client.data(MESSAGE)
    _, rows = admin.listing("STATUS")
    status = dict(row.split("\t", 1) for row in rows)
    assert status["Mails received:"] == "1" and status["SMTP in connections:"] == "1"
    admin.close()
    server.stop()
