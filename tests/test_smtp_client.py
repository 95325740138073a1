"""The outbound SMTP client against a loopback sink: per-recipient results, EHLO/HELO,
SIZE, PIPELINING on the wire, 8BITMIME, dot-stuffing, and peers that misbehave."""

from __future__ import annotations

import socket
import threading

import pytest
from harness import wait_until
from smtpsink import SMTPSink

from extremail.smtp.client import Client, extensions, make_reply, read_lines
from extremail.smtp.connections import ConnectionCache
from extremail.net.lineio import LineIO

MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def sink():
    sinks: list[SMTPSink] = []

    def make(**behaviour) -> SMTPSink:
        sinks.append(SMTPSink("127.0.0.1", 0, **behaviour))
        return sinks[-1]

    yield make
    for item in sinks:
        item.close()


def send(sink: SMTPSink, recipients, data=MESSAGE, sender="a@here.test", timeout=5.0):
    return Client("mx.here.test", timeout).send("peer.test", sink.host, sink.port, sender,
                                                 recipients, data)


def test_per_recipient_results_in_one_transaction(sink):
    peer = sink(rcpt_replies={"bad@x.test": "550 5.1.1 no such user",
                              "later@x.test": "451 4.2.1 try later"})
    attempt = send(peer, ["ok@x.test", "bad@x.test", "later@x.test", "ok2@x.test"])
    codes = {rcpt: (r.code, r.enhanced) for rcpt, r in attempt.replies.items()}
    assert codes == {"ok@x.test": (250, "2.0.0"), "bad@x.test": (550, "5.1.1"),
                     "later@x.test": (451, "4.2.1"), "ok2@x.test": (250, "2.0.0")}
    assert str(attempt.replies["bad@x.test"]) == "550 5.1.1 no such user"
    assert attempt.connected and len(peer.messages) == 1
    assert peer.messages[0].recipients == ["ok@x.test", "ok2@x.test"]
    assert peer.sessions[0].commands[0] == "EHLO mx.here.test"
    assert peer.sessions[0].commands[-1] == "QUIT"


def test_pipelining_sends_mail_rcpts_and_data_in_one_write(sink):
    peer = sink()
    send(peer, ["a@x.test", "b@x.test", "c@x.test"])
    session = peer.sessions[0]
    assert session.buffered_after_mail == 4  # three RCPTs and DATA were there before MAIL's reply
    assert session.commands[1].startswith("MAIL FROM:<a@here.test> SIZE=")


def test_without_pipelining_commands_wait_for_replies(sink):
    peer = sink(extensions=("SIZE 1000",))
    send(peer, ["a@x.test", "b@x.test"])
    assert peer.sessions[0].buffered_after_mail == 0


def test_no_data_when_every_recipient_is_refused(sink):
    peer = sink(rcpt_replies={"a@x.test": "550 5.1.1 no"}, extensions=("SIZE 1000",))
    attempt = send(peer, ["a@x.test"])
    assert attempt.replies["a@x.test"].code == 550
    assert "DATA" not in peer.sessions[0].commands


def test_pipelined_data_after_refused_recipients_gets_no_message(sink):
    peer = sink(rcpt_replies={"a@x.test": "550 5.1.1 no"})
    attempt = send(peer, ["a@x.test"])
    assert str(attempt.replies["a@x.test"]) == "550 5.1.1 no"
    assert peer.sessions[0].commands[-2:] == ["DATA", "QUIT"]  # the sink said 554 to DATA
    assert not peer.messages


def test_a_354_without_valid_recipients_gets_a_lone_dot(sink):
    # RFC 2920 3.1: a DATA accepted although no RCPT was is answered with a single dot.
    peer = sink(rcpt_replies={"a@x.test": "550 5.1.1 no"}, no_rcpt_data_reply="354 go ahead",
                data_reply="554 5.5.1 nothing to deliver")
    attempt = send(peer, ["a@x.test"])
    assert str(attempt.replies["a@x.test"]) == "550 5.1.1 no"
    assert peer.sessions[0].commands[-2:] == ["DATA", "QUIT"]
    assert not peer.messages


