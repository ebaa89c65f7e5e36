"""Read metrics files into :class:`Snapshot` objects, each new content exactly once.

A source knows nothing of metrics: it stats, reads, parses and decides whether what it
read is new. It raises :class:`~translator.errors.SourceError` for a read that failed this
time (the caller logs and polls again).

- :class:`DocumentSource`: one JSON document rewritten in place; opened, read, closed.
  Any new content is a snapshot (state is what the document says now); it says whether
  its events are new (a new version key, or new content without one). With ``records`` it
  is a history array: every record gives state, and it says where the records not read
  before begin (by position and content: see ``_first_new``).
- :class:`JsonlSource`: an append-only JSON Lines file, tailed. It keeps its file open so
  that lines written just before a rotation are still read, detects truncation and
  rotation, and checkpoints its position so a restarted sidecar resumes where it was.
- :class:`CsvSource`: a CSV file with a header, appended to or rewritten whole; each data
  row is a record, applied once.
- :class:`PathPattern`: a glob with named parts (``/runs/{run_id}/state.json``).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import json
import math
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Any

import orjson

from translator.errors import DocumentInvalid, SourceError, SourceUnavailable
from translator.mapping.paths import MISSING, PLACEHOLDER, PathTooCostly
from translator.mapping.plan import SourceSpec
from translator.statefile import open_state_file

#: A file whose mtime is this close to our last read may still be being written within
#: the same timestamp tick; it is re-read even when stat() looks unchanged (git's
#: "racy clean" problem).
_RACY_WINDOW_NS = 2_000_000_000
#: A parse is not proof of a complete write: a writer overwriting in place without
#: truncating (same length, several chunks) leaves, between its chunks, a mix of two
#: versions that parses. A read is applied only once the file has held still: its status
#: (inode, size, mtime, ctime) the same before and after the read and its ctime at least
#: _SETTLED_NS old, or, for a file changed just now, a second read _SECOND_READ_S later
#: giving the same bytes under the same status. A file that never holds that still is
#: read again soon, quietly (see DocumentSource.settling).
_SETTLED_NS = 20_000_000
_SECOND_READ_S = 0.005
#: A document that has not held still that long (rewritten in place more often than every
#: _SECOND_READ_S) is reported: it is not applied, and the person must be told why.
_UNSETTLED_WARN_S = 5.0


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
    errors: tuple[str, ...] = ()
    """Records that could not be used (a JSON line that does not parse), each described."""
    more: bool = False
    """The source has more to read right away (a backlog larger than one read)."""
    first_new: int = 0
    """``records[:first_new]`` were read before (a history array read again): they give
    state, but each record's events count once, so they add none now."""
    events: bool = True
    """False when the new records' events were counted already: a document rewritten
    under the same version key (new content, same version) changes state only."""
    notices: tuple[str, ...] = ()
    """What a person should know about the file that is not an error (it was truncated)."""


#: Finding an integer literal of 19 digits or more: every digit turned into 0 first (1 to
#: 2 ms per MB), then each run of 19 zeros looked at. A regex over the bytes took 17 ms per
#: MB, and a JSON Lines chunk (4 MiB) is looked at whole: a float written with all its
#: digits (0.0009000000000000001, what Python's repr gives) makes such runs common.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19
_ZEROS = re.compile(rb"0+")


def _has_long_integer(raw: bytes) -> bool:
    """Whether ``raw`` holds a run of 19 digits or more that is not a fraction's (after a
    '.') nor followed by a fraction or an exponent (inside a string it counts too, which
    only costs the slower parser)."""
    zeroed = raw.translate(_DIGITS_TO_ZERO)
    at = zeroed.find(_NINETEEN_DIGITS)  # a run's start: searched from where a run ends
    while at >= 0:
        end = _ZEROS.match(zeroed, at).end()  # type: ignore[union-attr]  # zeroed[at] is 0
        if zeroed[at - 1 : at] != b"." and zeroed[end : end + 1] not in (b".", b"e", b"E"):
            return True
        at = zeroed.find(_NINETEEN_DIGITS, end)
    return False


def parse_json(data: bytes | str) -> Any:
    """Parse JSON, accepting the NaN/Infinity literals Python trainers write.

    orjson is tried first (fast); documents it refuses go to the standard parser, which
    also knows NaN, Infinity and -Infinity. Raises ValueError with the standard parser's
    message (line and column) when neither accepts the text.

    An integer past 64 bits is always an exact ``int``, whichever parser reads the rest:
    orjson would turn it into a float, the standard parser (which a NaN elsewhere in the
    document calls in) keeps it, and an attribute built from it would change series with
    the document's other content. So a document holding a 19-digit integer literal goes to
    the standard parser (engine.exportable_attribute then has one rule for such integers).
    """
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson stops at 1024 levels; so do we
            raise ValueError("nested more than 1024 levels deep") from None
    else:
        raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        if not _has_long_integer(raw):
            return document
    try:
        # Decoded strictly: json.loads(bytes) would let UTF-8-encoded surrogates through.
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None


#: Lines are looked at for long integers in pieces of about this size (cut at newlines,
#: which no number spans): translating a whole 1 MiB read at once took 1 MiB of fresh
#: pages every time (a page fault each 4 KiB), where pieces this size reuse the heap's.
_LOOK_PIECE_BYTES = 64 * 1024


