"""When the queue retries, gives up, and warns: pure functions of the clock (STYLE.md habit 8).

* a temporary failure is retried CFG_MIN_QUEUE minutes after the attempt;
* a message older than CFG_HOR_RETRY_MAIL hours has expired: its queued recipients fail
  (RFC 3463 4.4.7, "delivery time expired") and the sender gets a "failed" DSN;
* one "delayed" DSN (RFC 3464 Action: delayed) goes out once a message has waited
  CFG_HOR_DELAY_DSN hours with recipients still queued (0 = never).

Every function takes the times it needs; nothing here reads a clock.
"""

from __future__ import annotations

MINUTE = 60.0
HOUR = 3600.0


def next_attempt(last_attempt: float, min_queue_minutes: int) -> float:
    """The time of the next try after an attempt at ``last_attempt``."""
    return last_attempt + min_queue_minutes * MINUTE


def is_due(next_at: float, now: float) -> bool:
    return next_at <= now


def expires_at(arrived: float, retry_hours: int) -> float:
    return arrived + retry_hours * HOUR


def expired(arrived: float, now: float, retry_hours: int) -> bool:
    return now >= expires_at(arrived, retry_hours)


def delay_dsn_due(arrived: float, now: float, delay_hours: int, already_sent: bool) -> bool:
    """True once, when a "delayed" DSN should go out."""
    return bool(delay_hours) and not already_sent and now >= arrived + delay_hours * HOUR


def wake_time(next_ats: list[float], arrived: float, retry_hours: int, delay_hours: int,
              delayed_sent: bool) -> float:
    """The earliest moment something must happen to a message: a retry, its expiry, or its
    delayed DSN."""
    candidates = [*next_ats, expires_at(arrived, retry_hours)]
    if delay_hours and not delayed_sent:
        candidates.append(arrived + delay_hours * HOUR)
    return min(candidates)
