"""Wake the loop early when a watched directory changes (Linux inotify), else just sleep.

Polling stays the source of truth: an event only shortens the wait before the next poll,
so a missed event (network file systems, a full inotify queue) costs latency, never
data. Without inotify (another OS, no free watches) :meth:`Waker.wait` is a plain sleep.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import sys
from collections.abc import Iterable

_log = logging.getLogger(__name__)

_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_MOVED_FROM = 0x040
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_TO
    | _IN_MOVED_FROM
    | _IN_CREATE
    | _IN_DELETE
)
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

#: After the first event, wait this long for the writer to finish before polling.
DEBOUNCE_S = 0.02


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return libc
    except (OSError, AttributeError):
        return None


class Waker:
    """``wait(timeout)`` returns when the timeout passes, a watched directory changes, or
    :meth:`wake` is called (from any thread or a signal handler)."""

    def __init__(self) -> None:
        self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._libc = _libc()
        self._fd = -1
        self._watched: set[str] = set()
        if self._libc is not None:
            fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd >= 0:
                self._fd = fd
            else:
                _log.info("inotify unavailable (%s); polling only", os.strerror(ctypes.get_errno()))

    def watch(self, files: Iterable[str]) -> None:
        """Watch the directories holding ``files`` (a rename or rewrite shows up there)."""
        if self._fd < 0 or self._libc is None:
            return
        for directory in {os.path.dirname(os.path.abspath(f)) for f in files} - self._watched:
            if not os.path.isdir(directory):
                continue  # not there yet; polling covers it, and it is retried next time
            if self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK) < 0:
                _log.info(
                    "cannot watch %s (%s); polling it", directory, os.strerror(ctypes.get_errno())
                )
                continue
            self._watched.add(directory)

    @property
    def wakeup_fd(self) -> int:
        """The pipe's write end (non-blocking): for :func:`signal.set_wakeup_fd`."""
        return self._pipe_w

    def wake(self) -> None:
        # Full pipe: already awake. Closed (a late signal during exit): nothing to wake.
        with contextlib.suppress(OSError):
            os.write(self._pipe_w, b"x")

    def wait(self, timeout_s: float) -> bool:
        """True when woken by an event or :meth:`wake`, False on timeout."""
        readers = [self._pipe_r] + ([self._fd] if self._fd >= 0 else [])
        try:
            ready, _, _ = select.select(readers, [], [], max(timeout_s, 0.0))
        except InterruptedError:
            return True
        if not ready:
            return False
        if self._fd in ready:
            select.select([self._pipe_r], [], [], DEBOUNCE_S)
        self._drain()
        return True

    def _drain(self) -> None:
        for fd in (self._pipe_r, self._fd):
            if fd < 0:
                continue
            try:
                while os.read(fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        for fd in (self._pipe_r, self._pipe_w, self._fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._pipe_r = self._pipe_w = -1


__all__ = ["Waker"]
