"""Passwords (scrypt hashes, constant-time checks), the cache of verified logins, and the
slowing-down of failed logins.

Passwords are stored as ``$scrypt$N$r$p$salt$hash`` (base64 fields) and never in clear;
this module is the only place that sees a clear password, and it never logs one.

Memory: one scrypt derivation takes 128 * r * N bytes (16 MB here), so at most
:data:`MAX_DERIVATIONS` run at once; twenty simultaneous POP3 logins otherwise held
320 MB, which the allocator keeps afterwards.  The others wait their turn, a known
user, an unknown one and a wrong password alike, so the wait tells nothing.  And glibc
is told to map blocks that large on their own and unmap them when freed
(:func:`_unmap_large_blocks`): by default it keeps them in the arena of every thread
that ever checked a password.

Login cache (:class:`LoginCache`, as Dovecot's auth cache): a POP3 client polls every
few minutes with the same password, and each scrypt costs about 50 ms of CPU.  After a
successful verification the cache keeps, per user, the stored hash it was checked
against and HMAC-SHA256 of the password under a key drawn from ``os.urandom`` when the
process starts; a later login whose stored hash is the same and whose HMAC matches
(constant-time) succeeds without scrypt.  Why that is safe: the clear password is never
kept, and the digest cannot be checked without the key, which is never written anywhere
and dies with the process (a restart empties the cache); any change of the stored hash
(a new password, the user deleted or added again: a new salt) invalidates the entry at
once; an entry expires :data:`CACHE_TTL` after the scrypt check that made it, however
often it is used.  Only successes are cached: a wrong password and an unknown user
still cost one full derivation each, and are throttled as before.  What remains:
someone who can read this process's memory could test guesses against a cached digest
at HMAC speed instead of scrypt speed, but such a reader also sees passwords as they
arrive.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
_DUMMY_SALT = b"eXtremail-dummy!"
# Derivations at once: two per core of the 2-core target keeps the CPUs busy; more only
# adds memory (16 MB each), not logins per second.
MAX_DERIVATIONS = 4
_slots = threading.BoundedSemaphore(MAX_DERIVATIONS)
derivations = 0  # scrypt derivations since the process started: what the login cache saves
_counting = threading.Lock()
# The login cache: how long a verified password is remembered (Dovecot's default
# auth_cache_ttl) and for how many users at most (the least recently used go first).
CACHE_TTL = 3600.0
CACHE_SIZE = 10_000
_CACHE_KEY = os.urandom(32)
# glibc mallopt(3) parameters and the values its dynamic mmap threshold would settle on
# after one 16 MB block, fixed below it so scrypt's blocks always go back to the system.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 8 << 20


def _unmap_large_blocks() -> None:
    """Blocks of :data:`MMAP_THRESHOLD` bytes or more are mapped and unmapped each time.

    glibc's default threshold rises to the largest block freed, so after the first login
    every 16 MB scrypt buffer comes from, and stays in, the calling thread's arena:
    twenty sessions that logged in once kept 300 MB.  Setting the threshold fixes it (and
    the trim threshold, which it would otherwise leave at 128 KB).
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator follows its own policy


_unmap_large_blocks()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """The scrypt key, once one of the :data:`MAX_DERIVATIONS` slots is free."""
    global derivations
    with _slots:
        with _counting:
            derivations += 1
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


@dataclass(frozen=True)
class _Verified:
    stored: str    # the hash the password was verified against
    digest: bytes  # HMAC-SHA256(_CACHE_KEY, password)
    expires: float


class LoginCache:
    """Passwords recently verified, per user, so a client logging in again with the same
    password costs no scrypt (the module docstring says why this is safe)."""

    def __init__(self, ttl: float = CACHE_TTL, size: int = CACHE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.size = ttl, size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, _Verified] = OrderedDict()

    def verify(self, user: Hashable, password: str, stored: str | None) -> bool:
        """:func:`verify_password`, answered without scrypt when ``user`` logged in with
        this ``password`` against this same ``stored`` hash less than ``ttl`` ago."""
        digest = hmac.new(_CACHE_KEY, password.encode("utf-8"), hashlib.sha256).digest()
        with self._lock:
            entry = self._entries.get(user)
            if entry is not None and (entry.stored != stored or entry.expires <= self._clock()):
                del self._entries[user]  # a changed password, a deleted user or too old
            elif entry is not None and hmac.compare_digest(entry.digest, digest):
                self._entries.move_to_end(user)
                return True
        if not verify_password(password, stored) or stored is None:
            return False
        with self._lock:
            self._entries[user] = _Verified(stored, digest, self._clock() + self.ttl)
            self._entries.move_to_end(user)
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return True


login_cache = LoginCache()


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
