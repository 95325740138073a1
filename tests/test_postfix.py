"""A real Postfix (Debian's) as our peer, both ways, on loopback only:

(a) eXtremail delivers to Postfix as the remote MTA (found by MX through the loopback DNS
    server; Postfix accepts bench.test into a virtual Maildir);
(b) Postfix relays into eXtremail (its default transport is ``smtp:[127.0.0.1]:OURPORT``)
    and the mail lands in our user's Maildir.

The private instance is the benchmark's (:class:`bench.postfix.Postfix`): its own
main.cf/master.cf in a temp dir, a high loopback port, chroot off, no DNS, a log file;
the system's Postfix configuration and port 25 are never touched.
"""

from __future__ import annotations

import mailbox
import os
import shutil
import smtplib
import tempfile

import pytest
from dnsserver import DNSServer
from harness import wait_until

from bench.peer import DOMAIN
from bench.postfix import Postfix

reason = Postfix.available()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.fixture
def pair(make_server):
    """Our server and a Postfix that relays everything but bench.test to it."""
    dns_server = DNSServer({DOMAIN: [("MX", f"10 mx.{DOMAIN}.")],
                            f"mx.{DOMAIN}": [("A", "127.0.0.1")]})
    server = make_server(start=False, CFG_DNS_SERVERS=dns_server.setting, TIMEOUT_SOCK="10")
    # Postfix's daemons run as user postfix, so pytest's private (0700) tmp_path is closed
    # to them; and maillog_file must lie under maillog_file_prefixes (default /var).
    workdir = tempfile.mkdtemp(prefix="extremail-postfix-", dir="/var/tmp")
    os.chmod(workdir, 0o755)
    postfix = Postfix(workdir, ["alice"], server.smtp_port)
    server.settings["PORT_SMTP_OUT"] = str(postfix.smtp_port)
    server.write_config()
    postfix.start()
    try:
        server.start()
        yield server, postfix
    finally:
        postfix.stop()
        dns_server.close()
        shutil.rmtree(workdir, ignore_errors=True)


def messages(path: str) -> list[mailbox.MaildirMessage]:
    try:
        return list(mailbox.Maildir(path, create=False))
    except (OSError, mailbox.NoSuchMailboxError):
        return []


def test_we_deliver_to_postfix_as_the_remote_mta(pair):
    server, postfix = pair
    body = "Subject: to postfix\r\n\r\nhello Postfix\r\n.dotted line\r\n"
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=20) as client:
        client.sendmail("someone@local.test", [f"alice@{DOMAIN}"], body.encode())
    [received] = wait_until(lambda: messages(postfix.maildir("alice")), 60, "Postfix's Maildir")
    assert received["Subject"] == "to postfix"
    assert ".dotted line" in received.get_payload()
    assert "mx.local.test" in received.as_string()  # our Received: (and our HELO) before its own
    assert server.logged(f"via mx.{DOMAIN} [127.0.0.1]:{postfix.smtp_port}: 250")


def test_postfix_relays_into_our_maildir(pair):
    server, postfix = pair
    server.setup_mail({"acme.test": {"mick": "secret"}})
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=20) as client:
        client.sendmail("sender@elsewhere.test", ["mick@acme.test"],
                        b"Subject: through postfix\r\n\r\nrelayed by Postfix\r\n")
    [received] = wait_until(lambda: messages(server.maildir("mick", "acme.test")), 60, "our Maildir")
    assert received["Subject"] == "through postfix"
    assert "postfix.bench.test" in received.as_string()  # Postfix's Received: line
    assert received.get_payload().strip() == "relayed by Postfix"
