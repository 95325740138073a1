"""Passwords (scrypt hashes, constant-time checks) and the slowing-down of failed logins.

Passwords are stored as ``$scrypt$N$r$p$salt$hash`` (base64 fields) and never in clear;
this module is the only place that sees a clear password, and it never logs one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import time

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
_DUMMY_SALT = b"eXtremail-dummy!"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=128 * r * n * 2, dklen=32)


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = _derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"$scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches ``stored``.

    With no stored hash the same work is still done, so a wrong user name takes as long
    as a wrong password (no user enumeration by timing).
    """
    try:
        _, scheme, n, r, p, salt, digest = (stored or "").split("$")
        if scheme != "scrypt":
            raise ValueError(scheme)
        expected = base64.b64decode(digest)
        actual = _derive(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        _derive(password, _DUMMY_SALT, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return False
    return hmac.compare_digest(expected, actual)


def is_hash(text: str) -> bool:
    return text.startswith("$scrypt$") and text.count("$") == 6


class Throttle:
    """Counts recent failures per key (an IP) and says how long to wait before answering.

    The first ``free`` failures cost nothing; each one after doubles the delay, up to
    ``ceiling`` seconds. Failures older than ``window`` seconds are forgotten.
    """

    def __init__(self, free: int = 3, base: float = 1.0, ceiling: float = 15.0,
                 window: float = 900.0, clock=time.monotonic) -> None:
        self.free, self.base, self.ceiling, self.window = free, base, ceiling, window
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def failure(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            recent = [t for t in self._failures.get(key, []) if now - t < self.window]
            recent.append(now)
            self._failures[key] = recent[-64:]

    def success(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def delay(self, key: str) -> float:
        now = self._clock()
        with self._lock:
            count = sum(1 for t in self._failures.get(key, []) if now - t < self.window)
        if count < self.free:
            return 0.0
        return min(self.ceiling, self.base * 2 ** (count - self.free))

    def expire(self) -> None:
        """Drop keys with no recent failure (a control-thread job)."""
        now = self._clock()
        with self._lock:
            for key in [k for k, v in self._failures.items() if not v or now - v[-1] >= self.window]:
                del self._failures[key]
