"""Hostile inputs: documents and mappings built to break a parser, a loader or the exporter.

Each one must end in a clear error (the message is asserted) or a counted drop, and
nothing else: no exception escaping the reading loop, no export made unsendable, no code
run from a mapping, no file created. In-process, and through the CLI's ``run(argv,
stdout, stderr)``. Time is bounded only in the sense that every call returns.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource

from translator import sources
from translator.cli import run
from translator.engine import DropReason, evaluate
from translator.errors import DocumentInvalid, MappingError, SourceError, SourceUnavailable
from translator.instruments import InstrumentRegistry
from translator.mapping import Plan, compile_mapping
from translator.sources import DocumentSource, JsonlSource, parse_json


def call(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


def plan_for(metrics: str, source: str = "") -> Plan:
    return compile_mapping(f"version: 1\n{source}metrics:\n{metrics}", "m.yaml", environ={})


def document_source(path: Path, source: str = "") -> DocumentSource:
    plan = plan_for(
        "  - {name: v, type: gauge, path: $.v}\n", f"source: {{path: '{path}'{source}}}\n"
    )
    return DocumentSource(str(path), plan.source)


def strict_json(text: str) -> Any:
    """Parse JSON refusing NaN and Infinity, which other JSON tools reject."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {constant} in the output")

    return json.loads(text, parse_constant=refuse)


class _Collection:
    """What an exporter of the bridge gets: an SDK collection completed by the registry."""

    def __init__(self, registry: InstrumentRegistry, reader: InMemoryMetricReader) -> None:
        self._registry, self._reader = registry, reader

    def get_metrics_data(self) -> MetricsData:
        return self._registry.complete(self._reader.get_metrics_data(), Resource.create())


@pytest.fixture
def registry_of() -> Iterator[Any]:
    """InstrumentRegistry on a real MeterProvider; returns (registry, reader)."""
    providers: list[MeterProvider] = []

    def make(plan: Plan) -> tuple[InstrumentRegistry, _Collection]:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        providers.append(provider)
        registry = InstrumentRegistry()
        registry.install([plan])
        return registry, _Collection(registry, reader)

    yield make
    for provider in providers:
        provider.shutdown()


# --- deep nesting ---------------------------------------------------------------------------


def test_a_document_nested_past_1024_levels_is_refused_naming_the_limit(tmp_path: Path) -> None:
    doc = tmp_path / "deep.json"
    doc.write_bytes(b'{"v": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(DocumentInvalid) as caught:
        document_source(doc).poll()
    assert str(caught.value) == (
        f"{doc}: is not valid JSON (nested more than 1024 levels deep); will read it again"
    )
    mapping = tmp_path / "m.yaml"
    mapping.write_text("version: 1\nmetrics:\n  - {name: v, type: gauge, path: $.v}\n")
    status, out, err = call("preview", "--mapping", str(mapping), str(doc))
    assert (status, out) == (1, "")
    assert err == f"ml-metrics-bridge: cannot read {doc}: nested more than 1024 levels deep\n"


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("history", "record_key"),
    [
        # orjson parses it (under 1024 levels) but cannot serialise past 255.
        (
            '{"log_history": [{"step": 1, "loss": 0.5, "trace": '
            + json.dumps(_nested(300))
            + "}]}",
            "",
        ),
        # NaN sends the document to the standard parser, which keeps the huge integer
        # exact; orjson cannot serialise integers beyond 64 bits.
        (f'{{"log_history": [{{"step": 1, "loss": 0.5, "seen": {10**30}}}], "grad": NaN}}', ""),
        (
            f'{{"log_history": [{{"step": {{"id": {10**30}}}, "loss": 0.5}}], "grad": NaN}}',
            ", record_key: ['$.step']",
        ),
    ],
    ids=["record-nested-300-levels", "huge-int-in-record", "huge-int-in-record-key"],
)
def test_history_records_orjson_cannot_serialise_are_applied_once_not_a_crash(
    tmp_path: Path, history: str, record_key: str
) -> None:
    doc = tmp_path / "trainer_state.json"
    doc.write_text(history)
    source = document_source(doc, f", records: '$.log_history[*]'{record_key}")
    try:
        snapshot = source.poll()
    except SourceError:
        return  # a clear, retryable error is acceptable; any other exception is not
    assert snapshot is not None
    assert [record["loss"] for record in snapshot.records] == [0.5]
    assert source.poll() is None, "a record is applied once"


