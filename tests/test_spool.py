"""The durable spool (extremail/queue/spool.py) and the retry schedule (schedule.py), as
units: commit, state rewrite, recovery of partial and corrupt files, ids, timings."""

from __future__ import annotations

import os

import pytest

from extremail.envelope import Envelope
from extremail.queue import schedule
from extremail.queue.spool import (DELIVERED, QUEUED, QueuedMessage, Recipient, Spool, SpoolError, new_id,
                                   parse, render)

DATA = b"Subject: s\r\n\r\nbody\r\n"


@pytest.fixture
def spool(tmp_path) -> Spool:
    spool = Spool(str(tmp_path / "queue"), str(tmp_path / "tmp"))
    spool.ensure()
    return spool


def envelope() -> Envelope:
    return Envelope("a@x.test", ["b@y.test", "c@z.test"], client_ip="192.0.2.1", helo="h.test",
                    arrived=1_700_000_000.25, body_8bit=True)


def recipients() -> list[Recipient]:
    return [Recipient("b@y.test", "b@y.test", "remote"),
            Recipient("pipe@local.test", "c@z.test", "pipe")]


def test_commit_writes_message_and_envelope_that_recover_identically(spool: Spool) -> None:
    message = spool.commit(envelope(), DATA, recipients())
    assert message.read() == DATA and message.size == len(DATA)
    assert os.listdir(spool.tmp) == []  # nothing left in DIR_TMP
    [again] = Spool(spool.root, spool.tmp).recover()
    assert again.id == message.id and again.read() == DATA
    assert again.envelope.sender == "a@x.test" and again.envelope.client_ip == "192.0.2.1"
    assert again.envelope.body_8bit and again.envelope.arrived == pytest.approx(1_700_000_000.25)
    assert [(r.address, r.original, r.kind, r.status) for r in again.recipients] == [
        ("b@y.test", "b@y.test", "remote", QUEUED), ("pipe@local.test", "c@z.test", "pipe", QUEUED)]


def test_first_attempt_takes_the_content_kept_since_the_commit(spool: Spool, monkeypatch) -> None:
    """What the session just wrote is not read back; later attempts read the file, and the
    copies kept in all stay within KEEP_BYTES."""
    monkeypatch.setattr(Spool, "KEEP_BYTES", 2 * len(DATA))
    first, second, third = (spool.commit(envelope(), DATA, recipients()) for _ in range(3))
    assert first.kept == DATA and second.kept == DATA and third.kept is None  # over the budget
    with open(first.path, "r+b") as handle:  # the file changes behind the copy: not read yet
        handle.seek(first.offset)
        handle.write(b"X")
    assert spool.content(first) == DATA and first.kept is None
    assert spool.content(first) == b"X" + DATA[1:]  # from now on: the file
    spool.remove(second)  # a message removed unread gives its copy up too
    assert spool._kept == 0
    fourth = spool.commit(envelope(), DATA, recipients())
    assert fourth.kept == DATA and spool.content(third) == DATA


def test_state_updates_rewrite_the_envelope(spool: Spool) -> None:
    message = spool.commit(envelope(), DATA, recipients())
    first = message.recipients[0]
    first.status, first.attempts, first.last_attempt, first.next_attempt = DELIVERED, 2, 10.5, 70.5
    first.reply, first.remote_mta = "250 2.0.0 ok\tinjected\r\nRCPT\tforged", "mx.y.test"
    message.delayed_dsn_sent = True
    spool.save(message)
    [again] = spool.recover()
    r = again.recipients[0]
    assert (r.status, r.attempts, r.last_attempt, r.next_attempt, r.remote_mta) == (
        DELIVERED, 2, 10.5, 70.5, "mx.y.test")
    assert r.reply == "250 2.0.0 ok injected  RCPT forged"  # control characters cannot forge records
    assert len(again.recipients) == 2 and again.delayed_dsn_sent


DAMAGE = [
    lambda text: text[: text.index(b"END")],                # truncated: no END record
    lambda text: text[:40],                                  # cut in the middle
    lambda text: text.replace(b"VERSION\t2", b"VERSION\t9"),  # unknown version
    lambda text: text.replace(b"\tqueued\t", b"\tbogus\t", 1),
    lambda text: b"\xff\xfe" + text,
]


def _damage(path: str, damage) -> bytes:
    with open(path, "rb") as handle:
        damaged = damage(handle.read())
    with open(path, "wb") as handle:
        handle.write(damaged)
    return damaged


def test_commit_is_one_file_and_the_state_file_comes_with_the_first_change(spool: Spool) -> None:
    message = spool.commit(envelope(), DATA, recipients())
    assert os.listdir(spool.msg_dir) == [message.id] and os.listdir(spool.env_dir) == []
    with open(message.path, "rb") as handle:
        assert handle.read() == render(message) + DATA
    spool.save(message)
    assert os.listdir(spool.env_dir) == [message.id]


