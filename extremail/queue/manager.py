"""The queue: CFG_NUM_QUEUE delivery threads draining the durable spool.

At start every committed message is recovered from the spool (so a restart after
``kill -9`` goes on where it stopped).  A new message wakes a thread at once; otherwise a
thread sleeps until the earliest retry, expiry or delayed-DSN time (at most
:data:`SCAN_SECONDS`).  One message is handled by one thread at a time.

An attempt (STYLE.md habit 6): the due recipients are re-routed with the current data
(a local user may have gone, a domain may have become local), the attempt and the next
retry time are recorded in the state file *before* delivery (except on a first attempt,
below), then each recipient goes
LOCAL -> Maildir (:func:`extremail.delivery.deliver_local`), PIPE -> :mod:`extremail.pipe`,
REMOTE -> ``ctx.transport.deliver(message, recipients, data) -> {address: Outcome}`` (which
groups them by domain, up to CFG_NUM_DELIVERY at once).  Without a transport, remote
recipients wait (logged once).  A recipient marked delivered is never sent again; an error
nobody classified is temporary.  The transport need not send DSNs: this module sends one
"failed" report when every recipient is final, and one "delayed" report after
CFG_HOR_DELAY_DSN hours (:mod:`extremail.queue.schedule`), then removes the spool files.

State-file writes (two fsyncs each, :mod:`extremail.queue.spool`) are skipped where a
crash would end the same way:

* *Before the first attempt* of recipients still at ``attempts 0``: the envelope the
  commit wrote at the head of the message file already says "never tried, due now",
  which is what recovery needs to try them again at once after a crash, as it does for
  a recorded attempt without a reply (interrupted).  Only the attempt counter of a
  crashed first attempt is lost; a message that crashes the server is retried at once
  either way.  Later attempts are recorded
  first, as the habit says.
* *After an attempt that made every recipient final* with nothing to report: the files
  are removed instead of being rewritten first; a crash before the removal delivers the
  message again (allowed: "exactly once or more"), never loses it.  A failure report is
  still recorded as sent before the removal, so a crash does not send it twice.

Management (QUEUE SHOW / RESEND / DEL, through :mod:`extremail.remote.commands`):
:meth:`QueueManager.show`, :meth:`resend`, :meth:`delete` take the command's selector
(``ALL``, ``MAILBOX``, ``DOMAIN``, ``ID`` and its value); :meth:`listing` filters by
keywords.  QUEUE SHOW rows are ``sender, recipient, entry date, retry date (the retry time last
set: when the queue tries next), last attempt date, seconds in queue, size, attempts,
status``, dates ``YYYY-MM-DD HH:MM:SS`` UTC, ``-`` for never.

Attack surface: none directly; messages and replies are data.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any

from .. import delivery, dsn, log, pipe, routing
from ..envelope import Envelope
from ..net.lineio import to_lf
from ..routing import FAIL, LOCAL, PIPE, REMOTE, Target
from . import schedule
from .spool import DELIVERED, FAILED, QUEUED, Outcome, QueuedMessage, Recipient, Spool

LOG = log.get("queue")

SCAN_SECONDS = 60.0        # the longest a thread sleeps without looking at the queue
STOP_JOIN_SECONDS = 10.0   # how long stop() waits for threads busy with a delivery
DELETED_REPLY = "550 5.0.0 Deleted from the queue by the administrator"


def _date(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when)) if when else "-"


CHANGED_MEANWHILE = "451 4.3.0 Recipient changed during delivery; routed again at the next attempt"


class QueueManager:
    """The spool, the in-memory index of queued messages, and the delivery threads."""

    def __init__(self, ctx: Any, clock=time.time) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.clock = clock
        self.spool = Spool(self.cfg.DIR_QUEUE_MBOX, self.cfg.DIR_TMP, clock)
        self.messages: dict[str, QueuedMessage] = {}
        self.busy: set[str] = set()
        self._claiming = 0  # management commands waiting for a busy message
        self.cond = threading.Condition()
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._waiting_logged: set[str] = set()

    # ---- life cycle ----
    def start(self) -> None:
        recovered = self.spool.recover()
        with self.cond:
            for message in recovered:
                for r in message.recipients:
                    if r.status == QUEUED and r.attempts and not r.reply:
                        r.next_attempt = 0.0  # killed during the attempt: try again at once
                        LOG.info("queue %s: <%s> attempt was interrupted; retrying now", message.id,
                                 r.address)
                self.messages[message.id] = message
                self._schedule(message)
        LOG.info("queue: %d message(s) recovered from the spool; %d delivery threads",
                 len(recovered), self.cfg.CFG_NUM_QUEUE)
        for number in range(self.cfg.CFG_NUM_QUEUE):
            thread = threading.Thread(target=self._run, name=f"queue-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # ---- entering the queue ----
    def submit(self, envelope: Envelope, data: bytes, recipients: list[Recipient]) -> QueuedMessage:
        """Commit ``data`` (CRLF) durably for ``recipients`` and wake a thread.  Raises
        OSError when the spool cannot store it (nothing is left behind)."""
        message = self.spool.commit(envelope, data, recipients)
        with self.cond:
            self.messages[message.id] = message
            self._schedule(message)
            self.cond.notify()
        return message

    # ---- scheduling (callers hold self.cond) ----
    def _wake_time(self, message: QueuedMessage) -> float:
        pending = [r.next_attempt for r in message.recipients if r.status == QUEUED]
        wake = 0.0  # nothing pending: only the final report and the removal are left
        if pending:
            wake = schedule.wake_time(pending, message.envelope.arrived, self.cfg.CFG_HOR_RETRY_MAIL,
                                      self.cfg.CFG_HOR_DELAY_DSN, message.delayed_dsn_sent)
        return max(wake, message.hold_until)

    def _schedule(self, message: QueuedMessage) -> None:
        heapq.heappush(self._heap, (self._wake_time(message), next(self._seq), message.id))

    def _take(self) -> QueuedMessage | None:
        """The next due message, claimed; None when stopping."""
        with self.cond:
            while not self._stopping:
                now = self.clock()
                while self._heap and self._heap[0][0] <= now:
                    queue_id = heapq.heappop(self._heap)[2]
                    message = self.messages.get(queue_id)
                    if message is None or queue_id in self.busy or self._wake_time(message) > now:
                        continue  # stale entry: a newer one exists (or the message is gone)
                    self.busy.add(queue_id)
                    return message
                wait = SCAN_SECONDS if not self._heap else min(SCAN_SECONDS, self._heap[0][0] - now)
                self.cond.wait(max(wait, 0.01))
        return None

    def _claim(self, message: QueuedMessage) -> None:
        with self.cond:
            self._claiming += 1
            try:
                while message.id in self.busy:
                    self.cond.wait()
            finally:
                self._claiming -= 1
            self.busy.add(message.id)

    def _release(self, message: QueuedMessage) -> None:
        """Give ``message`` back; wake one delivery thread if it is still queued (it may be
        due before what the others wait for), every waiter if a management command waits
        for a message (not one wake-up per thread for every message delivered)."""
        with self.cond:
            self.busy.discard(message.id)
            if message.id in self.messages:
                self._schedule(message)
                self.cond.notify()
            if self._claiming:
                self.cond.notify_all()

    # ---- the delivery threads ----
    def _run(self) -> None:
        while True:
            message = self._take()
            if message is None:
                return
            try:
                self._attempt(message)
            except Exception:
                LOG.exception("queue %s: attempt failed unexpectedly; retrying later", message.id)
                message.hold_until = schedule.next_attempt(self.clock(), self.cfg.CFG_MIN_QUEUE)
            finally:
                self._release(message)

    def _attempt(self, message: QueuedMessage) -> None:
        cfg, now = self.cfg, self.clock()
        if schedule.expired(message.envelope.arrived, now, cfg.CFG_HOR_RETRY_MAIL):
            for r in message.recipients:
                if r.status == QUEUED:
                    r.status = FAILED
                    r.reply = (f"451 4.4.7 Delivery time expired after {cfg.CFG_HOR_RETRY_MAIL} hours"
                               + (f" (last reply: {r.reply})" if r.reply else ""))
                    LOG.info("queue %s: <%s> expired", message.id, r.address)
        self._reroute(message)
        due = [r for r in message.recipients if r.status == QUEUED and r.next_attempt <= now]
        if self._transport() is None:
            waiting = [r for r in due if r.kind == REMOTE]
            for r in waiting:
                r.next_attempt = schedule.next_attempt(now, cfg.CFG_MIN_QUEUE)
            if waiting and message.id not in self._waiting_logged:
                self._waiting_logged.add(message.id)
                LOG.info("queue %s: %d remote recipient(s) waiting for outbound delivery",
                         message.id, len(waiting))
            due = [r for r in due if r.kind != REMOTE]
        # A first attempt is on record already: the commit wrote "attempts 0, due now".
        first = bool(due) and all(r.attempts == 0 for r in due)
        for r in due:  # STYLE.md habit 6: the attempt is on record before it is made
            r.attempts += 1
            r.last_attempt = now
            r.next_attempt = schedule.next_attempt(now, cfg.CFG_MIN_QUEUE)
            r.reply = ""  # no result yet: an attempt cut short by a crash is retried at start
        if not first:
            self.spool.save(message)
        if due:
            data = self.spool.content(message)
            outcomes = self._deliver(message, data, due)
            for r in due:
                self._apply(message, r, outcomes.get(r.address)
                            or Outcome("deferred", "451 4.4.0 No result from the transport"))
            if not message.done:  # a finished message is removed by _reports instead
                self.spool.save(message)
        self._reports(message, now)

    def _transport(self) -> Any:
        return getattr(self.ctx, "transport", None)

    def _reroute(self, message: QueuedMessage) -> None:
        """Replace queued recipients whose route changed since they were queued."""
        store, changed = self.ctx.store, False
        for r in list(message.recipients):
            if r.status != QUEUED or self._route_unchanged(r):
                continue
            targets = routing.expand(store, self.cfg.postmaster, r.address)
            message.recipients.remove(r)
            changed = True
            for t in targets:
                if any(o.address.lower() == t.address.lower() and o.kind == t.kind
                       for o in message.recipients):
                    continue
                status = FAILED if t.kind == FAIL else QUEUED
                message.recipients.append(Recipient(
                    t.address, r.original, t.kind, status,
                    r.attempts, r.last_attempt, 0.0, "", str(t.reply) if t.reply else ""))
            LOG.info("queue %s: <%s> re-routed to %s", message.id, r.address,
                     ", ".join(f"{t.kind}:<{t.address}>" for t in targets) or "nothing")
        if changed:
            self.spool.save(message)

    def _route_unchanged(self, r: Recipient) -> bool:
        local, domain = routing.split(r.address)
        store = self.ctx.store
        if r.kind == LOCAL:
            return (local, domain) in store.users.rows
        if r.kind == PIPE:
            alias = store.aliases.rows.get((local, domain))
            return alias is not None and bool(alias.pipe)
        return not routing.is_local(store, r.address)

    def _deliver(self, message: QueuedMessage, data: bytes,
                 due: list[Recipient]) -> dict[str, Outcome]:
        sender = message.envelope.sender
        outcomes: dict[str, Outcome] = {}
        users, aliases = self.ctx.store.users.rows, self.ctx.store.aliases.rows
        targets = []
        for r in due:
            # The store may change between routing and here (USER DEL, ALIAS DEL): such a
            # recipient is simply routed again at its next attempt.
            record = (users if r.kind == LOCAL else aliases).get(routing.split(r.address))
            if r.kind in (LOCAL, PIPE) and record is None:
                outcomes[r.address] = Outcome("deferred", CHANGED_MEANWHILE)
            elif r.kind == LOCAL:
                targets.append(Target(LOCAL, r.address, r.original, user=record))
        if targets:
            outcomes.update(delivery.deliver_local(self.ctx, sender, data, targets, message.id))
        for r in (r for r in due if r.kind == PIPE and r.address not in outcomes):
            alias = aliases[routing.split(r.address)]
            started = time.monotonic()
            outcome = pipe.run(alias.pipe, to_lf(delivery.trace_headers(sender, r.address) + data),
                               sender, r.address)
            LOG.info("deliver %s from=<%s> to=<%s> relay=pipe status=%s (%s) %.2fs", message.id, sender,
                     r.address, outcome.status, outcome.reply, time.monotonic() - started)
            outcomes[r.address] = outcome
        remote = [r for r in due if r.kind == REMOTE]
        if remote:
            outcomes.update(self._deliver_remote(message, remote, data))
        return outcomes

    def _deliver_remote(self, message: QueuedMessage, remote: list[Recipient],
                        data: bytes) -> dict[str, Outcome]:
        """One transport call for every due remote recipient (the transport groups them by
        domain and runs up to CFG_NUM_DELIVERY domains at once)."""
        addresses = [r.address for r in remote]
        try:
            return self._transport().deliver(message, addresses, data)
        except Exception as exc:  # an error nobody classified is temporary
            LOG.exception("queue %s: transport error", message.id)
            return {a: Outcome("deferred", f"451 4.4.0 Transport error: {exc}") for a in addresses}

    def _apply(self, message: QueuedMessage, r: Recipient, outcome: Outcome) -> None:
        r.reply = outcome.reply
        r.remote_mta = outcome.remote_mta or r.remote_mta
        if outcome.status == "delivered":
            r.status = DELIVERED
        elif outcome.status == "failed":
            r.status = FAILED

    def _reports(self, message: QueuedMessage, now: float) -> None:
        """The delayed report (once), or, when every recipient is final, the failed report
        and the removal of the spool files."""
        cfg = self.cfg
        queued = [r for r in message.recipients if r.status == QUEUED]
        if queued and schedule.delay_dsn_due(message.envelope.arrived, now, cfg.CFG_HOR_DELAY_DSN,
                                             message.delayed_dsn_sent):
            answer = dsn.send(self.ctx, dsn.DELAYED, message.envelope, self.spool.content(message), queued)
            if answer is None or not answer.is_temporary:
                message.delayed_dsn_sent = True
                self.spool.save(message)
        if queued:
            return
        failed = [r for r in message.recipients if r.status == FAILED]
        if failed and not message.failed_dsn_sent:
            answer = dsn.send(self.ctx, dsn.FAILED, message.envelope, self.spool.content(message), failed)
            if answer is not None and answer.is_temporary:
                LOG.warning("queue %s: failure report not stored (%s); retrying later", message.id, answer)
                message.hold_until = schedule.next_attempt(now, cfg.CFG_MIN_QUEUE)
                self.spool.save(message)  # the outcomes, which _attempt left to the removal
                return
            message.failed_dsn_sent = True
            self.spool.save(message)
        self.spool.remove(message)
        with self.cond:
            self.messages.pop(message.id, None)
        self._waiting_logged.discard(message.id)
        LOG.info("queue %s: done (%d delivered, %d failed), removed from the spool", message.id,
                 len(message.recipients) - len(failed), len(failed))

    # ---- management (QUEUE SHOW / RESEND / DEL) ----
    def _matching(self, mailbox: str | None = None, domain: str | None = None,
                  queue_id: str | None = None) -> list[tuple[QueuedMessage, list[Recipient]]]:
        with self.cond:
            messages = sorted(self.messages.values(), key=lambda m: m.id)
        out = []
        for message in messages:
            if queue_id is not None and message.id != queue_id:
                continue
            rows = [r for r in message.recipients if r.status == QUEUED
                    and (mailbox is None or r.address.lower() == mailbox.lower())
                    and (domain is None or routing.split(r.address)[1] == domain.lower())]
            if rows:
                out.append((message, rows))
        return out

    @staticmethod
    def _selector(kind: str, value: str | None) -> dict[str, str | None]:
        """The management port's selector (ALL, MAILBOX, DOMAIN, ID) as filter keywords."""
        keyword = {"MAILBOX": "mailbox", "DOMAIN": "domain", "ID": "queue_id"}.get(kind.upper())
        return {keyword: value} if keyword else {}

    def listing(self, mailbox: str | None = None, domain: str | None = None,
                queue_id: str | None = None) -> list[str]:
        """QUEUE SHOW rows (the manual's format), oldest message first."""
        now = self.clock()
        rows = []
        for message, recipients in self._matching(mailbox, domain, queue_id):
            env = message.envelope
            for r in recipients:
                rows.append("\t".join([
                    env.sender or "<>", r.address, _date(env.arrived), _date(r.next_attempt or now),
                    _date(r.last_attempt), str(int(now - env.arrived)), str(message.size),
                    str(r.attempts), r.status]))
        return rows

    def show(self, kind: str = "ALL", value: str | None = None) -> list[str]:
        """QUEUE SHOW ALL | MAILBOX= | DOMAIN= (the management commands' interface)."""
        return self.listing(**self._selector(kind, value))

    def resend(self, kind: str = "ALL", value: str | None = None) -> int:
        """QUEUE RESEND: make the matching queued recipients due now; returns how many."""
        count = 0
        for message, recipients in self._matching(**self._selector(kind, value)):
            self._claim(message)
            try:
                if message.id not in self.messages:
                    continue  # finished meanwhile: saving it would bring its envelope back
                message.hold_until = 0.0
                for r in recipients:
                    if r.status == QUEUED:
                        r.next_attempt = 0.0
                        count += 1
                self.spool.save(message)
            finally:
                self._release(message)
        LOG.info("queue: resend %d recipient(s) now", count)
        return count

    def delete(self, kind: str = "ALL", value: str | None = None) -> int:
        """QUEUE DEL: fail the matching queued recipients (the sender gets a failed report);
        returns how many.  An unknown ID is a LookupError (the command's -ERR)."""
        matching = self._matching(**self._selector(kind, value))
        if kind.upper() == "ID" and not matching:
            raise LookupError(f"no queued mail {value}")
        count = 0
        for message, recipients in matching:
            self._claim(message)
            try:
                if message.id not in self.messages:
                    continue  # finished meanwhile (see resend)
                for r in recipients:
                    if r.status == QUEUED:
                        r.status, r.reply = FAILED, DELETED_REPLY
                        count += 1
                        LOG.info("queue %s: <%s> deleted by the administrator", message.id, r.address)
                self.spool.save(message)
                self._reports(message, self.clock())
            finally:
                self._release(message)
        return count
