"""Logging set-up (plain text or JSON lines) and a limiter for repeating messages.

A problem that repeats on every poll (a missing file, a mapping rule that never matches)
is logged the first time, then at most once a minute with the number of repeats.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO


class _JsonFormatter(logging.Formatter):
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
        formatter = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class Throttled:
    """Logs a keyed message at most once per ``every_s``, reporting how often it repeated."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0) -> None:
        self._logger = logger
        self._every_s = every_s
        self._seen: dict[Any, tuple[float, int]] = {}

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
        if last is not None and now - last[0] < self._every_s:
            self._seen[key] = (last[0], last[1] + 1)
            return
        repeats = last[1] if last is not None else 0
        if repeats:
            message += " (%d more like this in the last %.0f s)"
            args = (*args, repeats, now - last[0])  # type: ignore[index]
        self._seen[key] = (now, 0)
        self._logger.log(
            level, message, *args, extra={**(extra or {}), "repeats": repeats}, exc_info=exc_info
        )

    def clear(self, *prefix: Any) -> bool:
        """Forget every key starting with ``prefix`` (the problem went away).

        True if any of them had been logged.
        """
        gone = [k for k in self._seen if k[: len(prefix)] == prefix]
        for key in gone:
            del self._seen[key]
        return bool(gone)
