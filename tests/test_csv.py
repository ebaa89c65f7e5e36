"""CSV sources: every data row applied once, whether the file is appended to or rewritten
whole with a longer header, across rotation, truncation and restarts."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.otlp_receiver import OtlpReceiver
from support.process import BridgeProcess, bridge_command

from translator.errors import DocumentInvalid
from translator.mapping import compile_mapping
from translator.sources import CsvSource, csv_records

Spawn = Callable[..., BridgeProcess]
_OPENED: list[CsvSource] = []


@pytest.fixture(autouse=True)
def _close_sources() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def source_for(path: Path, state_dir: Path | None = None, extra: str = "") -> CsvSource:
    plan = compile_mapping(
        f"version: 1\nsource: {{path: {path}, format: csv{extra}}}\n"
        "metrics:\n  - {name: a, type: gauge, path: $.loss}\n",
        "m.yaml",
        environ={},
    )
    _OPENED.append(CsvSource(str(path), plan.source, str(state_dir) if state_dir else None))
    return _OPENED[-1]


def steps(source: CsvSource) -> list[Any]:
    snapshot = source.poll()
    return [] if snapshot is None else [r.get("step") for r in snapshot.records]


def test_cells_are_numbers_text_or_absent() -> None:
    records, errors = csv_records(
        b"step,loss,lr-Adam,note,epoch\n1,0.5,1e-3,warm up,\n2,nan,,+inf,007\n"
    )
    assert errors == []
    assert records[0] == {"step": 1, "loss": 0.5, "lr-Adam": 0.001, "note": "warm up"}
    assert records[1]["step"] == 2 and math.isnan(records[1]["loss"])
    assert records[1]["note"] == math.inf and records[1]["epoch"] == 7
    assert "lr-Adam" not in records[1]


def test_appended_rows_are_each_read_once_and_a_half_written_row_waits(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("step,loss\n1,0.9\n2,0.8\n3,0.")
    source = source_for(path)
    assert steps(source) == [1, 2]
    with path.open("a") as fh:
        fh.write("7\n4,0.6\n")
    assert steps(source) == [3, 4]
    assert steps(source) == []


def test_a_file_rewritten_whole_with_a_grown_header_applies_only_the_new_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train_loss\n0,49,0.91\n0,99,0.70\n")
    source = source_for(path)
    assert steps(source) == [49, 99]
    # Lightning's rewrite when val_loss first appears: same rows, empty new cells, new rows.
    path.write_text(
        "epoch,step,train_loss,val_loss\n0,49,0.91,\n0,99,0.70,\n0,99,,0.65\n1,149,0.61,\n"
    )
    snapshot = source.poll()
    assert snapshot is not None
    assert snapshot.records == [
        {"epoch": 0, "step": 99, "val_loss": 0.65},
        {"epoch": 1, "step": 149, "train_loss": 0.61},
    ]


def test_a_rewrite_caught_midway_gives_nothing_and_then_only_the_new_rows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss\n1,0.9\n2,0.8\n3,0.7\n")
    source = source_for(path)
    assert steps(source) == [1, 2, 3]
    path.write_text("step,loss\n1,0.9\n2,")  # truncated and being written again
    assert steps(source) == []
    path.write_text("step,loss\n1,0.9\n2,0.8\n3,0.7\n4,0.6\n")
    assert steps(source) == [4]


def test_identical_rows_are_distinct_records(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("step,loss\n1,0.5\n1,0.5\n")
    source = source_for(path)
    assert steps(source) == [1, 1]
    path.write_text("step,loss\n1,0.5\n1,0.5\n1,0.5\n")
    assert steps(source) == [1]


def test_a_new_run_writing_the_file_from_scratch_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("step,loss\n1,0.9\n2,0.8\n")
    source = source_for(path)
    assert steps(source) == [1, 2]
    path.write_text("step,loss\n1,1.4\n")
    assert steps(source) == [1]


def test_rotation_drains_the_old_file_then_reads_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("step,loss\n1,0.9\n")
    source = source_for(path)
    assert steps(source) == [1]
    with path.open("a") as fh:
        fh.write("2,0.8\n")
    os.rename(path, tmp_path / "m.csv.1")
    path.write_text("step,loss\n3,0.7\n")
    assert steps(source) == [2]
    assert steps(source) == [3]
    source.close()


def test_state_dir_lets_a_restarted_reader_go_on_without_loss_or_repeat(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    state = tmp_path / "state"
    state.mkdir()
    path.write_text("step,loss\n1,0.9\n2,0.8\n")
    first = source_for(path, state)
    assert steps(first) == [1, 2]
    first.commit()
    first.close()
    path.write_text("step,loss,val_loss\n1,0.9,\n2,0.8,\n2,,0.7\n3,0.6,\n")  # while down
    second = source_for(path, state)
    assert steps(second) == [2, 3]
    second.close()


def test_start_at_end_skips_the_rows_already_there(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("step,loss\n1,0.9\n")
    source = source_for(path, extra=", start_at: end")
    assert steps(source) == []
    with path.open("a") as fh:
        fh.write("2,0.8\n")
    assert steps(source) == [2]


def test_a_row_with_more_cells_than_the_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("step,loss\n1,0.9,oops\n")
    snapshot = source_for(path).poll()
    assert snapshot is not None and snapshot.records == [{"step": 1, "loss": 0.9}]
    assert snapshot.errors == (
        "line 2 has 3 cells for 2 header names; the extra cells are ignored",
    )


@pytest.mark.parametrize(
    "data", [b"step,loss\n1,\xff\n", b'a,b\n"' + b"x" * 200_000 + b'"\n'], ids=["utf8", "huge-cell"]
)
def test_bytes_that_are_not_csv_are_an_invalid_document(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(data)
    with pytest.raises(DocumentInvalid):
        source_for(path).poll()


# --- the whole sidecar, against a real OTLP receiver --------------------------------------

_CSV_MAPPING = """\
version: 1
source: {{path: '{path}', format: csv}}
metrics:
  - name: test.rows
    type: counter
    mode: increment
    path: $.one
