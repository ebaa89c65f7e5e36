"""Find the mapping files under a path and compile them all.

The sidecar validates against the JSON Schema in a child process (``ml-metrics-bridge
validate``, the very command CI runs), so it never holds jsonschema in memory; the
compile that follows, in-process, does every other check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from translator.errors import MappingError, Problem
from translator.mapping.compiler import DEFAULT_SOURCE_PATH, conflicts_between, load_plan
from translator.mapping.plan import Plan

_MAPPING_SUFFIXES = (".yaml", ".yml")


def mapping_files(path: str) -> list[str]:
    """A mapping file, or the mapping files of a directory (recursively, dot-entries skipped:
    a mounted ConfigMap keeps its real files under ``..data``)."""
    if not os.path.isdir(path):
        return [path]
    found = []
    for folder, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(folder, f)
            for f in sorted(files)
            if f.endswith(_MAPPING_SUFFIXES) and not f.startswith(".")
        ]
    return found


def load_plans(
    path: str,
    *,
    default_source_path: str = DEFAULT_SOURCE_PATH,
    schema_in_child: bool = False,
) -> list[Plan]:
    """Every mapping under ``path``; MappingError lists the problems of all of them."""
    files = mapping_files(path)
    if not files:
        raise MappingError([Problem(path, None, "", "no mapping files (*.yaml, *.yml) here")])
    checked = schema_in_child and _validate_in_child(path)
    plans: list[Plan] = []
    problems: list[Problem] = []
    for file in files:
        try:
            plans.append(
                load_plan(file, default_source_path=default_source_path, check_schema=not checked)
            )
        except MappingError as exc:
            problems.extend(exc.problems)
    problems.extend(conflicts_between(plans))
    if problems:
        raise MappingError(problems)
    return plans


def _validate_in_child(path: str) -> bool:
    """Run ``validate --format json PATH`` in a child process. True: valid; MappingError:
    its problems; False: the child could not run, so the caller validates in-process."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "translator", "validate", "--format", "json", path],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        reported = json.loads(result.stdout)
        problems = [Problem(**entry) for entry in reported]
    except (OSError, subprocess.SubprocessError, ValueError, TypeError):
        return False
    if result.returncode == 0 and not problems:
        return True
    if result.returncode != 2 or not problems:
        return False
    raise MappingError(problems)
