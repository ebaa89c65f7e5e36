"""The series a restarted sidecar comes back with, in its own file under ``STATE_DIR``.

It holds every live series (gauge values, running totals and their stream start times,
histogram buckets) and, per document, what decides which of its events are new (its
version, the identities of its history records), so that after a restart the first export
already carries the gauges of a JSON Lines log that has no new line yet, a histogram goes on
in the same stream, and a document read again adds no event twice. It is separate from the
JSON Lines read positions (``jsonl-*.json``, kept by :mod:`translator.sources`).

One file per mapping path: two sidecars sharing a ``STATE_DIR`` with different mappings do
not overwrite each other. Written whole to a temporary file and renamed, so a crash leaves
the previous state, never half of one. Never raises on a damaged file: :meth:`load` says
what is wrong and the sidecar starts without it.

Every file under ``STATE_DIR`` (this one, the read positions of :mod:`translator.sources`)
is opened with :func:`open_state_file`: a FIFO in its place must not block the sidecar.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from typing import Any

FORMAT = 1


def open_state_file(path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open`` for a file under STATE_DIR that refuses anything but a regular file.

    A plain open of a FIFO blocks until the other end opens (for good, SIGTERM included);
    O_NONBLOCK makes it return at once and the descriptor's fstat decides. Raises OSError.
    """
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            raise OSError(errno.EINVAL, "not a regular file", path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class SeriesStateFile:
    def __init__(self, state_dir: str, mapping_path: str) -> None:
        digest = hashlib.blake2b(os.path.abspath(mapping_path).encode(), digest_size=8)
        self.path = os.path.join(state_dir, f"series-{digest.hexdigest()}.json")

    def load(self) -> tuple[dict[str, Any] | None, str]:
        """``(saved, "")``, ``(None, "")`` when there is none, or ``(None, what is wrong)``."""
        try:
            with open(open_state_file(self.path, os.O_RDONLY), "rb") as fh:
                saved = json.loads(fh.read())
        except FileNotFoundError:
            return None, ""
        except OSError as exc:
            return None, f"cannot be read: {exc.strerror}"
        except ValueError as exc:
            return None, f"is not valid JSON ({exc})"
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            return None, f"is not a series state file of format {FORMAT}"
        if not isinstance(saved.get("series"), dict) or not isinstance(saved.get("sources"), dict):
            return None, "lacks its 'series' or 'sources' part"
        return saved, ""

    def save(self, series: dict[str, Any], sources: dict[str, Any]) -> None:
        """Replace the saved state; raises OSError."""
        state = {"format": FORMAT, "saved_at": time.time(), "series": series, "sources": sources}
        data = json.dumps(state, allow_nan=False, separators=(",", ":")).encode()
        tmp = f"{self.path}.tmp"
        with open(open_state_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.path)
