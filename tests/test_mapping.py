"""The mapping language: what compiles, and the exact message for what does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from translator.errors import MappingError
from translator.mapping import compile_mapping, load_plan, schema
from translator.mapping.plan import CounterMode, InstrumentKind, Scope

ROOT = Path(__file__).resolve().parent.parent
H = "version: 1\nmetrics:\n"

# (name, mapping text, every expected message) -- statsd_exporter's configBad, for YAML.
BAD_MAPPINGS = [
    (
        "unknown top-level key, with a suggestion",
        H + "  - {name: a, type: gauge, path: $.a}\nmetircs: []\n",
        ["m.yaml:4: metircs: unknown key 'metircs'; did you mean 'metrics'?"],
    ),
    (
        "typo in a metric key points at the key's line",
        H + "  - name: a\n    type: gauge\n    path: $.a\n    unti: ms\n",
        ["m.yaml:6: metrics[0].unti: unknown key 'unti'; did you mean 'unit'?"],
    ),
    (
        "unknown instrument type",
        H + "  - {name: a, type: gage, path: $.a}\n",
        [
            "m.yaml:3: metrics[0].type: 'gage' is not one of: gauge, counter, updowncounter, "
            "histogram (did you mean 'gauge'?)"
        ],
    ),
    (
        "misspelled counter type is reported once, without a knock-on about mode",
        H + "  - {name: a, type: countr, mode: total, path: $.a}\n",
        [
            "m.yaml:3: metrics[0].type: 'countr' is not one of: gauge, counter, updowncounter, "
            "histogram (did you mean 'counter'?)"
        ],
    ),
    (
        "counter without mode",
        H + "  - {name: a, type: counter, path: $.a}\n",
        [
            "m.yaml:3: metrics[0]: missing required key 'mode'; counters say mode: total (the "
            "file holds a running total) or mode: increment (each record holds an amount to add)"
        ],
    ),
    (
        "gauge with mode",
        H + "  - {name: a, type: gauge, mode: total, path: $.a}\n",
        [
            "m.yaml:3: metrics[0].mode: 'mode' applies only to counter and updowncounter, not to gauge"
        ],
    ),
    (
        "histogram without buckets",
        H + "  - {name: a, type: histogram, path: $.a}\n",
        [
            "m.yaml:3: metrics[0]: missing required key 'buckets'; histograms need explicit "
            "bucket boundaries, e.g. [10, 50, 100]"
        ],
    ),
    (
        "buckets not increasing",
        H + "  - {name: a, type: histogram, path: $.a, buckets: [10, 5]}\n",
        ["m.yaml:3: metrics[0].buckets: bucket boundaries must be finite and strictly increasing"],
    ),
    (
        "instrument name against OpenTelemetry's rules",
        H + "  - {name: 1abc, type: gauge, path: $.a}\n",
        [
            "m.yaml:3: metrics[0].name: '1abc' is not a valid OpenTelemetry instrument name: "
            "start with a letter, then letters, digits, '_', '.', '-' or '/', at most 255 "
            "characters"
        ],
    ),
    (
        "unit too long",
        H + "  - {name: a, type: gauge, path: $.a, unit: '" + "x" * 64 + "'}\n",
        [
            f"m.yaml:3: metrics[0].unit: '{'x' * 64}' is not a valid unit: printable ASCII, "
            "at most 63 characters"
        ],
    ),
    (
        "path without $",
        H + "  - {name: a, type: gauge, path: training.loss}\n",
        [
            "m.yaml:3: metrics[0].path: 'training.loss' is not a JSONPath; it must start with '$' (e.g. $.loss)"
        ],
    ),
    (
        "JSONPath that computes instead of selecting",
        H + "  - {name: a, type: gauge, path: '$.a.`len`'}\n",
        [
            "m.yaml:3: metrics[0].path: '$.a.`len`' uses Len, which computes rather than "
            "selects; only selection (fields, indexes, slices, wildcards, filters) is allowed"
        ],
    ),
    (
        "JSONPath string operator",
        H + "  - {name: a, type: gauge, path: '$.a.`sub(/x/, y)`'}\n",
        [
            "m.yaml:3: metrics[0].path: '$.a.`sub(/x/, y)`' uses Sub, which computes rather than "
            "selects; only selection (fields, indexes, slices, wildcards, filters) is allowed"
        ],
    ),
    (
        "unsupported version",
        "version: 2\nmetrics:\n  - {name: a, type: gauge, path: $.a}\n",
        ["m.yaml:1: version: version 2 is not supported; this bridge reads version 1"],
    ),
    (
        "missing version",
        "metrics:\n  - {name: a, type: gauge, path: $.a}\n",
        ["m.yaml:1: (document): missing required key 'version'; start the file with 'version: 1'"],
    ),
    (
        "environment variable not set",
        "version: 1\nattributes:\n  pod: {env: NOPE_NOT_SET}\nmetrics:\n"
        "  - {name: a, type: gauge, path: $.a}\n",
        [
            "m.yaml:3: attributes.pod: environment variable NOPE_NOT_SET is not set and no 'default' is given"
        ],
    ),
    (
        "attribute of unknown form",
        "version: 1\nattributes:\n  pod: {envv: X}\nmetrics:\n  - {name: a, type: gauge, path: $.a}\n",
        [
            "m.yaml:3: attributes.pod: an attribute is a string, number or boolean, or a mapping "
            "with exactly one of 'value', 'env', 'path', 'root_path' (and optionally 'default')"
        ],
    ),
    (
        "histogram keeping NaN",
        H + "  - {name: a, type: histogram, path: $.a, buckets: [1], non_finite: keep}\n",
        [
            "m.yaml:3: metrics[0].non_finite: a histogram cannot keep NaN or Infinity (a sum or "
            "a bucket count would be lost for good); use non_finite: drop"
        ],
    ),
    (
        "one name declared with two types",
        H
        + "  - {name: a, type: gauge, path: $.a}\n  - {name: a, type: counter, mode: total, path: $.b}\n",
        [
            "m.yaml:4: metrics[1].name: 'a' is also declared at metrics[0] with a different type, "
            "unit, mode or buckets; rules of one name feed one instrument and must agree"
        ],
    ),
    (
        "YAML tag constructing a Python object",
        H + "  - {name: !!python/object/apply:os.system [echo], type: gauge, path: $.a}\n",
        [
            "m.yaml:3: metrics[0].name: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' "
            "is not allowed; use a plain list"
        ],
    ),
    (
        "duplicate key",
        H + "  - name: a\n    type: gauge\n    name: b\n    path: $.a\n",
        ["m.yaml:5: metrics[0].name: duplicate key; each key may appear once"],
    ),
    (
        "not YAML",
        "version: 1\nmetrics: [\n",
        [
            "m.yaml:3: (document): not valid YAML: expected the node content, but found '<stream end>'"
        ],
    ),
    (
        "empty file",
        "",
        ["m.yaml:1: (document): the file is empty; expected a mapping with 'version: 1'"],
    ),
    (
        "source key for another format",
        "version: 1\nsource: {format: jsonl, version_path: $.t}\nmetrics:\n  - {name: a, type: gauge, path: $.a}\n",
        ["m.yaml:2: source.version_path: 'version_path' applies only to format: document"],
    ),
    (
        "every problem is reported at once, in file order",
        H + "  - {name: a, type: gage, path: $.a}\n  - {name: b, type: counter, path: $.b}\n"
        "  - {name: c, type: histogram, path: c, buckets: [1]}\n",
        [
            "m.yaml:3: metrics[0].type: 'gage' is not one of: gauge, counter, updowncounter, "
            "histogram (did you mean 'gauge'?)",
            "m.yaml:4: metrics[1]: missing required key 'mode'; counters say mode: total (the "
            "file holds a running total) or mode: increment (each record holds an amount to add)",
            "m.yaml:5: metrics[2].path: 'c' is not a JSONPath; it must start with '$' (e.g. $.loss)",
        ],
    ),
    (
        "JSONPath syntax error",
        H + "  - {name: a, type: gauge, path: '$.a[?'}\n",
        [
            "m.yaml:3: metrics[0].path: '$.a[?' is not a valid JSONPath: the '[' at column 4 is never closed; expected ']'; a filter reads [?(@.key >= 0)], comparing with ==, !=, <, <=, > or >=",
        ],
    ),
    (
        "value path selecting many values",
        H + "  - {name: a, type: gauge, path: '$.gpus[*].util'}\n",
        [
            "m.yaml:3: metrics[0].path: '$.gpus[*].util' may select many values; a value or attribute path must select one (filters and wildcards belong in for_each, count, when: {exists/absent} and source.records)",
        ],
    ),
    (
        "JSONPath unexpected token says the column",
        H + "  - {name: a, type: gauge, path: '$.a b'}\n",
        [
            "m.yaml:3: metrics[0].path: '$.a b' is not a valid JSONPath: unexpected 'b' at column 5",
        ],
    ),
    (
        "JSONPath filter with an unclosed parenthesis",
        H + "  - {name: a, type: gauge, for_each: '$.g[?(@.u >= 0]', path: $.u}\n",
        [
            "m.yaml:3: metrics[0].for_each: '$.g[?(@.u >= 0]' is not a valid JSONPath: the '(' at column 6 is not closed before the ']' at column 15; expected ')'; a filter reads [?(@.key >= 0)], comparing with ==, !=, <, <=, > or >=",
        ],
    ),
    (
        "filter in a value path says where filters go",
        H + "  - {name: a, type: gauge, path: '$.g[?(@.u >= 0)].u'}\n",
        [
            "m.yaml:3: metrics[0].path: '$.g[?(@.u >= 0)].u' uses a filter ([?(...)]), which may select many values; a value or attribute path must select one (filters and wildcards belong in for_each, count, when: {exists/absent} and source.records)",
        ],
    ),
    (
        "key pattern in an attribute path",
        H + "  - {name: a, type: gauge, path: $.a, attributes: {k: {path: '$.{x}'}}}\n",
        [
            "m.yaml:3: metrics[0].attributes.k.path: '$.{x}' has a key pattern ({x}); key patterns are allowed in a metric's path and for_each only",
        ],
    ),
    (
        "key pattern with a filter",
        H + "  - {name: a, type: gauge, path: '$.g[?(@.u > 0)].{k}'}\n",
        [
            "m.yaml:3: metrics[0].path: '$.g[?(@.u > 0)].{k}': a key pattern ({name}) works in a path of plain keys, indexes and [*] only (not with filters, slices or '..')",
        ],
    ),
    (
        "one placeholder twice",
        H + "  - {name: a, type: gauge, path: '$.{k}.{k}'}\n",
        [
            "m.yaml:3: metrics[0].path: '$.{k}.{k}' uses the placeholder {k} twice; each names one attribute",
        ],
    ),
    (
        "placeholder naming a declared attribute",
        H + "  - {name: a, type: gauge, path: \"$['AP-{class}']\", attributes: {class: x}}\n",
        [
            "m.yaml:3: metrics[0]: the key pattern {class} makes the attribute 'class', which is also declared in attributes; rename one",
        ],
    ),
    (
        "path and count both",
        H + "  - {name: a, type: gauge, path: $.a, count: '$.a[*]'}\n",
        [
            "m.yaml:3: metrics[0]: give either 'path' (the value) or 'count' (how many values a path selects), not both",
        ],
    ),
    (
        "neither path nor count",
        H + "  - {name: a, type: gauge}\n",
        [
            "m.yaml:3: metrics[0]: missing required key 'path' (the JSONPath of the value) or 'count'",
        ],
    ),
    (
        "count of a path selecting one value",
        H + "  - {name: a, type: gauge, count: $.loss}\n",
        [
            "m.yaml:3: metrics[0].count: '$.loss' selects at most one value, so its count is 0 or 1; to count the elements of a list write $.loss[*]",
        ],
    ),
    (
        "range upside down",
        H + "  - {name: a, type: gauge, path: $.a, range: {min: 1, max: 0}}\n",
        [
            "m.yaml:3: metrics[0].range: range min 1 is above max 0",
        ],
    ),
    (
        "empty range",
        H + "  - {name: a, type: gauge, path: $.a, range: {}}\n",
        [
            "m.yaml:3: metrics[0].range: range needs min, max or both, e.g. range: {min: 0}",
        ],
    ),
    (
        "equals path selecting many",
        H + "  - {name: a, type: gauge, path: $.a, when: {equals: {path: '$.g[*].u', value: 1}}}\n",
        [
            "m.yaml:3: metrics[0].when.equals.path: '$.g[*].u' may select many values; equals compares one value (to test whether any element fits, use exists: with a filter, e.g. $.items[?(@.x == 1)])",
        ],
    ),
    (
        "csv source with records",
        "version: 1\nsource: {format: csv, records: '$.r[*]'}\nmetrics:\n  - {name: a, type: gauge, path: $.a}\n",
        [
            "m.yaml:2: source.records: 'records' applies only to format: document",
        ],
    ),
    (
        "mis-indented key",
        H + "  - name: a\n    type: gauge\n  path: $.a\n",
        [
            "m.yaml:5: (document): not valid YAML: expected <block end>, but found '?' (column 3): this line is indented differently from the keys above it; the keys of one mapping must start in the same column",
        ],
    ),
    (
        "key indented too far",
        H + "  - name: a\n    type: gauge\n     path: $.a\n",
        [
            "m.yaml:5: (document): not valid YAML: mapping values are not allowed here (column 10): a ':' where a value was expected; is this key indented further than the keys above it, or does a value contain ': ' (then quote it)?",
        ],
    ),
    (
        "unquoted placeholder inside a flow mapping",
        H + "  - {name: a, type: gauge, path: $.losses.{split}}\n",
        [
            "m.yaml:3: (document): not valid YAML: expected ',' or '}', but got '{' (column 43): a JSONPath inside {...} must be quoted, e.g. path: '$.losses.{split}'",
        ],
    ),
    (
        "unquoted index inside a flow mapping",
        H + "  - {name: a, type: gauge, path: $.gpus[0]}\n",
        [
            "m.yaml:3: (document): not valid YAML: expected ',' or '}', but got '[' (column 40): a JSONPath inside {...} must be quoted, e.g. path: '$.gpus[0]'",
        ],
    ),
    (
        "unquoted wildcard inside a flow mapping",
        H + "  - {name: a, type: gauge, count: $.loss[*]}\n",
        [
            "m.yaml:3: (document): not valid YAML: expected alphabetic or numeric character, but found ']' (column 43): '*' starts a YAML alias; a JSONPath inside {...} must be quoted, e.g. count: '$.loss[*]'",
        ],
    ),
    (
        "two placeholders touching in one key",
        H + "  - {name: a, type: gauge, path: \"$['{split}{metric}']\"}\n",
        [
            "m.yaml:3: metrics[0].path: the key '{split}{metric}': the placeholders {split} and {metric} touch, so where one ends is anybody's guess; put text between them (e.g. {a}-{b})",
        ],
    ),
    (
        "the compiler's problems reported with the schema's",
        H
        + "  - {name: a, type: gage, path: $.a}\n  - {name: b, type: gauge, path: $.b, range: {min: 5, max: 1}}\n  - {name: c, type: gauge, path: '$.c[?(@.x > 0)]'}\n  - {name: d, type: gauge, count: $.d}\n  - {name: e, type: gauge, path: '$.e[', range: {min: 2, max: 1}}\nunit: ms\n",
        [
            "m.yaml:3: metrics[0].type: 'gage' is not one of: gauge, counter, updowncounter, histogram (did you mean 'gauge'?)",
            "m.yaml:4: metrics[1].range: range min 5 is above max 1",
            "m.yaml:5: metrics[2].path: '$.c[?(@.x > 0)]' uses a filter ([?(...)]), which may select many values; a value or attribute path must select one (filters and wildcards belong in for_each, count, when: {exists/absent} and source.records)",
            "m.yaml:6: metrics[3].count: '$.d' selects at most one value, so its count is 0 or 1; to count the elements of a list write $.d[*]",
            "m.yaml:7: metrics[4].path: '$.e[' is not a valid JSONPath: the '[' at column 4 is never closed; expected ']'",
            "m.yaml:7: metrics[4].range: range min 2 is above max 1",
            "m.yaml:8: unit: unknown key 'unit'; 'unit' belongs on a metric (an entry of metrics:)",
        ],
    ),
    (
        "default or missing where they never apply",
        H
        + "  - {name: a, type: gauge, path: \"$['{k}']\", default: 0}\n  - {name: b, type: gauge, count: '$.b[*]', missing: skip}\n",
        [
            "m.yaml:3: metrics[0].default: 'default' never applies here: a key pattern gives one point per matching key, and none when none matches",
            "m.yaml:4: metrics[1].missing: 'missing' never applies here: count always gives a number (0 when its path selects nothing)",
        ],
    ),
    (
        "an unquoted {name} where a JSONPath goes is a YAML mapping",
        H + "  - name: a\n    type: gauge\n    path: {metric}\n",
        [
            "m.yaml:5: metrics[0].path: {metric} is a YAML mapping, not a JSONPath; a JSONPath starts with '$' and is quoted when it holds {, [ or *, e.g. \"$['{metric}']\"",
        ],
    ),
    (
        "unit at the top level belongs on a metric",
        H + "  - {name: a, type: gauge, path: $.a}\nunit: ms\n",
        [
            "m.yaml:4: unit: unknown key 'unit'; 'unit' belongs on a metric (an entry of metrics:)",
        ],
    ),
    (
        "bad JSONPath reported with the schema problems",
        H
        + "  - {name: a, type: gage, path: $.a}\n  - {name: b, type: counter, path: $.b}\n  - {name: c, type: gauge, path: '$.c[', unti: ms}\n  - {name: d, type: gauge, for_each: '$.d[?(@.x >= )]', path: $.x}\nunit: ms\n",
        [
            "m.yaml:3: metrics[0].type: 'gage' is not one of: gauge, counter, updowncounter, histogram (did you mean 'gauge'?)",
            "m.yaml:4: metrics[1]: missing required key 'mode'; counters say mode: total (the file holds a running total) or mode: increment (each record holds an amount to add)",
            "m.yaml:5: metrics[2].path: '$.c[' is not a valid JSONPath: the '[' at column 4 is never closed; expected ']'",
            "m.yaml:5: metrics[2].unti: unknown key 'unti'; did you mean 'unit'?",
            "m.yaml:6: metrics[3].for_each: '$.d[?(@.x >= )]' is not a valid JSONPath: unexpected ')' at column 14; a filter reads [?(@.key >= 0)], comparing with ==, !=, <, <=, > or >=",
            "m.yaml:7: unit: unknown key 'unit'; 'unit' belongs on a metric (an entry of metrics:)",
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "messages"), [c[1:] for c in BAD_MAPPINGS], ids=[c[0] for c in BAD_MAPPINGS]
)
def test_bad_mapping_is_reported_with_file_line_path_and_message(
    text: str, messages: list[str]
) -> None:
    with pytest.raises(MappingError) as caught:
        compile_mapping(text, "m.yaml", environ={})
    assert [str(p) for p in caught.value.problems] == messages


def test_yaml_alias_bomb_is_refused_before_it_expands() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, name = chr(96 + i), chr(97 + i)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    with pytest.raises(MappingError) as caught:
        compile_mapping("\n".join(lines) + "\n", "bomb.yaml", environ={})
    (problem,) = caught.value.problems
    assert "expands to more than 100000 nodes" in problem.message


def test_unreadable_mapping_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(MappingError) as caught:
        load_plan(tmp_path / "absent.yaml")
    assert (
        str(caught.value)
        == f"{tmp_path / 'absent.yaml'}: (document): cannot read the mapping: No such file or directory"
    )


def test_default_mapping_compiles_to_the_brief_metrics() -> None:
    plan = load_plan(ROOT / "mappings" / "ml-training.yaml", environ={})
    kinds = {i.name: (i.kind, i.unit, i.mode) for i in plan.instruments}
    assert kinds == {
        "ml.training.loss": (InstrumentKind.GAUGE, "", None),
        "ml.training.validation_loss": (InstrumentKind.GAUGE, "", None),
        "ml.training.accuracy": (InstrumentKind.GAUGE, "1", None),
        "ml.training.learning_rate": (InstrumentKind.GAUGE, "", None),
        "ml.training.gpu_utilization": (InstrumentKind.GAUGE, "1", None),
        "ml.training.batch_number": (InstrumentKind.COUNTER, "{batch}", CounterMode.TOTAL),
        "ml.training.epoch": (InstrumentKind.COUNTER, "{epoch}", CounterMode.TOTAL),
        "ml.training.processing_time_ms": (InstrumentKind.HISTOGRAM, "ms", None),
        "ml.training.samples_per_second": (InstrumentKind.HISTOGRAM, "{sample}/s", None),
    }
    keys = {a.key for a in plan.rules[0].attributes}
    assert keys == {"job.id", "model.name", "dataset"}
    assert all(a.scope is Scope.RECORD for a in plan.rules[0].attributes)


def test_packaged_copies_are_identical_to_the_repository_files() -> None:
    pairs = [
        ("schemas/mapping.schema.json", "translator/data/mapping.schema.json"),
        ("mappings/ml-training.yaml", "translator/data/ml-training.yaml"),
    ]
    for repo_file, packaged in pairs:
        assert (ROOT / repo_file).read_bytes() == (ROOT / packaged).read_bytes(), packaged


def test_every_key_of_a_source_metric_and_condition_has_a_description_for_editors() -> None:
    """Editors (yaml-language-server) show a key's description as it is completed."""
    undocumented = []

    def visit(node: dict[str, Any], where: str) -> None:
        for key, sub in node.get("properties", {}).items():
            if "description" not in sub:
                undocumented.append(f"{where}.{key}")
            visit(sub, f"{where}.{key}")

    for name in ("source", "metric", "condition"):
        visit(schema()["$defs"][name], name)
    assert undocumented == []