@pytest.mark.parametrize("damage", DAMAGE)
def test_unreadable_message_goes_to_corrupt_never_deleted(spool: Spool, damage) -> None:
    good = spool.commit(envelope(), DATA, recipients())
    bad = spool.commit(envelope(), DATA, recipients())
    spool.save(bad)
    damaged = _damage(bad.path, damage)
    assert [m.id for m in spool.recover()] == [good.id]
    assert sorted(os.listdir(spool.corrupt_dir)) == [f"{bad.id}.env", f"{bad.id}.msg"]
    with open(os.path.join(spool.corrupt_dir, f"{bad.id}.msg"), "rb") as handle:
        assert handle.read() == damaged


def test_a_message_cut_short_is_unreadable(spool: Spool) -> None:
    bad = spool.commit(envelope(), DATA, recipients())
    _damage(bad.path, lambda text: text[:-3])
    assert spool.recover() == []
    assert os.listdir(spool.corrupt_dir) == [f"{bad.id}.msg"]


@pytest.mark.parametrize("damage", DAMAGE)
def test_unreadable_state_is_set_aside_and_the_message_retried_for_everyone(spool: Spool, damage) -> None:
    message = spool.commit(envelope(), DATA, recipients())
    message.recipients[0].status = DELIVERED
    spool.save(message)
    damaged = _damage(os.path.join(spool.env_dir, message.id), damage)
    [again] = spool.recover()
    assert again.id == message.id and again.read() == DATA
    assert [r.status for r in again.recipients] == [QUEUED, QUEUED]  # twice rather than never
    assert os.listdir(spool.corrupt_dir) == [f"{message.id}.env"]
    with open(os.path.join(spool.corrupt_dir, f"{message.id}.env"), "rb") as handle:
        assert handle.read() == damaged


def test_recover_cleans_partial_receptions_and_orphans(spool: Spool) -> None:
    kept = spool.commit(envelope(), DATA, recipients())
    spool.save(kept)
    with open(os.path.join(spool.tmp, "x.spool-part"), "wb") as handle:
        handle.write(b"partial")
    with open(os.path.join(spool.tmp, "someone-elses-file"), "wb") as handle:
        handle.write(b"keep me")
    gone = spool.commit(envelope(), DATA, recipients())
    spool.save(gone)
    os.unlink(gone.path)  # a removal cut short: the state file of a finished message
    with open(os.path.join(spool.env_dir, f"{kept.id}.tmp.1.2"), "wb") as handle:
        handle.write(b"interrupted state update")
    assert [m.id for m in spool.recover()] == [kept.id]
    assert os.listdir(spool.tmp) == ["someone-elses-file"]
    assert os.listdir(spool.corrupt_dir) == [f"{gone.id}.env"]
    assert os.listdir(spool.env_dir) == [kept.id]


def test_commit_failure_leaves_nothing_behind(spool: Spool, monkeypatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        spool.commit(envelope(), DATA, recipients())
    monkeypatch.undo()
    assert os.listdir(spool.tmp) == [] and os.listdir(spool.msg_dir) == [] \
        and os.listdir(spool.env_dir) == []


def test_remove_takes_both_files(spool: Spool) -> None:
    message = spool.commit(envelope(), DATA, recipients())
    spool.save(message)
    spool.remove(message)
    assert os.listdir(spool.msg_dir) == [] and os.listdir(spool.env_dir) == []


def test_ids_are_unique_and_sort_by_time() -> None:
    clock = iter([100.0, 100.0, 99.0, 1000.0]).__next__
    ids = [new_id(clock) for _ in range(4)]
    assert len(set(ids)) == 4
    assert sorted(ids)[0] == ids[2] and sorted(ids)[-1] == ids[3]


def test_parse_requires_recipients_and_fields() -> None:
    with pytest.raises(SpoolError):
        parse(b"VERSION\t2\nID\tx\nARRIVED\t1\nSENDER\t\nSIZE\t3\nEND\n", "/x")
    parsed = parse(render(QueuedMessage("abc", envelope(), "/x", 3, recipients())), "/x", 7)
    assert (parsed.id, parsed.offset) == ("abc", 7)


# ---- schedule: pure functions ----

def test_retry_expiry_and_delay_times() -> None:
    assert schedule.next_attempt(1000.0, 10) == 1600.0
    assert schedule.is_due(1600.0, 1600.0) and not schedule.is_due(1600.1, 1600.0)
    assert not schedule.expired(0.0, 48 * 3600 - 1, 48) and schedule.expired(0.0, 48 * 3600, 48)
    assert not schedule.delay_dsn_due(0.0, 4 * 3600 - 1, 4, False)
    assert schedule.delay_dsn_due(0.0, 4 * 3600, 4, False)
    assert not schedule.delay_dsn_due(0.0, 4 * 3600, 4, True)     # only once
    assert not schedule.delay_dsn_due(0.0, 10**9, 0, False)       # 0 = never


def test_wake_time_is_the_earliest_event() -> None:
    assert schedule.wake_time([500.0, 300.0], 0.0, 48, 4, False) == 300.0
    assert schedule.wake_time([10**7], 0.0, 48, 4, False) == 4 * 3600
    assert schedule.wake_time([10**7], 0.0, 48, 4, True) == 48 * 3600
    assert schedule.wake_time([10**7], 0.0, 48, 0, False) == 48 * 3600
