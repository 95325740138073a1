"""The base directory's layout, created on first start, and the management password file.

``smtpd start`` on a base directory that does not exist yet creates conf/, data/, mbox/,
queue/, tmp/ and log/, the shipped configuration, the default DSN texts and the
management password ``system`` (stored as an scrypt hash).
"""

from __future__ import annotations

import os
from importlib import resources

from . import auth, config
from .config import Config
from .durable import atomic_write

DEFAULT_LOGIN = "system"
DSN_TEXTS = (("FILE_DSN_FAIL", "dsn_fail"), ("FILE_DSN_DELA", "dsn_dela"))


def shipped(name: str) -> bytes:
    """A default data file: installed as ``extremail.data``, or the repository's data/."""
    try:
        return (resources.files("extremail.data") / name).read_bytes()
    except ModuleNotFoundError:
        source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
        with open(os.path.join(source, name), "rb") as handle:
            return handle.read()


def ensure_base(base: str) -> None:
    """Create the base directory and its shipped configuration if they are missing."""
    for sub in ("conf", "data", "mbox", "queue", "tmp", "log"):
        os.makedirs(os.path.join(base, sub), mode=0o750, exist_ok=True)
    conf = config.default_path(base)
    if not os.path.exists(conf):
        atomic_write(conf, config.render_default_file().encode("utf-8"), 0o640)


def ensure(cfg: Config) -> None:
    """Create every directory and default file the configuration names."""
    for name in ("DIR_LOG", "DIR_USER_MBOX", "DIR_QUEUE_MBOX", "DIR_TMP"):
        os.makedirs(getattr(cfg, name), mode=0o750, exist_ok=True)
    for param, source in DSN_TEXTS:
        path = getattr(cfg, param)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, shipped(source), 0o644)
    if not os.path.exists(cfg.FILE_LOGIN):
        set_login(cfg, DEFAULT_LOGIN)


def set_login(cfg: Config, password: str) -> None:
    """Store the management password as an scrypt hash in FILE_LOGIN."""
    os.makedirs(os.path.dirname(cfg.FILE_LOGIN), exist_ok=True)
    atomic_write(cfg.FILE_LOGIN, (auth.hash_password(password) + "\n").encode("ascii"), 0o600)


def login_hash(cfg: Config) -> str:
    try:
        with open(cfg.FILE_LOGIN, encoding="ascii") as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""
