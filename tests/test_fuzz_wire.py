"""A bounded, seeded fuzz battery over the wire (DESIGN.md rule 3): SMTP, POP3 and the
management port each get a few hundred mutated command lines from a fixed seed, on a real
server over loopback.  Every line must get a well-formed reply (or, after a 421/5xx or a
QUIT, a closed connection), and afterwards the server must still work: mail is accepted
and lands in the Maildir, the mailbox is whole, the data files are unchanged, no
traceback or "internal error" in the log, the process alive.

How a line is judged: the server cuts input at LF (a CR before it is dropped), so a
mutated line holding a bare LF is several commands; the tests cut it the same way and
expect one reply per piece.  A test never lets the server's error budget run out in the
middle of a batch (it reconnects first), so each reply belongs to a known piece.
"""

from __future__ import annotations

import base64
import os
import random
import re
import smtplib
import socket
from typing import Any

import pytest

from harness import Admin, ServerProcess, wait_until
from smtpwire import ENHANCED, Raw, messages

TIMEOUT = 5.0   # seconds: every reply is expected well within this
DOMAIN = "acme.test"

# Bytes that trip parsers: NUL, bare CR/LF, controls, 8-bit, invalid UTF-8 (a lone
# continuation byte, an overlong "/", an encoded surrogate, a code point over U+10FFFF),
# valid non-ASCII (unicode digits, line separators, BOM), quoting and path characters.
ODD = (b"\x00", b"\r", b"\n", b"\t", b"\x0b", b"\x0c", b"\x1c", b"\x7f", b"\x1b[2J", b"\xff",
       b"\xfe\xff", b"\x80", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
       "é".encode(), "²".encode(), "\u0661".encode(), "\u2028".encode(), "\x85".encode(),
       "\ufeff".encode(), "\u212a".encode(), b"%s%n", b"'", b'"', b"\\", b"<", b">", b"<>", b"@",
       b":", b"=", b" ", b"   ", b"..", b"../", b"/", b"\r\n", b"\n.\n", b"*", b"+", b"-1")
LONG_RUNS = (300, 509, 510, 511, 512, 513, 1000, 2046, 2047, 2048, 2049, 5000, 8190, 8191,
             8192, 8193, 9000)


# ---------------------------------------------------------------- shared machinery
def mutate(rng: random.Random, base: bytes, deletions: bool = True) -> bytes:
    """One to three random edits of ``base``; without ``deletions`` nothing is removed
    (a management test relies on its bad value staying in the line)."""
    data = bytearray(base)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8 if deletions else 6)
        pos = rng.randint(0, len(data))
        if op == 0:
            data[pos:pos] = rng.choice(ODD)
        elif op == 1:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:  # odd case
            for index in rng.sample(range(len(data)), min(len(data), rng.randint(1, 6))):
                data[index:index + 1] = bytes(data[index:index + 1]).swapcase()
        elif op == 3:  # odd spacing
            data[pos:pos] = rng.choice((b" ", b"  ", b"\t", b" \t ", b"      "))
        elif op == 4:  # a repeated piece
            start = rng.randint(0, len(data))
            data[pos:pos] = data[start:start + rng.randint(1, 20)]
        elif op == 5:  # a very long run
            data[pos:pos] = bytes([rng.choice(b"Aa0.<@ ")]) * rng.choice(LONG_RUNS)
        elif op == 6:
            del data[pos:pos + rng.randint(1, 12)]
        else:
            del data[pos:]
    return bytes(data)


def mutate_around(rng: random.Random, line: bytes, keep: bytes) -> bytes:
    """Insertions (atoms, random bytes, spacing, repeats, long runs) and case changes
    anywhere but inside ``keep``, which stays as it is: a refused value stays refused."""
    data = bytearray(line)
    start = data.find(keep)
    assert start >= 0, (line, keep)
    end = start + len(keep)
    for _ in range(rng.randint(1, 3)):
        pos = rng.choice((rng.randint(0, start), rng.randint(end, len(data))))
        op = rng.randrange(5)
        if op == 0:
            piece = rng.choice(ODD)
        elif op == 1:
            piece = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            piece = rng.choice((b" ", b"  ", b"\t", b" \t "))
        elif op == 3:
            origin = rng.randint(0, len(data))
            piece = bytes(data[origin:origin + rng.randint(1, 20)])
        else:
            piece = bytes([rng.choice(b"Aa0.<@ ")]) * rng.choice(LONG_RUNS)
        if rng.random() < 0.3:
            piece = piece.swapcase()
        data[pos:pos] = piece
        if pos <= start:
            start, end = start + len(piece), end + len(piece)
    assert bytes(data[start:end]) == keep
    return bytes(data)


def garbage(rng: random.Random) -> bytes:
    """A line of random bytes (any value but LF, which the caller's mutations add)."""
    return bytes(rng.choice((rng.randrange(256), rng.randrange(32, 127)))
                 for _ in range(rng.randint(0, 60))).replace(b"\n", b"")


def pieces(payload: bytes) -> list[bytes]:
    """The command lines the server sees for ``payload`` sent with a CRLF: cut at each LF,
    each with its trailing CR if any (which counts against the line limit)."""
    return (payload + b"\r\n").split(b"\n")[:-1]


def without_cr(piece: bytes) -> bytes:
    return piece[:-1] if piece.endswith(b"\r") else piece


def session_view(piece: bytes) -> tuple[str, str]:
    """(VERB, argument) of one command line, cut as every session cuts it."""
    text = without_cr(piece).decode("utf-8", "surrogateescape")
    verb, _, arg = text.strip(" ").partition(" ")
    return verb.upper(), arg


def too_long(piece: bytes, limit: int) -> bool:
    return len(piece) + 1 > limit


def clean(piece: bytes) -> bool:
    """A line whose meaning is unambiguous: printable ASCII words, single spaces."""
    line = without_cr(piece)
    return bool(re.fullmatch(rb"[\x21-\x7e]+( [\x21-\x7e]+)*", line))


def server_stderr(server: ServerProcess) -> str:
    with open(server.path("stderr.log"), encoding="utf-8", errors="replace") as handle:
        return handle.read()


def assert_healthy(server: ServerProcess) -> None:
    """DESIGN.md rule 3: the server lives on and never logged an internal error (in its
    log, or on its stderr, where the log writer reports its own failures)."""
    assert server.proc is not None and server.proc.poll() is None, "the server died"
    text = server.log_text() + server_stderr(server)
    assert "Traceback" not in text, text[text.index("Traceback") - 500:][:3000]
    lowered = text.lower()
    assert "internal error" not in lowered, \
        text[max(0, lowered.index("internal error") - 300):][:3000]


def hang_up(client: Raw | Admin | PopWire) -> None:
    """Close a client for real: its makefile() reader keeps the descriptor open (and the
    server sees no FIN) until it is closed too."""
    client.file.close()
    client.sock.close()


def assert_no_leak(text: str) -> None:
    lowered = text.lower()
    assert "traceback" not in lowered and "internal error" not in lowered, text


