"""How many fsyncs an attempt costs, and that the ones skipped change nothing a crash
would leave behind (the reasoning is in :mod:`extremail.queue.manager`'s header).

The manager runs without delivery threads: the test plays the delivery thread, a fake
transport answers, and a second Spool on the same directories reads what a crash at
that moment would leave."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from extremail.envelope import Envelope
from extremail.queue.manager import QueueManager
from extremail.queue.spool import DELIVERED, QUEUED, Outcome, Recipient

DATA = b"Subject: s\r\n\r\nbody\r\n"


class Transport:
    """Answers each remote recipient with the next status; ``during`` runs mid-attempt."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.during = lambda: None

    def deliver(self, message, addresses, data):
        self.during()
        status = self.statuses.pop(0)
        return {a: Outcome(status, "250 ok" if status == "delivered" else "451 later")
                for a in addresses}


@pytest.fixture
def queue(tmp_path):
    cfg = SimpleNamespace(DIR_QUEUE_MBOX=str(tmp_path / "queue"), DIR_TMP=str(tmp_path / "tmp"),
                          CFG_NUM_QUEUE=0, CFG_MIN_QUEUE=5, CFG_HOR_RETRY_MAIL=72,
                          CFG_HOR_DELAY_DSN=0, postmaster="postmaster@local.test")
    clock = SimpleNamespace(now=time.time())
    store = SimpleNamespace(is_local_domain=lambda domain: False,
                            users=SimpleNamespace(rows={}), aliases=SimpleNamespace(rows={}))
    manager = QueueManager(SimpleNamespace(cfg=cfg, store=store, transport=Transport()),
                           lambda: clock.now)
    manager.start()
    manager.test_clock = clock
    return manager


@pytest.fixture
def fsyncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    return calls


def submit(queue: QueueManager):
    return queue.submit(Envelope("a@x.test", ["b@y.test"]), DATA,
                        [Recipient("b@y.test", "b@y.test", "remote")])


def on_disk(queue: QueueManager) -> list:
    """What a restart would recover now (as after a crash)."""
    restarted = QueueManager(queue.ctx, queue.clock)
    restarted.start()
    return list(restarted.messages.values())


def test_a_message_delivered_at_its_first_attempt_costs_the_commits_fsyncs_only(queue, fsyncs):
    queue.ctx.transport.statuses = ["delivered"]
    message = submit(queue)
    assert len(fsyncs) == 2  # the one spool file (envelope and message) and its directory
    queue._attempt(message)
    assert len(fsyncs) == 2  # no state file before or after, no fsync of the removal
    assert os.listdir(queue.spool.env_dir) == [] and os.listdir(queue.spool.msg_dir) == []
    assert message.id not in queue.messages


def test_a_crash_during_the_first_attempt_retries_it_at_once(queue):
    found = []
    queue.ctx.transport.during = lambda: found.extend(on_disk(queue))
    queue.ctx.transport.statuses = ["delivered"]
    queue._attempt(submit(queue))
    [recovered] = found
    assert recovered.recipients[0].status == QUEUED
    assert queue._wake_time(recovered) <= queue.clock()  # due at once: delivered again


def test_a_deferred_first_attempt_is_recorded_and_a_retry_is_recorded_before_it_is_made(
        queue, fsyncs):
    queue.ctx.transport.statuses = ["deferred", "delivered"]
    message = submit(queue)
    queue._attempt(message)
    assert len(fsyncs) == 2 + 2  # the outcome: the state file and its directory
    [recovered] = on_disk(queue)
    assert (recovered.recipients[0].attempts, recovered.recipients[0].reply) == (1, "451 later")

    seen = []
    queue.ctx.transport.during = lambda: seen.extend(on_disk(queue))
    queue.test_clock.now = message.recipients[0].next_attempt
    queue._attempt(message)
    [r] = seen[0].recipients
    assert (r.attempts, r.reply, r.status) == (2, "", QUEUED)  # on record before it was made
    assert message.recipients[0].status == DELIVERED and len(fsyncs) == 2 + 2 + 2
    assert os.listdir(queue.spool.env_dir) == [] and os.listdir(queue.spool.msg_dir) == []
