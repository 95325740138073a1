"""Daily log files in DIR_LOG (a new file each day), honouring CFG_LOG_LEVEL.

Levels: 0 nothing, 1 errors, 2 warnings, 3 one line per session event and per delivery,
4 details, 5 debug.  Nothing here ever receives a password: callers log through
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
from logging.handlers import QueueHandler, QueueListener

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

_SECRET_COMMANDS = re.compile(rb"^(\s*(?:PASS|LOGIN|AUTH\s+\S+|USER\s+(?:ADD|MOD)\b.*?PASS=))(.*)$",
                              re.IGNORECASE | re.DOTALL)


def redact(line: bytes) -> str:
    """A protocol line for the log with any password replaced by ``****``."""
    match = _SECRET_COMMANDS.match(line)
    if match:
        line = match.group(1) + b" ****"
    return line.decode("utf-8", "replace").rstrip("\r\n")


class DailyFileHandler(logging.Handler):
    """Writes to ``DIR_LOG/eXtremail-YYYYMMDD.log``, opening a new file when the day changes."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory
        self._day = ""
        self._stream = None
        self._lock = threading.Lock()

    def _file_for(self, day: str) -> str:
        return os.path.join(self.directory, f"eXtremail-{day}.log")

    def current_path(self) -> str:
        return self._file_for(time.strftime("%Y%m%d", time.gmtime()))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
            day = time.strftime("%Y%m%d", time.gmtime(record.created))
            with self._lock:
                if day != self._day or self._stream is None:
                    if self._stream is not None:
                        self._stream.close()
                    os.makedirs(self.directory, exist_ok=True)
                    self._stream = open(self._file_for(day), "a", encoding="utf-8")  # noqa: SIM115 (kept open)
                    self._day = day
                self._stream.write(text)
                self._stream.flush()
        except Exception:  # logging must never take the server down
            self.handleError(record)

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        super().close()


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime


FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(message)s"


class _WriterQueueHandler(QueueHandler):
    """Hands each record to the one writer thread: sessions pay for building the message
    text only; time stamps, formatting, the handlers' lock and the file write happen there."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg = record.getMessage()  # the arguments may change after this call returns
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_listener: QueueListener | None = None


def setup(directory: str, level: int, to_stderr: bool = False) -> logging.Logger:
    """Configure the ``extremail`` logger (a writer thread behind a queue); returns it."""
    global _listener
    shutdown()
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = _UTCFormatter(FORMAT, "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [DailyFileHandler(directory)]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    logger.addHandler(_WriterQueueHandler(records))
    _listener = QueueListener(records, *handlers)
    _listener.start()
    logger.setLevel(LEVELS[level])
    logger.propagate = False
    return logger


def shutdown() -> None:
    """Write what is queued and stop the writer thread (at the end of the process)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        for handler in _listener.handlers:
            handler.close()
        _listener = None


def get(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


atexit.register(shutdown)
