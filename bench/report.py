"""Rows, the results table, and the machine they were measured on.

A case returns a :class:`CaseResult`: table rows (ours, the comparison, the ratio, the
target, met or not) and free-form detail lines for ``results.md``. Nothing here measures.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Literal

from bench.processes import REPO_ROOT, code_root

RatioStyle = Literal["times", "percent"]


@dataclass(frozen=True, slots=True)
class Row:
    case: str
    measured: str
    unit: str
    ours: float | None
    comparison: float | None
    comparison_label: str
    target: str
    met: bool | None
    """None: a row for information, or a mode that judges nothing (--smoke)."""
    ratio_style: RatioStyle = "times"

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.comparison:
            return None
        return self.ours / self.comparison


@dataclass(slots=True)
class CaseResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    error: str | None = None


def format_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "rec/s":
        return f"{value:,.0f} rec/s"
    if unit == "us":
        return f"{value:.1f} µs"
    if unit == "MiB":
        return f"{value:+.2f} MiB" if value < 0 else f"{value:.2f} MiB"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:g} {unit}"


def format_ratio(row: Row) -> str:
    ratio = row.ratio
    if ratio is None:
        return "—"
    if row.ratio_style == "percent":
        return f"{ratio * 100:.0f}%"
    return f"{ratio:.2f}x"


def _verdict(row: Row, judged: bool) -> str:
    if not judged and row.target != "—":
        return "not judged (smoke)"
    if row.met is None:
        return "info"
    return "**met**" if row.met else "**not met**"


def table(rows: Sequence[Row], *, judged: bool) -> str:
    header = "| Case | What was measured | Ours | Comparison | Ratio | Target | Result |"
    lines = [header, "|---|---|---:|---|---:|---|---|"]
    for row in rows:
        comparison = format_value(row.comparison, row.unit)
        if row.comparison is not None and row.comparison_label:
            comparison = f"{comparison} ({row.comparison_label})"
        elif row.comparison_label:
            comparison = row.comparison_label
        lines.append(
            f"| {row.case} | {row.measured} | {format_value(row.ours, row.unit)} | "
            f"{comparison} | {format_ratio(row)} | {row.target} | {_verdict(row, judged)} |"
        )
    return "\n".join(lines)


# --- the machine --------------------------------------------------------------------------


def machine() -> list[tuple[str, str]]:
    """Taken when a run starts: the commit and code hash of what is about to be measured."""
    return [
        ("CPU", _cpu_model()),
        ("Cores", f"{os.cpu_count()} (usable by this process: {len(os.sched_getaffinity(0))})"),
        ("Memory", _memory_total()),
        ("Kernel", platform.release()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("Packages", _versions("opentelemetry-sdk", "grpcio", "orjson", "protobuf")),
        ("Date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("Commit", _commit()),
        ("Code measured", _code_measured()),
    ]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> str:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _versions(*names: str) -> str:
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--", "translator", "mappings")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout?)"
    if changed:
        count = len(changed.splitlines())
        return f"{commit} + uncommitted changes in translator/ or mappings/ ({count} files)"
    return commit


def _code_measured() -> str:
    where = "the working tree" if code_root() == REPO_ROOT else "a copy taken at the start"
    return f"{where}; translator/ and mappings/ content hash {code_hash()}"


def code_hash(root: Path | None = None) -> str:
    """A digest of the code under test, so results from an edited tree stay traceable."""
    root = code_root() if root is None else root
    digest = hashlib.blake2b(digest_size=6)
    for folder in ("translator", "mappings"):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".json"):
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def tree_changed_note(measured: str) -> str | None:
    """Said when the working tree no longer holds the code that was measured."""
    now = code_hash(REPO_ROOT)
    if now == measured:
        return None
    return (
        f"Note: the working tree changed during the run (content hash now {now}); every case "
        f"measured the copy taken at the start ({measured})."
    )


def results_markdown(
    mode: str,
    elapsed_s: float,
    results: Sequence[CaseResult],
    *,
    judged: bool,
    machine_at_start: Sequence[tuple[str, str]],
    note: str | None,
) -> str:
    rows = [row for result in results for row in result.rows]
    out = [
        "# ml-metrics-bridge benchmark results",
        "",
        f"Written by `python -m bench{'' if mode == 'default' else ' --' + mode}` "
        f"({mode} mode, {elapsed_s:.0f} s). See `bench/README.md` for what each case means;",
        "`bench/PROFILE.md` for where the time goes.",
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in machine_at_start),
        "",
        *([note, ""] if note else []),
        "## Results",
        "",
        table(rows, judged=judged),
        "",
    ]
    errors = [r for r in results if r.error]
    if errors:
        out += ["## Cases that failed to run", ""]
        out += [f"- {r.name}: {r.error}" for r in errors]
        out.append("")
    out += ["## Details", ""]
    for result in results:
        if result.details:
            out += [f"### {result.name}", "", *result.details, ""]
    return "\n".join(out).rstrip() + "\n"