def test_a_cached_connection_carries_the_next_message(sink):
    peer = sink()
    cache = ConnectionCache()
    client = Client("mx.here.test", 5, cache)
    first = client.send("peer.test", peer.host, peer.port, "a@here.test", ["x@x.test"], MESSAGE)
    second = client.send("peer.test", peer.host, peer.port, "b@here.test", ["y@x.test"], MESSAGE)
    assert first.opened and not second.opened and second.connected
    assert second.notes == ["connection reused (2)"]
    assert [m.recipients for m in peer.messages] == [["x@x.test"], ["y@x.test"]]
    assert len(peer.sessions) == 1 and cache.idle() == 1
    cache.stop()
    wait_until(lambda: peer.sessions[0].ended, 5, "the session to end")
    assert peer.sessions[0].commands == [
        "EHLO mx.here.test", "MAIL FROM:<a@here.test> SIZE=22", "RCPT TO:<x@x.test>", "DATA",
        "MAIL FROM:<b@here.test> SIZE=22", "RCPT TO:<y@x.test>", "DATA", "QUIT"]


def test_a_session_is_kept_after_the_final_reply_and_dropped_after_a_refusal(sink):
    peer = sink(data_reply="451 4.3.0 try later")
    cache = ConnectionCache()
    attempt = Client("mx.here.test", 5, cache).send("peer.test", peer.host, peer.port, "",
                                                    ["x@x.test"], MESSAGE)
    assert attempt.replies["x@x.test"].code == 451
    # the end of data was answered, so the session is clean and kept
    assert cache.idle() == 1
    peer.mail_reply = "421 4.3.2 going down"
    again = Client("mx.here.test", 5, cache).send("peer.test", peer.host, peer.port, "",
                                                  ["x@x.test"], MESSAGE)
    assert again.replies["x@x.test"].code == 421 and cache.idle() == 0
    wait_until(lambda: peer.sessions[0].ended, 5, "the session to end")
    assert peer.sessions[0].commands[-1] == "QUIT"


def test_a_connection_the_peer_dropped_is_replaced_by_a_fresh_one(sink):
    peer = sink(drop_at_mail=2)  # the parked session dies at its second MAIL, unanswered
    cache = ConnectionCache()
    client = Client("mx.here.test", 5, cache)
    client.send("peer.test", peer.host, peer.port, "", ["x@x.test"], MESSAGE)
    second = client.send("peer.test", peer.host, peer.port, "", ["y@x.test"], MESSAGE)
    assert second.opened and second.replies["y@x.test"].code == 250
    assert [m.recipients for m in peer.messages] == [["x@x.test"], ["y@x.test"]]
    assert len(peer.sessions) == 2


def test_a_parked_connection_closed_by_the_peer_is_not_taken(sink):
    peer = sink()
    cache = ConnectionCache()
    client = Client("mx.here.test", 5, cache)
    client.send("peer.test", peer.host, peer.port, "", ["x@x.test"], MESSAGE)
    peer.close_sessions()
    wait_until(lambda: peer.sessions[0].ended, 5, "the sink to hang up")
    assert cache.take(peer.host, peer.port) is None and cache.idle() == 0


def test_helo_fallback_when_ehlo_is_refused(sink):
    peer = sink(ehlo="502 5.5.1 EHLO not implemented")
    attempt = send(peer, ["a@x.test"])
    assert attempt.replies["a@x.test"].code == 250
    assert peer.sessions[0].commands[:3] == ["EHLO mx.here.test", "HELO mx.here.test",
                                             "MAIL FROM:<a@here.test>"]


def test_size_limit_of_the_peer_fails_before_sending(sink):
    peer = sink(extensions=("SIZE 10",))
    attempt = send(peer, ["a@x.test", "b@x.test"])
    assert {r.code for r in attempt.replies.values()} == {552}
    assert not any(c.startswith("MAIL") for c in peer.sessions[0].commands)


