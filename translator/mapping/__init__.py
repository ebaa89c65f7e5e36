"""The mapping language: load a YAML file, validate it, compile it into a :class:`Plan`."""

from __future__ import annotations

from translator.mapping.compiler import compile_mapping, load_plan, schema
from translator.mapping.files import load_plans, mapping_files
from translator.mapping.plan import Plan

__all__ = ["Plan", "compile_mapping", "load_plan", "load_plans", "mapping_files", "schema"]