# ---------------------------------------------------------------- SMTP
SMTP_SEED = 5321
SMTP_DATA_SEED = 53214
SMTP_MAX_ERRORS = 20          # SMTPSession.max_errors: the 21st error gets 421
SMTP_LINE = 512
SMTP_VERBS = {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "HELP", "QUIT", "VRFY",
              "EXPN", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML", "BDAT", "STARTTLS", "AUTH"}
SMTP_BASES = (
    b"EHLO client.test", b"HELO client.test", b"EHLO [127.0.0.1]", b"EHLO [IPv6:::1]",
    b"MAIL FROM:<a@x.test>", b"MAIL FROM:<>", b"MAIL FROM:<a@x.test> SIZE=100 BODY=8BITMIME",
    b"MAIL FROM:<a@x.test> SIZE=-1", b"MAIL FROM:<a@x.test> SIZE=999999999999999999999",
    b"MAIL FROM:<a@x.test> BODY=junk", b"MAIL FROM:<a@x.test> SIZE=1 SIZE=2",
    b'MAIL FROM:<"a b"@x.test>', b"MAIL FROM:<@r1.test,@r2.test:a@x.test>",
    b"MAIL FROM:<a@[192.0.2.1]>", b"MAIL FROM: <a@x.test>", b"MAIL FROM:<<a@x.test>>",
    b"RCPT TO:<mick@acme.test>", b"RCPT TO:<postmaster>", b"RCPT TO:<Postmaster@acme.test>",
    b'RCPT TO:<"mick"@acme.test>', b'RCPT TO:<"mick@elsewhere.test"@acme.test>',
    b"RCPT TO:<@relay.test:mick@acme.test>", b"RCPT TO:<mick%elsewhere.test@acme.test>",
    b"RCPT TO:<elsewhere.test!mick@acme.test>", b"RCPT TO:<mick@acme.test> NOTIFY=NEVER",
    b"RCPT TO:<nobody@acme.test>", b"RCPT TO:<>", b"RCPT TO:mick@acme.test",
    b"RSET", b"NOOP", b"NOOP anything", b"HELP", b"HELP MAIL", b"VRFY mick@acme.test",
    b"VRFY <postmaster>", b"VRFY nobody", b"EXPN staff", b"STARTTLS", b"AUTH PLAIN AGFiAGM=",
    b"BDAT 10 LAST", b"ETRN acme.test", b"XCLIENT ADDR=1.2.3.4", b"", b" ",
)


def within_budget(fuzz: Any, cost: int, limit: int) -> Any:
    """The fuzz's session (POP3 or management), started afresh, logged in as before, when
    ``cost`` more errors would pass the server's ``limit``: each reply then belongs to a
    known piece."""
    if fuzz.errors + cost > limit:
        login = fuzz.logged_in
        fuzz.disconnect()
        fuzz.connect(login)
    return fuzz.connect(fuzz.logged_in)


class SmtpFuzz:
    """One SMTP client that sends payloads and checks every reply it gets."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.raw: Raw | None = None
        self.errors = 0
        self.replies = 0

    def connect(self) -> Raw:
        if self.raw is None:
            self.raw = Raw(self.server.smtp_port, timeout=TIMEOUT)
            assert self.raw.greeting[0] == 220, self.raw.greeting
            assert self.raw.cmd("EHLO fuzz.test")[0] == 250
            self.errors = 0
        return self.raw

    def reconnect(self) -> None:
        if self.raw is not None:
            assert self.raw.cmd("QUIT")[0] == 221
            assert self.raw.closed()
            hang_up(self.raw)
            self.raw = None
        self.connect()

    def exchange(self, payload: bytes) -> None:
        lines = pieces(payload)
        if self.errors + len(lines) > SMTP_MAX_ERRORS:
            self.reconnect()
        raw = self.connect()
        raw.send(payload + b"\r\n")
        for index, piece in enumerate(lines):
            verb, _ = session_view(piece)
            what = f"piece {index} of {payload[:300]!r}"
            code, text = raw.reply()
            self.replies += 1
            assert 200 <= code < 600 and code != 354, (what, code, text)
            assert_no_leak(text)
            assert (code, text[:5]) != (451, "4.3.0"), (what, "local error", text)
            # RFC 2034: every reply but HELO/EHLO's 250 carries a matching enhanced code
            if not (verb in ("HELO", "EHLO") and code == 250) and not too_long(piece, SMTP_LINE):
                assert ENHANCED.match(text) and text[0] == str(code)[0], (what, code, text)
            if too_long(piece, SMTP_LINE):
                assert (code, text[:5]) == (500, "5.5.6"), (what, code, text)
            elif verb not in SMTP_VERBS:
                assert (code, text[:5]) == (500, "5.5.2"), (what, code, text)
            if code >= 500:
                self.errors += 1
            if verb == "QUIT" and not too_long(piece, SMTP_LINE):
                assert code == 221 and index == len(lines) - 1, (what, code, text)
                assert raw.closed(), what
                hang_up(raw)
                self.raw = None
                return

    def close(self) -> None:
        if self.raw is not None:
            self.reconnect()
            hang_up(self.raw)
            self.raw = None


def smtp_payload(rng: random.Random) -> bytes:
    """A mutated command line; no piece is DATA (its reply would start message data),
    and QUIT only as the last piece (so no reply is lost to the connection's reset)."""
    while True:
        payload = garbage(rng) if rng.random() < 0.12 else mutate(rng, rng.choice(SMTP_BASES))
        verbs = [session_view(p)[0] for p in pieces(payload) if not too_long(p, SMTP_LINE)]
        if "DATA" in verbs or "QUIT" in verbs[:-1]:
            continue
        return payload


def local_delivery_works(server: ServerProcess, user: str = "mick") -> None:
    """A normal transaction on a new connection gets 250 and lands in the Maildir."""
    before = messages(server, user, DOMAIN)
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=TIMEOUT) as client:
        client.ehlo("after.test")
        refused = client.sendmail("a@x.test", [f"{user}@{DOMAIN}"],
                                  b"Subject: after the fuzz\r\n\r\nstill here\r\n")
        assert refused == {}
    arrived = wait_until(lambda: [d for n, d in messages(server, user, DOMAIN).items()
                                  if n not in before], TIMEOUT, "the message in the Maildir")
    assert len(arrived) == 1 and arrived[0].endswith(b"\nstill here\n")


@pytest.fixture
def mx(make_server) -> ServerProcess:
    server = make_server(CFG_VRFY="1", CFG_DNS_SERVERS="127.0.0.1:9")
    # local.test holds CFG_POSTMASTER: mail to the postmaster stays on this host
    server.setup_mail({DOMAIN: {"mick": "secret", "joe": "secret"},
                       "local.test": {"postmaster": "secret"}})
    return server


def test_smtp_command_fuzz(mx: ServerProcess) -> None:
    rng = random.Random(SMTP_SEED)
    fuzz = SmtpFuzz(mx)
    for _ in range(300):
        fuzz.exchange(smtp_payload(rng))
    fuzz.close()
    assert fuzz.replies >= 300
    # the error budget: the 21st error gets 421 and the connection closes
    raw = Raw(mx.smtp_port, timeout=TIMEOUT)
    codes = [raw.cmd("FROB")[0] for _ in range(SMTP_MAX_ERRORS)]
    assert codes == [500] * SMTP_MAX_ERRORS
    assert raw.cmd("FROB")[0] == 421
    assert raw.closed()
    hang_up(raw)
    local_delivery_works(mx)
    assert_healthy(mx)


# MAIL and RCPT arguments the grammar refuses (RFC 5321 4.1.2, RFC 1870, RFC 6152) ...
BAD_MAIL = (
    "FROM:<a@x.test> SIZE=-1", "FROM:<a@x.test> SIZE=999999999999999999999",
    "FROM:<a@x.test> SIZE=99999999999999999999", "FROM:<a@x.test> SIZE=", "FROM:<a@x.test> SIZE",
    "FROM:<a@x.test> SIZE=1 SIZE=2", "FROM:<a@x.test> SIZE=1 size=1", "FROM:<a@x.test> SIZE=²",
    "FROM:<a@x.test> SIZE=١٢", "FROM:<a@x.test> SIZE=0x10", "FROM:<a@x.test> SIZE=1e3",
    "FROM:<a@x.test> BODY=junk", "FROM:<a@x.test> BODY=", "FROM:<a@x.test> BODY=8BITMIME BODY=7BIT",
    "FROM:<a@x.test> FOO=bar", "FROM:<a@x.test> =x", "FROM:<a@x.test> SMTPUTF8",
    "FROM:<a@x.test>SIZE=1", "FROM:<a@x.test>\tSIZE=1", "FROM:a@x.test", "FROM:<a@x.test",
    "FROM:a@x.test>", "FROM:<<a@x.test>>", "FROM:<a@x.test>>", "FROM:<>>", "FROM:<a@@x.test>",
    "FROM:<@x.test>", "FROM:<@x.test:>", "FROM:<@:a@x.test>", "FROM:<@x.test,a@x.test>",
    "FROM:<@[1.2.3.4:a@x.test>", 'FROM:<"unterminated@x.test>', 'FROM:<"a\\\x01"@x.test>',
    "FROM:<a@[300.1.1.1]>", "FROM:<a@[IPv6:zz]>", "FROM:<a@[1.2.3.4>", "FROM:<a@-x.test>",
    "FROM:<a@x..test>", "FROM:<a@x.test.>", "FROM:<a.@x.test>", "FROM:<.a@x.test>",
    "FROM:<a..b@x.test>", "FROM:<a@" + "x" * 300 + ">", "FROM:<" + "a" * 300 + "@x.test>",
    "FROM:<a@" + ".".join(["x" * 63] * 5) + ">", "FROM:<a@é.test>", "FROM:<é@x.test>",
    "FROM:<a b@x.test>", "FROM:<a@x.test> SIZE=1 " + "X=1 " * 100, "FROM :<a@x.test>",
    "FROM<a@x.test>", "TO:<a@x.test>", "", "FROM:", "FROM:<", "FROM:<>" + "x",
    "FROM:<a@x.test> BODY=BINARYMIME",
)
BAD_RCPT = (
    "TO:<>", "TO:<mick@acme.test> NOTIFY=NEVER", "TO:<mick@acme.test> SIZE=1", "TO:mick@acme.test",
    "TO:<mick@acme.test", "TO:<mick@acme.test>>", "TO:<<mick@acme.test>>", "TO:<@acme.test>",
    "TO:<@a.test:>", "TO:<mick@>", "TO:<@mick@acme.test>", "TO:<mick@acme..test>",
    "TO:<mick@[999.0.0.1]>", 'TO:<"mick@acme.test>', "TO:<nobody@acme.test>",
    "TO:<postmaster@>", "TO:<mick@acme.test>x", "FROM:<mick@acme.test>", "TO:", "",
    "TO:<" + "m" * 250 + "@acme.test>", "TO:<mick\x00@acme.test>", "TO:<mick@acme.test\x00>",
)
# ... and odd forms it takes, each naming the local user mick or the postmaster.
ODD_BUT_VALID_RCPT = ('TO:<"mick"@acme.test>', "TO:<@relay.test,@[192.0.2.1]:mick@acme.test>",
                      "TO:<MICK@ACME.TEST>", "TO: <mick@acme.test>", "TO:<postmaster>",
                      "TO:<Postmaster@acme.test>", "TO:<mick@acme.test>  ")
ODD_BUT_VALID_MAIL = ("FROM:<>", 'FROM:<"a b"@x.test>', "FROM:<@r.test:a@x.test>",
                      "FROM:<a@[IPv6:::1]> BODY=8BITMIME SIZE=10", "FROM:<a@[192.0.2.1]>",
                      "FROM:<a@x.test> SIZE=00000000000000000001")


def odd_case(rng: random.Random, text: str) -> str:
    """The verb's and keywords' case is free (RFC 5321 2.4)."""
    head, sep, rest = text.partition(":")
    return (head.swapcase() if rng.random() < 0.5 else head) + sep + rest


def test_smtp_mail_rcpt_arguments(mx: ServerProcess) -> None:
    rng = random.Random(SMTP_SEED + 1)
    # every refused MAIL or RCPT gets 5xx (a 503 would show an earlier one was taken)
    raw = Raw(mx.smtp_port, timeout=TIMEOUT)
    assert raw.cmd("EHLO fuzz.test")[0] == 250
    errors = 0
    for arg in BAD_MAIL:
        if errors >= SMTP_MAX_ERRORS - 1:
            hang_up(raw)
            raw = Raw(mx.smtp_port, timeout=TIMEOUT)
            assert raw.cmd("EHLO fuzz.test")[0] == 250
            errors = 0
        code, text = raw.cmd("MAIL " + odd_case(rng, arg))
        assert 500 <= code < 600, ("MAIL " + arg, code, text)
        errors += 1
    assert raw.cmd("MAIL FROM:<a@x.test>")[0] == 250
    for arg in BAD_RCPT:
        if errors >= SMTP_MAX_ERRORS - 1:
            hang_up(raw)
            raw = Raw(mx.smtp_port, timeout=TIMEOUT)
            assert raw.cmd("EHLO fuzz.test")[0] == 250
            assert raw.cmd("MAIL FROM:<a@x.test>")[0] == 250
            errors = 0
        code, text = raw.cmd("RCPT " + odd_case(rng, arg))
        assert 500 <= code < 600, ("RCPT " + arg, code, text)
        errors += 1
    hang_up(raw)
    # the odd but valid forms: accepted, and the message reaches mick (or the postmaster)
    before = messages(mx)
    delivered = 0
    for sender in ODD_BUT_VALID_MAIL:
        raw = Raw(mx.smtp_port, timeout=TIMEOUT)
        assert raw.cmd("EHLO fuzz.test")[0] == 250
        code, text = raw.cmd("MAIL " + odd_case(rng, sender))
        assert code == 250, ("MAIL " + sender, code, text)
        code, text = raw.cmd("RCPT TO:<mick@acme.test>")
        assert code == 250, (sender, code, text)
        assert raw.cmd("DATA")[0] == 354
        assert raw.cmd(b"Subject: odd sender\r\n\r\nbody\r\n.\r\n")[0] == 250
        delivered += 1
        hang_up(raw)
    for rcpt in ODD_BUT_VALID_RCPT:
        raw = Raw(mx.smtp_port, timeout=TIMEOUT)
        assert raw.cmd("EHLO fuzz.test")[0] == 250
        assert raw.cmd("MAIL FROM:<a@x.test>")[0] == 250
        code, text = raw.cmd("RCPT " + odd_case(rng, rcpt))
        assert code == 250, ("RCPT " + rcpt, code, text)
        assert raw.cmd("DATA")[0] == 354
        assert raw.cmd(b"Subject: odd recipient\r\n\r\nbody\r\n.\r\n")[0] == 250
        if "postmaster" not in rcpt.lower():
            delivered += 1
        hang_up(raw)
    wait_until(lambda: len(messages(mx)) - len(before) == delivered, TIMEOUT,
               f"{delivered} messages for mick")
    local_delivery_works(mx)
    assert_healthy(mx)


# ---- message data ----
def data_line(rng: random.Random) -> bytes:
    """One logical line of a message body, before dot-stuffing."""
    kind = rng.randrange(14)
    if kind == 0:
        return b"."
    if kind == 1:
        return b".."
    if kind == 2:
        return b"." + garbage(rng).replace(b"\r", b"")
    if kind == 3:
        return b"x" * rng.choice((998, 999, 1000, 1500, 4000))   # RFC 5321 4.5.3.1.6
    if kind == 4:  # SMTP smuggling: a bare LF or CR end mark followed by commands
        return rng.choice((b"a\n.\nRSET", b"a\r.\rMAIL FROM:<x@y.test>", b"a\n.\r\nRSET",
                           b"a\r\n.\nQUIT", b"\n.\n", b"a\r.\r\nQUIT", b"x\n..\n"))
    if kind == 5:
        return bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 40)))
    if kind == 6:
        return b"NUL\x00inside\x00"
    if kind == 7:
        return b"ends with a bare CR\r"
    if kind == 8:
        return b""
    if kind == 9:
        return b"\xc3\x28 invalid UTF-8 \xed\xa0\x80"
    if kind == 10:
        return b"bare LF\nbefore the dot"
    return mutate(rng, b"Some ordinary text of a message.", deletions=False).replace(b"\r\n", b" ")