def test_8bitmime_declared_only_when_offered_and_needed(sink):
    eight = b"Subject: caf\xc3\xa9\r\n\r\nd\xc3\xa9j\xc3\xa0\r\n"
    offered = sink()
    send(offered, ["a@x.test"], eight)
    assert offered.sessions[0].commands[1].endswith(" BODY=8BITMIME")
    send(offered, ["a@x.test"])
    assert "BODY=" not in offered.sessions[1].commands[1]
    plain = sink(extensions=("PIPELINING",))
    attempt = send(plain, ["a@x.test"], eight)
    assert attempt.replies["a@x.test"].code == 250 and attempt.notes
    assert plain.messages[0].data + b"\r\n" == eight


def test_dot_stuffing_round_trip(sink):
    peer = sink()
    body = b"Subject: dots\r\n\r\n.\r\n..two\r\n.three\r\nend.\r\n."
    send(peer, ["a@x.test"], body)
    raw = peer.messages[0].raw
    assert b"\r\n..\r\n...two\r\n..three\r\n" in raw and raw.endswith(b"\r\n..")
    assert peer.messages[0].data == body


@pytest.mark.parametrize("behaviour, code", [
    ({"greeting": "554 5.7.1 go away"}, 451),  # the next MX host, or a later round
    ({"greeting": "421 4.3.2 busy"}, 421),
    ({"mail_reply": "451 4.3.0 sender check failed"}, 451),
    ({"mail_reply": "553 5.7.1 sender refused"}, 553),
    ({"data_reply": "452 4.3.1 disk full"}, 452),
    ({"data_reply": "554 5.6.0 content rejected"}, 554),
])
def test_whole_transaction_failures_reach_every_recipient(sink, behaviour, code):
    attempt = send(sink(**behaviour), ["a@x.test", "b@x.test"])
    assert [r.code for r in attempt.replies.values()] == [code, code]


def test_connection_refused_is_temporary():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    attempt = Client("me.test", 2).send("peer.test", "127.0.0.1", port, "", ["a@x.test"], MESSAGE)
    assert not attempt.opened and not attempt.connected
    assert attempt.replies["a@x.test"].code == 451


def test_silent_peer_times_out(sink):
    attempt = send(sink(silent=True), ["a@x.test"], timeout=1)
    assert attempt.opened and not attempt.connected
    assert "timeout" in attempt.replies["a@x.test"].text


def serve_once(script: bytes) -> int:
    """A peer that sends ``script`` after connecting, then reads until closed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run() -> None:
        conn, _ = listener.accept()
        conn.sendall(script)
        conn.settimeout(5)
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
        conn.close()
        listener.close()

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1]


@pytest.mark.parametrize("script", [b"hello there\r\n", b"220-first\r\n250 mixed codes\r\n",
                                    b"600 odd code\r\n", b"220 " + b"x" * 5000 + b"\r\n"])
def test_garbage_is_a_temporary_failure(script):
    port = serve_once(script)
    attempt = Client("me.test", 2).send("peer.test", "127.0.0.1", port, "", ["a@x.test"], MESSAGE)
    assert attempt.replies["a@x.test"].code == 451


def test_multiline_replies_and_extensions():
    left, right = socket.socketpair()
    left.sendall(b"250-peer.test hello\r\n250-SIZE 2048\r\n250-pipelining\r\n250 8BITMIME\r\n"
                 b"550-5.1.1 first line\r\n550 5.1.1 second line\r\n")
    io = LineIO(right)
    code, lines = read_lines(io)
    assert code == 250 and extensions(lines) == {"SIZE": "2048", "PIPELINING": "", "8BITMIME": ""}
    reply = make_reply(*read_lines(io))
    assert (reply.code, reply.enhanced) == (550, "5.1.1")
    assert reply.text == "first line second line"
    left.close()
    right.close()
