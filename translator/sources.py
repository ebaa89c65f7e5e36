"""Read metrics files into :class:`Snapshot` objects, each new version exactly once.

A source knows nothing of metrics: it stats, reads, parses and decides whether what it
read is new. It raises :class:`~translator.errors.SourceError` for a read that failed this
time (the caller logs and polls again) and never holds a file open between polls.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

import orjson

from translator.errors import DocumentInvalid, SourceError, SourceUnavailable
from translator.mapping.paths import MISSING
from translator.mapping.plan import SourceSpec

#: A file whose mtime is this close to our last read may still be being written within
#: the same timestamp tick; it is re-read even when stat() looks unchanged (git's
#: "racy clean" problem).
_RACY_WINDOW_NS = 2_000_000_000


class SourceMissing(SourceUnavailable):
    """The file does not exist (yet): normal before training starts."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one successful read produced: the records to apply, in order."""

    path: str
    records: list[Any]
    root: Any
    replaces: bool
    """True when the records are the whole current state (a document), so series absent
    from them must stop being exported; False for appended records (JSON Lines)."""
    read_at: float


def parse_json(data: bytes | str) -> Any:
    """Parse JSON, accepting the NaN/Infinity literals Python trainers write.

    orjson is tried first (fast); documents it refuses go to the standard parser, which
    also knows NaN, Infinity and -Infinity. Raises ValueError with the standard parser's
    message (line and column) when neither accepts the text.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None


class DocumentSource:
    """One JSON document, rewritten in place by the training job."""

    def __init__(self, path: str, spec: SourceSpec) -> None:
        self.path = path
        self._spec = spec
        self._fingerprint: tuple[int, ...] | None = None
        self._checked_ns = 0
        self._digest: bytes | None = None
        self._version: Any = MISSING

    def poll(self) -> Snapshot | None:
        """The new version of the document, or None when there is nothing new."""
        started_ns = time.time_ns()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise SourceMissing(self.path, "does not exist (yet)") from None
        except OSError as exc:
            raise SourceUnavailable(self.path, f"cannot be read: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise SourceUnavailable(self.path, "is not a regular file (a directory?)")
        fingerprint = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if fingerprint == self._fingerprint and self._checked_ns - st.st_mtime_ns > _RACY_WINDOW_NS:
            return None
        cap = self._spec.max_bytes
        if st.st_size > cap:
            raise SourceUnavailable(
                self.path,
                f"is {st.st_size} bytes, over the {cap}-byte cap (source.max_bytes)",
            )
        data = _read_capped(self.path, cap)
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest == self._digest:
            self._fingerprint, self._checked_ns = fingerprint, started_ns
            return None
        if not data.strip():
            raise DocumentInvalid(self.path, "is empty (being rewritten?); will read it again")
        try:
            document = parse_json(data)
        except ValueError as exc:
            raise DocumentInvalid(
                self.path, f"is not valid JSON ({exc}); will read it again"
            ) from None
        self._fingerprint, self._checked_ns, self._digest = fingerprint, started_ns, digest
        if self._spec.version_path is not None:
            version = self._spec.version_path.first(document)
            if version is not MISSING and version == self._version:
                return None
            self._version = version
        if self._spec.records is not None:
            records = self._spec.records.all(document)
        else:
            records = [document]
        return Snapshot(self.path, records, document, replaces=True, read_at=time.time())


def _read_capped(path: str, cap: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(cap + 1)
    except IsADirectoryError:
        raise SourceUnavailable(path, "is not a regular file (a directory?)") from None
    except FileNotFoundError:
        raise SourceMissing(path, "does not exist (yet)") from None
    except OSError as exc:
        raise SourceUnavailable(path, f"cannot be read: {exc.strerror}") from None
    if len(data) > cap:
        raise SourceUnavailable(path, f"grew past the {cap}-byte cap (source.max_bytes)")
    return data


__all__ = ["DocumentSource", "Snapshot", "SourceError", "SourceMissing", "parse_json"]
