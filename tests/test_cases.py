"""Expected-output cases: tests/cases/<name>/{mapping.yaml, input.json|input.jsonl, expected.json}.

Adding a job format adds a folder, not code. ``expected.json`` is what
``ml-metrics-bridge preview --format json`` prints for the input.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from translator.cli import run

CASES = Path(__file__).parent / "cases"


def _input_of(case: Path) -> Path:
    (found,) = [p for p in case.iterdir() if p.name.startswith("input.")]
    return found


@pytest.mark.parametrize(
    "case", sorted(p for p in CASES.iterdir() if p.is_dir()), ids=lambda p: p.name
)
def test_case_produces_its_expected_points(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("WANDB_RUN_ID", "HOSTNAME_OVERRIDE"):
        monkeypatch.delenv(variable, raising=False)
    out, err = io.StringIO(), io.StringIO()
    status = run(
        [
            "preview",
            "--mapping",
            str(case / "mapping.yaml"),
            str(_input_of(case)),
            "--format",
            "json",
        ],
        out,
        err,
    )
    assert status == 0, err.getvalue()
    expected = json.loads((case / "expected.json").read_text())
    assert json.loads(out.getvalue()) == expected
    assert expected, "a case must expect at least one point or drop"
