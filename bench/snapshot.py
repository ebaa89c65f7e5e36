"""The code under test, copied once when a run starts.

The bridge is worked on while benchmarks run, and a run takes minutes: without a copy,
one case would measure one version and the next another. ``take`` copies ``translator/``,
``mappings/``, ``schemas/`` and ``bench/`` into the run's temporary folder and byte-compiles
them (so imports cost what they cost from a working tree that was run before); children
run from the copy and in-process imports of ``translator`` come from it.

It must be taken before anything imports ``translator`` in this process.
"""

from __future__ import annotations

import compileall
import shutil
import sys
from pathlib import Path

from bench.processes import REPO_ROOT, set_code_root

_COPIED = ("translator", "mappings", "schemas", "bench")


def take(into: Path) -> Path:
    """Copy the code under test into ``into`` and measure that copy from now on."""
    imported = sorted(m for m in sys.modules if m == "translator" or m.startswith("translator."))
    if imported:
        raise RuntimeError(f"translator was imported before the snapshot: {imported[:3]}")
    into.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "out", "results.md", "*.md")
    for name in _COPIED:
        if name == "translator" or (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, into / name, ignore=skip)
    if not compileall.compile_dir(str(into), quiet=1):
        raise RuntimeError(f"the snapshot in {into} does not compile")
    sys.path.insert(0, str(into))
    set_code_root(into)
    return into