def wire_body(lines: list[bytes]) -> bytes:
    """RFC 5321 4.5.2: a leading dot doubled; the lines with CRLF, then the end mark."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in lines) + b".\r\n"


def longest_run(data: bytes) -> int:
    return max(len(part) for part in data.split(b"\n"))


def test_smtp_message_data_fuzz(mx: ServerProcess) -> None:
    rng = random.Random(SMTP_DATA_SEED)
    before = messages(mx)
    expected: dict[bytes, bytes] = {}   # token -> the body as the Maildir keeps it (LF)
    empty = 0
    raw = Raw(mx.smtp_port, timeout=TIMEOUT)
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert raw.cmd("EHLO fuzz.test")[0] == 250
    errors = 0
    for number in range(60):
        if errors >= SMTP_MAX_ERRORS - 2:
            hang_up(raw)
            raw = Raw(mx.smtp_port, timeout=TIMEOUT)
            raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assert raw.cmd("EHLO fuzz.test")[0] == 250
            errors = 0
        token = b"fuzz-token-%04d-end" % number
        if number == 0:
            lines: list[bytes] = []         # the empty message: ".<CRLF>" at once
        else:
            lines = [data_line(rng) for _ in range(rng.randint(0, 12))] + [token]
            rng.shuffle(lines)
        body = b"\r\n".join(lines) + (b"\r\n" if lines else b"")
        data = wire_body(lines)
        assert raw.cmd("MAIL FROM:<a@x.test>")[0] == 250
        assert raw.cmd("RCPT TO:<mick@acme.test>")[0] == 250
        assert raw.cmd("DATA")[0] == 354
        # sent in random pieces; the last ones cut inside "<CRLF>.<CRLF>"
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6))))
        if len(data) > 5 and rng.random() < 0.7:
            cuts = sorted({*cuts, len(data) - rng.randint(1, 4)})
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            raw.sock.sendall(data[start:end])
        code, text = raw.reply()
        assert_no_leak(text)
        if longest_run(body) > 999:           # over 1000 octets with its CRLF
            assert (code, text[:5]) == (500, "5.5.6"), (number, code, text)
            errors += 1
        else:
            assert code == 250, (number, lines, code, text)
            if lines:
                expected[token] = body.replace(b"\r\n", b"\n")
            else:
                empty += 1
    hang_up(raw)

    def arrived() -> list[bytes] | None:
        new = [d for n, d in messages(mx).items() if n not in before]
        return new if len(new) >= len(expected) + empty else None

    new = wait_until(arrived, TIMEOUT, "the accepted messages in the Maildir")
    assert len(new) == len(expected) + empty
    for token, body in expected.items():
        holding = [d for d in new if token in d]
        assert len(holding) == 1, (token, len(holding))
        assert holding[0].endswith(body), \
            (token, holding[0][-600:], body[-600:])
    local_delivery_works(mx)
    assert_healthy(mx)


# ---------------------------------------------------------------- POP3
POP3_SEED = 1939
POP3_LINE = 2048               # pop3.MAX_LINE
POP3_MAX_ERRORS = 20
POP3_VERBS = ("CAPA", "USER", "PASS", "AUTH", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE",
              "RSET", "NOOP", "APOP", "STLS", "XTND", "LAST", "")
POP3_ARGS = ("", "1", "2", "3", "4", "0", "-1", "+1", "01", "1 ", " 1", "99999999999999999999",
             "18446744073709551617", "1 2 3", "1 2", "2 0", "1 -1", "1 99999999999999999999",
             "x", "1x", "1.0", "²", "\u0661", "\u0663", "1²", "\uff11", "\u2028", "1\x00", "1\t2", "1\x0b",
             "*", "ALL", "PLAIN", "PLAIN =", "PLAIN *", "PLAIN !!!", "PLAIN AGJvYgA=",
             "LOGIN", "mick", "mick@acme.test", "../../etc/passwd")
MULTILINE_ALWAYS = {"CAPA", "RETR", "TOP"}
TRANSACTION_VERBS = {"STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP"}


class PopWire:
    """A POP3 client on a plain socket that reads single and multi-line replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()
        assert self.greeting.startswith(b"+OK "), self.greeting

    def line(self) -> bytes:
        raw = self.file.readline(100_000)
        if not raw:
            raise ConnectionError("connection closed")
        assert raw.endswith(b"\r\n"), raw[:200]
        return raw[:-2]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def body(self) -> list[bytes]:
        """The lines of a multi-line reply, dot-unstuffed (RFC 1939 section 3)."""
        out = []
        while True:
            line = self.line()
            if line == b".":
                return out
            out.append(line[1:] if line.startswith(b".") else line)

    def closed(self) -> bool:
        return self.file.read() == b""



