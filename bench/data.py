"""Inputs of the benchmarks: the brief's documents, as a JSON Lines backlog or one file.

Documents come from :class:`translator.simulate.TrainingSimulator`, the same shape the
demo and the compose stack write. Nothing here measures anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.processes import code_root
from translator.simulate import TrainingSimulator


def default_mapping() -> Path:
    return code_root() / "mappings" / "ml-training.yaml"


def jsonl_mapping() -> Path:
    """Case a: the default mapping with a JSON Lines source."""
    return code_root() / "bench" / "mappings" / "ml-training-jsonl.yaml"


def gauges_counters_mapping() -> Path:
    """Case b: case a's mapping without the two histograms."""
    return code_root() / "bench" / "mappings" / "gauges-counters-jsonl.yaml"


def write_backlog(path: Path, records: int, *, seed: int = 6) -> int:
    """Write ``records`` documents, one compact JSON object per line; returns the bytes."""
    simulator = TrainingSimulator(job_id="bench-backlog", seed=seed)
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with open(path, "w") as fh:
        for _ in range(records):
            fh.write(dumps(simulator.document()))
            fh.write("\n")
    return path.stat().st_size


class DocumentWriter:
    """Rewrites one document in place (truncate and write), as training jobs do.

    ``loss`` overrides ``training_loss`` so a benchmark can recognise this very version
    at the receiver; every write has a new ``timestamp`` (the default mapping's version).
    """

    def __init__(self, path: Path, job_id: str, *, seed: int = 6) -> None:
        self.path = path
        self._simulator = TrainingSimulator(job_id=job_id, seed=seed)

    def write(self, loss: float | None = None) -> dict[str, Any]:
        document = self._simulator.document()
        if loss is not None:
            document["training_metrics"]["training_loss"] = loss
        data = json.dumps(document, indent=2)
        with open(self.path, "w") as fh:
            fh.write(data)
        return document


def mapping_with_source_path(path: Path, source_path: str, out: Path) -> Path:
    """A copy of the default mapping whose ``source:`` names ``source_path`` (a glob)."""
    text = path.read_text()
    marker = "\nsource:\n"
    if marker not in text:
        raise RuntimeError(f"{path} has no top-level 'source:' block")
    out.write_text(text.replace(marker, f"{marker}  path: {json.dumps(source_path)}\n", 1))
    return out


def age_file(path: Path, seconds: float) -> None:
    """Set the file's times ``seconds`` into the past (an unchanged, settled file)."""
    stat = path.stat()
    shift_ns = int(seconds * 1e9)
    os.utime(path, ns=(stat.st_atime_ns - shift_ns, stat.st_mtime_ns - shift_ns))
