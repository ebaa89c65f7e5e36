"""Find the mapping files under a path and compile them all."""

from __future__ import annotations

import os

from translator.errors import MappingError, Problem
from translator.mapping.compiler import DEFAULT_SOURCE_PATH, load_plan
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


def load_plans(path: str, *, default_source_path: str = DEFAULT_SOURCE_PATH) -> list[Plan]:
    """Every mapping under ``path``; MappingError lists the problems of all of them."""
    files = mapping_files(path)
    if not files:
        raise MappingError([Problem(path, None, "", "no mapping files (*.yaml, *.yml) here")])
    plans: list[Plan] = []
    problems: list[Problem] = []
    for file in files:
        try:
            plans.append(load_plan(file, default_source_path=default_source_path))
        except MappingError as exc:
            problems.extend(exc.problems)
    if problems:
        raise MappingError(problems)
    return plans
