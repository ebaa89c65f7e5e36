"""The repository's standalone scripts (deploy/*.py) loaded as modules, to call them in-process."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def deploy_verify() -> Iterator[ModuleType]:
    """deploy/verify.py as a module; registered in sys.modules while in use (its dataclasses
    look their module up there)."""
    name = "deploy_verify"
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy/verify.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
