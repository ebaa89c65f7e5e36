"""The exceptions ml-metrics-bridge raises, and nothing else.

Library code raises these; the boundary (``cli``, ``runtime``) catches and logs them.
Nothing in this package both logs and raises the same problem.

    BridgeError
    ├── ConfigError                 bad settings or mapping: exit status 2 at start
    │   ├── SettingsError           an environment variable or flag (names it)
    │   └── MappingError            one or more problems in a mapping file (all of them)
    └── SourceError                 a metrics file could not be read this time (keep going)
        ├── SourceUnavailable       missing, a directory, unreadable, over the size cap
        └── DocumentInvalid         not JSON (yet): half-written, truncated, not UTF-8
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class BridgeError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(BridgeError):
    """The configuration cannot be used; the process must not start with it."""


class SettingsError(ConfigError):
    """Settings (environment variables or flags) with bad values; ``problems`` has each."""

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(f"{name}: {message}" for name, message in self.problems))


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in a mapping file, located as precisely as the YAML allows."""

    file: str
    line: int | None
    yaml_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        path = self.yaml_path or "(document)"
        return f"{where}: {path}: {self.message}"


class MappingError(ConfigError):
    """A mapping file has problems; ``problems`` holds every one found, in file order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SourceError(BridgeError):
    """A metrics file could not be turned into a document this time; the next poll retries."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = message


class SourceUnavailable(SourceError):
    """The file is missing, not a regular file, unreadable, or larger than the cap."""


class DocumentInvalid(SourceError):
    """The bytes are not a JSON document (often: the writer is half-way through).

    ``retry_soon`` is False when the same bytes failed before: a broken file, not a write
    in progress, so re-reading it ten times a second would only burn CPU.
    """

    def __init__(self, path: str, message: str, retry_soon: bool = True) -> None:
        super().__init__(path, message)
        self.retry_soon = retry_soon
