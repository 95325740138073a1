"""The durable spool: one file per queued message, and a state file once its state changes.

Layout under DIR_QUEUE_MBOX (STYLE.md habit 5, after Postfix ``mail_queue.c``)::

    msg/<id>      the envelope as it arrived (text records up to ``END``), then the
                  message in CRLF wire form; never changed once committed
    env/<id>      the envelope with the recipients' current state, written only once that
                  state differs from the one in msg/<id> (an attempt that did not finish
                  the message, a DSN sent); it supersedes the records in msg/<id>
    corrupt/      files that could not be read: kept for inspection

Commit protocol (DESIGN.md rule 1): the file is written in one go in DIR_TMP and fsynced
there (:func:`extremail.durable.publish`), renamed into ``msg/`` (the commit point) and
the directory fsynced.  Only then may the SMTP session say 250.  One file, so a message
costs one file fsync and one (shared, :func:`extremail.durable.sync_directory`)
directory fsync.  A crash before the rename leaves at most leftovers in DIR_TMP, which
:meth:`Spool.recover` removes.  State updates rewrite ``env/<id>`` atomically (temp
file, fsync, rename, fsync dir), so it is always the old or the new version.

Removal (every recipient final) unlinks the message, then its state file, without
fsyncing either directory: only a power failure (not ``kill -9``: the kernel keeps the
unlinks) can bring a removed file back, and then the message is delivered again
("exactly once or more", DESIGN.md rule 1) or, if only the state file came back, that
file is set aside in ``corrupt/`` by :meth:`Spool.recover`.  A state file that cannot be
read is set aside too, and its message recovered from the envelope it arrived with:
some recipients may get it twice, none loses it.  Nothing queued is ever lost, since
only a finished message is removed.  A relayed message thus costs two fsyncs when its
first attempt finishes it (see :mod:`extremail.queue.manager` for the attempts).

Envelope records, one a line, fields separated by a tab::

    VERSION 2 | ID id | ARRIVED epoch | SENDER addr | CLIENT ip | HELO name | AUTH user
    BODY 7BIT|8BITMIME | SIZE bytes | DELAYED 0|1 (delayed DSN sent) | DSN 0|1 (failed DSN sent)
    RCPT address original kind status attempts last_attempt next_attempt remote_mta reply
    END

Queue ids are sortable (arrival time in microseconds, hex) and unique (pid and a counter).

Attack surface: addresses and replies come from the network; control characters (tab,
CR, LF) are replaced before they reach a record, so a value can never forge one.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from dataclasses import dataclass, field

from .. import log
from ..envelope import Envelope
from ..durable import atomic_write, fsync_directory, publish, sync_directory

LOG = log.get("spool")

QUEUED, DELIVERED, FAILED = "queued", "delivered", "failed"
STATUSES = (QUEUED, DELIVERED, FAILED)
VERSION = "2"  # 2: envelope and message in one file
TMP_SUFFIX = ".spool-part"  # our files in DIR_TMP; nothing else there is touched
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_counter = itertools.count(1)
_counter_lock = threading.Lock()


class SpoolError(Exception):
    """An envelope that cannot be parsed (truncated, garbled, unknown version)."""


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt to one recipient (what a transport returns)."""

    status: str          # "delivered" | "deferred" | "failed"
    reply: str           # the reply that decided it, e.g. "550 5.1.1 No such user"
    remote_mta: str = ""  # host name of the MTA that answered, when there was one


@dataclass
class Recipient:
    """Per-recipient queue state."""

    address: str
    original: str
    kind: str                     # routing.LOCAL, PIPE or REMOTE
    status: str = QUEUED
    attempts: int = 0
    last_attempt: float = 0.0     # 0 = never
    next_attempt: float = 0.0     # 0 = at once
    remote_mta: str = ""
    reply: str = ""

    @property
    def final(self) -> bool:
        return self.status != QUEUED


@dataclass
class QueuedMessage:
    """A committed message: its id, envelope, message file and recipient states."""

    id: str
    envelope: Envelope
    path: str
    size: int
    recipients: list[Recipient]
    offset: int = 0  # where the message starts in ``path``, after the envelope records
    delayed_dsn_sent: bool = False
    failed_dsn_sent: bool = False
    hold_until: float = 0.0  # in memory only: no try before this (after an error of our own)
    # In memory only: the content as committed, until its first attempt takes it
    # (:meth:`Spool.content`), so a queue thread need not read back what was just written.
    kept: bytes | None = field(default=None, repr=False, compare=False)

    def read(self) -> bytes:
        """The message as received (CRLF wire form)."""
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            return handle.read()

    @property
    def done(self) -> bool:
        return all(r.final for r in self.recipients)


