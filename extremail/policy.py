"""Who may send what through this server: relay, deny entries and outgoing sizes.

Every check returns ``None`` to go on or raises :class:`~extremail.reply.Refusal` with the
whole reply (STYLE.md habit 1), so the SMTP session only asks and answers.

* Relay (DESIGN.md rule 2): mail for a domain that is not local is accepted only when
  CFG_ANTI_RELY is 0 (open: the control thread warns at start), or the client IP is in
  CFG_LOCALIP (1 and 2), or it logged in to POP3/IMAP within CFG_RELY_TIMEOUT minutes
  (2, the control thread's :class:`~extremail.relaytable.RelayTable`), or the session is
  authenticated (SMTP AUTH).  The judged address is always the final mailbox the
  parser kept (source routes are dropped, RFC 5321 4.1.1.3); the local part of a local
  domain (``user%remote``, ``remote!user``, ``"user@remote"``) is never looked into.
* Deny entries of the manual: IPIN at connect (``554 5.7.1``), DOMAININ / MAILBOXIN
  against the MAIL FROM sender, DOMAINOUT / MAILBOXOUT against each RCPT (``550 5.7.1``).
  A domain entry also covers its subdomains.  IPOUT is outbound delivery's business.
* MAXOUTMAILSIZE (KB): the sender's user record, else its local domain's; ``552 5.3.4``.

Attack surface: decides what outsiders can make this server do; reads only the store,
the configuration and the relay table.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from . import reply, routing
from .config import Config
from .reply import Refusal
from .relaytable import RelayTable
from .store import Store

OPEN, LOCALIP, POP_BEFORE_SMTP = 0, 1, 2


# ---- relay ----
def may_relay(cfg: Config, table: RelayTable, ip: str, authenticated: str = "") -> bool:
    """True when a client at ``ip`` may send to domains that are not local."""
    if cfg.CFG_ANTI_RELY == OPEN or authenticated:
        return True
    if in_networks(ip, cfg.CFG_LOCALIP):
        return True
    return cfg.CFG_ANTI_RELY == POP_BEFORE_SMTP and table.allows(ip)


def check_relay(ctx: Any, ip: str, authenticated: str = "") -> None:
    if not may_relay(ctx.cfg, ctx.relay, ip, authenticated):
        raise Refusal(reply.RELAY_DENIED)


def in_networks(ip: str, networks: Any) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


# ---- deny entries ----
def check_connect(store: Store, ip: str) -> None:
    """IPIN: an address or ``a.b.c.d/n`` network refused at connect."""
    for entry in _entries(store, "IPIN"):
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue  # the management port validates; a hand-edited bad line matches nothing
        if in_networks(ip, (network,)):
            raise Refusal(reply.CONNECT_DENIED, f"Connections from {ip} are not accepted")


def check_sender(store: Store, sender: str) -> None:
    """DOMAININ / MAILBOXIN against the reverse-path (the null sender is never denied)."""
    if sender and _denied(store, "DOMAININ", "MAILBOXIN", sender):
        raise Refusal(reply.DENIED, f"Mail from <{sender}> is not accepted")


def check_recipient(store: Store, recipient: str) -> None:
    """DOMAINOUT / MAILBOXOUT against a forward-path."""
    if _denied(store, "DOMAINOUT", "MAILBOXOUT", recipient):
        raise Refusal(reply.DENIED, f"Mail to <{recipient}> is not accepted")


def _entries(store: Store, kind: str) -> list[str]:
    return [deny.value.strip() for deny in store.denies.rows.values() if deny.kind == kind]


def _denied(store: Store, domain_kind: str, mailbox_kind: str, address: str) -> bool:
    local, domain = routing.split(address)
    mailbox = f"{local}@{domain}"
    if any(entry.lower() == mailbox for entry in _entries(store, mailbox_kind)):
        return True
    return any(domain == entry or domain.endswith("." + entry)
               for entry in (e.lower().lstrip("@").rstrip(".") for e in _entries(store, domain_kind))
               if entry)


# ---- sizes ----
def max_out_size(store: Store, sender: str) -> int:
    """MAXOUTMAILSIZE in bytes for a local sender (user record, else its domain); 0 = none."""
    local, domain = routing.split(sender)
    if not domain or not store.is_local_domain(domain):
        return 0
    user = store.users.rows.get((local, domain))
    if user is not None and user.maxoutmailsize:
        return user.maxoutmailsize * 1024
    record = store.domains.rows.get(domain)
    return record.maxoutmailsize * 1024 if record is not None else 0


def check_out_size(store: Store, sender: str, size: int) -> None:
    limit = max_out_size(store, sender)
    if limit and size > limit:
        raise Refusal(reply.TOO_BIG, f"Message size exceeds the limit of {limit // 1024} KB "
                                     f"for mail from <{sender}>")
