"""JSON Lines tailing: every complete line once, across appends, truncation, rotation, restarts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from translator.mapping import compile_mapping
from translator.sources import JsonlSource, PathPattern

_opened: list[JsonlSource] = []


@pytest.fixture(autouse=True)
def _close_sources() -> Any:
    yield
    while _opened:
        _opened.pop().close()


def jsonl_source(path: Path, state_dir: Path | None = None, extra: str = "") -> JsonlSource:
    plan = compile_mapping(
        f"version: 1\nsource: {{path: {path}, format: jsonl{extra}}}\n"
        "metrics:\n  - {name: a, type: gauge, path: $.i}\n",
        "m.yaml",
        environ={},
    )
    source = JsonlSource(str(path), plan.source, str(state_dir) if state_dir else None)
    _opened.append(source)
    return source


def append(path: Path, *records: Any, raw: str = "") -> None:
    with open(path, "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records) + raw)


def drain(source: JsonlSource) -> list[Any]:
    out: list[Any] = []
    while (snapshot := source.poll()) is not None:
        out += snapshot.records
        source.commit()
    return [r["i"] for r in out]


def test_each_complete_line_is_read_once_and_a_partial_line_waits(tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    append(f, {"i": 1}, {"i": 2}, raw='{"i": 3')
    source = jsonl_source(f)
    assert drain(source) == [1, 2]
    assert drain(source) == []
    append(f, raw='}\n{"i": 4}\n')
    assert drain(source) == [3, 4]


def test_bad_line_is_reported_and_the_others_still_read(tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    append(f, {"i": 1}, raw='{"i": oops}\n{"i": 2}\n')
    snapshot = jsonl_source(f).poll()
    assert snapshot is not None
    assert [r["i"] for r in snapshot.records] == [1, 2]
    (error,) = snapshot.errors
    assert "is not JSON" in error


def test_truncation_in_place_restarts_from_the_beginning(tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    append(f, {"i": 1}, {"i": 2})
    source = jsonl_source(f)
    assert drain(source) == [1, 2]
    with open(f, "w") as fh:  # copytruncate
        fh.write(json.dumps({"i": 3}) + "\n")
    assert drain(source) == [3]


def test_rotation_drains_the_old_file_then_reads_the_new_one(tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    append(f, {"i": 1})
    source = jsonl_source(f)
    assert drain(source) == [1]
    append(f, {"i": 2})  # written just before the rotation, not yet read
    os.rename(f, tmp_path / "m.jsonl.1")
    append(f, {"i": 3})
    assert drain(source) == [2, 3]


def test_checkpoint_lets_a_restarted_reader_resume_without_loss_or_repeat(tmp_path: Path) -> None:
    f, state = tmp_path / "m.jsonl", tmp_path / "state"
    state.mkdir()
    append(f, {"i": 1}, {"i": 2})
    assert drain(jsonl_source(f, state)) == [1, 2]
    append(f, {"i": 3})
    assert drain(jsonl_source(f, state)) == [3]


def test_checkpoint_of_a_file_rotated_while_down_reads_the_new_file_whole(tmp_path: Path) -> None:
    f, state = tmp_path / "m.jsonl", tmp_path / "state"
    state.mkdir()
    append(f, {"i": 1}, {"i": 2})
    assert drain(jsonl_source(f, state)) == [1, 2]
    os.rename(f, tmp_path / "old.jsonl")
    append(f, {"i": 3})
    assert drain(jsonl_source(f, state)) == [3]


def test_start_at_end_skips_existing_lines_only_on_first_open(tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    append(f, {"i": 1}, {"i": 2})
    source = jsonl_source(f, extra=", start_at: end")
    assert drain(source) == []
    append(f, {"i": 3})
    assert drain(source) == [3]


def test_a_named_part_that_is_not_utf8_is_an_attribute_written_with_escapes() -> None:
    # A directory named with the byte 0xff is '\udcff' in Python: as an attribute the
    # OTLP encoder drops it, so two such runs would be one series with no run_id.
    pattern = PathPattern("/runs/{run_id}/state.json")
    assert pattern.attributes("/runs/bad\udcff/state.json") == (("run_id", "bad\\xff"),)
    assert pattern.attributes("/runs/caf\u00e9/state.json") == (("run_id", "caf\u00e9"),)


def test_path_pattern_names_become_attributes(tmp_path: Path) -> None:
    for run in ("r1", "r2"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "state.json").write_text("{}")
    pattern = PathPattern(f"{tmp_path}/{{run_id}}/state.json")
    paths = pattern.expand()
    assert paths == [f"{tmp_path}/r1/state.json", f"{tmp_path}/r2/state.json"]
    assert pattern.attributes(paths[1]) == (("run_id", "r2"),)
    assert PathPattern(str(tmp_path / "plain.json")).expand() == [str(tmp_path / "plain.json")]


def test_truncation_followed_by_regrowth_past_the_old_offset_is_still_detected(
    tmp_path: Path,
) -> None:
    f = tmp_path / "m.jsonl"
    append(f, {"i": 1}, {"i": 2})
    source = jsonl_source(f)
    assert drain(source) == [1, 2]
    with open(f, "w") as fh:  # copytruncate, then the writer appends more than before
        fh.write("".join(json.dumps({"i": i, "pad": "x" * 20}) + "\n" for i in range(3, 6)))
    assert drain(source) == [3, 4, 5]


def test_checkpoint_of_a_file_rewritten_while_down_reads_it_whole(tmp_path: Path) -> None:
    f, state = tmp_path / "m.jsonl", tmp_path / "state"
    state.mkdir()
    append(f, {"i": 1}, {"i": 2})
    assert drain(jsonl_source(f, state)) == [1, 2]
    with open(f, "w") as fh:  # same inode, new content, longer than the old offset
        fh.write("".join(json.dumps({"i": i, "pad": "y" * 20}) + "\n" for i in range(3, 6)))
    assert drain(jsonl_source(f, state)) == [3, 4, 5]


def test_a_line_over_the_cap_is_skipped_whole_and_reported(tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    append(f, {"i": 1}, {"i": 2, "pad": "x" * 500}, {"i": 3})
    source = jsonl_source(f, extra=", max_bytes: 100")
    errors: list[str] = []
    records: list[Any] = []
    while (snapshot := source.poll()) is not None:
        errors += snapshot.errors
        records += [r["i"] for r in snapshot.records]
    assert records == [1, 3]
    assert errors == [
        "the line at byte 9 is 519 bytes, over the 100-byte cap (source.max_bytes); skipped"
    ]