def b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


def sasl_login_attempt(arg: str) -> bool:
    """True when ``AUTH arg`` would check a password (a failure slows this IP down)."""
    mechanism, _, initial = arg.strip().partition(" ")
    if mechanism.upper() != "PLAIN" or not initial.strip():
        return False
    try:
        parts = base64.b64decode(initial.strip(), validate=True).split(b"\0")
    except ValueError:
        return False
    return len(parts) == 3 and bool(parts[1])


class PopFuzz:
    """A POP3 session under fuzzing, with a model of what the server must answer."""

    def __init__(self, server: ServerProcess, contents: set[bytes]) -> None:
        self.server = server
        self.contents = contents       # every message as RETR must give it (CRLF)
        self.pop: PopWire | None = None
        self.logged_in = False
        self.pending_user = False
        self.deleted: set[int] = set()
        self.count = len(contents)
        self.errors = 0
        self.seen: dict[int, bytes] = {}
        self.replies = 0

    def connect(self, login: bool) -> PopWire:
        if self.pop is None:
            self.pop = PopWire(self.server.pop3_port)
            self.errors = 0
            self.pending_user = False
            self.deleted = set()
            self.logged_in = False
            if login:
                self.pop.send(b"USER mick@acme.test\r\nPASS secret\r\n")
                assert self.pop.line().startswith(b"+OK")
                answer = self.pop.line()
                assert answer.startswith(b"+OK Logged in, %d messages" % self.count), answer
                self.logged_in = True
        return self.pop

    def disconnect(self) -> None:
        """RSET, then QUIT: nothing the fuzz marked is deleted."""
        if self.pop is None:
            return
        pop = self.pop
        if self.logged_in:
            pop.send(b"RSET\r\n")
            assert pop.line().startswith(b"+OK")
        pop.send(b"QUIT\r\n")
        assert pop.line().startswith(b"+OK"), "QUIT"
        assert pop.closed()
        hang_up(pop)
        self.pop = None

    def login_attempt(self, piece: bytes, pending: bool) -> bool:
        verb, arg = session_view(piece)
        if too_long(piece, POP3_LINE):
            return False
        return (verb == "PASS" and pending) or (verb == "AUTH" and sasl_login_attempt(arg))

    def acceptable(self, payload: bytes) -> bool:
        """No accidental login attempt, QUIT only last, AUTH's continuation only last."""
        lines = pieces(payload)
        pending = self.pending_user
        for index, piece in enumerate(lines):
            verb, arg = session_view(piece)
            if too_long(piece, POP3_LINE):
                continue
            last = index == len(lines) - 1
            if verb == "QUIT" and not last:
                return False
            if not self.logged_in:
                if self.login_attempt(piece, pending):
                    return False
                if verb == "USER" and arg.strip():
                    pending = True
                elif verb == "PASS":
                    pending = False
                elif verb == "AUTH" and arg.strip().upper() == "PLAIN" and not last:
                    return False
        return True

    def expectation(self, piece: bytes) -> tuple[str | None, bool]:
        """('+OK' / '-ERR' / None when the model does not say, multi-line if +OK)."""
        verb, arg = session_view(piece)
        if too_long(piece, POP3_LINE) or verb not in {*TRANSACTION_VERBS, "CAPA", "USER",
                                                       "PASS", "AUTH", "QUIT"}:
            return "-ERR", False
        if verb == "CAPA":
            return "+OK", True
        if not self.logged_in:
            if verb in TRANSACTION_VERBS:
                return "-ERR", False
            if verb == "USER":
                return ("+OK" if arg.strip() else "-ERR"), False
            if verb == "PASS":
                return "-ERR", False     # no login attempt reaches here: "USER first"
            if verb == "AUTH":
                return (("+OK", True) if not arg.strip() else (None, False))
            return "+OK", False          # QUIT
        if verb in ("USER", "PASS", "AUTH"):
            return "-ERR", False
        if verb == "QUIT":
            return "+OK", False
        multi = verb in MULTILINE_ALWAYS or (verb in ("LIST", "UIDL") and not arg.strip())
        if not clean(piece):
            return None, multi
        words = without_cr(piece).decode().split(" ")[1:]

        def valid(word: str) -> bool:
            return word.isdigit() and not word.startswith("0") and \
                1 <= int(word) <= self.count and int(word) not in self.deleted

        if verb in ("STAT", "NOOP", "RSET"):
            return ("+OK" if not words else None), False
        if verb in ("LIST", "UIDL"):
            if not words:
                return "+OK", True
            if len(words) == 1 and words[0].startswith("0") and words[0] != "0":
                return None, False       # leading zeros: the model does not say
            return ("+OK" if len(words) == 1 and valid(words[0]) else "-ERR"), False
        if verb in ("RETR", "DELE"):
            if len(words) == 1 and words[0].startswith("0") and words[0] != "0":
                return None, multi
            return ("+OK" if len(words) == 1 and valid(words[0]) else "-ERR"), multi
        # TOP msg n
        if words and words[0].startswith("0") and words[0] != "0":
            return None, True
        ok = len(words) == 2 and valid(words[0]) and words[1].isdigit()
        return ("+OK" if ok else "-ERR"), True

    def exchange(self, payload: bytes) -> None:
        lines = pieces(payload)
        pop = within_budget(self, len(lines), POP3_MAX_ERRORS)
        pop.send(payload + b"\r\n")
        for index, piece in enumerate(lines):
            what = f"piece {index} of {payload[:300]!r} (logged in: {self.logged_in})"
            verb, arg = session_view(piece)
            want, multi = self.expectation(piece)
            first = pop.line()
            self.replies += 1
            assert_no_leak(first.decode("utf-8", "replace"))
            if verb == "AUTH" and not self.logged_in and first == b"+":
                assert index == len(lines) - 1, what
                pop.send(b"*\r\n")       # RFC 5034 4: the client cancels
                first = pop.line()
                assert first.startswith(b"-ERR "), (what, first)
                continue
            assert first.startswith((b"+OK", b"-ERR")), (what, first)
            if first.startswith(b"-ERR"):
                self.errors += 1
            if want is not None:
                assert first.startswith(want.encode()), (what, want, first)
            if first.startswith(b"+OK") and (multi or (verb == "AUTH" and not arg.strip())):
                lines_of = pop.body()
                self.check_listing(verb, arg, first, lines_of, what)
            if first.startswith(b"+OK") and verb == "LIST" and not multi and clean(piece):
                number, size = map(int, first.split()[1:3])
                if number in self.seen:       # RFC 1939: the exact size of the message
                    assert size == len(self.seen[number]), (what, first)
            if first.startswith(b"+OK") and not too_long(piece, POP3_LINE):
                if verb == "DELE":
                    self.deleted.add(int(first.split()[2]))
                elif verb == "RSET":
                    self.deleted.clear()
                elif verb == "USER":
                    self.pending_user = True
            if verb == "PASS" and not too_long(piece, POP3_LINE):
                self.pending_user = False
            if verb == "QUIT" and not too_long(piece, POP3_LINE):
                assert first.startswith(b"+OK") and pop.closed(), what
                hang_up(pop)
                self.pop = None
                self.logged_in = False
                return

    def check_listing(self, verb: str, arg: str, first: bytes, lines: list[bytes],
                      what: str) -> None:
        if verb == "RETR":
            number = int(arg.split()[0])
            content = b"".join(line + b"\r\n" for line in lines)
            assert content in self.contents, (what, content[:300])
            assert self.seen.setdefault(number, content) == content, what
            assert first == b"+OK %d octets" % len(content), (what, first, len(content))
        elif verb in ("LIST", "UIDL"):
            live = self.count - len(self.deleted)
            assert len(lines) == live, (what, lines, self.deleted)
            numbers = [int(line.split()[0]) for line in lines]
            assert numbers == [n for n in range(1, self.count + 1) if n not in self.deleted], what
        elif verb == "TOP":
            number = int(arg.split()[0])
            content = b"".join(line + b"\r\n" for line in lines)
            assert any(full.startswith(content) for full in self.contents), (what, content[:300])
            if number in self.seen:
                assert self.seen[number].startswith(content), what