def test_run_once_reports_a_record_orjson_cannot_serialise_and_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same record through the whole program: an exception would end the sidecar."""
    doc = tmp_path / "trainer_state.json"
    doc.write_text(f'{{"log_history": [{{"step": 1, "loss": 0.5, "seen": {10**30}}}], "g": NaN}}')
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        f"version: 1\nsource: {{path: '{doc}', records: '$.log_history[*]'}}\n"
        "metrics:\n  - {name: loss, type: gauge, path: $.loss}\n"
    )
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "console")
    try:
        status, out, _ = call("run", "--once", "--mapping", str(mapping))
    finally:
        logging.getLogger().handlers.clear()  # `run` configured logging to a closed buffer
    assert status in (0, 1)
    if status == 0:
        assert "loss 0.5" in out


# --- huge numbers ---------------------------------------------------------------------------


def test_1e400_is_a_counted_non_finite_drop_and_preview_stays_strict_json(tmp_path: Path) -> None:
    document = parse_json(b'{"v": 1e400, "w": -1e400}')
    assert document == {"v": math.inf, "w": -math.inf}
    result = evaluate(plan_for("  - {name: v, type: gauge, path: $.v}\n"), document)
    assert result.points == []
    [drop] = result.drops
    assert (drop.reason, drop.detail) == (DropReason.NON_FINITE, "$.v = Infinity")

    doc = tmp_path / "in.json"
    doc.write_bytes(b'{"v": 1e400, "w": -1e400}')
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        "version: 1\nmetrics:\n  - {name: v, type: gauge, path: $.v}\n"
        "  - {name: w, type: gauge, path: $.w, non_finite: keep}\n"
    )
    status, out, _ = call("preview", "--mapping", str(mapping), str(doc), "--format", "json")
    assert status == 0
    rows = strict_json(out)
    assert [(r["name"], r["value"], r.get("dropped", {}).get("reason")) for r in rows] == [
        ("w", "-Infinity", None),
        ("v", None, "non_finite"),
    ]


def test_an_integer_of_5000_digits_makes_the_document_invalid_with_a_clear_message(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "big.json"
    doc.write_text('{"v": 1, "w": ' + "9" * 5000 + "}")
    with pytest.raises(DocumentInvalid) as caught:
        document_source(doc).poll()
    message = str(caught.value)
    assert message.startswith(f"{doc}: is not valid JSON (")
    assert "value has 5000 digits" in message and message.endswith("; will read it again")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(2**63, float(2**63)), (-(2**70), -float(2**70)), (10**30, 1e30)],
)
def test_integers_beyond_64_bits_are_exported_as_doubles(raw: int, expected: float) -> None:
    result = evaluate(plan_for("  - {name: v, type: gauge, path: $.v}\n"), {"v": raw})
    [(_, _, value)] = result.points
    assert type(value) is float and value == expected


def test_an_integer_too_big_for_a_double_is_a_counted_out_of_range_drop() -> None:
    result = evaluate(plan_for("  - {name: v, type: gauge, path: $.v}\n"), {"v": 10**400})
    assert result.points == []
    assert [d.reason for d in result.drops] == [DropReason.OUT_OF_RANGE]


@pytest.mark.parametrize(
    ("rule", "value"),
    [("scale: 4", 2**62), ("offset: 1", 2**63 - 1), ("scale: -3", -(2**62))],
    ids=["scale", "offset", "negative-scale"],
)
def test_scale_and_offset_never_make_an_integer_otlp_cannot_carry(
    registry_of: Any, rule: str, value: int
) -> None:
    """OTLP integers are sfixed64: one bigger point would make every export fail."""
    plan = plan_for(
        f"  - {{name: v, type: gauge, path: $.v, {rule}}}\n"
        "  - {name: other, type: gauge, path: $.other}\n"
    )
    registry, reader = registry_of(plan)
    registry.apply("f.json", evaluate(plan, {"v": value, "other": 1}).points, replaces=True)
    data = reader.get_metrics_data()
    assert data is not None
    encode_metrics(data).SerializeToString()  # raises EncodingException on an int64 overflow


def test_a_json_line_with_an_integer_beyond_64_bits_keeps_it_exact_among_long_floats(
    tmp_path: Path,
) -> None:
    """A JSON Lines read is looked at for such integers in pieces, then only the lines
    that hold one go to the standard parser; fractions of 19 digits (Python's repr writes
    them) and exponents are not such integers. The integer is past the first piece."""
    log = tmp_path / "m.jsonl"
    fraction = b'{"lr": 0.0009000000000000001, "e": 1234567890123456789012e-3}\n'
    before = 2 * sources._LOOK_PIECE_BYTES // len(fraction)
    log.write_bytes(
        fraction * before + b'{"id": %d, "lr": 0.0009000000000000001}\n' % 10**30 + fraction
    )
    plan = plan_for(
        "  - {name: v, type: gauge, path: $.lr}\n", f"source: {{path: '{log}', format: jsonl}}\n"
    )
    source = JsonlSource(str(log), plan.source)
    try:
        snapshot = source.poll()
    finally:
        source.close()
    assert snapshot is not None and not snapshot.errors and not snapshot.more
    ids = [type(r.get("id")) for r in snapshot.records]
    assert ids == [type(None)] * before + [int, type(None)]
    assert snapshot.records[before]["id"] == 10**30  # exact: orjson would make it a float
    assert snapshot.records[0] == {"lr": 0.0009000000000000001, "e": 1234567890123456789.012}


@settings(deadline=None, database=None)  # a busy machine: no time limit per example
@given(st.binary(max_size=80) | st.text('0123456789.eE-+ ,:"[]{}', max_size=80).map(str.encode))
def test_the_long_integer_scan_finds_what_the_regex_of_its_definition_finds(data: bytes) -> None:
    definition = re.compile(rb"(?<![0-9.])[0-9]{19,}(?![0-9.eE])")
    assert sources._has_long_integer(data) == (definition.search(data) is not None)


# --- huge strings ---------------------------------------------------------------------------


def test_a_huge_string_attribute_is_a_counted_drop_naming_its_length() -> None:
    plan = plan_for("  - {name: v, type: gauge, path: $.v, attributes: {run: {path: $.run}}}\n")
    result = evaluate(plan, {"v": 1, "run": "r" * 5_000_000})
    assert result.points == []
    [drop] = result.drops
    assert drop.reason is DropReason.BAD_ATTRIBUTE
    assert drop.detail == "attribute 'run': $.run is 5000000 characters long (limit 1024)"


@pytest.mark.parametrize("parse_strings", [False, True])
def test_a_huge_string_value_is_not_a_number_and_its_logged_detail_stays_short(
    parse_strings: bool,
) -> None:
    plan = plan_for(
        f"  - {{name: v, type: gauge, path: $.v, parse_strings: {str(parse_strings).lower()}}}\n"
    )
    result = evaluate(plan, {"v": "1" * 5_000_000})
    assert result.points == []
    [drop] = result.drops
    assert drop.reason is DropReason.NOT_A_NUMBER
    assert drop.detail.startswith('$.v = "111') and len(drop.detail) < 100


def test_a_document_over_the_default_1_mib_cap_is_refused_unparsed(tmp_path: Path) -> None:
    doc = tmp_path / "huge.json"
    with open(doc, "w") as fh:
        fh.write('{"v": 1, "blob": "')
        fh.write("x" * (1024 * 1024))
        fh.write('"}')
    with pytest.raises(SourceUnavailable) as caught:
        document_source(doc).poll()
    size = doc.stat().st_size
    assert str(caught.value) == (
        f"{doc}: is {size} bytes, over the 1048576-byte cap (source.max_bytes)"
    )


# --- invalid UTF-8 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "offset"),
    [
        (b"\xff", 15),
        (b"\xc3\x28", 15),
        (b"\xc0\xaf", 15),
        (b"\xf4\x90\x80\x80", 15),
        (b"\xed\xa0\x80", 15),
    ],
    ids=["ff", "truncated-sequence", "overlong", "beyond-U+10FFFF", "encoded-surrogate"],
)
def test_invalid_utf8_in_a_document_is_refused_naming_the_byte(
    tmp_path: Path, raw: bytes, offset: int
) -> None:
    doc = tmp_path / "bad.json"
    doc.write_bytes(b'{"v": 1, "t": "' + raw + b'"}')
    with pytest.raises(DocumentInvalid) as caught:
        document_source(doc).poll()
    assert str(caught.value) == (
        f"{doc}: is not valid JSON (not UTF-8 (byte {offset})); will read it again"
    )


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_lone_surrogate_escape_is_a_counted_bad_attribute_not_a_broken_export(
    registry_of: Any,
) -> None:
    """`"\\ud800"` is JSON syntax for a code point UTF-8 cannot encode: OTLP cannot carry it."""
    plan = plan_for("  - {name: v, type: gauge, path: $.v, attributes: {tag: {path: $.t}}}\n")
    document = parse_json(b'{"v": 1, "t": "\\ud800"}')
    result = evaluate(plan, document)
    registry, reader = registry_of(plan)
    registry.apply("f.json", result.points, replaces=True)
    data = reader.get_metrics_data()
    # On the encoder's own logger: the bridge stops these records from propagating.
    complaints = _Records()
    encoder_log = logging.getLogger("opentelemetry.exporter.otlp.proto.common")
    encoder_log.addHandler(complaints)
    try:
        if data is not None:
            encode_metrics(data).SerializeToString()
    finally:
        encoder_log.removeHandler(complaints)
    # The encoder drops such an attribute and logs it where nobody sees it: the point would
    # be exported under another series, and nobody would know why.
    assert complaints.messages == []
    assert [d.reason for d in result.drops] == [DropReason.BAD_ATTRIBUTE]


def test_invalid_utf8_in_a_mapping_is_reported_with_its_byte_offset(tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_bytes(b"version: 1\nmetrics:\n  - {name: v, type: gauge, path: $.\xff}\n")
    status, out, err = call("validate", str(mapping))
    assert status == 2
    assert out == f"{mapping}: (document): not UTF-8 (byte 55); save the file as UTF-8\n"
    assert err == "0 of 1 mapping file(s) valid\n"


def test_an_invalid_utf8_json_line_is_skipped_and_reported_the_others_are_read(
    tmp_path: Path,
) -> None:
    log = tmp_path / "m.jsonl"
    log.write_bytes(b'{"v": 1}\n{"v": "\xff"}\n{"v": 3}\n')
    plan = plan_for(
        "  - {name: v, type: gauge, path: $.v}\n", f"source: {{path: '{log}', format: jsonl}}\n"
    )
    source = JsonlSource(str(log), plan.source)
    try:
        snapshot = source.poll()
    finally:
        source.close()
    assert snapshot is not None
    assert snapshot.records == [{"v": 1}, {"v": 3}]
    [error] = snapshot.errors
    assert re.search(
        r"^the line at byte 9 is not JSON \(not UTF-8 \(byte 7\)\); skipped$", error
    ), error


# --- a JSON "bomb" --------------------------------------------------------------------------


def test_a_multi_megabyte_object_repeating_one_key_parses_to_its_last_value(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "bomb.json"
    doc.write_bytes(b'{"v": 0' + b', "k": [1, 2]' * 500_000 + b', "v": 7}')
    assert doc.stat().st_size > 6_000_000
    snapshot = document_source(doc, ", max_bytes: 8000000").poll()  # over the 1 MiB default
    assert snapshot is not None and snapshot.root == {"v": 7, "k": [1, 2]}
    [(_, _, value)] = evaluate(
        plan_for("  - {name: v, type: gauge, path: $.v}\n"), snapshot.root
    ).points
    assert value == 7


# --- hostile mappings -----------------------------------------------------------------------


def _billion_laughs() -> str:
    lines = ['a0: &a0 "lol"']
    for level in range(1, 10):
        refs = ", ".join(f"*a{level - 1}" for _ in range(10))
        lines.append(f"a{level}: &a{level} [{refs}]")
    return (
        "version: 1\n"
        + "\n".join(lines)
        + ("\nmetrics:\n  - name: v\n    type: gauge\n    path: $.v\n    description: *a9\n")
    )


def test_yaml_aliases_expanding_to_a_billion_nodes_are_refused(tmp_path: Path) -> None:
    text = _billion_laughs()
    assert len(text) < 1000  # ten levels of ten aliases: 10**9 nodes once expanded
    with pytest.raises(MappingError) as caught:
        compile_mapping(text, "m.yaml", environ={})
    [problem] = caught.value.problems
    assert (problem.file, problem.yaml_path, problem.message) == (
        "m.yaml",
        "",
        "the mapping expands to more than 100000 nodes "
        "(YAML anchors and aliases?); refusing to load it",
    )
    mapping = tmp_path / "laughs.yaml"
    mapping.write_text(text)
    status, out, _ = call("validate", str(mapping))
    assert status == 2 and "expands to more than 100000 nodes" in out


@pytest.mark.parametrize(
    ("snippet", "tag", "kind"),
    [
        (
            'description: !!python/object/apply:os.system ["touch {marker}"]',
            "python/object/apply:os.system",
            "a plain list",
        ),
        (
            "description: !!python/object/apply:os.system {{args: ['touch {marker}']}}",
            "python/object/apply:os.system",
            "a plain mapping",
        ),
        (
            'description: !!python/object/new:subprocess.Popen [["touch", "{marker}"]]',
            "python/object/new:subprocess.Popen",
            "a plain list",
        ),
        ("description: !!python/name:os.system ''", "python/name:os.system", "a plain value"),
        ("description: !!python/module:os ''", "python/module:os", "a plain value"),
        ("description: !!binary aGVsbG8=", "binary", "a plain value"),
    ],
    ids=["apply-list", "apply-mapping", "new-popen", "name", "module", "binary"],
)
def test_yaml_tags_that_construct_objects_are_refused_and_run_nothing(
    tmp_path: Path, snippet: str, tag: str, kind: str
) -> None:
    marker = tmp_path / "pwned"
    text = (
        "version: 1\nmetrics:\n  - name: v\n    type: gauge\n    path: $.v\n    "
        + snippet.format(marker=marker)
        + "\n"
    )
    with pytest.raises(MappingError) as caught:
        compile_mapping(text, "m.yaml", environ={})
    assert str(caught.value) == (
        f"m.yaml:6: metrics[0].description: YAML tag 'tag:yaml.org,2002:{tag}' is not allowed; "
        f"use {kind}"
    )
    mapping = tmp_path / "m.yaml"
    mapping.write_text(text)
    status, _, err = call("run", "--once", "--mapping", str(mapping))
    assert status == 2 and "is not allowed" in err
    assert not marker.exists()


def test_a_local_tag_and_a_merge_key_are_refused() -> None:
    text = (
        "version: 1\nbase: &base {type: gauge}\nmetrics:\n"
        "  - <<: *base\n    name: v\n    path: $.v\n"
        "  - !custom {name: w, type: gauge, path: $.w}\n"
    )
    with pytest.raises(MappingError) as caught:
        compile_mapping(text, "m.yaml", environ={})
    assert str(caught.value).splitlines() == [
        "m.yaml:4: metrics[0]: keys must be plain strings (no '<<' merge keys)",
        "m.yaml:7: metrics[1]: YAML tag '!custom' is not allowed; use a plain mapping",
    ]


def test_a_mapping_file_over_4_mib_is_refused_unread(tmp_path: Path) -> None:
    mapping = tmp_path / "big.yaml"
    mapping.write_text("version: 1\n# " + "x" * (4 * 1024 * 1024) + "\nmetrics: []\n")
    status, out, _ = call("validate", str(mapping))
    assert status == 2
    assert out == f"{mapping}: (document): the mapping is larger than 4194304 bytes\n"


@pytest.mark.parametrize(
    ("expression", "node"),
    [
        ("$.a + $.b", "Operation"),
        ("$.a * 2", "Operation"),
        ("$.`len`", "Len"),
        ("$.a.`len`", "Len"),
        ("$.a.`sub(/x/, y)`", "Sub"),
        ('$.a.`split(",", 0, -1)`', "Split"),
        ("$.a.`str()`", "Str"),
        ("$.a[\\x]", "SortedThis"),
        ("$.a[/x]", "SortedThis"),
        ("$.a.`parent`", "Parent"),
        ("$.a & $.b", "_Intersect"),  # deprecated in jsonpath-ng, private class name
        ("$.gpus[?(@.util * 100 > 50)]", "Operation"),
    ],
)
@pytest.mark.parametrize("key", ["path", "for_each"])
def test_jsonpath_that_computes_rather_than_selects_is_refused(
    key: str, expression: str, node: str
) -> None:
    rule = f"name: v\n    type: gauge\n    path: $.v\n    {key}: '{expression}'\n"
    if key == "path":
        rule = f"name: v\n    type: gauge\n    path: '{expression}'\n"
    # Warnings as in production: jsonpath-ng's DeprecationWarning for `&` is not shown there,
    # while this suite turns every warning into an error with another message.
    with warnings.catch_warnings(), pytest.raises(MappingError) as caught:
        warnings.simplefilter("ignore", DeprecationWarning)
        compile_mapping(f"version: 1\nmetrics:\n  - {rule}", "m.yaml", environ={})
    line = 6 if key == "for_each" else 5
    assert str(caught.value) == (
        f"m.yaml:{line}: metrics[0].{key}: {expression!r} uses {node}, which computes rather "
        "than selects; only selection (fields, indexes, slices, wildcards, filters) is allowed"
    )


@pytest.mark.parametrize(
    "expression",
    ["$..loss", "$..*", "$.metrics..*", "$.gpus[?(@.util > 0.5)]", "$.gpus[0:2]", "$['a','b']"],
)
def test_jsonpath_that_only_selects_is_accepted_for_for_each(expression: str) -> None:
    """The counterpart of the refusals above: a wildcard is selection, not computation."""
    plan = plan_for(f'  - {{name: v, type: gauge, path: $.v, for_each: "{expression}"}}\n')
    assert plan.rules[0].for_each is not None


def test_jsonpath_regex_filters_are_refused_since_a_pattern_can_backtrack_for_ever() -> None:
    """`=~` runs a regular expression from the mapping on strings from the training job;
    `(a+)+$` takes about a second on 24 characters and doubles with each one more."""
    text = (
        "version: 1\nmetrics:\n  - name: v\n    type: gauge\n    path: $.v\n"
        "    for_each: '$.gpus[?(@.name =~ \"(a+)+$\")]'\n"
    )
    with pytest.raises(MappingError) as caught:
        compile_mapping(text, "m.yaml", environ={})
    assert "m.yaml:6: metrics[0].for_each:" in str(caught.value)


# --- OTLP headers: checked at start, never echoed ---------------------------------------------


@pytest.mark.parametrize(
    ("variable", "protocol", "raw", "problem"),
    [
        ("OTEL_EXPORTER_OTLP_HEADERS", "grpc", "x-api-key=SECRET%0A1234", "a newline, NUL"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "http/protobuf", "x-api-key=SECRET%001234", "a newline"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "grpc", "x-api-key=SECRET\u00e91234", "ASCII"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "grpc", "x-api-key=SECRET%C3%A91234", "ASCII"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "http/protobuf", "x-api-key=SECRET\u20ac1234", "latin-1"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "grpc", "X Api Key=SECRET1234", "not a header name"),
        # requests refuses a value starting with a space at every export (and said so
        # only in a failed export, the value scrubbed): it was accepted at start.
        (
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "http/protobuf",
            "x-api-key=%20SECRET1234",
            "starts with a space (encoded as %20), which HTTP does not send",
        ),
    ],
    ids=[
        *("newline", "nul", "non-ascii-grpc", "encoded-non-ascii-grpc", "euro-http"),
        *("bad-name", "encoded-leading-space-http"),
    ],
)
def test_a_header_no_request_can_carry_is_refused_at_start_naming_the_variable_not_the_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, protocol: str, raw: str,
    problem: str,
) -> None:  # fmt: skip
    monkeypatch.setenv(variable, raw)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("METRICS_FILE_PATH", str(tmp_path / "current.json"))
    status, out, err = call("run", "--once")
    assert status == 2, err
    assert err.startswith(f"ml-metrics-bridge: configuration error:\n{variable}: entry 1"), err
    assert problem in err and "values are not shown" in err
    assert "SECRET" not in err + out


def test_a_header_value_latin1_can_carry_is_accepted_over_http() -> None:
    from translator.settings import load_settings

    settings = load_settings(
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-team=caf%C3%A9,authorization=Bearer a;b=c",
        }
    )
    assert settings.export.headers == {"x-team": "caf\u00e9", "authorization": "Bearer a;b=c"}


@pytest.mark.parametrize(
    "rest", ['"w": 1', '"w": NaN', '"w": 1e400', '"w": "12345678901234567890"'],
    ids=["plain", "nan-elsewhere", "huge-float-elsewhere", "long-digits-in-a-string"],
)
def test_an_integer_attribute_past_int64_follows_one_rule_whatever_else_the_document_holds(
    tmp_path: Path, rest: str
) -> None:
    """orjson reads 2**70+1 as a float, the standard parser (called in by a NaN) as an
    int: the attribute was a double or a string depending on the rest of the document."""
    doc = tmp_path / "current.json"
    doc.write_text(f'{{"v": 1, "run": {2**70 + 1}, {rest}}}')
    plan = plan_for(
        "  - {name: v, type: gauge, path: $.v, attributes: {run: {path: $.run}}}\n",
        f"source: {{path: '{doc}'}}\n",
    )
    snapshot = DocumentSource(str(doc), plan.source).poll()
    assert snapshot is not None
    [(_, attributes, _)] = evaluate(plan, snapshot.root).points
    assert dict(attributes)["run"] == "1180591620717411303425"


@pytest.mark.parametrize(
    "rule",
    [
        "{name: v, type: gauge, path: $.v, for_each: '$.items[?(@.v > 3)]'}",
        "{name: v, type: gauge, path: $.loss, for_each: '$..items[*]'}",
        "{name: v, type: counter, mode: total, count: '$.items[?(@.v > 3)]'}",
    ],
    ids=["filter", "descendants", "count"],
)
def test_a_jsonpath_with_filters_or_descendants_over_a_huge_document_is_a_counted_drop(
    rule: str,
) -> None:
    """jsonpath-ng visits every element (33 s for a million): the work is bounded."""
    from translator.mapping.paths import MAX_JSONPATH_ELEMENTS

    plan = plan_for(f"  - {rule}\n  - {{name: w, type: gauge, path: $.w}}\n")
    document = {"w": 1, "items": [{"v": i % 7, "loss": 0.5} for i in range(MAX_JSONPATH_ELEMENTS)]}
    result = evaluate(plan, document)
    assert [(rule.name, value) for rule, _, value in result.points] == [("w", 1)]
    [drop] = result.drops
    assert drop.reason is DropReason.TOO_LARGE
    assert drop.detail.startswith(f"the data it is evaluated on holds over {MAX_JSONPATH_ELEMENTS}")
    small = {"w": 1, "items": [{"v": 5, "loss": 0.5}]}
    assert not evaluate(plan, small).drops, "a document under the bound is evaluated"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_logged_exception_quoting_foreign_text_stays_one_record_of_our_own_lines(
    fmt: str,
) -> None:
    """An internal error is logged with its traceback; the exception's message may hold a
    file's content or a path, whose newline would start a forged line."""
    from translator.logs import configure

    out = io.StringIO()
    configure("INFO", fmt, out)
    try:
        try:
            raise ValueError("x\nFORGED ERROR from the message\x1b[2J")
        except ValueError:
            logging.getLogger("translator").error("f\nFORGED ERROR from an arg", exc_info=True)
    finally:
        logging.getLogger().handlers.clear()
    text = out.getvalue()
    assert not [line for line in text.splitlines() if line.startswith("FORGED")], text
    assert "\x1b" not in text
    if fmt == "json":
        [entry] = [json.loads(line) for line in text.splitlines()]
        assert entry["exception"].endswith("ValueError: x\\nFORGED ERROR from the message\\x1b[2J")


