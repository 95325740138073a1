"""Delivery to an alias PIPE program: the message on its standard input.

The stored command line is split with :func:`shlex.split` and run WITHOUT a shell, so no
character of an address or of the message can become shell syntax.  The environment holds
only PATH, SENDER and RECIPIENT (nothing of the server's own environment).  Exit status
(sysexits.h): 0 delivered; 75 (EX_TEMPFAIL) try again later; anything else failed.  The
first line of the program's output goes into the log and the DSN.  The message is handed
over in an unlinked temporary file, so a program never sees a truncated message, even if
the server is killed while it runs.  A program that runs
longer than :data:`TIMEOUT_SECONDS` is killed and retried later.

Pipes run from the queue's delivery threads, never in an SMTP session.

Attack surface: the command comes from the management port (ALIAS ADD PIPE=); the message
comes from the network and only ever reaches the program's stdin.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile

from . import log
from .queue.spool import Outcome

LOG = log.get("pipe")

EX_TEMPFAIL = 75           # sysexits.h: temporary failure, the sender should retry
TIMEOUT_SECONDS = 300.0    # a program that hangs must not hold a delivery thread forever
MAX_OUTPUT = 64 * 1024     # output kept for the log: the first bytes are enough
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


def _first_line(output: bytes) -> str:
    line = output.decode("utf-8", "replace").strip().split("\n", 1)[0]
    return line.strip()[:200]


def run(command: str, data: bytes, sender: str, recipient: str,
        timeout: float = TIMEOUT_SECONDS) -> Outcome:
    """Run ``command`` with ``data`` (LF form) on stdin; classify the result."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return Outcome("failed", f"554 5.3.5 Bad pipe command ({exc})")
    if not argv:
        return Outcome("failed", "554 5.3.5 Empty pipe command")
    env = {"PATH": SAFE_PATH, "SENDER": sender, "RECIPIENT": recipient}
    try:
        # stdin and stdout are unlinked files, not pipes: if the server dies meanwhile the
        # program still reads the whole message (never a truncated one) and can still write
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout:
            stdin.write(data)
            stdin.seek(0)
            done = subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=subprocess.STDOUT,
                                  env=env, timeout=timeout, close_fds=True, cwd="/")
            stdout.seek(0)
            output = stdout.read(MAX_OUTPUT)
    except subprocess.TimeoutExpired:
        return Outcome("deferred", f"451 4.3.0 Pipe program timed out after {int(timeout)}s")
    except FileNotFoundError:
        return Outcome("failed", f"554 5.3.5 Pipe program not found: {argv[0]}")
    except PermissionError:
        return Outcome("failed", f"554 5.3.5 Pipe program not executable: {argv[0]}")
    except OSError as exc:
        return Outcome("deferred", f"451 4.3.0 Pipe program could not run: {exc.strerror or exc}")
    first = _first_line(output)
    detail = f": {first}" if first else ""
    if done.returncode == 0:
        return Outcome("delivered", f"250 2.0.0 Delivered to program{detail}")
    if done.returncode == EX_TEMPFAIL:
        return Outcome("deferred", f"451 4.3.0 Program asked to retry (exit 75){detail}")
    return Outcome("failed", f"554 5.3.0 Program failed (exit {done.returncode}){detail}")
