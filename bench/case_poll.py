"""Case c: the CPU cost of polling files that did not change, in-process.

Measures the source layer the loop really runs (``DocumentSource.poll`` after a first
read, and ``PathPattern.expand`` for a glob) with ``time.process_time`` over many
iterations. The files' times are set a minute into the past: a settled file, outside the
sources' "racy" window in which a just-written file is re-read and hashed on every poll;
that window is measured separately, for information.

The comparison is the floor of noticing nothing changed: one ``os.stat`` per file (and
``glob.glob`` for the glob).
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

from bench.data import DocumentWriter, age_file, default_mapping, mapping_with_source_path
from bench.modes import Mode
from bench.report import CaseResult, Row
from translator.mapping import load_plan
from translator.sources import DocumentSource, PathPattern

_TARGET_US = 30.0
_RACY_WINDOW_S = 2.0  # translator.sources._RACY_WINDOW_NS; a file younger is re-read


def _per_call_us(seconds: float, calls: int) -> float:
    return seconds / calls * 1e6


def run(mode: Mode, work: Path) -> list[CaseResult]:
    result = CaseResult("c. CPU per poll of unchanged files")
    folder = work / "poll"
    folder.mkdir(parents=True, exist_ok=True)
    judged = mode.judged

    # One document.
    document = folder / "current.json"
    writer = DocumentWriter(document, "bench-poll")
    writer.write()
    age_file(document, 60)
    plan = load_plan(default_mapping(), default_source_path=str(document))
    source = DocumentSource(str(document), plan.source)
    first = source.poll()
    if first is None or not first.records:
        raise RuntimeError("the first poll of the document read nothing")
    n = mode.poll_iterations
    changed = 0
    started = time.process_time()
    for _ in range(n):
        if source.poll() is not None:
            changed += 1
    single_us = _per_call_us(time.process_time() - started, n)
    if changed:
        raise RuntimeError(f"{changed} of {n} polls of an unchanged file reported a change")
    path = str(document)
    started = time.process_time()
    for _ in range(n):
        os.stat(path)
    stat_us = _per_call_us(time.process_time() - started, n)
    result.rows.append(Row(
        "c", "CPU per poll of 1 unchanged document (DocumentSource.poll)", "us",
        single_us, stat_us, "os.stat", "< 30 µs", (single_us < _TARGET_US) if judged else None,
    ))

    # The same document, just rewritten with the same content: inside the racy window.
    written_at = time.monotonic()
    document.write_bytes(document.read_bytes())
    source.poll()
    racy_n = min(n, 2_000)
    started = time.process_time()
    for _ in range(racy_n):
        source.poll()
    racy_us = _per_call_us(time.process_time() - started, racy_n)
    inside = time.monotonic() - written_at < _RACY_WINDOW_S

    # A glob of many documents.
    files = folder / "x"
    files.mkdir(exist_ok=True)
    many = DocumentWriter(files / "unused", "bench-glob")
    for i in range(mode.glob_files):
        many.path = files / f"run-{i:04d}.json"
        many.write()
        age_file(many.path, 60)
    pattern_text = str(files / "*.json")
    glob_plan = load_plan(
        mapping_with_source_path(default_mapping(), pattern_text, folder / "glob.yaml")
    )
    pattern = PathPattern(glob_plan.source.path)
    sources = {p: DocumentSource(p, glob_plan.source) for p in pattern.expand()}
    if len(sources) != mode.glob_files:
        raise RuntimeError(f"the glob matched {len(sources)} files, not {mode.glob_files}")
    for each in sources.values():
        each.poll()
    iterations = mode.glob_iterations
    calls = iterations * mode.glob_files
    changed = 0
    started = time.process_time()
    for _ in range(iterations):
        for p in pattern.expand():
            if sources[p].poll() is not None:
                changed += 1
    glob_us = _per_call_us(time.process_time() - started, calls)
    if changed:
        raise RuntimeError(f"{changed} polls of unchanged glob files reported a change")
    started = time.process_time()
    for _ in range(iterations):
        pattern.expand()
    expand_us = _per_call_us(time.process_time() - started, calls)
    started = time.process_time()
    for _ in range(iterations):
        for p in glob.glob(pattern_text):
            os.stat(p)
    floor_us = _per_call_us(time.process_time() - started, calls)
    result.rows.append(Row(
        "c", f"CPU per file per poll of a glob of {mode.glob_files:,} unchanged documents "
        "(expand + poll)", "us", glob_us, floor_us, "glob.glob + os.stat", "< 30 µs",
        (glob_us < _TARGET_US) if judged else None,
    ))
    result.details += [
        f"- 1 document: {n:,} polls; {single_us:.1f} µs CPU each, {stat_us:.1f} µs of which "
        "would be one bare os.stat.",
        f"- Glob: {iterations} rounds over {mode.glob_files:,} files; {glob_us:.1f} µs CPU per "
        f"file, of which `PathPattern.expand()` is {expand_us:.1f} µs (glob + one isfile stat "
        "per match, sorted) and `poll()` the rest.",
        f"- For information: a document rewritten with the same bytes less than "
        f"{_RACY_WINDOW_S:g} s ago is read and hashed on every poll: {racy_us:.1f} µs CPU per "
        f"poll ({racy_n:,} polls{'' if inside else ', NOT all inside the window'}).",
        "- Not included: the loop's own per-file work around `poll()` in "
        "`Bridge._poll_all` (building sets of paths, `_expire`, the log throttle).",
    ]
    return [result]
