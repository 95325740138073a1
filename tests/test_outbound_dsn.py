"""What the remote transport's outcomes turn into (RFC 3464): the queue manager, driven by
a fake clock, with the real transport, a loopback DNS server and a loopback sink.
A remote 5xx and an expiry give a "failed" report, a long deferral one "delayed" report;
each lands in the local sender's Maildir with the remote MTA and its full reply."""

from __future__ import annotations

import email
import os
import threading
import time

import pytest
from dnsserver import DNSServer
from harness import wait_until
from smtpsink import SMTPSink

from extremail import config
from extremail.control import Server
from extremail.envelope import Envelope
from extremail.queue.manager import QueueManager
from extremail.queue.spool import Recipient
from extremail.routing import REMOTE
from extremail.services import _outbound
from extremail.store import Domain, User

MESSAGE = b"From: mick@acme.test\r\nTo: x@dest.test\r\nSubject: report me\r\n\r\nbody\r\n"
TABLE = {"dest.test": [("MX", "10 mx1.dest.test.")], "mx1.dest.test": [("A", "127.0.0.2")]}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now


@pytest.fixture
def queue(tmp_path):
    """A started QueueManager on a fake clock with the real outbound components."""
    dns_server = DNSServer(TABLE)
    sink = SMTPSink("127.0.0.2", 0)
    cfg = config.build(str(tmp_path), {
        "CFG_DNS_SERVERS": dns_server.setting, "PORT_SMTP_OUT": str(sink.port),
        "TIMEOUT_DNS": "2", "TIMEOUT_SOCK": "5", "CFG_NUM_QUEUE": "1", "CFG_MIN_QUEUE": "10",
        "CFG_HOR_RETRY_MAIL": "48", "CFG_HOR_DELAY_DSN": "4", "CFG_HOSTNAME": "mx.acme.test",
        "CFG_LOCALDOMAIN": "acme.test", "CFG_POSTMASTER": "postmaster@acme.test"})
    server = Server(cfg)
    server.store.add_domain(Domain("acme.test"))
    server.store.add_user(User("mick", "acme.test"))
    _outbound(server)  # ctx.dns, ctx.transport, exactly as the daemon wires them
    clock = Clock()
    manager = QueueManager(server.ctx, clock)
    server.ctx.queue = manager
    manager.start()
    state = type("State", (), {})()
    state.manager, state.clock, state.sink, state.server = manager, clock, sink, server
    yield state
    manager.stop()
    sink.close()
    dns_server.close()


def submit(state, rcpt: str):
    envelope = Envelope("mick@acme.test", [rcpt], arrived=state.clock.now)
    return state.manager.submit(envelope, MESSAGE, [Recipient(rcpt, rcpt, REMOTE)])


def reports(state) -> list[email.message.Message]:
    new = os.path.join(state.server.store.user_dir(state.server.store.find_user("mick", "acme.test")),
                       "new")
    if not os.path.isdir(new):
        return []
    return [email.message_from_bytes(open(os.path.join(new, name), "rb").read())
            for name in sorted(os.listdir(new))]


def status_fields(report: email.message.Message) -> str:
    part = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    return "\n".join(str(block) for block in part.get_payload())


def attempted(state, message, count: int) -> bool:
    with state.manager.cond:
        idle = message.id not in state.manager.busy
    return idle and message.recipients[0].attempts >= count


def advance(state, seconds: float) -> None:
    with state.clock.lock:
        state.clock.now += seconds
    with state.manager.cond:
        state.manager.cond.notify_all()


def test_remote_5xx_gives_a_failed_report(queue):
    queue.sink.rcpt_replies = {"x@dest.test": "550 5.1.1 <x@dest.test>: no such user here"}
    submit(queue, "x@dest.test")
    [report] = wait_until(lambda: reports(queue), 20, "the failed report")
    assert report.get_content_type() == "multipart/report"
    assert report["From"] and "postmaster@acme.test" in report["From"]
    fields = status_fields(report)
    assert "Final-Recipient: rfc822; x@dest.test" in fields
    assert "Action: failed" in fields and "Status: 5.1.1" in fields
    assert "Remote-MTA: dns; mx1.dest.test" in fields
    assert "Diagnostic-Code: smtp; 550 5.1.1 <x@dest.test>: no such user here" in fields
    assert queue.sink.messages == []


def test_long_deferral_gives_one_delayed_report_then_expiry_a_failed_one(queue):
    queue.sink.rcpt_replies = {"x@dest.test": "451 4.2.1 mailbox busy, try later"}
    message = submit(queue, "x@dest.test")
    wait_until(lambda: attempted(queue, message, 1), 20, "the first attempt")
    assert reports(queue) == []
    advance(queue, 4 * 3600 + 60)  # past CFG_HOR_DELAY_DSN: a retry and the delayed report
    wait_until(lambda: attempted(queue, message, 2), 20, "the second attempt")
    [delayed] = wait_until(lambda: reports(queue), 10, "the delayed report")
    fields = status_fields(delayed)
    assert "Action: delayed" in fields and "Status: 4.2.1" in fields
    assert "Remote-MTA: dns; mx1.dest.test" in fields
    assert "Diagnostic-Code: smtp; 451 4.2.1 mailbox busy, try later" in fields
    advance(queue, 3600)
    wait_until(lambda: attempted(queue, message, 3), 20, "the third attempt")
    assert len(reports(queue)) == 1  # "delayed" goes out once
    advance(queue, 44 * 3600)  # past CFG_HOR_RETRY_MAIL: the message expires
    wait_until(lambda: len(reports(queue)) == 2, 20, "the failed report")
    actions = sorted(status_fields(r).split("Action: ")[1].split("\n")[0] for r in reports(queue))
    assert actions == ["delayed", "failed"]
    fields = next(f for f in map(status_fields, reports(queue)) if "Action: failed" in f)
    assert "Status: 4.4.7" in fields
    wait_until(lambda: message.id not in queue.manager.messages, 10, "the removal")
    assert len(queue.sink.sessions) == 3  # an expired recipient is not tried again
