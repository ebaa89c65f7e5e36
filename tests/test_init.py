"""``ml-metrics-bridge init SAMPLE``: the mapping proposed for a sample validates, reads
every numeric leaf of the sample, and is what tests/cases/<name>/init.yaml expects.

``init.yaml`` sits beside a case's input: the brief's document and the shipped examples'
samples. After a deliberate change to the proposals, regenerate one with
``ml-metrics-bridge init tests/cases/NAME/input.* > tests/cases/NAME/init.yaml`` and read
its diff: that diff is the review of the change.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from translator.cli import run
from translator.mapping import load_plan
from translator.sources import csv_records, parse_json

CASES = Path(__file__).parent / "cases"
ALL_SAMPLES = sorted(p for p in CASES.glob("*/input.*"))
EXPECTED = sorted(p.parent for p in CASES.glob("*/init.yaml"))


def call(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


def _input_of(case: Path) -> Path:
    (found,) = [p for p in case.iterdir() if p.name.startswith("input.")]
    return found


def _numeric_leaves(value: Any, attribute_keys: set[str], in_element: bool = False) -> list[float]:
    """Every finite number in a record, as init promises to map it: a list of numbers is
    its last value; in the elements of a list of objects, the keys used as attributes are
    not values, and nested objects and lists are left out (init lists them in a comment)."""
    if isinstance(value, dict):
        return [
            n
            for k, v in value.items()
            if not (in_element and (k in attribute_keys or isinstance(v, dict | list)))
            for n in _numeric_leaves(v, attribute_keys, in_element)
        ]
    if isinstance(value, list):
        if value and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return _numeric_leaves(value[-1], attribute_keys)
        if value and all(isinstance(v, dict) for v in value) and not attribute_keys & {
            k for v in value for k in v
        }:
            # Nothing tells the elements apart (init says so): their metrics have one series
            # each, whose value run exports is the last element's that has one.
            newest: dict[str, float] = {}
            for element in value:
                for key, leaf in element.items():
                    found = _numeric_leaves(leaf, attribute_keys, in_element=True)
                    if found and not isinstance(leaf, dict | list):
                        newest[key] = found[-1]
            return list(newest.values())
        return [n for v in value for n in _numeric_leaves(v, attribute_keys, in_element=True)]
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return [float(value)]
    return []


def _attribute_keys(mapping_text: str) -> set[str]:
    """The keys that the proposed mapping's per-element attributes read ($.index -> index)."""
    mapping = yaml.safe_load(mapping_text)
    return {
        spec["path"].removeprefix("$.")
        for metric in mapping["metrics"]
        for spec in (metric.get("attributes") or {}).values()
        if isinstance(spec, dict) and "path" in spec
    }


def _records(sample: Path, mapping: Path) -> list[Any]:
    plan = load_plan(mapping)
    data = sample.read_bytes()
    if plan.source.format.value == "jsonl":
        return [parse_json(line) for line in data.splitlines() if line.strip()]
    if plan.source.format.value == "csv":
        return csv_records(data)[0]
    document = parse_json(data)
    return plan.source.records.all(document) if plan.source.records else [document]


@pytest.mark.parametrize("case", EXPECTED, ids=lambda p: p.name)
def test_init_proposes_the_expected_mapping(case: Path) -> None:
    status, out, err = call("init", str(_input_of(case)))
    assert (status, err) == (0, "")
    assert out == (case / "init.yaml").read_text()


def test_the_brief_and_every_shipped_sample_have_an_expected_proposal() -> None:
    # The brief's document and the samples of mappings/examples/ (tests/cases holds more).
    for name in ("brief-default", "gpustat", "huggingface-trainer", "detectron2-jsonl",
                 "wandb-summary", "keras-history", "per-class-eval", "lightning-csv"):
        assert (CASES / name / "init.yaml").is_file(), name