def test_schema_is_a_valid_2020_12_schema_and_shipped_mappings_declare_it() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert json.loads((ROOT / "schemas/mapping.schema.json").read_text()) == schema()
    for file in sorted((ROOT / "mappings").rglob("*.yaml")):
        first = file.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), file
        target = (file.parent / first.split("$schema=", 1)[1]).resolve()
        assert target == ROOT / "schemas" / "mapping.schema.json", file
        jsonschema.validate(yaml.safe_load(file.read_text()), schema())


def test_keys_with_dots_slashes_and_colons_are_addressable() -> None:
    plan = compile_mapping(
        H + "  - {name: a, type: gauge, path: \"$['train/loss']\"}\n"
        "  - {name: b, type: gauge, path: '$[\"memory.used\"]'}\n"
        "  - {name: c, type: gauge, path: \"$.x['gpu:0']\"}\n",
        "m.yaml",
        environ={},
    )
    doc = {"train/loss": 0.5, "memory.used": 3, "x": {"gpu:0": 7}}
    assert [r.value.path.first(doc) for r in plan.rules] == [0.5, 3, 7]


def test_environment_attributes_are_resolved_at_compile_time() -> None:
    plan = compile_mapping(
        "version: 1\nattributes:\n  pod: {env: POD}\n  zone: {env: ZONE, default: z1}\n"
        "metrics:\n  - {name: a, type: gauge, path: $.a}\n",
        "m.yaml",
        environ={"POD": "p-1"},
    )
    assert plan.rules[0].constants == (("pod", "p-1"), ("zone", "z1"))


def test_exponent_numbers_are_numbers_where_numbers_go_and_text_elsewhere() -> None:
    plan = compile_mapping(
        "version: 1\nmetrics:\n"
        "  - {name: a, type: histogram, path: $.a, scale: 1e-3, buckets: [1e-3, 1e2],"
        " description: 1e5}\n",
        "m.yaml",
        environ={},
    )
    (rule,) = plan.rules
    assert (rule.value.scale, rule.buckets, rule.description) == (0.001, (0.001, 100.0), "1e5")
