r"""Logging set-up (plain text or JSON lines) and a limiter for repeating messages.

A problem that repeats on every poll (a missing file, a mapping rule that never matches)
is logged the first time, then at most once a minute with the number of repeats.

Log messages quote foreign text: paths, a collector's error text, what a file held. A
control character in it (a newline, an ANSI escape) must never start a forged line or
repaint a terminal, so every message is written with them escaped (``\n``, ``\x1b``):
one record is always one line (a traceback keeps its own lines, with the exception
messages in it escaped the same way).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, TextIO

#: C0 and C1 control characters and the Unicode line and paragraph separators.
_CONTROLS = {
    code: ("\\n" if code == 10 else "\\t" if code == 9 else f"\\x{code:02x}")
    for code in (*range(0x20), *range(0x7F, 0xA0))
} | {0x2028: "\\u2028", 0x2029: "\\u2029"}


def printable(text: str) -> str:
    r"""``text`` with its control characters escaped (a newline becomes ``\n``)."""
    return text.translate(_CONTROLS)


class _EscapeControls(logging.Filter):
    """Makes every record's message one printable line (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it itself
            return True
        record.msg, record.args = printable(message), None
        return True


class _Formatter(logging.Formatter):
    """A traceback keeps its lines (they are ours: frames and source), but the exception
    messages in it may quote foreign text: those have their control characters escaped."""

    def formatException(self, ei: Any) -> str:
        chunks = []
        for chunk in traceback.TracebackException(*ei[:3]).format():
            ours = chunk.startswith(("Traceback ", "  File ", "\n")) or not chunk.strip()
            chunks.append(chunk if ours else printable(chunk.rstrip("\n")) + "\n")
        return "".join(chunks).rstrip("\n")


class _JsonFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("source", "rule", "repeats"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = _Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    handler.addFilter(_EscapeControls())
    logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


@dataclass(slots=True)
class _Seen:
    logged_at: float
    repeats: int = 0
    ongoing: bool = True
    """The problem is happening (not cleared since)."""
    announced: bool = True
    """This occurrence was logged, so its end is worth a line too."""


class Throttled:
    """Logs a keyed message at most once per ``every_s``, reporting how often it repeated.

    A problem that comes and goes (a file read torn, then whole, 200 times a second) is
    one problem: after ``clear`` its key is remembered, a recurrence within ``every_s`` of
    its last line is counted rather than logged, and only an occurrence that was logged
    makes ``clear`` say so. The pair "problem" / "fine again" appears at most once per
    ``every_s``, not once per flap.
    """

    def __init__(self, logger: logging.Logger, every_s: float = 60.0) -> None:
        self._logger = logger
        self._every_s = every_s
        self._seen: dict[Any, _Seen] = {}

    def log(
        self,
        level: int,
        key: Any,
        message: str,
        *args: Any,
        extra: dict[str, Any] | None = None,
        exc_info: bool = False,
    ) -> None:
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last.logged_at < self._every_s:
            last.repeats += 1
            last.ongoing = True
            return
        repeats = last.repeats if last is not None else 0
        if repeats:
            message += " (%d more like this in the last %.0f s)"
            args = (*args, repeats, now - last.logged_at)  # type: ignore[union-attr]
        self._seen[key] = _Seen(now)
        self._logger.log(
            level, message, *args, extra={**(extra or {}), "repeats": repeats}, exc_info=exc_info
        )

    def clear(self, *prefix: Any) -> bool:
        """The problems of every key starting with ``prefix`` went away.

        True if one of them had been logged since it last went away (worth saying it is
        over). Keys last logged over ``every_s`` ago are forgotten.
        """
        now = time.monotonic()
        announce = False
        for key in [k for k in self._seen if k[: len(prefix)] == prefix]:
            seen = self._seen[key]
            if seen.ongoing:
                announce |= seen.announced
                seen.ongoing = seen.announced = False
            if now - seen.logged_at >= self._every_s and not seen.repeats:
                del self._seen[key]
        return announce