def _lines_have_long_integer(lines: bytes) -> bool:
    start = 0
    while start < len(lines):
        end = lines.find(b"\n", start + _LOOK_PIECE_BYTES)
        end = len(lines) if end < 0 else end + 1
        if _has_long_integer(lines[start:end]):
            return True
        start = end
    return False


def _parse_json_without_long_integer(data: bytes) -> Any:
    """:func:`parse_json` for text known to hold no integer literal of 19 digits or more
    (a JSON Lines chunk is looked at once for all its lines: the look per line was about
    a microsecond a record, a tenth of the whole per-record cost)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return parse_json(data)  # NaN, too deep, or not JSON: the same answer and message


def other_format_hint(data: bytes) -> str:
    """What a file that is not one JSON document looks like, when it is another format
    this bridge reads (said after the parser's message, to name the source.format)."""
    first, _, rest = data.lstrip().partition(b"\n")
    try:
        parse_json(first)
    except ValueError:
        if b"," in first and rest.strip():
            return "; it looks like CSV: say source.format: csv in the mapping"
        return ""
    if rest.strip():
        return (
            "; it looks like JSON Lines (one JSON value per line): say source.format: jsonl "
            "in the mapping"
        )
    return ""


class DocumentSource:
    """One JSON document, rewritten in place by the training job."""

    def __init__(self, path: str, spec: SourceSpec) -> None:
        self.path = path
        self.spec = spec
        self._fingerprint: tuple[int, ...] | None = None
        self._checked_ns = 0
        self._digest: bytes | None = None
        self._bad_digest: bytes | None = None
        self._event: bytes | None = None
        """What identifies the document's events: its version key, else its content."""
        self._sequence: list[bytes] = []
        """The identities of the history records last read, in file order."""
        self.settling = False
        """The last poll found the file changing under it: poll again soon."""
        self._unsettled_since: float | None = None

    def poll(self) -> Snapshot | None:
        """The new version of the document, or None when there is nothing new."""
        started_ns = time.time_ns()
        st = _stat_file(self.path)
        fingerprint = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if fingerprint == self._fingerprint and self._checked_ns - st.st_mtime_ns > _RACY_WINDOW_NS:
            return None
        cap = self.spec.max_bytes
        if st.st_size > cap:
            raise SourceUnavailable(
                self.path,
                f"is {st.st_size} bytes, over the {cap}-byte cap (source.max_bytes)",
            )
        self.settling = False
        data = self._read_settled(cap)
        if data is None:
            self.settling = True
            now = time.monotonic()
            since = self._unsettled_since = self._unsettled_since or now
            if now - since >= _UNSETTLED_WARN_S:
                raise DocumentInvalid(
                    self.path,
                    f"has changed within every {_SECOND_READ_S * 1000:.0f} ms for "
                    f"{now - since:.0f} s (rewritten in place that often?); not applied until "
                    f"it holds still for {_SECOND_READ_S * 1000:.0f} ms: have the writer "
                    "write another file and rename it over this one",
                )
            return None
        self._unsettled_since = None
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest == self._digest:
            self._fingerprint, self._checked_ns = fingerprint, started_ns
            return None
        # A writer caught mid-rewrite is retried at once; the same bad bytes again mean the
        # file is broken, not being written, and wait for the normal interval.
        retry_soon = digest != self._bad_digest
        self._bad_digest = digest
        if not data.strip():
            raise DocumentInvalid(
                self.path, "is empty (being rewritten?); will read it again", retry_soon
            )
        try:
            document = parse_json(data)
        except ValueError as exc:
            raise DocumentInvalid(
                self.path,
                f"is not valid JSON ({exc}{other_format_hint(data)}); will read it again",
                retry_soon,
            ) from None
        self._bad_digest = None
        self._fingerprint, self._checked_ns, self._digest = fingerprint, started_ns, digest
        try:
            return self._snapshot_of(document, digest)
        except PathTooCostly as exc:  # the same bytes will not get smaller: no retry soon
            raise DocumentInvalid(
                self.path, f"cannot be read with source.version_path/records: {exc}", False
            ) from None

    def _snapshot_of(self, document: Any, digest: bytes) -> Snapshot:
        read_at = time.time()
        if self.spec.records is None:
            # State is the current content, whatever the version key says; the events of
            # one version count once, even when a rewrite under its key changes the rest.
            event = digest
            if self.spec.version_path is not None:
                version = self.spec.version_path.first(document)
                if version is not MISSING:
                    event = _identity(_canonical(version))
            events, self._event = event != self._event, event
            return Snapshot(self.path, [document], document, True, read_at, events=events)
        records = []
        identities = []
        errors = []
        for number, record in enumerate(self.spec.records.all(document)):
            try:
                identities.append(self._record_key(record))
            except ValueError as exc:
                errors.append(f"history record {number} has no usable key ({exc}); skipped")
                continue
            records.append(record)
        first_new = _first_new(self._sequence, identities)
        self._sequence = identities
        return Snapshot(
            self.path, records, document, True, read_at, tuple(errors), first_new=first_new
        )

    def event_marks(self) -> dict[str, Any] | None:
        """What decides which events are new, as JSON values (saved under ``STATE_DIR``,
        so that a restarted sidecar does not count the same version or records twice)."""
        if self._event is None and not self._sequence:
            return None
        return {
            "event": self._event.hex() if self._event is not None else None,
            "sequence": [identity.hex() for identity in self._sequence],
        }

    def restore_event_marks(self, marks: dict[str, Any]) -> None:
        """Undo :meth:`event_marks`; a damaged value is ignored (events count afresh)."""
        try:
            event = marks.get("event")
            sequence = [bytes.fromhex(identity) for identity in marks.get("sequence", [])]
            self._event = bytes.fromhex(event) if isinstance(event, str) else None
            self._sequence = sequence
        except (AttributeError, TypeError, ValueError):
            pass

    def _read_settled(self, cap: int) -> bytes | None:
        """The file's bytes once it held still (see _SETTLED_NS), or None if it did not.

        Both reads are of the file opened once: a writer renaming each version into place
        leaves the one opened unchanged (whole), though the path names a newer one by the
        second read (which then never matched, for a writer renaming faster than 5 ms)."""
        with _open_regular(self.path) as fh:
            first, before, after = _read_capped(self.path, fh, cap)
            if _same_status(before, after) and time.time_ns() - after.st_ctime_ns >= _SETTLED_NS:
                return first
            time.sleep(_SECOND_READ_S)
            second, _, after_second = _read_capped(self.path, fh, cap)
        # ctime is left out here: replacing the opened file (its unlink) changes its ctime,
        # not its bytes; a write in between changes mtime or size, and the bytes are compared.
        if _same_status(before, after_second, ctime=False) and second == first:
            return second
        return None

    def _record_key(self, record: Any) -> bytes:
        if not self.spec.record_key:
            return _identity(_canonical(record))  # the record's content is its identity
        key = [p.first(record) for p in self.spec.record_key]
        if all(part is MISSING for part in key):
            # Keyless records would all share one key, and only the first would count.
            raise ValueError("none of record_key selects anything in it")
        return _identity(_canonical([None if part is MISSING else part for part in key]))


def _identity(canonical: bytes) -> bytes:
    return hashlib.blake2b(canonical, digest_size=16).digest()


def _first_new(before: list[bytes], now: list[bytes]) -> int:
    """Where the records not read before begin in ``now``, a history array read again.

    A record is identified by its position in the sequence and its identity (content, or
    ``record_key``), so two equal records at two positions are two records. Records past
    the common beginning are new: those appended, and those re-logged after a resume
    shrank the array (seen shrunk or not, as long as they differ from what was there). An
    array that keeps only its newest records (a window that slid) is recognised too.
    """
    common = 0
    limit = min(len(before), len(now))
    while common < limit and before[common] == now[common]:
        common += 1
    if common == 0 and now and before and now[0] != before[0]:
        # A sliding window: ``now`` begins with a later part of ``before``.
        try:
            slid = before.index(now[0], 1)
        except ValueError:
            return 0
        overlap = len(before) - slid
        if before[slid:] == now[:overlap]:
            return overlap
    return common


def _canonical(value: Any) -> bytes:
    """Stable bytes for a JSON value. orjson refuses integers past 64 bits and nesting past
    255 levels, which the standard parser lets through; the standard encoder takes those."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        pass
    try:
        return json.dumps(value, sort_keys=True, default=str).encode()
    except (RecursionError, TypeError, ValueError):
        raise ValueError("the record cannot be encoded: nested too deeply?") from None


#: Said of a JSON Lines or CSV file whose checkpoint is not resumed (``resume=False``):
#: a read position is only true of the series it went into.
POSITION_NOT_RESUMED = (
    "its read position under STATE_DIR is not used: the series it went into were not "
    "restored; reading it as start_at says"
)
#: How much of a JSON Lines backlog one poll reads; the rest comes on the next poll.
JSONL_CHUNK_BYTES = 1024 * 1024
#: How many first bytes of a JSON Lines file identify its content (see JsonlPosition).
_HEAD_BYTES = 128
#: How much of the last line before the read position identifies it (see JsonlPosition).
_LINE_PRINT_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class JsonlPosition:
    """How far a JSON Lines file was read, and what identifies the file at that point.

    ``offset`` is 0 or just past a newline: reading never resumes mid-line. The file there
    is the one that was read when its inode is ``inode``, its first bytes are ``head``, and
    the last line before ``offset`` (its last 64 KiB at most, newline included) hashes to
    ``line_digest``. A truncation grown back past the offset (copytruncate, then appends)
    or a rewrite keeping the first lines changes that line, even when the first 128 bytes
    stay the same. An empty ``line_digest`` (a checkpoint of an older version) checks only
    that ``offset`` follows a newline.
    """

    inode: int
    offset: int
    head: bytes
    line_start: int
    line_digest: bytes

    def intact_in(self, fd: int) -> bool:
        """Whether the open file ``fd`` still holds what was read up to ``offset``."""
        if self.head and os.pread(fd, len(self.head), 0) != self.head:
            return False
        if self.offset == 0:
            return True
        if not self.line_digest:
            return os.pread(fd, 1, self.offset - 1) == b"\n"
        start = _line_print_start(self.line_start, self.offset)
        return _digest(os.pread(fd, self.offset - start, start)) == self.line_digest


def _line_print_start(line_start: int, offset: int) -> int:
    return max(line_start, offset - _LINE_PRINT_BYTES)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class JsonlSource:
    """An append-only JSON Lines file; every complete line is applied exactly once.

    ``position()`` says how far it was read; ``commit(position)`` saves a position to the
    checkpoint under STATE_DIR. The runtime commits the position of the lines applied to
    the series it has just saved (never ahead of them), so a restart reads on from the
    first line the restored series do not hold.
    """

    def __init__(
        self, path: str, spec: SourceSpec, state_dir: str | None = None, *, resume: bool = True
    ) -> None:
        self.path = path
        self.spec = spec
        self._fh: Any = None
        self._inode: int | None = None
        self._offset = 0
        self._head = b""
        """The file's first bytes as last read (see JsonlPosition)."""
        self._line_start = 0
        self._line_digest = b""
        self._opened_before = False
        self._skipping = False
        self._skipped_to = 0
        """While skipping a line over the cap: how far into it reading got. The position
        stays at that line's start, just past a newline, where the file can be checked."""
        self._notices: list[str] = []
        self._checkpoint = _checkpoint_file(state_dir, path) if state_dir else None
        self._slots_written = 0
        self._resume: JsonlPosition | None = self._load_checkpoint()
        if self._resume is not None and not resume:
            self._resume = None
            self._notices.append(POSITION_NOT_RESUMED)
        if self._checkpoint is not None:
            with contextlib.suppress(OSError):  # reported by commit() if it persists
                _allocate_slots(self._checkpoint)

    def position(self) -> JsonlPosition | None:
        """Where reading is now (None before the file was first opened)."""
        if self._inode is None:
            return None
        return JsonlPosition(
            self._inode, self._offset, self._head, self._line_start, self._line_digest
        )

    def commit(self, position: JsonlPosition | None = None) -> None:
        """Save ``position`` (by default: the current one) as the checkpoint."""
        position = position or self.position()
        if self._checkpoint is None or position is None:
            return
        state = {
            "path": self.path if len(self.path) < 256 else "",  # for people; slots are 1 KiB
            "inode": position.inode,
            "offset": position.offset,
            "head": position.head.hex(),
            "line_start": position.line_start,
            "line_digest": position.line_digest.hex(),
        }
        try:
            self._slots_written = _write_slot(
                self._checkpoint, self._slots_written + 1, orjson.dumps(state)
            )
        except OSError as exc:
            raise SourceUnavailable(
                self.path, f"cannot write checkpoint {self._checkpoint}: {exc.strerror}"
            ) from None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def poll(self) -> Snapshot | None:
        try:
            st = _stat_file(self.path)
        except SourceMissing:
            if self._fh is not None:  # renamed away: finish what the old file still holds
                drained = self._read_lines()
                if drained is not None:
                    return drained
                self.close()
            raise
        if self._fh is not None and st.st_ino != self._inode:
            # Rotated: drain the old file first; once it is empty, open the new one.
            drained = self._read_lines()
            if drained is not None:
                return drained
            self.close()
        if self._fh is None:
            self._open(st)
        elif st.st_size < self._offset or not self._intact(self.position()):
            # Truncated in place (copytruncate), maybe grown back past our offset already:
            # the new content starts at 0.
            self._rewind()
            self._notices.append("was truncated or rewritten in place; reading it from the start")
        return self._read_lines()

    def _intact(self, position: JsonlPosition | None) -> bool:
        return position is None or position.intact_in(self._fh.fileno())

    def _rewind(self) -> None:
        self._offset, self._head, self._skipping = 0, b"", False
        self._line_start, self._line_digest = 0, b""

    def _open(self, st: os.stat_result) -> None:
        self._fh = _open_regular(self.path)  # kept open across polls on purpose
        self._inode = os.fstat(self._fh.fileno()).st_ino
        self._rewind()
        if self._resume is not None:
            saved, self._resume = self._resume, None
            if saved.inode == self._inode and saved.offset <= st.st_size and self._intact(saved):
                self._offset, self._head = saved.offset, saved.head
                self._line_start, self._line_digest = saved.line_start, saved.line_digest
            else:
                self._notices.append(
                    "was rotated or rewritten while the sidecar was stopped (it no longer "
                    "holds what the checkpoint says was read); reading it from the start"
                )
        elif not self._opened_before and self.spec.start_at_end:
            self._skip_to_end_of_last_line(st.st_size)
        self._opened_before = True

    def _skip_to_end_of_last_line(self, size: int) -> None:
        if size == 0:
            return
        window = min(size, JSONL_CHUNK_BYTES)
        self._fh.seek(size - window)
        tail = self._fh.read(window)
        cut = tail.rfind(b"\n")
        if cut < 0:
            return
        line_start = tail.rfind(b"\n", 0, cut) + 1
        self._advance(size - window + cut + 1, size - window + line_start, tail, size - window)
        self._head = os.pread(self._fh.fileno(), min(_HEAD_BYTES, self._offset), 0)

    def _advance(self, offset: int, line_start: int, data: bytes, data_start: int) -> None:
        """Move to ``offset`` (just past the newline of the line at ``line_start``), whose
        bytes ``data`` holds from file offset ``data_start``."""
        start = _line_print_start(line_start, offset)
        self._line_digest = _digest(data[start - data_start : offset - data_start])
        self._offset, self._line_start = offset, line_start

    def _read_lines(self) -> Snapshot | None:
        fh = self._fh
        cap = self.spec.max_bytes
        errors: list[str] = []
        read_from = self._skipped_to if self._skipping else self._offset
        fh.seek(read_from)
        data = fh.read(JSONL_CHUNK_BYTES)
        if self._skipping:  # inside a line longer than the cap: drop it up to its end
            newline = data.find(b"\n")
            if newline < 0:
                self._skipped_to += len(data)
                return self._snapshot([], errors, more=len(data) == JSONL_CHUNK_BYTES)
            self._skipping = False
            self._advance(read_from + newline + 1, read_from, data, read_from)
            data = data[newline + 1 :]
        if not data:
            return self._snapshot([], errors, more=False) if self._notices else None
        cut = data.rfind(b"\n")
        if cut < 0 and len(data) == JSONL_CHUNK_BYTES and cap >= JSONL_CHUNK_BYTES:
            # One long line: look for its end, one byte past the cap at most (a line of
            # exactly the chunk's size, cut before its newline, is not yet over the cap).
            data += fh.read(cap + 1 - len(data))
            cut = data.rfind(b"\n")
        if cut < 0:
            if len(data) <= cap:
                # A partial last line: wait for its newline.
                return self._snapshot([], errors, more=False) if self._notices else None
            errors.append(
                f"the line at byte {self._offset} is over the {cap}-byte cap "
                "(source.max_bytes); skipped"
            )
            self._skipped_to = self._offset + len(data)
            self._skipping = True
            return self._snapshot([], errors, more=True)
        start = self._offset
        self._advance(start + cut + 1, start + data.rfind(b"\n", 0, cut) + 1, data, start)
        if len(self._head) < _HEAD_BYTES and self._offset > len(self._head):
            self._head = os.pread(fh.fileno(), min(_HEAD_BYTES, self._offset), 0)
        records = []
        line_start = start
        whole_lines = data[: cut + 1]
        checked = not _lines_have_long_integer(whole_lines)
        parse = _parse_json_without_long_integer if checked else parse_json
        for line in whole_lines.split(b"\n")[:-1]:
            at, line_start = line_start, line_start + len(line) + 1
            # NULs are never JSON: they are the hole a writer without O_APPEND leaves when
            # copytruncate truncates its file and it writes on at its own offset.
            line = line.lstrip(b"\0")
            if not line.strip():
                continue
            if len(line) > cap:
                errors.append(
                    f"the line at byte {at} is {len(line)} bytes, over the {cap}-byte cap "
                    "(source.max_bytes); skipped"
                )
                continue
            try:
                records.append(parse(line))
            except ValueError as exc:
                errors.append(f"the line at byte {at} is not JSON ({exc}); skipped")
        return self._snapshot(records, errors, more=len(data) >= JSONL_CHUNK_BYTES)

    def _snapshot(self, records: list[Any], errors: list[str], *, more: bool) -> Snapshot:
        notices, self._notices = tuple(self._notices), []
        return Snapshot(
            self.path, records, None, replaces=False, read_at=time.time(),
            errors=tuple(errors), more=more, notices=notices,
        )  # fmt: skip

    def _load_checkpoint(self) -> JsonlPosition | None:
        if self._checkpoint is None:
            return None
        self._slots_written, position = read_jsonl_checkpoint(self._checkpoint)
        return position


#: A JSON Lines checkpoint file is two fixed slots, written in turn in place: an update
#: needs no new file and no new block, so it still succeeds in a full STATE_DIR (a failed
#: update would leave an old position behind, and a restart would deliver again all that
#: came after it). Each slot: magic, sequence number, checksum, JSON, padded to 1 KiB; the
#: valid slot with the highest sequence number is the checkpoint (a write torn by a crash
#: leaves the other one).
_SLOT_BYTES = 1024
_SLOT_MAGIC = b"jsonl-checkpoint "


def _allocate_slots(checkpoint: str) -> None:
    fd = open_state_file(checkpoint, os.O_WRONLY | os.O_CREAT)
    try:
        if os.fstat(fd).st_size < 2 * _SLOT_BYTES:
            os.posix_fallocate(fd, 0, 2 * _SLOT_BYTES)  # real blocks, not a sparse hole
    finally:
        os.close(fd)


def _write_slot(checkpoint: str, sequence: int, payload: bytes) -> int:
    record = b"%s%016x %s %s" % (
        _SLOT_MAGIC, sequence, hashlib.blake2b(payload, digest_size=8).hexdigest().encode(),
        payload,
    )  # fmt: skip
    if len(record) >= _SLOT_BYTES:
        raise OSError(0, "the checkpoint is larger than its 1 KiB slot")
    _allocate_slots(checkpoint)
    fd = open_state_file(checkpoint, os.O_WRONLY)
    try:
        os.pwrite(fd, record.ljust(_SLOT_BYTES - 1) + b"\n", sequence % 2 * _SLOT_BYTES)
    finally:
        os.close(fd)
    return sequence


def read_jsonl_checkpoint(checkpoint: str) -> tuple[int, JsonlPosition | None]:
    """The sequence number and position a JSON Lines checkpoint file holds ((0, None) if
    none or damaged: the source then starts as configured). Reads the single-JSON files
    of older versions too."""
    try:
        with open(open_state_file(checkpoint, os.O_RDONLY), "rb") as fh:
            data = fh.read(4 * _SLOT_BYTES)
    except OSError:
        return 0, None
    best: tuple[int, Any] = (0, None)
    for start in (0, _SLOT_BYTES):
        slot = data[start : start + _SLOT_BYTES]
        if not slot.startswith(_SLOT_MAGIC):
            continue
        try:
            sequence, checksum, payload = slot[len(_SLOT_MAGIC) :].split(b" ", 2)
            payload = payload.rstrip()
            if hashlib.blake2b(payload, digest_size=8).hexdigest().encode() != checksum:
                continue  # torn by a crash mid-write: the other slot holds the last one
            if int(sequence, 16) > best[0]:
                best = (int(sequence, 16), orjson.loads(payload))
        except ValueError:
            continue
    saved = best[1]
    if saved is None and data.startswith(b"{"):
        with contextlib.suppress(ValueError):
            saved = orjson.loads(data)
    try:
        position = JsonlPosition(
            int(saved["inode"]),
            int(saved["offset"]),
            bytes.fromhex(saved.get("head", "")),
            int(saved.get("line_start", 0)),
            bytes.fromhex(saved.get("line_digest", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return best[0], None
    # An older checkpoint has no checksum: positions no read could have left are damage
    # (checking them would read at a negative offset).
    if position.offset < 0 or not 0 <= position.line_start <= position.offset:
        return best[0], None
    return best[0], position


def _checkpoint_file(state_dir: str, path: str, kind: str = "jsonl") -> str:
    digest = hashlib.blake2b(path.encode(), digest_size=8).hexdigest()
    return os.path.join(state_dir, f"{kind}-{digest}.json")


#: A CSV row's identity: 8 bytes of its content's digest (a collision among one file's
#: rows, about 1 in 10**19 per pair, would only skip that one row).
_ROW_DIGEST_BYTES = 8
_INTEGER = re.compile(r"[-+]?\d{1,18}")
_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}
_NON_FINITE |= {"infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf}


def csv_records(
    data: bytes, header: list[str] | None = None, first_line: int = 1
) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of CSV text whose first line is the header, and what was wrong with it.

    Each data row is a record keyed by the header's names; numbers become numbers (the
    NaN and inf that Python's csv writers print included), empty cells are absent and
    other text stays text. Spaces around a name or a cell are not part of it (Ultralytics
    pads every column of its ``results.csv`` to 25 characters). With ``header``, ``data``
    is only data rows (the rest of a file whose start was read before) and starts at line
    ``first_line``. Raises ValueError when the bytes are not UTF-8 or not CSV.
    """
    try:
        text = data.decode("utf-8-sig" if header is None else "utf-8")  # a BOM (Excel)
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    records: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        rows = csv.reader(io.StringIO(text, newline=""))
        if header is None:
            first = next(rows, None)
            if first is None:
                return [], []
            header = _header_names(first)
            for name in sorted({n for n in header if header.count(n) > 1}):
                columns = [str(i + 1) for i, n in enumerate(header) if n == name]
                errors.append(
                    f"the header names {name!r} in columns {', '.join(columns[:-1])} and "
                    f"{columns[-1]}; the last one is read"
                )
        for row in rows:
            if not any(row):
                continue  # a blank line
            if len(row) > len(header):
                errors.append(
                    f"line {first_line - 1 + rows.line_num} has {len(row)} cells for "
                    f"{len(header)} header names; the extra cells are ignored"
                )
            cells = zip(header, (v.strip() for v in row), strict=False)
            records.append({k: _cell(v) for k, v in cells if v != ""})
    except csv.Error as exc:
        raise ValueError(f"not CSV: {exc}") from None
    return records, errors


@dataclass(frozen=True, slots=True)
class _CsvPrefix:
    """What the last read of a CSV file saw, so that a file only appended to since is
    parsed from where that read ended (its bytes up to there unchanged: same digest)."""

    size: int
    digest: bytes
    header: list[str]
    rows: int
    lines: int


#: One CSV field as Python's csv reader splits it: quoted (``""`` inside is a quote; text
#: after the closing quote belongs to the field), plain (a quote inside it is text), or
#: empty. Possessive and atomic, so no input makes it backtrack.
_CSV_FIELD = rb'(?>"(?:[^"]|"")*+"[^,\n]*+|[^",\n][^,\n]*+|)'
_CSV_ROWS = re.compile(rb"(?:" + _CSV_FIELD + rb"(?:," + _CSV_FIELD + rb")*+\n)*+")
#: A quoted cell still open after this many lines is not a row being written but a stray
#: quote: the file is read as the csv module reads it rather than waited on for ever.
_OPEN_CELL_LINES = 1000


def _csv_rows_end(data: bytes) -> int:
    """Where the last whole row of ``data`` ends: after its last newline, unless that
    newline is inside a quoted cell (a row with a multi-line cell, half written)."""
    end = data.rfind(b"\n") + 1
    if b'"' not in data:
        return end
    rows_end = _CSV_ROWS.match(data).end()  # type: ignore[union-attr]  # * always matches
    if rows_end < end and data.count(b"\n", rows_end, end) <= _OPEN_CELL_LINES:
        return rows_end
    return end


def _header_names(row: list[str]) -> list[str]:
    return [name.strip() for name in row]


def _cell(text: str) -> Any:
    if _INTEGER.fullmatch(text):
        return int(text)
    if _DECIMAL.fullmatch(text):
        return float(text)
    return _NON_FINITE.get(text.lower(), text) if len(text) <= 9 else text


def _row_digest(record: dict[str, Any]) -> bytes:
    return hashlib.blake2b(_canonical(record), digest_size=_ROW_DIGEST_BYTES).digest()


class CsvSource:
    """A CSV file with a header line; every data row is applied once.

    Trainers write CSV two ways, read here the same way: whole, on each change (the size
    cap bounds it), parsed only past the bytes the last read parsed when those are
    unchanged (an append). Keras' and Ultralytics' loggers append a row per epoch; Lightning's
    CSVLogger rewrites the file whole, with a longer header when a new key appears (old
    rows then have empty cells, which are absent: the same records as before). Either
    way the rows are a sequence that grows at its end, so what was applied is kept as one
    digest per row, in order, and a read applies the rows past the longest prefix it
    shares with them: a file caught mid-rewrite (a prefix) gives nothing, a new run's file
    (another first row) is applied from its start. As with JSON Lines, a half-written last
    row waits for its newline (one outside quotes: a cell may hold newlines), a file
    renamed away is drained through the descriptor kept open, and ``STATE_DIR`` keeps the
    digests across restarts.
    """

    def __init__(
        self, path: str, spec: SourceSpec, state_dir: str | None = None, *, resume: bool = True
    ) -> None:
        self.path = path
        self.spec = spec
        self._fh: Any = None
        self._inode: int | None = None
        self._fingerprint: tuple[int, ...] | None = None
        self._checked_ns = 0
        self._saved = b""
        self._checkpoint = _checkpoint_file(state_dir, path, "csv") if state_dir else None
        self._applied: list[bytes] | None = self._load_checkpoint()
        """Digests of the rows applied, in file order; None before the first read. The
        rows of the file as last read are always its first ``_prefix.rows``."""
        self._prefix: _CsvPrefix | None = None
        self._errors: tuple[str, ...] = ()
        self._notices: tuple[str, ...] = ()
        if self._applied is not None and not resume:
            self._applied, self._notices = None, (POSITION_NOT_RESUMED,)

    def commit(self) -> None:
        """Save what was applied (the caller applies a snapshot, then commits)."""
        if self._checkpoint is None or self._applied is None:
            return
        rows = b"".join(self._applied)
        if rows == self._saved:
            return
        tmp = f"{self._checkpoint}.tmp"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            with open(open_state_file(tmp, flags), "wb") as fh:
                fh.write(orjson.dumps({"path": self.path, "rows": rows.hex()}))
            os.replace(tmp, self._checkpoint)
        except OSError as exc:
            raise SourceUnavailable(
                self.path, f"cannot write checkpoint {self._checkpoint}: {exc.strerror}"
            ) from None
        self._saved = rows

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._prefix = None

    def poll(self) -> Snapshot | None:
        started_ns = time.time_ns()
        try:
            st = _stat_file(self.path)
        except SourceMissing:
            if self._fh is not None:  # renamed away: what the old file still holds first
                drained = self._read()
                self.close()
                if drained is not None:
                    return drained
            raise
        if self._fh is not None and st.st_ino != self._inode:
            drained = self._read()  # rotated: finish the old file, then open the new one
            self.close()
            self._fingerprint = None
            if drained is not None:
                return drained
        fingerprint = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if fingerprint == self._fingerprint and self._checked_ns - st.st_mtime_ns > _RACY_WINDOW_NS:
            return None
        if st.st_size > self.spec.max_bytes:
            raise SourceUnavailable(
                self.path,
                f"is {st.st_size} bytes, over the {self.spec.max_bytes}-byte cap "
                "(source.max_bytes)",
            )
        if self._fh is None:
            self._fh = _open_regular(self.path)
            self._inode = os.fstat(self._fh.fileno()).st_ino
        self._fingerprint, self._checked_ns = fingerprint, started_ns
        return self._read()

    def _read(self) -> Snapshot | None:
        data = _read_capped(self.path, self._fh, self.spec.max_bytes)[0]
        complete = data[: _csv_rows_end(data)]  # a half-written last row waits
        try:
            records, digests = self._rows(complete)
        except ValueError as exc:
            raise DocumentInvalid(self.path, f"is not readable as CSV ({exc})", False) from None
        applied = self._applied
        notices, self._notices = self._notices, ()
        if applied is None:  # the first read, without a checkpoint
            applied = self._applied = []
            if self.spec.start_at_end:
                self._applied = digests
                return self._nothing_new(notices)
        shared = 0
        for old, new in zip(applied, digests, strict=False):
            if old != new:
                break
            shared += 1
        if shared == len(digests):
            # nothing past what was applied (perhaps a rewrite caught midway)
            return self._nothing_new(notices)
        self._applied = digests
        return Snapshot(
            self.path, records[shared - (len(digests) - len(records)) :], None,
            replaces=False, read_at=time.time(), errors=self._errors, notices=notices,
        )  # fmt: skip

    def _nothing_new(self, notices: tuple[str, ...]) -> Snapshot | None:
        if not notices:
            return None
        return Snapshot(self.path, [], None, replaces=False, read_at=time.time(), notices=notices)

    def _rows(self, complete: bytes) -> tuple[list[dict[str, Any]], list[bytes]]:
        """The rows of ``complete`` and the digests of every row of the file. The records
        are of the rows past what the last read parsed when the file was only appended to
        since (those digests are known), else of every row."""
        prefix = self._prefix
        digest = hashlib.blake2b(complete, digest_size=16)
        if (
            prefix is not None
            and self._applied is not None
            and len(complete) >= prefix.size
            and hashlib.blake2b(complete[: prefix.size], digest_size=16).digest() == prefix.digest
        ):
            tail = complete[prefix.size :]
            records, errors = csv_records(tail, prefix.header, prefix.lines + 1)
            digests = self._applied[: prefix.rows] + [_row_digest(r) for r in records]
            lines = prefix.lines + tail.count(b"\n")
            header = prefix.header
        else:
            records, errors = csv_records(complete)
            digests = [_row_digest(r) for r in records]
            lines = complete.count(b"\n")
            first = complete[: complete.find(b"\n") + 1].decode("utf-8-sig", "replace")
            header = _header_names(next(csv.reader([first.rstrip("\r\n")]), []))
            if not header or '"' in first:  # no header yet, or a quoted one (it may span
                lines = -1  # lines): no shortcut from this read
        self._errors = tuple(errors)
        self._prefix = (
            _CsvPrefix(len(complete), digest.digest(), header, len(digests), lines)
            if lines >= 0
            else None
        )
        return records, digests

    def _load_checkpoint(self) -> list[bytes] | None:
        if self._checkpoint is None:
            return None
        try:
            with open(open_state_file(self._checkpoint, os.O_RDONLY), "rb") as fh:
                rows = bytes.fromhex(orjson.loads(fh.read())["rows"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged checkpoint: start as configured
        self._saved = rows
        n = _ROW_DIGEST_BYTES
        return [rows[i : i + n] for i in range(0, len(rows), n)]


def _stat_file(path: str) -> os.stat_result:
    """stat() a source; raise the SourceError a person needs when it is not a readable file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _read_error(path, exc) from None
    if not stat.S_ISREG(st.st_mode):
        raise SourceUnavailable(path, _NOT_A_FILE)
    return st


def _open_regular(path: str) -> Any:
    """Open a source for reading, refusing anything but a regular file, without blocking.

    stat() said "regular file" a moment ago, but a rename() can put a FIFO (or a device)
    in its place before the open: a plain open() of a FIFO with no writer blocks for good,
    and with it the loop and SIGTERM. O_NONBLOCK makes that open return at once, and the
    descriptor's own fstat() decides (O_NONBLOCK changes nothing for a regular file).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _read_error(path, exc) from None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError as exc:
        os.close(fd)
        raise _read_error(path, exc) from None
    if not regular:
        os.close(fd)
        raise SourceUnavailable(path, _NOT_A_FILE)
    return os.fdopen(fd, "rb")


def _read_capped(path: str, fh: Any, cap: int) -> tuple[bytes, os.stat_result, os.stat_result]:
    """The bytes of the open file ``fh`` (``path``), with its status just before and just
    after reading them."""
    try:
        before = os.fstat(fh.fileno())
        data: bytes = os.pread(fh.fileno(), cap + 1, 0)
        after = os.fstat(fh.fileno())
    except OSError as exc:
        raise _read_error(path, exc) from None
    if len(data) > cap:
        raise SourceUnavailable(path, f"grew past the {cap}-byte cap (source.max_bytes)")
    return data, before, after


def _same_status(a: os.stat_result, b: os.stat_result, *, ctime: bool = True) -> bool:
    """No write in between (as far as the file system's timestamps can tell)."""
    return (a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns if ctime else 0) == (
        b.st_ino, b.st_size, b.st_mtime_ns, b.st_ctime_ns if ctime else 0
    )  # fmt: skip


_NOT_A_FILE = "is not a regular file (a directory?)"


def _read_error(path: str, exc: OSError) -> SourceError:
    if isinstance(exc, FileNotFoundError):
        return SourceMissing(path, "does not exist (yet)")
    if isinstance(exc, IsADirectoryError):
        return SourceUnavailable(path, _NOT_A_FILE)
    return SourceUnavailable(path, f"cannot be read: {exc.strerror}")


_NAMED_PART = PLACEHOLDER  # one syntax for named parts of globs and key patterns


class PathPattern:
    """A source path: a plain file, a glob, or a glob with named parts.

    ``/runs/{run_id}/trainer_state.json`` matches like ``/runs/*/trainer_state.json`` and
    gives every point read from ``/runs/abc/trainer_state.json`` the attribute
    ``run_id=abc``.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.names = tuple(_NAMED_PART.findall(pattern))
        self.is_glob = bool(self.names) or any(c in pattern for c in "*?[")
        self._glob = _NAMED_PART.sub("*", pattern)
        regex, groups = [], 0
        for piece in re.split(r"(\{[A-Za-z_][A-Za-z0-9_.]*\}|\*\*|\*|\?)", pattern):
            if piece.startswith("{"):
                regex.append(f"(?P<g{groups}>[^/]+)")
                groups += 1
            elif piece == "**":
                regex.append(".*")
            elif piece == "*":
                regex.append("[^/]*")
            elif piece == "?":
                regex.append("[^/]")
            else:
                regex.append(re.escape(piece))
        self._regex = re.compile("".join(regex) + r"\Z")

    def expand(self) -> list[str]:
        if not self.is_glob:
            return [self.pattern]
        return sorted(p for p in glob.glob(self._glob, recursive=True) if os.path.isfile(p))

    def matches(self, path: str) -> bool:
        """``path`` is one of this pattern's files (as ``expand`` would name it)."""
        return self._regex.match(path) is not None

    def attributes(self, path: str) -> tuple[tuple[str, str], ...]:
        if not self.names:
            return ()
        match = self._regex.match(path)
        if match is None:
            return ()
        return tuple(
            sorted((name, _printable(match.group(f"g{i}"))) for i, name in enumerate(self.names))
        )


def _printable(part: str) -> str:
    """A file name's bytes that are not UTF-8 (Python's surrogate escapes, which no OTLP
    string can hold) as ``\\xff``, so each such name stays an attribute of its own."""
    if part.isascii():
        return part
    try:
        raw = part.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name decodes to: never raise
        return part.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


__all__ = [
    "CsvSource",
    "DocumentSource",
    "JsonlPosition",
    "JsonlSource",
    "PathPattern",
    "Snapshot",
    "SourceError",
    "SourceMissing",
    "csv_records",
    "parse_json",
    "read_jsonl_checkpoint",
]
