"""Log output for the CLI and the servers: one handler on stderr, text or JSON lines.

As a library, graphdrivers adds only a NullHandler to its ``graphdrivers`` logger (the
standard library's advice), so a program that configures no logging never sees our
warnings through Python's last-resort handler on stderr. The CLI and the servers call
``configure`` once: a single stderr handler on the root logger (so grpc's and other
libraries' errors share the format), with ``graphdrivers`` at the chosen level and
other libraries shown from error up. journald keeps stderr; ``json`` suits log shippers.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, and the
    traceback as ``exc`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _rfc3339(record.created), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _rfc3339(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


class _OurHandler(logging.StreamHandler):
    """The handler configure() installed (a second call replaces it). Without a stream
    of its own it writes to whatever sys.stderr is at each record, so a caller that
    swaps stderr (tests, a daemon re-pointing it) is followed."""

    def __init__(self, stream: IO[str] | None = None):
        super().__init__(stream or sys.stderr)
        self._follow = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow:
            self.stream = sys.stderr
        super().emit(record)


def _ours_or_serious(record: logging.LogRecord) -> bool:
    """Our records at the chosen level; other libraries' only from error up (stevedore's
    "Could not load nope" warning would double the CLI's own one-line error)."""
    return record.name.startswith("graphdrivers") or record.levelno >= logging.ERROR


def configure(level: str = "warning", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Send log records to ``stream`` (stderr) as ``fmt`` lines, ours from ``level`` up."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(handler)
    handler = _OurHandler(stream)
    handler.addFilter(_ours_or_serious)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    chosen = LEVELS[level]
    root.setLevel(max(chosen, logging.WARNING))
    logging.getLogger("graphdrivers").setLevel(chosen)


def configured() -> bool:
    """Whether configure() (or the program itself) already set up output on the root."""
    return bool(logging.getLogger().handlers)
