"""Review findings in the queue manager, as units (the race cannot be timed through the wire).

QUEUE RESEND / QUEUE DEL pick their messages, then wait for each one; a delivery thread may
finish and remove a message meanwhile.  The management command must then leave it alone: a
state save would write its envelope back into env/ without its message file (moved to
corrupt/ with an error at the next start)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from extremail.envelope import Envelope
from extremail.queue.manager import QueueManager
from extremail.queue.spool import DELIVERED, Recipient


@pytest.fixture
def manager(tmp_path) -> QueueManager:
    cfg = SimpleNamespace(DIR_QUEUE_MBOX=str(tmp_path / "queue"), DIR_TMP=str(tmp_path / "tmp"),
                          CFG_NUM_QUEUE=0, CFG_MIN_QUEUE=5, CFG_HOR_RETRY_MAIL=72,
                          CFG_HOR_DELAY_DSN=0, postmaster="postmaster@local.test")
    queue = QueueManager(SimpleNamespace(cfg=cfg, store=None))
    queue.start()  # no delivery threads: the test plays the delivery thread
    return queue


@pytest.mark.parametrize("command", ["resend", "delete"])
def test_management_command_leaves_a_message_finished_meanwhile_alone(manager, command) -> None:
    message = manager.submit(Envelope("a@x.test", ["b@y.test"]), b"Subject: s\r\n\r\nbody\r\n",
                             [Recipient("b@y.test", "b@y.test", "remote")])
    picked = manager._matching()
    message.recipients[0].status = DELIVERED  # a delivery thread finishes it now
    manager._reports(message, manager.clock())
    env = os.path.join(manager.spool.env_dir, message.id)
    assert not os.path.exists(env) and message.id not in manager.messages
    manager._matching = lambda **selector: picked  # what the command had picked before
    assert getattr(manager, command)() == 0
    assert not os.path.exists(env) and os.listdir(manager.spool.env_dir) == []


def test_recipient_removed_between_routing_and_delivery_is_deferred(manager) -> None:
    """USER DEL / ALIAS DEL racing a delivery: the attempt defers those recipients (they are
    routed again next time) instead of raising and losing the attempt's other outcomes."""
    manager.ctx.store = SimpleNamespace(users=SimpleNamespace(rows={}), aliases=SimpleNamespace(rows={}))
    message = manager.submit(Envelope("a@x.test", ["gone@local.test", "pipe@local.test"]),
                             b"Subject: s\r\n\r\nbody\r\n",
                             [Recipient("gone@local.test", "gone@local.test", "local"),
                              Recipient("pipe@local.test", "pipe@local.test", "pipe")])
    outcomes = manager._deliver(message, message.read(), message.recipients)
    assert {a: o.status for a, o in outcomes.items()} == {"gone@local.test": "deferred",
                                                          "pipe@local.test": "deferred"}
    assert all(o.reply.startswith("451 4.3.0") for o in outcomes.values())