def new_id(clock=time.time) -> str:
    with _counter_lock:
        serial = next(_counter)
    return f"{int(clock() * 1_000_000):014x}-{os.getpid():x}-{serial:x}"


def _clean(value: str) -> str:
    return _CONTROL.sub(" ", value)


def render(message: QueuedMessage) -> bytes:
    """The envelope file for ``message``."""
    env = message.envelope
    lines = [
        f"VERSION\t{VERSION}",
        f"ID\t{message.id}",
        f"ARRIVED\t{env.arrived:.6f}",
        f"SENDER\t{_clean(env.sender)}",
        f"CLIENT\t{_clean(env.client_ip)}",
        f"HELO\t{_clean(env.helo)}",
        f"AUTH\t{_clean(env.authenticated)}",
        f"BODY\t{'8BITMIME' if env.body_8bit else '7BIT'}",
        f"SIZE\t{message.size}",
        f"DELAYED\t{int(message.delayed_dsn_sent)}",
        f"DSN\t{int(message.failed_dsn_sent)}",
    ]
    for r in message.recipients:
        lines.append("\t".join(["RCPT", _clean(r.address), _clean(r.original), r.kind, r.status,
                                str(r.attempts), f"{r.last_attempt:.3f}", f"{r.next_attempt:.3f}",
                                _clean(r.remote_mta), _clean(r.reply)]))
    lines.append("END")
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse(content: bytes, message_path: str, offset: int = 0) -> QueuedMessage:
    """Read envelope records (a state file, or the head of a message file whose message
    starts at ``offset``); raise :class:`SpoolError` if they are not complete and valid."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise SpoolError("not UTF-8") from None
    if not text.endswith("END\n"):
        raise SpoolError("no END record (truncated)")
    fields_: dict[str, str] = {}
    recipients: list[Recipient] = []
    for number, line in enumerate(text[:-1].split("\n"), 1):
        key, _, value = line.partition("\t")
        if key == "END":
            break
        if key == "RCPT":
            parts = value.split("\t")
            if len(parts) != 9 or parts[3] not in STATUSES:
                raise SpoolError(f"line {number}: bad RCPT record")
            try:
                recipients.append(Recipient(parts[0], parts[1], parts[2], parts[3], int(parts[4]),
                                            float(parts[5]), float(parts[6]), parts[7], parts[8]))
            except ValueError:
                raise SpoolError(f"line {number}: bad number in RCPT record") from None
        else:
            fields_[key] = value
    if fields_.get("VERSION") != VERSION:
        raise SpoolError(f"unknown version {fields_.get('VERSION')!r}")
    missing = [k for k in ("ID", "ARRIVED", "SENDER", "SIZE") if k not in fields_]
    if missing or not recipients:
        raise SpoolError(f"missing {', '.join(missing) or 'recipients'}")
    try:
        arrived, size = float(fields_["ARRIVED"]), int(fields_["SIZE"])
    except ValueError:
        raise SpoolError("bad ARRIVED or SIZE") from None
    envelope = Envelope(sender=fields_["SENDER"], recipients=[r.original for r in recipients],
                        client_ip=fields_.get("CLIENT", ""), helo=fields_.get("HELO", ""),
                        authenticated=fields_.get("AUTH", ""), arrived=arrived,
                        body_8bit=fields_.get("BODY") == "8BITMIME")
    return QueuedMessage(fields_["ID"], envelope, message_path, size, recipients, offset,
                         delayed_dsn_sent=fields_.get("DELAYED") == "1",
                         failed_dsn_sent=fields_.get("DSN") == "1")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Spool:
    """The spool directories of one server."""

    # Content kept in memory for first attempts, in all; past it, attempts read the file.
    KEEP_BYTES = 32 * 1024 * 1024

    def __init__(self, queue_dir: str, tmp_dir: str, clock=time.time) -> None:
        self._kept = 0
        self._kept_lock = threading.Lock()
        self.root = queue_dir
        self.tmp = tmp_dir
        self.msg_dir = os.path.join(queue_dir, "msg")
        self.env_dir = os.path.join(queue_dir, "env")
        self.corrupt_dir = os.path.join(queue_dir, "corrupt")
        self.clock = clock

    def ensure(self) -> None:
        for directory in (self.msg_dir, self.env_dir, self.corrupt_dir, self.tmp):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.stat(self.tmp).st_dev != os.stat(self.root).st_dev:
            # rename(2) cannot cross file systems: keep partial files beside the queue
            LOG.warning("spool: DIR_TMP %s is on another file system than %s; using %s/tmp",
                        self.tmp, self.root, self.root)
            self.tmp = os.path.join(self.root, "tmp")
            os.makedirs(self.tmp, mode=0o700, exist_ok=True)

    # ---- committing ----
    def commit(self, envelope: Envelope, data: bytes, recipients: list[Recipient]) -> QueuedMessage:
        """Store ``data`` (CRLF) for ``recipients`` durably; on return the message survives any
        crash.  Raises OSError (ENOSPC, ...) with nothing visible left behind."""
        queue_id = new_id(self.clock)
        message = QueuedMessage(queue_id, envelope, os.path.join(self.msg_dir, queue_id), len(data),
                                recipients)
        head = render(message)
        message.offset = len(head)
        publish(os.path.join(self.tmp, f"{queue_id}{TMP_SUFFIX}"), message.path,
                head + data)  # the commit point
        try:
            sync_directory(self.msg_dir)
        except BaseException:
            _unlink(message.path)  # never acknowledged: the client keeps it
            raise
        with self._kept_lock:
            if self._kept + len(data) <= self.KEEP_BYTES:
                self._kept += len(data)
                message.kept = data
        return message

    def content(self, message: QueuedMessage) -> bytes:
        """The message in CRLF wire form: the copy kept since its commit (given up now),
        else read from its file."""
        data = message.kept
        if data is None:
            return message.read()
        self._forget_copy(message)
        return data

    def _forget_copy(self, message: QueuedMessage) -> None:
        with self._kept_lock:
            if message.kept is not None:
                self._kept -= len(message.kept)
                message.kept = None

    def save(self, message: QueuedMessage) -> None:
        """Write the current state (atomically): it supersedes the envelope it arrived with."""
        atomic_write(os.path.join(self.env_dir, message.id), render(message))

    def remove(self, message: QueuedMessage) -> None:
        """Forget a finished message, the message first; no fsync (module header): a file
        a power failure brings back means a second delivery or a file set aside."""
        self._forget_copy(message)
        _unlink(message.path)
        _unlink(os.path.join(self.env_dir, message.id))

    # ---- recovery ----
    def recover(self) -> list[QueuedMessage]:
        """At start: clean DIR_TMP, load every committed message (oldest first) with its
        latest state, set aside what cannot be read and state files without a message."""
        self.ensure()
        for name in os.listdir(self.tmp):
            if name.endswith(TMP_SUFFIX):
                _unlink(os.path.join(self.tmp, name))
                LOG.info("spool: removed partial file %s from %s", name, self.tmp)
        states = set()
        for name in os.listdir(self.env_dir):
            if ".tmp." in name:  # an interrupted state update: the old state is still there
                _unlink(os.path.join(self.env_dir, name))
            else:
                states.add(name)
        messages = []
        for name in sorted(os.listdir(self.msg_dir)):
            path = os.path.join(self.msg_dir, name)
            try:
                message = self._load(name, path)
            except (SpoolError, OSError) as exc:
                LOG.error("spool: message %s unreadable (%s): moved to %s", name, exc, self.corrupt_dir)
                self._set_aside(path, f"{name}.msg")
                continue
            if name in states:
                states.discard(name)
                message = self._latest_state(message)
            messages.append(message)
        for name in states:
            LOG.warning("spool: state file %s has no message: moved to %s", name, self.corrupt_dir)
            self._set_aside(os.path.join(self.env_dir, name), f"{name}.env")
        return messages

    def _load(self, name: str, path: str) -> QueuedMessage:
        """A message file's envelope records, checked against its name and length."""
        with open(path, "rb") as handle:
            head = b""
            while (end := head.find(b"\nEND\n")) < 0:
                chunk = handle.read(65536)
                if not chunk:
                    raise SpoolError("no END record (truncated)")
                head += chunk
            length = os.fstat(handle.fileno()).st_size
        message = parse(head[:end + 5], path, end + 5)
        if message.id != name:
            raise SpoolError("id mismatch")
        if length != message.offset + message.size:
            raise SpoolError(f"{length - message.offset} bytes of message, {message.size} expected")
        return message

    def _latest_state(self, message: QueuedMessage) -> QueuedMessage:
        """``message`` with the state of its state file; the state it arrived with when that
        file cannot be read (set aside: a recipient may then get the message twice)."""
        path = os.path.join(self.env_dir, message.id)
        try:
            with open(path, "rb") as handle:
                latest = parse(handle.read(), message.path, message.offset)
            if latest.id != message.id:
                raise SpoolError("id mismatch")
        except (SpoolError, OSError) as exc:
            LOG.error("spool: state of %s unreadable (%s): moved to %s; the message is retried "
                      "for every recipient", message.id, exc, self.corrupt_dir)
            self._set_aside(path, f"{message.id}.env")
            return message
        return latest

    def _set_aside(self, path: str, name: str) -> None:
        target = os.path.join(self.corrupt_dir, name)
        if os.path.exists(target):
            target += f".{int(self.clock())}"
        os.rename(path, target)
        fsync_directory(self.corrupt_dir)
