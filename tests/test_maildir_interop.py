"""A message delivered here is read back unchanged by Dovecot and by mutt (Debian's).

Dovecot: its ``imap`` binary run privately (its own dovecot.conf in a temp dir,
``mail_location`` = the user's Maildir, pre-authenticated over stdin/stdout, which is
how Dovecot is run over SSH) and spoken to with ``imaplib.IMAP4_stream``.  Dovecot will
not open mail as root, so the Maildir is handed to ``nobody`` first.  mutt: batch mode
under ``script`` (it wants a terminal), a private muttrc whose ``push`` pipes the message
raw to a file and quits.

"Unchanged": the bytes sent with smtplib equal the bytes read back, once the headers we
add (Return-Path, Delivered-To, Received) are taken off the top; Dovecot's RFC822.SIZE
equals the size it reads (so the ``W=`` in our file names is right).
"""

from __future__ import annotations

import base64
import glob
import imaplib
import os
import shutil
import smtplib
import subprocess
import tempfile

import pytest

from harness import ServerProcess

DOVECOT_IMAP = "/usr/lib/dovecot/imap"
ADDED = (b"return-path:", b"delivered-to:", b"received:")

MESSAGE = (
    b"From: Ann <ann@remote.test>\r\n"
    b"To: mick@acme.test\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= interop\r\n"
    b"Message-ID: <interop-1@remote.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    + "Grüße, ça va?\r\n".encode() +
    b".a line starting with a dot\r\n"
    b"..two dots\r\n"
    b"From the start of a line (an mbox trap)\r\n"
    b"trailing spaces   \r\n"
    b"\ttab\r\n"
    + b"L" * 998 + b"\r\n"
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: application/octet-stream; name=blob.bin\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    + base64.encodebytes(bytes(range(256)) * 8).replace(b"\n", b"\r\n") +
    b"--b1--\r\n"
)


def strip_added(data: bytes, eol: bytes) -> bytes:
    """``data`` without the trace headers we prepend (with their folded lines)."""
    lines = data.split(eol)
    while lines and (lines[0].lower().startswith(ADDED) or (lines[0][:1] in (b" ", b"\t"))):
        lines.pop(0)
    return eol.join(lines)


@pytest.fixture
def delivered():
    """A server whose base directory ``nobody`` can traverse (pytest's temp dirs are 0700)."""
    base = tempfile.mkdtemp(prefix="extremail-interop-")
    os.chmod(base, 0o711)
    server = ServerProcess(os.path.join(base, "base"))
    try:
        server.start()
        server.setup_mail({"acme.test": {"mick": "x"}})
        with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
            assert client.sendmail("ann@remote.test", ["mick@acme.test"], MESSAGE,
                                   mail_options=["BODY=8BITMIME"]) == {}
        [path] = glob.glob(os.path.join(server.maildir("mick", "acme.test"), "new", "*"))
        yield server, path
    finally:
        server.stop()
        shutil.rmtree(base)


def test_dovecot_reads_the_message_back_unchanged(delivered, tmp_path) -> None:
    if not os.path.exists(DOVECOT_IMAP) or os.geteuid() != 0:
        pytest.skip("needs Debian's dovecot-imapd and root (to hand the Maildir to nobody)")
    server, path = delivered
    maildir = server.maildir("mick", "acme.test")
    subprocess.run(["chown", "-R", "nobody:nogroup", maildir], check=True)
    for parent in (server.base, server.path("mbox"), server.path("mbox", "acme.test")):
        os.chmod(parent, os.stat(parent).st_mode | 0o001)  # nobody may pass through
    conf = tmp_path / "dovecot.conf"
    conf.write_text(f"base_dir = {tmp_path}/run\nlog_path = {tmp_path}/dovecot.log\n"
                    f"mail_location = maildir:{maildir}\nssl = no\nmail_uid = nobody\n"
                    "mail_gid = nogroup\nfirst_valid_uid = 1\n")
    imap = imaplib.IMAP4_stream(f"env -i USER=nobody HOME={tmp_path} {DOVECOT_IMAP} -c {conf}")
    try:
        assert imap.state == "AUTH"  # PREAUTH
        typ, data = imap.select("INBOX", readonly=True)
        assert (typ, data) == ("OK", [b"1"])
        typ, data = imap.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
        assert typ == "OK", data
        envelope, fetched = data[0]
        assert f"RFC822.SIZE {len(fetched)}".encode() in envelope
        assert f"W={len(fetched)}" in os.path.basename(path)
        assert fetched.startswith(b"Return-Path: <ann@remote.test>\r\nDelivered-To: mick@acme.test\r\n"
                                  b"Received: from ")
        assert strip_added(fetched, b"\r\n") == MESSAGE
        typ, data = imap.fetch("1", "(BODYSTRUCTURE)")
        structure = data[0].upper()
        assert b'("TEXT" "PLAIN" ("CHARSET" "UTF-8")' in structure and b'"MIXED"' in structure
        assert b'"APPLICATION" "OCTET-STREAM"' in structure
    finally:
        imap.logout()
    log = (tmp_path / "dovecot.log").read_text() if (tmp_path / "dovecot.log").exists() else ""
    assert "Error" not in log, log


def test_mutt_reads_the_message_back_unchanged(delivered, tmp_path) -> None:
    if not shutil.which("mutt") or not shutil.which("script"):
        pytest.skip("needs Debian's mutt and script")
    server, path = delivered
    out = tmp_path / "piped"
    muttrc = tmp_path / "muttrc"
    muttrc.write_text("set pipe_decode=no\nset wait_key=no\nset quit=yes\nset mbox_type=Maildir\n"
                      f"set folder={tmp_path}\nset header_cache=\nset move=no\n"
                      f'push "<pipe-message>cat > {out}<enter><quit>"\n')
    maildir = server.maildir("mick", "acme.test")
    subprocess.run(["script", "-qc", f"mutt -n -F {muttrc} -R -f {maildir}", "/dev/null"],
                   env={**os.environ, "TERM": "xterm", "HOME": str(tmp_path)}, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    piped = out.read_bytes()
    assert piped.startswith(b"Return-Path: <ann@remote.test>\nDelivered-To: mick@acme.test\n")
    assert strip_added(piped, b"\n") == MESSAGE.replace(b"\r\n", b"\n")
    with open(path, "rb") as handle:
        assert handle.read() == piped