# --- JSON lines longer than source.max_bytes ------------------------------------------------


def _poll_jsonl(log: Path, source_options: str, polls: int) -> list[Any]:
    """Every poll's (values, errors, notices) of a JSON Lines source over ``log``."""
    plan = plan_for(
        "  - {name: v, type: gauge, path: $.v}\n",
        f"source: {{path: '{log}', format: jsonl{source_options}}}\n",
    )
    source = JsonlSource(str(log), plan.source)
    seen = []
    try:
        for _ in range(polls):
            snapshot = source.poll()
            if snapshot is not None:
                seen.append(([r["v"] for r in snapshot.records], snapshot.errors, snapshot.notices))
    finally:
        source.close()
    return seen


def test_a_json_line_one_byte_over_the_default_1_mib_cap_is_skipped_and_the_next_is_read(
    tmp_path: Path,
) -> None:
    # The default cap equals the chunk one poll reads: a line one byte longer has no newline
    # in that chunk, and was taken for a half-written last line, waited on for ever.
    log = tmp_path / "m.jsonl"
    long_line = b'{"v": 2, "pad": "' + b"x" * (1024 * 1024 - 18) + b'"}\n'
    assert len(long_line) == 1024 * 1024 + 2
    log.write_bytes(b'{"v": 1}\n' + long_line + b'{"v": 3}\n')
    seen = _poll_jsonl(log, "", polls=6)
    assert [values for values, _, _ in seen if values] == [[1], [3]]
    errors = [e for _, errs, _ in seen for e in errs]
    assert errors == ["the line at byte 9 is over the 1048576-byte cap (source.max_bytes); skipped"]


