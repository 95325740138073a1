"""What happens to a message once the SMTP session has it: local delivery, the spool, DSNs.

* :func:`check_rcpt`, at RCPT: an unknown local recipient is refused (550 5.1.1), a
  mailbox already at its QUOTA is full for now (452 4.2.2), a message declared larger
  than the user's MAXINMAILSIZE is refused (552 5.3.4).
* :func:`accept`, at the end of DATA: every recipient is expanded (:mod:`routing`);
  LOCAL targets are delivered inline into their Maildirs (identical copies are written
  once and hard-linked); PIPE and REMOTE targets, and local targets whose Maildir cannot
  be written, are committed to the durable spool (:mod:`extremail.queue.spool`) for the
  queue threads.  The reply is 2xx only once every recipient is delivered, committed or
  failed with its DSN committed (DESIGN.md rule 1).  A storage error that leaves a
  recipient neither delivered nor spooled answers 452 4.3.1, so the client keeps the
  message; nothing half-written is ever visible.
* :func:`deliver_local`, shared with the queue: final delivery with ``Return-Path:`` (RFC
  5321 4.4) and ``Delivered-To:``, in LF form (the Maildir convention).

``Delivered-To:`` names the recipient when one mailbox gets the file; when several local
mailboxes get identical content the file is written once and hard-linked, so it carries
only ``Return-Path:`` (a per-recipient header would cost one write per mailbox).

Attack surface: the message and envelope come from the network; addresses were checked
by the SMTP session and by :mod:`routing`; no part of them becomes a path or a command.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from . import dsn, footer, log, reply, routing
from .durable import sync_directories, sync_directory
from .envelope import Envelope
from .mailbox import Maildir
from .net.lineio import to_lf
from .queue.spool import FAILED, Outcome, Recipient
from .reply import Refusal, Reply
from .routing import FAIL, LOCAL, Target
from .store import User

LOG = log.get("delivery")
KB = 1024


def trace_headers(sender: str, recipient: str | None) -> bytes:
    """The headers of final delivery (RFC 5321 4.4: Return-Path; Delivered-To)."""
    head = f"Return-Path: <{sender}>\r\n"
    if recipient:
        head += f"Delivered-To: {recipient}\r\n"
    return head.encode("utf-8", "replace")


def _maildir(ctx: Any, user: User) -> Maildir:
    return Maildir(ctx.store.user_dir(user))


def size_refusal(ctx: Any, user: User, size: int, at_rcpt: bool) -> Reply | None:
    """Why ``user`` cannot take ``size`` more bytes now, or None.  At RCPT a full mailbox is
    a temporary refusal (452 4.2.2: it may be emptied); at DATA the message that does not
    fit fails (552 5.2.2)."""
    if user.maxinmailsize and size > user.maxinmailsize * KB:
        return reply.TOO_BIG
    if user.quota:
        used = _maildir(ctx, user).usage()
        if at_rcpt and used >= user.quota * KB:
            return reply.OVER_QUOTA_TEMP
        if not at_rcpt and used + size > user.quota * KB:
            return reply.OVER_QUOTA
    return None


def check_rcpt(ctx: Any, address: str, sender: str,
               declared_size: int) -> Callable[[], None] | None:
    """RCPT-time checks for a recipient in a local domain (or bare ``postmaster``); a
    remote recipient is the relay policy's business.  Raises :class:`Refusal`.

    A target with a QUOTA needs its Maildir listed: those checks are returned, to be run
    where a long listing blocks nobody else (the caller's worker), instead of run here."""
    if not routing.is_local(ctx.store, address):
        return None
    targets = routing.check_recipient(ctx.store, ctx.cfg.postmaster, address, sender)

    def sizes() -> None:
        refusals: list[Reply | None] = []
        for target in targets:
            if target.kind == FAIL:
                refusals.append(target.reply or reply.NO_SUCH_USER)
            elif target.kind == LOCAL and target.user is not None:
                refusals.append(size_refusal(ctx, target.user, declared_size, at_rcpt=True))
            else:
                refusals.append(None)
        if all(refusals):  # no target at all can take the message
            raise Refusal(next(r for r in refusals if r))

    if any(target.user is not None and target.user.quota for target in targets):
        return sizes
    sizes()
    return None


def deliver_local(ctx: Any, sender: str, content: bytes, targets: list[Target],
                  queue_id: str = "") -> dict[str, Outcome]:
    """Deliver ``content`` (CRLF) to local ``targets``; an outcome per target address:
    delivered, failed (size, quota) or deferred (the Maildir could not be written)."""
    outcomes: dict[str, Outcome] = {}
    ready = []
    for target in targets:
        assert target.user is not None
        problem = size_refusal(ctx, target.user, len(content), at_rcpt=False)
        if problem:
            outcomes[target.address] = Outcome("failed", str(problem))
        else:
            ready.append(target)
    first = ""
    single = ready[0].address if len(ready) == 1 else None
    written: dict[str, str] = {}  # target address -> its Maildir's new/, fsynced below
    for target in ready:
        assert target.user is not None
        maildir = _maildir(ctx, target.user)
        try:
            if not first:
                first = maildir.deliver(to_lf(trace_headers(sender, single) + content), sync=False)
            else:
                maildir.link(first, sync=False)
        except OSError as exc:
            outcomes[target.address] = _not_writable(exc)
        else:
            written[target.address] = maildir.new_dir
    failed: dict[str, OSError] = {}
    try:
        # Every new/ at once: the links are all made, so fsyncs of concurrent deliveries
        # into the same Maildirs cover them too.
        sync_directories(list(written.values()))
    except OSError:
        # Which one failed (a Maildir removed meanwhile with its user, a full disk): the
        # copies safe in the others must not be queued a second time.
        for path in dict.fromkeys(written.values()):
            try:
                sync_directory(path)
            except OSError as exc:
                failed[path] = exc
    outcomes.update({address: _not_writable(failed[path]) if path in failed
                     else Outcome("delivered", "250 2.0.0 Delivered to mailbox")
                     for address, path in written.items()})
    for target in targets:
        outcome = outcomes[target.address]
        LOG.info("deliver %s from=<%s> to=<%s> orig=<%s> relay=local status=%s (%s)", queue_id or "-",
                 sender, target.address, target.original, outcome.status, outcome.reply)
    return outcomes


def _not_writable(exc: OSError) -> Outcome:
    return Outcome("deferred", f"{reply.DISK_FULL.code} {reply.DISK_FULL.enhanced} Mailbox not "
                               f"writable: {exc.strerror or exc}")


def expand_all(ctx: Any, envelope: Envelope) -> list[Target]:
    """Every target of every envelope recipient, each destination once."""
    seen: set[tuple[str, str, str]] = set()
    targets = []
    for rcpt in envelope.recipients:
        for target in routing.expand(ctx.store, ctx.cfg.postmaster, rcpt, envelope.sender):
            key = (target.kind, target.address.lower(), target.command)
            if target.kind == FAIL or key not in seen:
                seen.add(key)
                targets.append(target)
    return targets


def _content_for(ctx: Any, base: bytes, target: Target, cache: dict[str | None, bytes]) -> bytes:
    """``base`` with the incoming footer of the domain the mail was destined to."""
    domain = routing.split(target.original)[1]
    text = footer.incoming(ctx.store, ctx.cfg.base, domain) if domain else None
    if text not in cache:
        cache[text] = footer.add(base, text) if text else base
    return cache[text]


def accept(ctx: Any, envelope: Envelope, data: bytes, footers: bool = True) -> Reply:
    """Take responsibility for ``data`` (CRLF, with our Received: header) or refuse it."""
    targets = expand_all(ctx, envelope)
    base = data
    if footers:
        text = footer.outgoing(ctx.store, ctx.cfg.base, envelope.sender)
        if text:
            base = footer.add(data, text)
    cache: dict[str | None, bytes] = {}
    failed: list[Recipient] = []
    local_groups: dict[int, tuple[bytes, list[Target]]] = {}
    spool_groups: dict[int, tuple[bytes, list[Recipient]]] = {}
    for target in targets:
        if target.kind == FAIL:
            failed.append(Recipient(target.address, target.original, target.kind, FAILED,
                                    reply=str(target.reply or reply.NO_SUCH_USER)))
            continue
        content = base if not footers else _content_for(ctx, base, target, cache)
        if target.kind == LOCAL:
            local_groups.setdefault(id(content), (content, []))[1].append(target)
        else:
            spool_groups.setdefault(id(content), (content, []))[1].append(
                Recipient(target.address, target.original, target.kind))
    done = 0
    # The spool first: when it cannot store the message the 452 comes before any mailbox
    # got a copy (the client's retry would otherwise deliver that copy twice).
    for content, recipients in spool_groups.values():
        if not _spool(ctx, envelope, content, recipients):
            return reply.DISK_FULL
        done += len(recipients)
    deferred: dict[int, tuple[bytes, list[Recipient]]] = {}
    for content, group in local_groups.values():
        outcomes = deliver_local(ctx, envelope.sender, content, group)
        for target in group:
            outcome = outcomes[target.address]
            if outcome.status == "delivered":
                done += 1
            elif outcome.status == "failed":
                failed.append(Recipient(target.address, target.original, LOCAL, FAILED,
                                        reply=outcome.reply))
            else:  # the Maildir cannot be written now: the queue will retry
                deferred.setdefault(id(content), (content, []))[1].append(
                    Recipient(target.address, target.original, LOCAL))
    for content, recipients in deferred.values():
        if not _spool(ctx, envelope, content, recipients):
            return reply.DISK_FULL
        done += len(recipients)
    if failed and not done:
        first = failed[0].reply
        return reply_from_text(first)
    if failed:
        answer = dsn.send(ctx, dsn.FAILED, envelope, data, failed)
        if answer is not None and answer.is_temporary:
            return reply.DISK_FULL  # the report could not be stored: the client must retry
    if not targets:
        LOG.info("accept: message from <%s> had no destination (empty list)", envelope.sender)
    return reply.QUEUED


def _spool(ctx: Any, envelope: Envelope, content: bytes, recipients: list[Recipient]) -> bool:
    """Commit ``content`` for ``recipients`` to the spool; False (logged) when it cannot."""
    spooled = dataclasses.replace(envelope, recipients=[r.original for r in recipients])
    try:
        message = ctx.queue.submit(spooled, content, recipients)
    except OSError as exc:
        LOG.error("spool: cannot store a message from <%s> for %d recipient(s): %s",
                  envelope.sender, len(recipients), exc.strerror or exc)
        return False
    LOG.info("spool %s from=<%s> to=%s size=%d queued", message.id, envelope.sender,
             ",".join(f"<{r.address}>" for r in recipients), len(content))
    return True


def reply_from_text(text: str) -> Reply:
    """A :class:`Reply` from its ``str()`` form ("550 5.1.1 text")."""
    code, _, rest = text.partition(" ")
    enhanced, _, message = rest.partition(" ")
    if code.isdigit() and enhanced[:1].isdigit():
        return Reply(int(code), enhanced, message)
    return Reply(554, "5.0.0", text)