POP3_MESSAGES = (
    b"Subject: one\r\n\r\nfirst message\r\n.\r\n..\r\n.leading dot\r\n",
    b"Subject: two\r\nX-8bit: \xc3\xa9\r\n\r\n" + b"y" * 900 + b"\r\nend\r\n",
    b"Subject: three\r\n\r\n" + b"".join(b"line %d\r\n" % n for n in range(40)),
)


def pop3_payload(rng: random.Random, logged_in: bool) -> bytes:
    if rng.random() < 0.1:
        return garbage(rng)
    verb = rng.choice(POP3_VERBS if rng.random() < 0.8 else ("RETR", "TOP", "DELE", "LIST", "UIDL"))
    if not logged_in and verb == "PASS" and rng.random() < 0.5:
        verb = "USER"
    arg = rng.choice(POP3_ARGS).encode()
    line = verb.encode() + (b" " + arg if arg or rng.random() < 0.2 else b"")
    if rng.random() < 0.5:
        line = mutate(rng, line)
    return line


def test_pop3_command_fuzz(make_server) -> None:
    server = make_server(CFG_DNS_SERVERS="127.0.0.1:9")
    server.setup_mail({DOMAIN: {"mick": "secret"}})
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=TIMEOUT) as client:
        for message in POP3_MESSAGES:
            assert client.sendmail("a@x.test", ["mick@acme.test"], message) == {}
    wait_until(lambda: len(messages(server)) == len(POP3_MESSAGES), TIMEOUT, "three messages")
    maildir = server.maildir("mick", DOMAIN)

    def stored() -> dict[str, bytes]:
        out = {}
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(maildir, sub)):
                with open(os.path.join(maildir, sub, name), "rb") as handle:
                    out[name.split(":", 1)[0]] = handle.read()
        return out

    originals = stored()
    contents = {data.replace(b"\n", b"\r\n") for data in originals.values()}
    fuzz = PopFuzz(server, contents)
    rng = random.Random(POP3_SEED)

    # two deliberate failed logins with odd names (the IP throttle lets three go free)
    pop = fuzz.connect(login=False)
    pop.send(b"USER ../../etc/passwd\x00\xff\r\nPASS \xff\x00x\r\n")
    assert pop.line().startswith(b"+OK")
    assert pop.line().startswith(b"-ERR [AUTH]")
    pop.send(b"AUTH PLAIN " + b64(b"\0nobody\xff@acme.test\0pw").encode() + b"\r\n")
    assert pop.line().startswith(b"-ERR [AUTH]")
    fuzz.errors += 2
    # ... and SASL data that never reaches a password check
    for response in (b"=", b"*", b"!!!!", b"AGI=", b64(b"a\0b\0c\0d").encode(), b"\xff\xfe",
                     b"A" * 3000):
        pop.send(b"AUTH PLAIN\r\n")
        assert pop.line() == b"+ ", response
        pop.send(response + b"\r\n")
        answer = pop.line()
        assert answer.startswith(b"-ERR "), (response, answer)
        fuzz.errors += 1
        if fuzz.errors > POP3_MAX_ERRORS - 4:
            fuzz.disconnect()
            pop = fuzz.connect(login=False)

    # 150 lines before login, then 250 in the transaction state (the event loop)
    for logged_in, count in ((False, 150), (True, 250)):
        fuzz.disconnect()
        fuzz.connect(login=logged_in)
        for _ in range(count):
            payload = pop3_payload(rng, logged_in)
            while not fuzz.acceptable(payload):
                payload = pop3_payload(rng, logged_in)
            fuzz.exchange(payload)
            if fuzz.pop is None:
                fuzz.connect(login=logged_in)
    for number in range(1, len(POP3_MESSAGES) + 1):   # every message at least once
        for command in (b"RSET", b"RETR %d" % number, b"LIST %d" % number, b"TOP %d 0" % number,
                        b"TOP %d 3" % number, b"UIDL %d" % number):
            fuzz.exchange(command)
    assert fuzz.replies >= 400
    assert sorted(fuzz.seen) == [1, 2, 3]
    assert set(fuzz.seen.values()) == contents

    # a session that marks everything and then drops the connection changes nothing
    pop = fuzz.pop
    assert pop is not None
    pop.send(b"DELE 1\r\nDELE 2\r\nDELE 3\r\n")
    for _ in range(3):
        line = pop.line()
        assert line.startswith((b"+OK", b"-ERR")), line
    hang_up(pop)                              # no QUIT: the marks must be forgotten
    fuzz.pop = None

    def relogin() -> PopWire | None:
        client = PopWire(server.pop3_port)
        client.send(b"USER mick@acme.test\r\nPASS secret\r\n")
        client.line()
        if client.line().startswith(b"+OK"):
            return client
        client.send(b"QUIT\r\n")
        client.line()
        hang_up(client)
        return None

    pop = wait_until(relogin, TIMEOUT, "the dropped session's lock to go")
    pop.send(b"STAT\r\nQUIT\r\n")
    assert pop.line().startswith(b"+OK 3 "), "all three messages are still there"
    assert pop.line().startswith(b"+OK")
    hang_up(pop)
    after = stored()
    assert sorted(after) == sorted(originals), "QUIT without DELE removed or renamed mail"
    assert after == originals
    local_delivery_works(server)
    assert_healthy(server)


