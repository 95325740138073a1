"""Daily log files in DIR_LOG (a new file each day), honouring CFG_LOG_LEVEL.

Levels: 0 nothing, 1 errors, 2 warnings, 3 one line per session event and per delivery
(for SMTP: the connection, HELO/EHLO, each refusal, each message's DATA with its sender
and outcome, each delivery with its recipient), 4 details (each accepted MAIL FROM and
RCPT TO as well), 5 debug.  Nothing here ever receives a password: callers log through
:func:`redact` when they trace a protocol line.
"""

from __future__ import annotations

import atexit
import logging
import queue
import os
import re
import sys
import threading
import time
import traceback
from logging.handlers import QueueHandler
from typing import Any, TextIO

DETAIL = 15
# The format uses neither source locations nor process names: skip collecting them for
# every record (findCaller walks the stack).
logging._srcfile = None
logging.logProcesses = False
logging.logMultiprocessing = False
logging.addLevelName(DETAIL, "DETAIL")
LEVELS = {0: logging.CRITICAL + 10, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO,
          4: DETAIL, 5: logging.DEBUG}
LOGGER_NAME = "extremail"
# How long the writer lets records gather after the first: it then wakes (and takes the
# GIL) a few dozen times a second under load instead of once per record.
GATHER = 0.05

_SECRET_COMMANDS = re.compile(rb"^(\s*(?:PASS|LOGIN|AUTH\s+\S+|USER\s+(?:ADD|MOD)\b.*?PASS=))(.*)$",
                              re.IGNORECASE | re.DOTALL)


def redact(line: bytes) -> str:
    """A protocol line for the log with any password replaced by ``****``."""
    match = _SECRET_COMMANDS.match(line)
    if match:
        line = match.group(1) + b" ****"
    return line.decode("utf-8", "replace").rstrip("\r\n")


def printable(text: str) -> str:
    """``text`` with what a client may have sent to forge or garble log lines (control
    characters, line breaks, the bytes that were not UTF-8) written as escapes: bytes
    decoded with ``surrogateescape`` come back as the ``\\xNN`` they were."""
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class DailyLog(threading.Thread):
    """The one writer of ``DIR_LOG/eXtremail-YYYYMMDD.log`` (a new file each UTC day), and of
    stderr in the foreground.  Sessions only queue records; this thread formats them (the
    time stamp once a second) and writes whatever has queued up with one flush."""

    _STOP = object()

    def __init__(self, directory: str, echo: TextIO | None = None) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.directory = directory
        self.echo = echo
        self.records: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._day = ""
        self._second = -1
        self._stamp = ""
        self._stream: TextIO | None = None
        self._stopping = threading.Event()

    def path_for(self, day: str) -> str:
        return os.path.join(self.directory, f"eXtremail-{day}.log")

    def run(self) -> None:
        while True:
            batch = [self.records.get()]
            self._stopping.wait(GATHER)
            try:
                while len(batch) < 10000:
                    batch.append(self.records.get_nowait())
            except queue.Empty:
                pass
            stop = batch[-1] is self._STOP
            try:
                self._write([r for r in batch if r is not self._STOP])
            except Exception:  # logging must never take the server down
                traceback.print_exc(file=sys.stderr)
            if stop:
                if self._stream is not None:
                    self._stream.close()
                return

    def _line(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        message = record.getMessage()
        if not message.isprintable():
            message = printable(message)
        line = f"{self._stamp} {record.levelname} [{record.threadName}] {message}\n"
        if record.exc_text:
            line += record.exc_text + "\n"
        return line

    def _write(self, records: list[logging.LogRecord]) -> None:
        text = "".join(self._line(record) for record in records)
        if not text:
            return
        day = self._stamp[:10].replace("-", "")
        if day != self._day or self._stream is None:
            if self._stream is not None:
                self._stream.close()
            os.makedirs(self.directory, exist_ok=True)
            self._stream = open(self.path_for(day), "a", encoding="utf-8",  # noqa: SIM115 (kept open)
                                errors="backslashreplace")
            self._day = day
        self._stream.write(text)
        self._stream.flush()
        if self.echo is not None:
            self.echo.write(text)
            self.echo.flush()

    def stop(self) -> None:
        self._stopping.set()
        self.records.put(self._STOP)
        self.join(10)


class _WriterQueueHandler(QueueHandler):
    """Hands each record to the writer thread: a session pays only for its message text."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg = record.getMessage()  # the arguments may change after this call returns
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_writer: DailyLog | None = None


def setup(directory: str, level: int, to_stderr: bool = False) -> logging.Logger:
    """Configure the ``extremail`` logger (records go to the writer thread); returns it."""
    global _writer
    shutdown()
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    _writer = DailyLog(directory, sys.stderr if to_stderr else None)
    _writer.start()
    logger.addHandler(_WriterQueueHandler(_writer.records))
    logger.setLevel(LEVELS[level])
    logger.propagate = False
    return logger


def shutdown() -> None:
    """Write what is queued and stop the writer thread (at the end of the process)."""
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None


def get(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


atexit.register(shutdown)
