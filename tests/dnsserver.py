"""A loopback DNS server for tests: answers from a table with dnspython's ``dns.message``.

``DNSServer({"dest.test": [("MX", "10 mx.dest.test.")], "mx.dest.test": [("A", "127.0.0.2")]})``
listens on 127.0.0.1 (UDP, free port) in a thread.  A name in the table answers NOERROR
(with the records of the asked type, CNAMEs followed like a recursive resolver, or
none: NODATA); a name not in the table answers NXDOMAIN.  ``servfail`` names answer
SERVFAIL, ``silent`` names never get an answer (timeouts).  ``queries`` records what was
asked, so a test can check that no query left for a name it did not expect.
"""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Records = dict[str, list[tuple[str, str]]]


class DNSServer:
    def __init__(self, table: Records, ttl: int = 300, servfail: tuple[str, ...] = (),
                 silent: tuple[str, ...] = ()) -> None:
        self.table = {k.lower().rstrip("."): v for k, v in table.items()}
        self.ttl = ttl
        self.servfail = {n.lower() for n in servfail}
        self.silent = {n.lower() for n in silent}
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def setting(self) -> str:
        """The CFG_DNS_SERVERS value that points at this server."""
        return f"127.0.0.1:{self.port}"

    def _records(self, name: str, rdtype: str, response: dns.message.Message) -> None:
        """Fill the answer section, following CNAMEs through the table."""
        for _ in range(8):
            records = self.table[name]
            cname = [value for kind, value in records if kind == "CNAME"]
            if cname and rdtype != "CNAME":
                response.answer.append(dns.rrset.from_text(name + ".", self.ttl, "IN", "CNAME",
                                                           cname[0]))
                name = cname[0].lower().rstrip(".")
                if name not in self.table:
                    return
                continue
            values = [value for kind, value in records if kind == rdtype]
            if values:
                response.answer.append(dns.rrset.from_text(name + ".", self.ttl, "IN", rdtype,
                                                           *values))
            return

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.table:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            self._records(name, rdtype, response)
        return response

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                response = self.answer(dns.message.from_wire(data))
            except Exception:  # a query we cannot parse gets no answer
                continue
            if response is not None:
                self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