# ---------------------------------------------------------------- management port
REMT_SEED = 4501
REMT_LINE = 8192
REMT_MAX_ERRORS = 20
DATA_FILES = ("user_data", "domain_data", "alias_data", "deny_data", "mlist_data",
              "mlistuser_data")
DATA_GROUPS = ("USER", "DOMAIN", "ALIAS", "DENY", "MLIST", "MLISTUSER")
LISTING_WORDS = {"LIST", "SHOW", "HELP", "RESOLV"}

# Values refused whatever is cut off their end (a LF or a truncation may end the line
# anywhere): each starts with a character its field never takes.
BAD_LOCAL = ("../x", "/x", ".x", "..", "(x)", "@x", "<x>", ",x", "é", '"a b"', '"a\tb"', '""',
             "\\x", "[x]", ":x", ";x", "\u212ax", "\x7fx", "·x")
BAD_DOMAIN = ("\u212a.test", "../acme.test", "/acme.test", ".acme.test", "-acme.test", "*.test", "[1.2.3.4]",
              "é.test", '"acme test"', "@acme.test", "..", "_x..test", ":x")
BAD_MAILBOX = ("<a@x.test>", "@x.test", ".a@x.test", "a..b@x.test", '"a b"@x.test', "/a@x.test",
               "é@x.test", "mick")
BAD_NUMBER = ("-1", "x1", "²", "\u0661", "0x10", " 1", "+1", "1e3", "99999999999999999999",
              "1099511627777", "1.5", "")
BAD_PATH = ("../x", "relative/x", "./x", "/", "//", "/tmp/../etc", '"/tmp/a\tb"', "",
            "~/mail", "/tmp/x/../../etc")
BAD_IP = ("x1.2.3.4", "/24", "[::1]", "g::1", "-1", "é", "1.2.3.4/33")


def bad_remote_commands(maildir: str) -> list[tuple[str, str]]:
    """Data-changing commands that must each be refused, with the part that makes them
    so (the bad parameter, put first; or the whole line), which mutations leave alone."""
    out: list[str] = []
    for bad in BAD_LOCAL:
        out += [f"USER ADD NAME={bad} DOMAIN={DOMAIN} PASS=x",
                f"USER MOD NAME={bad} DOMAIN={DOMAIN} QUOTA=10",
                f"USER DEL NAME={bad} DOMAIN={DOMAIN}",
                f"ALIAS ADD NAME={bad} DOMAIN={DOMAIN} FORWARD=mick@{DOMAIN}",
                f"ALIAS DEL NAME={bad} DOMAIN={DOMAIN}",
                f"MLIST ADD NAME={bad} DOMAIN={DOMAIN}",
                f"MLIST DEL NAME={bad} DOMAIN={DOMAIN}"]
    for bad in BAD_DOMAIN:
        out += [f"DOMAIN ADD NAME={bad}", f"DOMAIN DEL NAME={bad}",
                f"DOMAIN MOD NAME={bad} SHOWFOOTER=1",
                f"USER ADD DOMAIN={bad} NAME=newuser", f"USER DEL DOMAIN={bad} NAME=mick",
                f"DENY ADD DOMAININ={bad}", f"MLIST DEL DOMAIN={bad}"]
    for bad in BAD_MAILBOX:
        out += [f"USER MOD FORWARD={bad} NAME=mick DOMAIN={DOMAIN}",
                f"USER ADD FORWARD={bad} NAME=newuser DOMAIN={DOMAIN}",
                f"DOMAIN MOD DEFMAILBOX={bad} NAME={DOMAIN}",
                f"ALIAS MOD FORWARD={bad} NAME=sales DOMAIN={DOMAIN}",
                f"DENY ADD MAILBOXIN={bad}",
                f"MLISTUSER ADD MAILBOX={bad} MLISTNAME=staff MLISTDOMAIN={DOMAIN}"]
    for bad in BAD_NUMBER:
        out += [f"USER MOD QUOTA={bad} NAME=mick DOMAIN={DOMAIN}",
                f"USER ADD MAXINMAILSIZE={bad} NAME=newuser DOMAIN={DOMAIN}",
                f"DOMAIN MOD MAXOUTMAILSIZE={bad} NAME={DOMAIN}",
                f"DOMAIN ADD SHOWFOOTER={bad} NAME=new.test",
                f"MLIST MOD ACCESS={bad} NAME=staff DOMAIN={DOMAIN}"]
    for bad in BAD_PATH:
        out.append(f"USER ADD DIR={bad} NAME=newuser DOMAIN={DOMAIN}")
        if bad:                                  # an empty footer clears it: valid
            out.append(f"DOMAIN MOD MAILINFOOTER={bad} NAME={DOMAIN}")
    for bad in BAD_IP:
        out += [f"DENY ADD IPIN={bad}", f"DENY DEL IPOUT={bad}"]
    pairs = []
    for line in out:
        value_at = line.index("=", line.index(" ", line.index(" ") + 1))
        start = line.rindex(" ", 0, value_at) + 1
        end = line.find(" ", value_at) if " " not in line[value_at:value_at + 2] else value_at + 1
        bad = line[start:end if end > 0 else len(line)]
        if bad.count('"') % 2:                         # a quoted value with a blank in it
            bad = line[start:line.index('"', line.index('"', start) + 1) + 1]
        # with its following blank: nothing inserted after it can join the value
        pairs.append((line, line[start:start + len(bad) + 1] if line[start:].startswith(bad + " ")
                      else bad))
    whole = [
        f"USER ADD DIR={maildir} NAME=newuser DOMAIN={DOMAIN}",      # mick's Maildir
        f"USER ADD DIR={maildir}/sub NAME=newuser DOMAIN={DOMAIN}",
        f"USER MOD PASS=\"a\tb\" NAME=mick DOMAIN={DOMAIN}",
        f"USER MOD PASS= NAME=mick DOMAIN={DOMAIN}",
        f"USER MOD PASS={'p' * 1025} NAME=mick DOMAIN={DOMAIN}",
        f"USER MOD NAME=mick DOMAIN={DOMAIN}",
        "USER MOD NAME=nosuch PASS=x", "USER DEL DOMAIN=acme.test NAME=nosuch",
        f"USER ADD PASS=x NAME=newuser DOMAIN={DOMAIN} EXTRA=1",
        f"USER ADD SHOWFOOTER=1 NAME=newuser DOMAIN={DOMAIN}",
        "USER ADD", "USER ADD NAME=", "USER DEL", "DOMAIN ADD", "DOMAIN DEL NAME=nosuch.test",
        "DOMAIN MOD SHOWFOOTER=4 NAME=acme.test", "DOMAIN MOD MAILINFOOTER=/etc NAME=acme.test",
        "DOMAIN MOD MAILINFOOTER=/nonexistent/footer NAME=acme.test",
        "DOMAIN ADD DEFMAILBOX=x DEFAULTMAILBOX=y NAME=new.test",
        "ALIAS ADD PIPE=\"'unclosed\" NAME=newalias DOMAIN=acme.test",
        "ALIAS ADD PIPE=\"\" NAME=newalias DOMAIN=acme.test",
        "ALIAS ADD PIPE=\"a\x01b\" NAME=newalias DOMAIN=acme.test",
        "ALIAS ADD DOMAIN=acme.test NAME=newalias",
        "ALIAS ADD FORWARD=joe@acme.test NAME=sales DOMAIN=acme.test",
        "ALIAS MOD FORWARD=joe@acme.test NAME=nosuch DOMAIN=acme.test",
        "DENY ADD IPIN=1.2.3.4 IPOUT=1.2.3.4", "DENY ADD", "DENY DEL IPIN=192.0.2.77",
        "DENY DEL FOO", "MLIST ADD ACCESS=3 NAME=newlist DOMAIN=acme.test",
        "MLIST ADD MEMBERS=0 NAME=newlist DOMAIN=acme.test",
        "MLIST MOD NAME=staff DOMAIN=acme.test", "MLIST DEL DOMAIN=acme.test NAME=nosuch",
        "MLISTUSER ADD TYPE=3 MAILBOX=x@y.test MLISTNAME=staff MLISTDOMAIN=acme.test",
        "MLISTUSER ADD MLISTNAME=nosuch MAILBOX=x@y.test MLISTDOMAIN=acme.test",
        "MLISTUSER MOD TYPE=0 MAILBOX=ann@other.test MLISTNAME=staff MLISTDOMAIN=acme.test",
        "MLISTUSER DEL MAILBOX=nobody@nowhere.test",
        "QUEUE DEL ID=../x", 'QUEUE DEL ID="a b"', "QUEUE DEL ID=" + "a" * 200,
        "QUEUE DEL MAILBOX=<x>", "QUEUE RESEND DOMAIN=../x",
        "DNS CACHE FLUSH DOMAIN=../x",
    ]
    return pairs + [(line, line) for line in whole]


