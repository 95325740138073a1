"""Review findings in outbound delivery.

* A remote server's EHLO ``SIZE`` value that is not an ASCII number (``SIZE ²``) is ignored
  like any other odd value; it used to raise out of the client ("send never raises for the
  peer's behaviour") and the message was never delivered there.
* One domain's unexpected error must not take the outcomes of the other domains of the same
  message with it: they were delivered, and a retry would deliver them twice."""

from __future__ import annotations

import smtplib
from types import SimpleNamespace

import pytest
from dnsserver import DNSServer
from harness import wait_until
from smtpsink import sinks_on_one_port

from extremail.dns import MXHost, Route
from extremail.envelope import Envelope
from extremail.queue.remote import RemoteTransport
from extremail.queue.spool import QueuedMessage
from extremail.reply import Reply
from extremail.smtp.client import Attempt

TABLE = {
    "dest.test": [("MX", "10 mx.dest.test.")],
    "mx.dest.test": [("A", "127.0.0.2")],
    "other.test": [("MX", "10 mx.other.test.")],
    "mx.other.test": [("A", "127.0.0.4")],
}


@pytest.fixture
def sinks():
    made = sinks_on_one_port(["127.0.0.2", "127.0.0.4"])
    yield {sink.host: sink for sink in made}
    for sink in made:
        sink.close()


def test_odd_size_value_from_the_peer_is_ignored(make_server, sinks) -> None:
    dns = DNSServer(TABLE, ttl=3600)
    try:
        sinks["127.0.0.2"].extensions = ("PIPELINING", "SIZE \u00b2")
        server = make_server(CFG_DNS_SERVERS=dns.setting, PORT_SMTP_OUT=str(sinks["127.0.0.2"].port),
                             TIMEOUT_DNS="2", TIMEOUT_SOCK="5")
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=20) as client:
            client.sendmail("someone@local.test", ["a@dest.test", "c@other.test"],
                            b"Subject: size\r\n\r\nbody\r\n")
        wait_until(lambda: sinks["127.0.0.2"].messages and sinks["127.0.0.4"].messages, 30,
                   "both domains delivered")
        assert sinks["127.0.0.2"].messages[0].recipients == ["a@dest.test"]
    finally:
        dns.close()


class _Cache:
    def route(self, domain: str) -> Route:
        return Route(domain, (MXHost(f"mx.{domain}", 10, (f"192.0.2.{len(domain)}",)),), 25, 60)

    def delivery_round(self, domain: str, reached: bool) -> None:
        pass


class _Client:
    """Delivers to every host but the one of ``broken.test``, where a bug strikes."""

    def send(self, host, address, port, sender, recipients, data) -> Attempt:
        if host == "mx.broken.test":
            raise RuntimeError("a bug")
        attempt = Attempt(host, address, port, opened=True, connected=True)
        attempt.settle(recipients, Reply(250, "2.0.0", "queued"))
        return attempt


def test_one_domain_failing_unexpectedly_keeps_the_others_outcomes(tmp_path) -> None:
    cfg = SimpleNamespace(CFG_SMART_HOST="", CFG_NUM_DELIVERY=5, hostname="mx.local.test",
                          TIMEOUT_SOCK=5)
    store = SimpleNamespace(denies=SimpleNamespace(rows={}))
    ctx = SimpleNamespace(cfg=cfg, store=store, stats=SimpleNamespace(incr=lambda name: None))
    path = tmp_path / "msg"
    path.write_bytes(b"Subject: s\r\n\r\nbody\r\n")
    message = QueuedMessage("id1", Envelope("a@local.test", []), str(path), 20, [])
    transport = RemoteTransport(ctx, _Cache(), None, client=_Client())
    results = transport.deliver(message, ["x@good.test", "y@broken.test", "z@fine.test"])
    assert results["x@good.test"].status == "delivered"
    assert results["z@fine.test"].status == "delivered"
    assert results["y@broken.test"].status == "deferred"