@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda p: p.parent.name)
def test_the_proposal_validates_and_previews_a_point_for_every_numeric_leaf(
    sample: Path, tmp_path: Path
) -> None:
    status, out, err = call("init", str(sample))
    assert status == 0, err
    mapping = tmp_path / "proposed.yaml"
    mapping.write_text(out)
    attribute_keys = _attribute_keys(out)
    assert call("validate", str(mapping))[0] == 0
    status, out, err = call("preview", "--mapping", str(mapping), str(sample), "--format", "json")
    assert status == 0, err
    rows = json.loads(out)
    # preview shows what run exports: each series' newest value. The newest record's
    # numeric leaves are each the newest value of their series, so each has its point.
    records = _records(sample, mapping)
    given = sorted(float(r["value"]) for r in rows if "dropped" not in r)
    for leaf in _numeric_leaves(records[-1], attribute_keys):
        assert leaf in given, f"record {len(records) - 1}: {leaf} has no point\n{out}"
    drops = {r["dropped"]["reason"] for r in rows if "dropped" in r}
    # What is dropped is what cannot be a number: NaN, and text where numbers are.
    assert drops <= {"non_finite", "not_a_number"}, drops


def test_prefix_starts_every_name_and_a_bad_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    sample = str(CASES / "brief-default" / "input.json")
    status, out, _ = call("init", sample, "--prefix", "acme.train")
    assert status == 0
    names = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("  - name: ")]
    assert names and all(name.startswith("acme.train.") for name in names)
    assert call("init", sample, "--prefix", "9lives")[0] == 2
    assert "argument --prefix: '9lives': a letter, then letters" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot be read: No such file or directory"),
        ("", "is empty; init needs a sample with values in it"),
        ("hello\n", "not JSON, JSON Lines or CSV with a header line"),
        ("[1, 2]", "a JSON list, but not of objects (records)"),
        (
            '{"job_id": "a", "ok": true}',
            "no numeric value in the sample: nothing to map (left out: $.ok: true/false "
            "(a metric with booleans: true reads them as 1 and 0))",
        ),
        ('{\n  "loss": 0.5,\n  "acc": [\n    0.9,\n  ]\n}\n', "not valid JSON (Expecting"),
        ('{"a":' * 1100 + "1" + "}" * 1100, "not valid JSON (nested more than 1024 levels deep)"),
        (
            '{"a":' * 1000 + "1" + "}" * 1000,
            "no numeric value in the sample: nothing to map (left out: $"
            + ".a" * 32 + ": an object nested deeper than 32 levels)",
        ),
    ],
    ids=[
        "missing", "empty", "text", "list-of-numbers", "no-numbers", "broken-json",
        "too-deep-for-json", "too-deep-for-a-mapping",
    ],
)
def test_a_sample_init_cannot_use_is_named_with_the_reason(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    sample = tmp_path / "sample.json"
    if content is not None:
        sample.write_text(content)
    status, out, err = call("init", str(sample))
    assert (status, out) == (1, "")
    assert err.startswith(f"ml-metrics-bridge init: {sample}: {problem}")
    assert err.endswith(")\n" if "(" in problem else f"{problem}\n")


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    # `init SAMPLE | head -1`: here the reader is gone before init writes a byte.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "translator", "init", str(CASES / "gpustat" / "input.json")],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (finished.returncode, finished.stderr) == (1, "")


def _proposed_points(
    tmp_path: Path, name: str, content: str, preview_err: str = ""
) -> tuple[str, list[dict[str, Any]]]:
    """init's proposal for a sample, checked to validate, and what preview gives with it."""
    sample = tmp_path / name
    sample.write_text(content)
    status, mapping_text, err = call("init", str(sample))
    assert (status, err) == (0, "")
    mapping = tmp_path / "proposed.yaml"
    mapping.write_text(mapping_text)
    assert call("validate", str(mapping))[0] == 0
    status, out, err = call("preview", "--mapping", str(mapping), str(sample), "--format", "json")
    assert (status, err) == (0, preview_err.format(sample=sample))
    return mapping_text, json.loads(out)


@pytest.mark.parametrize(
    ("content", "values"),
    [
        # A backslash and quotes in a key: JSONPath's quoted keys escape them.
        ('{"back\\\\slash": 1, "it\'s \\"q\\"": 2, "it\'s": 3, "say \\"hi\\"": 4}', [1, 2, 3, 4]),
        ('{"' + "k" * 300 + '": 1, "' + "k" * 299 + 'x": 2}', [1, 2]),  # past 255 characters
        ('{"a b": {"c:d": 5}, "\u00fc": 6, "tab\\there": 7, "": 8}', [5, 6, 7, 8]),
    ],
    ids=["backslash-and-quotes", "long-keys", "odd-keys"],
)
def test_keys_of_any_spelling_get_a_path_that_selects_them(
    tmp_path: Path, content: str, values: list[float]
) -> None:
    _, rows = _proposed_points(tmp_path, "sample.json", content)
    assert sorted(r["value"] for r in rows if "dropped" not in r) == values
    assert [r for r in rows if "dropped" in r] == []


def test_a_key_a_path_would_read_as_a_key_pattern_is_left_out_not_exported_wrong(
    tmp_path: Path,
) -> None:
    # $['loss{split}'] would match every key (loss and step too): wrong values under one name.
    text, rows = _proposed_points(tmp_path, "s.json", '{"loss{split}": 1, "loss": 2, "step": 3}')
    assert sorted((r["name"], r["value"]) for r in rows) == [
        ("ml.training.loss", 2), ("ml.training.step", 3)
    ]  # fmt: skip
    assert "#   $['loss{split}']: {...} in the key: a path reads it as a key pattern\n" in text


def test_a_json_lines_sample_with_a_torn_last_line_is_json_lines(tmp_path: Path) -> None:
    # A copy of a live log: the last line is still being written. The sidecar skips it.
    content = '{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.25}\n{"step": 3, "lo'
    skipped = "{sample}:3: not JSON (Unterminated string starting at: line 1 column 13 (char 12)); skipped\n"
    text, rows = _proposed_points(tmp_path, "log.jsonl", content, skipped)
    assert "  format: jsonl\n" in text
    assert "#   line 3: not JSON (the sidecar skips such a line)\n" in text
    assert sorted((r["name"], r["value"]) for r in rows) == [
        ("ml.training.loss", 2.25), ("ml.training.step", 2)
    ]  # fmt: skip


def _proposal(tmp_path: Path, content: str) -> dict[str, Any]:
    sample = tmp_path / "sample.json"
    sample.write_text(content)
    status, out, err = call("init", str(sample))
    assert (status, err) == (0, "")
    parsed: dict[str, Any] = yaml.safe_load(out)
    return parsed


@pytest.mark.parametrize(
    ("key", "value", "unit"),
    [
        ("samples_per_second", 150.2, "{sample}/s"),  # the brief's; was no unit
        ("train_steps_per_second", 3.1, "{step}/s"),
        ("iterations_per_sec", 12.0, "{iteration}/s"),  # was "s": it ends in _sec
        ("epoch_duration", 45.0, None),  # was "%": "ratio" is inside "duration"
        ("grad_accum_steps", 4, None),  # was "%": "acc" is inside "accum"
        ("eval_acc", 0.41, "1"),
        ("valAccuracy", 0.9, "1"),
        ("cpu_percent", 55.0, "%"),
        ("step_time_ms", 12.5, "ms"),
    ],
)
def test_units_are_guessed_from_the_words_of_the_name(
    tmp_path: Path, key: str, value: float, unit: str | None
) -> None:
    (metric,) = _proposal(tmp_path, json.dumps({key: value}))["metrics"]
    assert metric.get("unit") == unit


def test_names_say_what_they_are_about(tmp_path: Path) -> None:
    mapping = _proposal(
        tmp_path,
        json.dumps({
            "model": {"name": "resnet50"},  # a generic key is named with its parent
            "per_class": [{"class": "cat", "ap": 0.8}, {"class": "dog", "ap": 0.7}],
            "\u00fcber_loss": 1.5,  # an accented letter keeps its base letter
        }),
    )  # fmt: skip
    assert mapping["attributes"] == {"model.name": {"path": "$.model.name"}}
    names = {m["name"]: m for m in mapping["metrics"]}
    assert set(names) == {"ml.training.per_class.ap", "ml.training.uber_loss"}
    assert names["ml.training.per_class.ap"]["attributes"] == {
        "per_class.class": {"path": "$.class"}  # not per_clas.class
    }


def test_a_list_of_objects_with_nothing_to_map_gets_no_dangling_comment(tmp_path: Path) -> None:
    sample = tmp_path / "sample.json"
    sample.write_text('{"loss": 1.0, "events": [{"what": {"nested": 1}}, {"what": {}}]}')
    status, out, _ = call("init", str(sample))
    assert status == 0
    assert "nothing tells the elements" not in out
    assert "#   $.events[*]: $.what: an object inside each element\n" in out


def test_a_list_no_gauge_can_read_says_what_it_holds(tmp_path: Path) -> None:
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({
        "loss": 1.0, "tags": ["a", "b"], "grid": [[1, 2], [3]], "mixed": [1, "a", None],
    }))  # fmt: skip
    status, out, _ = call("init", str(sample))
    assert status == 0
    assert "#   $.tags: a list of text\n" in out
    assert "#   $.grid: a list of lists\n" in out
    assert "#   $.mixed: a list of mixed values (nulls, numbers, text)\n" in out