"""


def _rows(first: int, last: int, *, validation: bool) -> list[str]:
    """Lightning-like rows: a training row per step, a validation row every 10 steps once
    validation has started (its column then exists; the training rows leave it empty)."""
    out = []
    for step in range(first, last + 1):
        out.append(f"{step},1,0.{step:04d}" + (",\n" if validation else "\n"))
        if validation and step % 10 == 0:
            out.append(f"{step},1,,0.{step:04d}\n")
    return out


def _rewrite(path: Path, rows: list[str], *, validation: bool) -> None:
    """Rewrite the whole file in place, as Lightning's CSVLogger does (truncate, write)."""
    header = "step,one,train_loss" + (",val_loss\n" if validation else "\n")
    with path.open("w") as fh:
        fh.write(header)
        if validation:  # the rows written before the header grew get the new empty cell
            fh.writelines(r if r.count(",") == 3 else r.replace("\n", ",\n") for r in rows)
        else:
            fh.writelines(rows)


def _total_is(receiver: OtlpReceiver, expected: int, run: str) -> None:
    def reached() -> bool:
        points = [
            p
            for p in receiver.points("test.rows")
            if p.resource_attributes.get("bridge.run") == run
        ]
        if points and points[-1].number > expected:
            raise AssertionError(
                f"test.rows = {points[-1].number} > {expected}: rows applied twice"
            )
        return bool(points) and points[-1].number == expected

    receiver.wait_for(reached, timeout_s=20, what=f"test.rows == {expected} from run {run}")


def _stays(receiver: OtlpReceiver, expected: int, run: str) -> None:
    seen = receiver.request_count
    receiver.wait_for(lambda: receiver.request_count >= seen + 2, what="two more exports")
    points = [
        p for p in receiver.points("test.rows") if p.resource_attributes.get("bridge.run") == run
    ]
    assert points[-1].number == expected