def test_a_json_line_longer_than_one_read_is_skipped_once_not_taken_for_a_truncation(
    tmp_path: Path,
) -> None:
    # Skipping a line over several reads moved the read position inside that line, where
    # the last line before it no longer matched: "truncated", read again from the start,
    # the lines before it applied again and again, with no pause between the polls.
    log = tmp_path / "m.jsonl"
    log.write_bytes(b'{"v": 1}\n{"v": 2, "pad": "' + b"x" * (3 * 1024 * 1024) + b'"}\n{"v": 3}\n')
    seen = _poll_jsonl(log, ", max_bytes: 2000000", polls=8)
    assert [values for values, _, _ in seen if values] == [[1], [3]]
    assert [n for _, _, notices in seen for n in notices] == []
    errors = [e for _, errs, _ in seen for e in errs]
    assert errors == ["the line at byte 9 is over the 2000000-byte cap (source.max_bytes); skipped"]


@pytest.mark.parametrize(
    "saved",
    [{"offset": -5}, {"offset": 9, "line_start": 12, "line_digest": "00"}, {"offset": "9x"}],
    ids=["negative-offset", "line-after-offset", "not-a-number"],
)
def test_a_damaged_json_lines_checkpoint_is_ignored_not_an_internal_error(
    tmp_path: Path, saved: dict[str, Any]
) -> None:
    # A checkpoint in the older single-JSON form has no checksum: a damaged or hand-edited
    # one reached os.pread with a negative offset or length (OSError, ValueError), an
    # "unexpected error (a bug)" traceback from the reading loop.
    from translator.sources import _checkpoint_file

    log = tmp_path / "m.jsonl"
    log.write_bytes(b'{"v": 1}\n{"v": 2}\n')
    checkpoint = Path(_checkpoint_file(str(tmp_path), str(log)))
    checkpoint.write_text(json.dumps({"inode": log.stat().st_ino, **saved}))
    plan = plan_for(
        "  - {name: v, type: gauge, path: $.v}\n", f"source: {{path: '{log}', format: jsonl}}\n"
    )
    source = JsonlSource(str(log), plan.source, str(tmp_path))
    try:
        snapshot = source.poll()
    finally:
        source.close()
    assert snapshot is not None and [r["v"] for r in snapshot.records] == [1, 2]