READ_ONLY = ("USER LIST ALL", "USER LIST NAME=mick", "USER LIST DOMAIN=acme.test",
             "USER LIST NAME=../x", "USER LIST DOMAIN=../x", "DOMAIN LIST ALL",
             "DOMAIN LIST NAME=acme.test", "DOMAIN LIST NAME=/", "ALIAS LIST ALL",
             "ALIAS LIST NAME=sales DOMAIN=acme.test", "DENY LIST ALL", "DENY LIST IPIN",
             "MLIST LIST ALL", "MLISTUSER LIST ALL", "QUEUE SHOW ALL", "QUEUE SHOW MAILBOX=x",
             "DNS CACHE SHOW ALL", "DNS CACHE SHOW DOMAIN=..", "CONN SMTP SHOW", "CONN POP3 SHOW",
             "CONN IMAP SHOW", "CONN SMTP SHOW EXTRA", "STATUS", "STATUS NOW", "CONF",
             "CONF X=1", "HELP", "HELP USER", "HELP FOO", "HELP USER DOMAIN", "USER HELP",
             "QUEUE HELP", "DNS HELP", "FROB", "USER", "USER FROB", "DNS", "DNS CACHE",
             "X=1", "USER LIST ALL NAME=mick", '"quoted" word', "USER LIST \"ALL\"",
             "LOGIN", 'LOGIN ""', 'LOGIN "unterminated', 'LOGIN "a" "b"', "")