def _spawn(spawn: Spawn, receiver: OtlpReceiver, tmp_path: Path, run: str) -> BridgeProcess:
    env = {
        "MAPPING_PATH": str(tmp_path / "csv.yaml"),
        "STATE_DIR": str(tmp_path / "state"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.address,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_RESOURCE_ATTRIBUTES": f"bridge.run={run}",
        "COLLECTION_INTERVAL": "0.2",
    }
    return spawn(bridge_command("run"), env=env, name=f"bridge run {run}")


def test_a_csv_rewritten_whole_with_a_growing_header_applies_each_row_once_across_a_restart(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    metrics = tmp_path / "metrics.csv"
    (tmp_path / "state").mkdir()
    (tmp_path / "csv.yaml").write_text(_CSV_MAPPING.format(path=metrics))
    rows = _rows(1, 1, validation=False)
    _rewrite(metrics, rows, validation=False)
    first = _spawn(spawn_bridge, grpc_receiver, tmp_path, "1")
    _total_is(grpc_receiver, 1, "1")  # the bridge is reading before the rewrites start
    # 1. Rewrites while it runs, as fast as they come: some are caught half-written.
    for last in range(5, 101, 5):
        rows += _rows(last - 4, last, validation=False)
        _rewrite(metrics, rows, validation=False)
    _total_is(grpc_receiver, len(rows), "1")
    # 2. Validation starts: a new column, every row rewritten under the longer header.
    for last in range(105, 201, 5):
        rows += _rows(last - 4, last, validation=True)
        _rewrite(metrics, rows, validation=True)
    _total_is(grpc_receiver, len(rows), "1")
    applied_first = len(rows)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout_s=12) == 0
    # 3. Rows written while no bridge runs, then more while the restarted one runs.
    rows += _rows(201, 250, validation=True)
    _rewrite(metrics, rows, validation=True)
    second = _spawn(spawn_bridge, grpc_receiver, tmp_path, "2")
    for last in range(255, 301, 5):
        rows += _rows(last - 4, last, validation=True)
        _rewrite(metrics, rows, validation=True)
    # The new process goes on with the first one's stream (restored from STATE_DIR): it
    # applies exactly the rows the first one did not, so the total is every row.
    assert 0 < applied_first < len(rows)
    _total_is(grpc_receiver, len(rows), "2")
    _stays(grpc_receiver, len(rows), "2")
    assert "Traceback" not in second.stderr + first.stderr


def test_a_change_inside_the_rows_read_before_is_seen_even_when_the_file_grew(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.csv"
    path.write_text("step,loss\n1,0.9\n2,0.8\n")
    source = source_for(path)
    assert steps(source) == [1, 2]
    path.write_text("step,loss\n1,0.7\n2,0.8\n3,0.6\n")  # not an append: row 1 changed
    assert steps(source) == [1, 2, 3]


def test_rows_appended_after_an_empty_or_header_only_read_are_keyed_by_the_header(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.csv"
    path.write_text("")
    source = source_for(path)
    assert steps(source) == []
    path.write_text("step,loss\n")
    assert steps(source) == []
    with path.open("a") as fh:
        fh.write("1,0.9\n")
    snapshot = source.poll()
    assert snapshot is not None and snapshot.records == [{"step": 1, "loss": 0.9}]


def test_an_appended_bad_row_is_reported_with_its_line_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("step,loss\n1,0.9\n")
    source = source_for(path)
    assert steps(source) == [1]
    with path.open("a") as fh:
        fh.write("2,0.8\n3,0.7,oops\n")
    snapshot = source.poll()
    assert snapshot is not None and [r["step"] for r in snapshot.records] == [2, 3]
    assert snapshot.errors == (
        "line 4 has 3 cells for 2 header names; the extra cells are ignored",
    )


def test_padded_header_names_and_cells_are_read_without_their_spaces(tmp_path: Path) -> None:
    # Ultralytics' results.csv right-aligns every name and value in a 25-character column;
    # a name is what it says without the padding, and a padded number is still a number.
    path = tmp_path / "results.csv"
    path.write_text(
        "                  epoch,       metrics/mAP50(B),   note\n"
        "                      1,                 0.4501,   warm up \n"
        "                      2,                       ,      \n"
    )
    source = source_for(path)
    snapshot = source.poll()
    assert snapshot is not None and snapshot.records == [
        {"epoch": 1, "metrics/mAP50(B)": 0.4501, "note": "warm up"},
        {"epoch": 2},
    ]
    with path.open("a") as fh:  # an appended row (parsed past the last read) alike
        fh.write("                      3,                 0.5123,   \n")
    snapshot = source.poll()
    assert snapshot is not None and snapshot.records == [{"epoch": 3, "metrics/mAP50(B)": 0.5123}]


def test_a_quoted_cell_holding_a_newline_waits_until_its_row_is_whole(tmp_path: Path) -> None:
    # Python's csv reader closes a quote left open at the end of the data: the half of a
    # multi-line cell written so far was applied as a row, and its rest as another.
    path = tmp_path / "m.csv"
    path.write_bytes(b'"step","note"\r\n"1","a, b"\r\n2,"first ""line""\n')
    source = source_for(path)
    snapshot = source.poll()
    assert snapshot is not None and snapshot.records == [{"step": 1, "note": "a, b"}]
    with path.open("ab") as fh:
        fh.write(b'second line"\n3,x"y\n')
    snapshot = source.poll()
    assert snapshot is not None and snapshot.records == [
        {"step": 2, "note": 'first "line"\nsecond line'},
        {"step": 3, "note": 'x"y'},
    ]
    assert source.poll() is None


def test_a_quote_left_open_for_over_a_thousand_lines_is_read_not_waited_on(
    tmp_path: Path,
) -> None:
    # Not a row being written but a stray quote: read as the csv module reads it (the
    # rest of the file one cell) rather than nothing for ever.
    path = tmp_path / "m.csv"
    path.write_text('step,note\n1,ok\n2,"stray\n' + "3,x\n" * 1001)
    snapshot = source_for(path).poll()
    assert snapshot is not None and [r["step"] for r in snapshot.records] == [1, 2]
    assert snapshot.records[1]["note"].startswith("stray\n3,x\n")


def test_a_header_naming_a_column_twice_is_reported() -> None:
    records, errors = csv_records(b"step,loss,loss\n1,0.9,0.8\n")
    assert records == [{"step": 1, "loss": 0.8}]
    assert errors == ["the header names 'loss' in columns 2 and 3; the last one is read"]
