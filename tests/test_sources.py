"""Reading document files: each version once, and every bad file a clear, retryable error."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from translator.engine import evaluate
from translator.errors import DocumentInvalid, SourceUnavailable
from translator.mapping import compile_mapping
from translator.sources import DocumentSource, SourceMissing, parse_json


def source_for(path: Path, source_yaml: str = "") -> DocumentSource:
    plan = compile_mapping(
        f"version: 1\nsource: {{path: {path}{source_yaml}}}\nmetrics:\n  - {{name: a, type: gauge, path: $.a}}\n",
        "m.yaml",
        environ={},
    )
    return DocumentSource(str(path), plan.source)


def test_python_nan_and_infinity_literals_parse() -> None:
    doc = parse_json(b'{"loss": NaN, "grad": Infinity, "low": -Infinity, "ok": 1}')
    assert doc["ok"] == 1
    assert doc["loss"] != doc["loss"]
    assert doc["grad"] == float("inf") and doc["low"] == float("-inf")


@pytest.mark.parametrize(
    "data",
    [b'{"a": 1', b'{"a": "\xff"}', b"{}}", b"", b"[1,]"],
    ids=["truncated", "invalid-utf8", "trailing-garbage", "empty", "trailing-comma"],
)
def test_unparseable_bytes_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_json(data)


def test_document_nested_deeper_than_1024_levels_is_refused() -> None:
    with pytest.raises(ValueError, match="nested more than 1024 levels deep"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)


def test_deeply_nested_document_parses_and_evaluates_to_drops_not_a_crash() -> None:
    depth = 1000
    document = parse_json(b'{"a": ' + b"[" * depth + b"]" * depth + b"}")
    plan = compile_mapping(
        "version: 1\nmetrics:\n  - {name: a, type: gauge, path: $.a}\n"
        "  - {name: b, type: gauge, path: $.x, for_each: '$..y'}\n",
        "m.yaml",
        environ={},
    )
    result = evaluate(plan, document)
    assert result.points == []
    assert [d.reason.value for d in result.drops] == ["not_a_number"]


def test_unchanged_file_is_not_read_as_a_new_version(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    f.write_text('{"a": 1}')
    source = source_for(f)
    first = source.poll()
    assert first is not None and first.records == [{"a": 1}]
    assert source.poll() is None
    # Rewritten with identical content (a new mtime): still not a new version.
    f.write_text('{"a": 1}')
    assert source.poll() is None
    f.write_text('{"a": 2}')
    second = source.poll()
    assert second is not None and second.records == [{"a": 2}]


def test_a_version_key_decides_which_events_are_new_and_content_decides_state(
    tmp_path: Path,
) -> None:
    f = tmp_path / "m.json"
    source = source_for(f, ", version_path: $.ts")
    f.write_text('{"ts": "t1", "a": 1}')
    first = source.poll()
    assert first is not None and first.events
    # Same version key, new content (two writes within the key's one-second resolution):
    # the new state is read, the version's events were counted already.
    f.write_text('{"ts": "t1", "a": 2, "pad": true}')
    rewrite = source.poll()
    assert rewrite is not None and rewrite.records == [{"ts": "t1", "a": 2, "pad": True}]
    assert not rewrite.events
    f.write_text('{"ts": "t2", "a": 3}')
    snapshot = source.poll()
    assert snapshot is not None and snapshot.records == [{"ts": "t2", "a": 3}]
    assert snapshot.events


def test_half_written_file_is_an_error_now_and_a_version_once_complete(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    source = source_for(f)
    f.write_text('{"a": 1, "b": ')
    with pytest.raises(DocumentInvalid, match=r"is not valid JSON .*will read it again"):
        source.poll()
    f.write_text("")
    with pytest.raises(DocumentInvalid, match="is empty"):
        source.poll()
    f.write_text('{"a": 1, "b": 2}')
    assert source.poll() is not None


def test_missing_file_then_created(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    source = source_for(f)
    with pytest.raises(SourceMissing, match="does not exist"):
        source.poll()
    f.write_text('{"a": 1}')
    assert source.poll() is not None


def test_directory_in_place_of_the_file(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    f.mkdir()
    with pytest.raises(SourceUnavailable, match="is not a regular file"):
        source_for(f).poll()


def test_path_that_cannot_be_read_names_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SourceUnavailable, match="cannot be read: Not a directory"):
        source_for(blocker / "m.json").poll()


def test_file_over_the_size_cap_is_refused_with_both_sizes(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    f.write_text('{"a": "' + "x" * 200 + '"}')
    with pytest.raises(
        SourceUnavailable, match=r"is 209 bytes, over the 100-byte cap \(source.max_bytes\)"
    ):
        source_for(f, ", max_bytes: 100").poll()


def test_same_size_rewrite_within_the_timestamp_tick_is_still_seen(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    f.write_text('{"a": 1}')
    source = source_for(f)
    assert source.poll() is not None
    st = os.stat(f)
    f.write_text('{"a": 2}')
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    snapshot = source.poll()
    assert snapshot is not None and snapshot.records == [{"a": 2}]


def test_history_records_are_new_once_by_position_and_content_across_shrinks_and_growth(
    tmp_path: Path,
) -> None:
    f = tmp_path / "trainer_state.json"
    plan = compile_mapping(
        f"version: 1\nsource: {{path: {f}, records: '$.log_history[*]'}}\n"
        "metrics:\n  - {name: a, type: gauge, path: $.loss}\n",
        "m.yaml",
        environ={},
    )
    source = DocumentSource(str(f), plan.source)

    def write(*records: dict[str, float]) -> tuple[list[Any], list[Any]]:
        """(every record, the records not read before)."""
        f.write_text(json.dumps({"global_step": 0, "log_history": list(records)}))
        snapshot = source.poll()
        assert snapshot is not None
        return snapshot.records, snapshot.records[snapshot.first_new :]

    s1, s2 = {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}
    e2 = {"step": 2, "eval_loss": 0.95}
    assert write(s1, s2) == ([s1, s2], [s1, s2])
    assert write(s1, s2, e2) == ([s1, s2, e2], [e2])
    assert write(s1) == ([s1], [])  # resumed from a checkpoint: the array shrinks
    relogged, s3 = {"step": 2, "loss": 0.91}, {"step": 3, "loss": 0.8}
    assert write(s1, relogged, s3) == ([s1, relogged, s3], [relogged, s3])  # re-logged: new
    # The shrink unseen (shrunk and regrown between two reads): still the re-logged ones.
    again = {"step": 2, "loss": 0.92}
    assert write(s1, again) == ([s1, again], [again])
    # Equal content at two positions (a Keras history, the same loss two epochs running).
    same = {"loss": 0.5}
    assert write(same) == ([same], [same])
    assert write(same, same) == ([same, same], [same])
    # A history that keeps only its newest records: the window slid by one.
    w = [{"step": n, "loss": n} for n in range(5)]
    write(*w[:3])
    assert write(*w[1:4]) == (w[1:4], [w[3]])
    assert source.poll() is None  # unchanged: nothing at all


def test_a_broken_document_is_retried_soon_once_then_at_the_normal_interval(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    f.write_text('{"a": 1,}')
    source = source_for(f)
    with pytest.raises(DocumentInvalid) as first:
        source.poll()
    with pytest.raises(DocumentInvalid) as second:
        source.poll()
    assert (first.value.retry_soon, second.value.retry_soon) == (True, False)
    f.write_text('{"a": 1, "b"')  # new bytes: maybe a write in progress again
    with pytest.raises(DocumentInvalid) as third:
        source.poll()
    assert third.value.retry_soon


def test_history_records_without_any_key_are_reported_not_collapsed(tmp_path: Path) -> None:
    f = tmp_path / "trainer_state.json"
    plan = compile_mapping(
        f"version: 1\nsource: {{path: {f}, records: '$.h[*]', record_key: [$.step]}}\n"
        "metrics:\n  - {name: a, type: gauge, path: $.loss}\n",
        "m.yaml",
        environ={},
    )
    f.write_text(json.dumps({"h": [{"loss": 1}, {"loss": 2}, {"step": 3, "loss": 3}]}))
    snapshot = DocumentSource(str(f), plan.source).poll()
    assert snapshot is not None
    assert snapshot.records == [{"step": 3, "loss": 3}]
    assert snapshot.errors == (
        "history record 0 has no usable key (none of record_key selects anything in it); skipped",
        "history record 1 has no usable key (none of record_key selects anything in it); skipped",
    )


def test_a_json_lines_file_read_as_a_document_says_which_format_to_use(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    with pytest.raises(DocumentInvalid) as caught:
        source_for(path).poll()
    assert caught.value.reason == (
        "is not valid JSON (Extra data: line 2 column 1 (char 9); it looks like JSON Lines "
        "(one JSON value per line): say source.format: jsonl in the mapping); will read it again"
    )