# --- documents that never hold still ----------------------------------------------------------

_FAST_WRITER = """
import os, sys, time
path, how = sys.argv[1], sys.argv[2]
version = 0
while True:  # until killed
    version += 1
    data = b'{"v": 1%07d}\\n' % version
    if how == "rename":
        with open(path + ".tmp", "wb") as fh:
            fh.write(data)
        os.replace(path + ".tmp", path)
    else:
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, data, 0)
        os.close(fd)
    time.sleep(0.001)
"""


@contextlib.contextmanager
def _fast_writer(path: Path, how: str) -> Iterator[None]:
    """A real process writing a new version of ``path`` every millisecond or so."""
    path.write_bytes(b'{"v": 10000000}\n')
    writer = subprocess.Popen([sys.executable, "-c", _FAST_WRITER, str(path), how])
    try:
        yield
    finally:
        writer.kill()
        writer.wait(timeout=10)


def _poll_until(source: DocumentSource, want: Callable[[Any], bool], seconds: float) -> Any:
    """Poll ``source`` as the runtime does while it settles (every 0.1 s) until ``want``
    holds for a poll's outcome (a Snapshot, None, or the SourceError raised)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            outcome: Any = source.poll()
        except SourceError as exc:
            outcome = exc
        if want(outcome):
            return outcome
        time.sleep(0.1)
    raise AssertionError(f"nothing wanted from {source.path} in {seconds} s")


def test_a_document_replaced_by_rename_every_millisecond_is_applied(tmp_path: Path) -> None:
    # Every version renamed into place is whole; the second read looked at the path again,
    # found the next version there each time, and nothing was ever applied.
    # Now each poll reads the version it opened (unless the writer stalled a whole 0.1 s
    # on a busy machine); before, about one poll in five got one through, by luck.
    doc = tmp_path / "state.json"
    source = document_source(doc)
    applied = []
    with _fast_writer(doc, "rename"):
        for _ in range(20):
            snapshot = _poll_until(source, lambda o: not isinstance(o, SourceError), 10)
            if snapshot is not None:
                applied.append(snapshot.root["v"])
            time.sleep(0.1)
    assert len(applied) >= 12, applied
    assert applied == sorted(set(applied))


def test_a_document_rewritten_in_place_faster_than_it_can_settle_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Never applied (no read can tell a torn state from a whole one), and it was silent:
    # the person saw no metric and no line saying why.
    monkeypatch.setattr(sources, "_UNSETTLED_WARN_S", 1.0)  # 5 s in the product
    doc = tmp_path / "state.json"
    with _fast_writer(doc, "in-place"):
        problem = _poll_until(
            document_source(doc), lambda o: isinstance(o, DocumentInvalid), 20
        )
    assert problem.retry_soon
    assert str(problem) == (
        f"{doc}: has changed within every 5 ms for 1 s (rewritten in place that often?); "
        "not applied until it holds still for 5 ms: have the writer write another file "
        "and rename it over this one"
    )


def test_jsonl_copytruncate_under_a_writer_without_o_append_loses_no_line_to_the_hole(
    tmp_path: Path,
) -> None:
    # copytruncate truncates the file, and a writer that did not open it with O_APPEND goes
    # on writing at its own offset: the file starts with a hole of NUL bytes. The first
    # line after the hole was taken as one line with the NULs: "not JSON", lost.
    log = tmp_path / "m.jsonl"
    plan = plan_for(
        "  - {name: v, type: gauge, path: $.v}\n", f"source: {{path: '{log}', format: jsonl}}\n"
    )
    writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # its own offset
    source = JsonlSource(str(log), plan.source)
    try:
        os.write(writer, b'{"v": 1}\n{"v": 2}\n')
        first = source.poll()
        os.truncate(log, 0)
        os.write(writer, b'{"v": 3}\n{"v": 4}\n')
        after = source.poll()
    finally:
        source.close()
        os.close(writer)
    assert first is not None and [r["v"] for r in first.records] == [1, 2]
    assert after is not None and [r["v"] for r in after.records] == [3, 4]
    assert after.errors == ()
    assert after.notices == ("was truncated or rewritten in place; reading it from the start",)


def test_an_attribute_that_is_an_object_or_array_is_a_drop_saying_so_in_english() -> None:
    plan = plan_for("  - {name: v, type: gauge, path: $.v, attributes: {a: {path: $.a}}}\n")
    details = [evaluate(plan, {"v": 1, "a": a}).drops[0].detail for a in ({"x": 1}, [1])]
    assert details == [
        "attribute 'a': $.a is an object, not a scalar",
        "attribute 'a': $.a is an array, not a scalar",
    ]
