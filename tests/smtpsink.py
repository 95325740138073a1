"""A loopback SMTP server started by tests, playing the remote MX.

``SMTPSink("127.0.0.2", port)`` answers every command; a test sets what it answers:
``rcpt_replies`` (recipient -> reply line, default 250), ``greeting``, ``ehlo`` (a reply
line instead of the 250 EHLO answer, e.g. "502 5.5.1 no EHLO": then HELO is accepted),
``extensions`` (the EHLO keywords), ``mail_reply``, ``data_reply``, ``silent`` (accept
connections, never say anything), ``delay`` (seconds before the greeting).  It records
every session: the commands in order, the raw data as sent (still dot-stuffed), and for
MAIL how many more complete command lines had already arrived before it replied (the
proof of pipelining).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Received:
    mail: str
    recipients: list[str]
    raw: bytes          # as sent, dot-stuffed, without the final ".\r\n"

    @property
    def data(self) -> bytes:
        """Dot-unstuffed (RFC 5321 4.5.2)."""
        lines = self.raw.split(b"\r\n")
        return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@dataclass
class Session:
    peer: str
    commands: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ended: float = 0.0
    buffered_after_mail: int = -1  # complete lines waiting when MAIL was read


class SMTPSink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, **behaviour: object) -> None:
        self.greeting = "220 sink.test ESMTP ready"
        self.ehlo: str | None = None
        self.extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "SIZE 10000000")
        self.mail_reply = "250 2.1.0 sender ok"
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply = "250 2.0.0 queued"
        self.no_rcpt_data_reply = "554 5.5.1 no valid recipients"
        self.drop_at_mail = 0  # close without a reply at the MAIL of this transaction (1 = first)
        self.silent = False
        self.delay = 0.0
        for name, value in behaviour.items():
            if not hasattr(self, name):
                raise TypeError(f"unknown behaviour {name}")
            setattr(self, name, value)
        self.messages: list[Received] = []
        self.sessions: list[Session] = []
        self.connections: list[socket.socket] = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(20)
        self.host, self.port = self.listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn, peer[0]), daemon=True).start()

    def _session(self, conn: socket.socket, peer: str) -> None:
        session = Session(peer)
        with self._lock:
            self.sessions.append(session)
            self.connections.append(conn)
        conn.settimeout(30)
        try:
            if self.silent:
                self._stop.wait(30)
            else:
                time.sleep(self.delay)
                self._talk(conn, session)
        except OSError:
            pass
        finally:
            session.ended = time.monotonic()
            conn.close()

    def _talk(self, conn: socket.socket, session: Session) -> None:
        buffer = bytearray()

        def line() -> str | None:
            while b"\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                buffer.extend(chunk)
            index = buffer.index(b"\r\n")
            text = bytes(buffer[:index]).decode("utf-8", "replace")
            del buffer[:index + 2]
            return text

        def send(text: str) -> None:
            conn.sendall(text.encode() + b"\r\n")

        send(self.greeting)
        if not self.greeting.startswith("220"):
            line()
            send("221 bye")
            return
        mail, rcpts = "", []
        while True:
            command = line()
            if command is None:
                return
            session.commands.append(command)
            verb = command[:4].upper()
            if verb == "EHLO":
                if self.ehlo:
                    send(self.ehlo)
                else:
                    keywords = ["sink.test greets you", *self.extensions]
                    send("\r\n".join(f"250-{k}" for k in keywords[:-1]) + f"\r\n250 {keywords[-1]}")
            elif verb == "HELO":
                send("250 sink.test")
            elif verb == "MAIL":
                if sum(c[:4].upper() == "MAIL" for c in session.commands) == self.drop_at_mail:
                    return
                session.buffered_after_mail = bytes(buffer).count(b"\r\n")
                mail, rcpts = command, []
                send(self.mail_reply)
            elif verb == "RCPT":
                address = command.partition("<")[2].partition(">")[0]
                answer = self.rcpt_replies.get(address, "250 2.1.5 ok")
                if answer.startswith("2"):
                    rcpts.append(address)
                send(answer)
            elif verb == "DATA":
                if not rcpts and not self.no_rcpt_data_reply.startswith("354"):
                    send(self.no_rcpt_data_reply)
                    continue
                send("354 go ahead")
                while b"\r\n.\r\n" not in buffer and not buffer.startswith(b".\r\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer.extend(chunk)
                if buffer.startswith(b".\r\n"):
                    raw, rest = b"", bytes(buffer[3:])
                else:
                    index = buffer.index(b"\r\n.\r\n")
                    raw, rest = bytes(buffer[:index]), bytes(buffer[index + 5:])
                buffer[:] = rest
                if self.data_reply.startswith("2"):
                    with self._lock:
                        self.messages.append(Received(mail, rcpts, raw))
                send(self.data_reply)
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                return
            elif verb == "RSET":
                mail, rcpts = "", []
                send("250 2.0.0 reset")
            else:
                send("502 5.5.1 not implemented")

    def close_sessions(self) -> None:
        """Hang up on every client, as a server does on its idle timeout."""
        with self._lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


def sinks_on_one_port(hosts: list[str], **behaviour: object) -> list[SMTPSink]:
    """Sinks on several loopback addresses sharing one port (MX fallback: PORT_SMTP_OUT
    is one number for every MX host)."""
    for _ in range(20):
        first = SMTPSink(hosts[0], 0, **behaviour)
        sinks = [first]
        try:
            for host in hosts[1:]:
                sinks.append(SMTPSink(host, first.port, **behaviour))
            return sinks
        except OSError:
            for sink in sinks:
                sink.close()
    raise RuntimeError("no port free on every address")