def test_a_number_named_an_id_is_an_attribute_not_a_gauge(tmp_path: Path) -> None:
    text, rows = _proposed_points(tmp_path, "s.json", '{"job_id": 4711, "loss": 0.5}')
    assert yaml.safe_load(text)["attributes"] == {"job.id": {"path": "$.job_id"}}
    assert [(r["name"], r["value"], r["attributes"]) for r in rows] == [
        ("ml.training.loss", 0.5, {"job.id": 4711})
    ]


def test_a_json_lines_line_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    sample = tmp_path / "log.jsonl"
    sample.write_text('{"loss": 1}\n[1, 2]\n')
    assert call("init", str(sample)) == (1, "", (
        f"ml-metrics-bridge init: {sample}:2: a list where JSON Lines of metrics have an "
        "object ({...}) on every line\n"
    ))  # fmt: skip


def test_a_document_that_is_a_list_of_devices_is_a_for_each_not_a_history(
    tmp_path: Path,
) -> None:
    # Read as a history, only the newest element (the last GPU) was exported.
    content = json.dumps([
        {"index": 0, "util": 0.5, "mem_bytes": 100}, {"index": 1, "util": 0.75, "mem_bytes": 200}
    ])  # fmt: skip
    text, rows = _proposed_points(tmp_path, "gpus.json", content)
    assert "records:" not in text
    assert sorted((r["name"], r["attributes"]["element.index"], r["value"]) for r in rows) == [
        ("ml.training.mem_bytes", 0, 100), ("ml.training.mem_bytes", 1, 200),
        ("ml.training.util", 0, 0.5), ("ml.training.util", 1, 0.75),
    ]  # fmt: skip
    # A list of log records (each with its step) stays a history.
    text, _ = _proposed_points(tmp_path, "log.json", '[{"step": 1, "loss": 2}, {"step": 2, "loss": 1}]')
    assert '  records: "$[*]"' in text


def test_a_history_deeper_in_the_document_is_found(tmp_path: Path) -> None:
    # Read as a for_each, its records were one series: the counter's second total a
    # duplicate_series drop, the gauge the last record's value only by luck.
    content = json.dumps({
        "state": {"trainer": {"log_history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]}}
    })  # fmt: skip
    text, rows = _proposed_points(tmp_path, "state.json", content)
    assert '  records: "$.state.trainer.log_history[*]"' in text
    assert sorted((r["name"], r["value"]) for r in rows) == [
        ("ml.training.loss", 1.5), ("ml.training.step", 2)
    ]  # fmt: skip
