"""The machine's own limits, measured before the servers so their figures can be judged:
fsync of an appended 4 KB file, one durable Maildir delivery (from 1 thread and from
20), and loopback TCP throughput and round trip.  Run in a fresh directory of the
benchmark's file system; nothing is deleted here while timings are taken.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time

from . import maildirs


def fsync_4k(directory: str, rounds: int) -> float:
    """Median seconds to append 4 KB to a file and fsync it."""
    samples = []
    block = b"x" * 4096
    fd = os.open(os.path.join(directory, "fsync-probe"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for _ in range(rounds):
            began = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            samples.append(time.perf_counter() - began)
    finally:
        os.close(fd)
    return statistics.median(samples)


def maildir_rate(directory: str, count: int, threads: int) -> float:
    """Durable 2 KB Maildir deliveries per second from ``threads`` threads."""
    box = maildirs.make(os.path.join(directory, f"maildir-{threads}"))
    data = b"x" * 2047 + b"\n"
    shares = [count // threads] * threads

    def work(share: int) -> None:
        for _ in range(share):
            maildirs.deliver([box], data)

    workers = [threading.Thread(target=work, args=(share,)) for share in shares]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(shares) / (time.perf_counter() - began)


def loopback(volume: int) -> tuple[float, float]:
    """Loopback TCP: (bytes per second one way, median round trip in seconds)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    server.close()
    chunk = b"\0" * (1 << 20)

    def drain() -> None:
        left = volume
        while left > 0:
            left -= len(peer.recv(1 << 20))

    reader = threading.Thread(target=drain)
    began = time.perf_counter()
    reader.start()
    for _ in range(volume // len(chunk)):
        client.sendall(chunk)
    reader.join()
    rate = volume / (time.perf_counter() - began)
    for sock in (client, peer):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    trips = []
    for _ in range(200):
        began = time.perf_counter()
        client.sendall(b"p")
        peer.recv(1)
        peer.sendall(b"q")
        client.recv(1)
        trips.append(time.perf_counter() - began)
    client.close()
    peer.close()
    return rate, statistics.median(trips)


def measure(directory: str, quick: bool) -> dict[str, float]:
    """Every limit, in the units the report prints."""
    rounds = 50 if quick else 300
    rate, trip = loopback((256 if quick else 1024) << 20)
    return {
        "fsync_4k_ms": round(fsync_4k(directory, rounds) * 1000, 3),
        "maildir_1_thread_per_s": round(maildir_rate(directory, rounds * 4, 1)),
        "maildir_20_threads_per_s": round(maildir_rate(directory, rounds * 8, 20)),
        "loopback_MB_per_s": round(rate / 1e6),
        "loopback_round_trip_us": round(trip * 1e6, 1),
    }