class RemoteFuzz:
    """A management session under fuzzing (harness.Admin on its socket)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.admin: Admin | None = None
        self.logged_in = False
        self.errors = 0
        self.replies = 0
        self.accepted: list[str] = []    # data-changing lines that got +OK

    def connect(self, login: bool) -> Admin:
        if self.admin is None:
            self.admin = Admin(self.server.remt_port, password=None)
            self.admin.sock.settimeout(TIMEOUT)
            assert self.admin.greeting.startswith("+OK eXtremail ")
            self.errors = 0
            self.logged_in = False
        if login and not self.logged_in:
            assert self.admin.cmd("LOGIN system") == "+OK logged in"
            self.logged_in = True
        return self.admin

    def disconnect(self) -> None:
        if self.admin is not None:
            assert self.admin.cmd("QUIT") == "+OK bye"
            assert self.admin.file.read() == b""
            hang_up(self.admin)
            self.admin = None

    @staticmethod
    def remote_view(piece: bytes) -> tuple[str, list[str]]:
        """(text, upper-cased leading words) as RemoteSession.dispatch and the parser cut it."""
        text = without_cr(piece).decode("utf-8", "replace").strip()
        words = []
        for token in re.split(r"[ \t]+", text):
            if not token or "=" in token or '"' in token:
                break
            words.append(token.upper())
        return text, words

    def protocol_error(self, piece: bytes) -> bool:
        """Lines the session counts against its error budget."""
        if too_long(piece, REMT_LINE):
            return True
        text, _ = self.remote_view(piece)
        verb = text.split(" ", 1)[0].upper()
        return not text or (verb in ("LOGIN", "QUIT") and session_view(piece)[0] not in
                            ("LOGIN", "QUIT"))

    def login_attempt(self, piece: bytes) -> bool:
        """A LOGIN the server checks (a failure costs time); QUIT anywhere but last."""
        if too_long(piece, REMT_LINE):
            return False
        text, _ = self.remote_view(piece)
        verb, arg = session_view(piece)
        if text.split(" ", 1)[0].upper() != "LOGIN" or verb != "LOGIN":
            return False
        value = arg.strip()
        if not value:
            return False
        if value.startswith('"'):
            return value.count('"') == 2 and value.endswith('"') and len(value) > 2
        return True

    def acceptable(self, payload: bytes) -> bool:
        lines = pieces(payload)
        for index, piece in enumerate(lines):
            if self.login_attempt(piece):
                return False
            text, _ = self.remote_view(piece)
            if (not too_long(piece, REMT_LINE) and session_view(piece)[0] == "QUIT"
                    and text.split(" ", 1)[0].upper() == "QUIT" and index != len(lines) - 1):
                return False
        return True

    def exchange(self, payload: bytes, must_fail: bool) -> None:
        lines = pieces(payload)
        admin = within_budget(self, sum(map(self.protocol_error, lines)), REMT_MAX_ERRORS)
        admin.send(payload + b"\r\n")
        for index, piece in enumerate(lines):
            what = f"piece {index} of {payload[:300]!r} (logged in: {self.logged_in})"
            first = admin.line()
            self.replies += 1
            assert_no_leak(first)
            assert re.match(r"(\+OK|-ERR) \S", first), (what, first)
            if self.protocol_error(piece):
                self.errors += 1
                assert first.startswith("-ERR"), (what, first)
                continue
            text, words = self.remote_view(piece)
            verb = text.split(" ", 1)[0].upper()
            if not self.logged_in and verb not in ("HELP", "QUIT", "LOGIN"):
                assert first.startswith("-ERR"), (what, "answered before login", first)
            if first.startswith("+OK") and (any(w in LISTING_WORDS for w in words[:3])
                                            or words[:1] in (["STATUS"], ["CONF"])):
                rows = []
                while True:
                    row = admin.line()
                    if row == ".":
                        break
                    assert not row.startswith(".") or row.startswith(".."), (what, row)
                    rows.append(row)
                assert_no_leak("\n".join(rows))
            elif first.startswith("+OK") and words[:1] and words[0] in DATA_GROUPS:
                self.accepted.append(f"{payload!r} -> {first}")
            if must_fail and words[:1] and words[0] in DATA_GROUPS:
                assert first.startswith("-ERR"), (what, "a bad command was accepted", first)
            if verb == "QUIT" and session_view(piece)[0] == "QUIT":
                assert first == "+OK bye" and admin.file.read() == b"", what
                hang_up(admin)
                self.admin = None
                return


def data_snapshot(server: ServerProcess) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for name in DATA_FILES:
        try:
            with open(server.path("data", name), "rb") as handle:
                out[name] = handle.read()
        except FileNotFoundError:
            out[name] = None
    return out


def listing(server: ServerProcess, command: str) -> list[str]:
    admin = server.admin()
    first, rows = admin.listing(command)
    hang_up(admin)
    assert first.startswith("+OK"), (command, first)
    return rows


def test_remote_command_fuzz(make_server) -> None:
    server = make_server(CFG_DNS_SERVERS="127.0.0.1:9")
    server.setup_mail({DOMAIN: {"mick": "secret", "joe": "secret"}, "other.test": {"ann": "x"}})
    server.admin_do(f"ALIAS ADD NAME=sales DOMAIN={DOMAIN} FORWARD=mick@{DOMAIN}",
                    f"MLIST ADD NAME=staff DOMAIN={DOMAIN}",
                    f"MLISTUSER ADD MAILBOX=ann@other.test MLISTNAME=staff MLISTDOMAIN={DOMAIN}",
                    "DENY ADD IPIN=192.0.2.9")
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=TIMEOUT) as client:
        client.sendmail("a@x.test", [f"mick@{DOMAIN}"], b"Subject: x\r\n\r\nx\r\n")
    wait_until(lambda: messages(server), TIMEOUT, "mick's Maildir")
    users = listing(server, "USER LIST ALL")
    domains = listing(server, "DOMAIN LIST ALL")
    assert users == ["ann@other.test", "joe@acme.test", "mick@acme.test"]
    assert domains == ["acme.test", "other.test"]
    before = data_snapshot(server)

    rng = random.Random(REMT_SEED)
    bad = [(line.encode(), keep.encode())
           for line, keep in bad_remote_commands(server.maildir("mick", DOMAIN))]
    fuzz = RemoteFuzz(server)
    for logged_in in (False, True):
        fuzz.connect(logged_in)
        # every bad command once as written, then mutated around its bad part
        for line, _ in bad:
            fuzz.exchange(line, must_fail=True)
        for _ in range(250):
            kind = rng.random()
            if kind < 0.55:
                payload = mutate_around(rng, *rng.choice(bad))
                must_fail = True
            elif kind < 0.9:
                payload = mutate(rng, rng.choice(READ_ONLY).encode())
                must_fail = False
            else:
                payload = garbage(rng)
                must_fail = False
            if not fuzz.acceptable(payload):
                continue
            fuzz.exchange(payload, must_fail)
            if fuzz.admin is None:
                fuzz.connect(logged_in)
        fuzz.disconnect()
    assert fuzz.replies >= 800
    assert fuzz.accepted == [], "garbage changed the data"
    assert data_snapshot(server) == before
    assert listing(server, "USER LIST ALL") == users
    assert listing(server, "DOMAIN LIST ALL") == domains
    assert listing(server, "ALIAS LIST ALL") == ["sales@acme.test"]
    server.restart()                            # the files still load
    assert listing(server, "USER LIST ALL") == users
    local_delivery_works(server)
    assert_healthy(server)


# ---------------------------------------------------------------- what the battery found (fixed)
def test_invalid_utf8_in_smtp_argument_is_logged_escaped(mx: ServerProcess) -> None:
    """Each refused sender is logged, its bytes that are not UTF-8 as escapes: written
    as they came, one 0xFF byte made the log's write fail and lost that line and every
    other record of the same batch."""
    raw = Raw(mx.smtp_port, timeout=TIMEOUT)
    assert raw.cmd("EHLO fuzz.test")[0] == 250
    assert raw.cmd(b"MAIL FROM:<a@x.test\xff>\r\n")[0] == 501
    assert raw.cmd("QUIT")[0] == 221
    hang_up(raw)
    marker = Raw(mx.smtp_port, timeout=TIMEOUT)
    assert marker.cmd("EHLO marker.test")[0] == 250
    assert marker.cmd("QUIT")[0] == 221
    hang_up(marker)
    mx.logged("EHLO marker.test", TIMEOUT)
    assert "MAIL FROM <a@x.test\\xff>" in mx.log_text()
    assert "Traceback" not in server_stderr(mx)


def test_remote_dir_refuses_the_root_however_spelt(server: ServerProcess) -> None:
    server.setup_mail({DOMAIN: {}})
    admin = server.admin()
    for path in ("/", "//"):
        answer = admin.cmd(f"USER ADD NAME=rooted DOMAIN={DOMAIN} PASS=x DIR={path}")
        assert answer.startswith("-ERR"), (path, answer)
    hang_up(admin)


def test_remote_domain_name_refuses_non_ascii_that_lowers_to_ascii(server: ServerProcess) -> None:
    admin = server.admin()
    answer = admin.cmd("DOMAIN ADD NAME=\u212a.test")
    hang_up(admin)
    assert answer.startswith("-ERR"), answer


@pytest.mark.parametrize("protocol", ["pop3", "smtp"])
def test_stop_says_goodbye_to_a_session_idle_since_adoption(mx: ServerProcess, protocol: str) -> None:
    client: PopWire | Raw
    if protocol == "pop3":
        client = PopWire(mx.pop3_port)
        client.send(b"USER mick@acme.test\r\nPASS secret\r\n")
        assert client.line().startswith(b"+OK") and client.line().startswith(b"+OK")
        goodbye = b"-ERR [SYS/TEMP] Server shutting down"
    else:
        client = Raw(mx.smtp_port, timeout=TIMEOUT)
        assert client.cmd("EHLO fuzz.test")[0] == 250    # the loop adopts it here
        goodbye = b"421 4.3.2 "
    try:
        assert mx.proc is not None
        mx.proc.terminate()                               # smtpd stop: SIGTERM
        client.sock.settimeout(2)
        try:
            line = client.file.readline()
        except TimeoutError:
            line = b"(nothing within 2 s)"
        assert line.startswith(goodbye), line
    finally:
        hang_up(client)                                   # lets the stop finish now


def test_client_control_characters_are_escaped_in_the_log(mx: ServerProcess) -> None:
    raw = Raw(mx.smtp_port, timeout=TIMEOUT)
    assert raw.cmd("EHLO fuzz.test")[0] == 250
    assert raw.cmd(b"MAIL FROM:<a\x1b[2J\rFORGED\x00@x.test>\r\n")[0] == 501
    assert raw.cmd("QUIT")[0] == 221
    hang_up(raw)
    mx.logged("FORGED", TIMEOUT)
    controls = re.findall(r"[\x00-\x08\x0b-\x1f\x7f]", mx.log_text())
    assert controls == [], controls
