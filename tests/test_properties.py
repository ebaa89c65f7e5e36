"""Properties of the pure parts, checked on generated documents and mappings (hypothesis).

Documents are arbitrary JSON, with NaN, infinities, integers far outside 64 bits, deep-ish
nesting, unicode, and keys holding '.', '/' and ':'. Mappings are arbitrary VALID mapping
files, generated as YAML text from the mapping language itself (every instrument type and
counter mode, value pipelines, attributes of each kind, for_each, when) and compiled by
the real compiler. No process, no socket: the engine, the sources and the instrument
registry in-process, with the OpenTelemetry SDK and its OTLP encoder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, example, given, reject, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource

from translator.engine import DropReason, Evaluation, evaluate, evaluate_into
from translator.errors import MappingError
from translator.instruments import InstrumentRegistry
from translator.mapping import Plan, compile_mapping
from translator.mapping.paths import PathSyntaxError, compile_path
from translator.mapping.plan import InstrumentKind
from translator.sources import DocumentSource, parse_json

_INT64 = (-(2**63), 2**63 - 1)

# When a property fails, hypothesis' pytest plugin imports its patch writer (libcst), which
# raises a DeprecationWarning here: an INTERNALERROR under filterwarnings=error that hides
# the falsifying example; and it would write .hypothesis/patches into the working tree.
# With the import blocked, the plugin skips the patch, as it does when libcst is absent.
sys.modules.setdefault("hypothesis.extra._patching", None)  # type: ignore[arg-type]
# Hypothesis caches what it learns (constants found in the code) under .hypothesis/; keep
# that out of the working tree.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "ml-metrics-bridge-hypothesis"))

# Sized so that the whole file runs in well under 20 s on two cores. No example database:
# nothing is written into the working tree. Shrinking a generated mapping can take minutes,
# so it is off unless PROPERTIES_SHRINK=1 (a failure then prints the example as found).
_PHASES = (
    tuple(Phase)
    if os.environ.get("PROPERTIES_SHRINK") == "1"
    else (
        Phase.explicit,
        Phase.reuse,
        Phase.generate,
        Phase.target,
    )
)
settings.register_profile(
    "bridge-properties",
    deadline=None,
    max_examples=100,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_SETTINGS = settings.get_profile("bridge-properties")
_GENERATED_MAPPINGS = settings(_SETTINGS, phases=_PHASES)


# --- documents ------------------------------------------------------------------------------

#: Keys the generated paths also use, so that paths often hit something.
_KNOWN_KEYS = ["a", "b", "loss", "step", "gpus", "train/loss", "x.y", "k:v", "ü", "0", ""]
keys = st.sampled_from(_KNOWN_KEYS) | st.text(max_size=6)

_HUGE_INTS = [2**63 - 1, 2**63, -(2**63), 2**64, 10**30, -(10**300), 10**4000]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-1000, max_value=1000),
    st.integers(),
    st.sampled_from(_HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1.5", "nan", "-Infinity", "1e999", " 2 ", "0x10", "1_000", "true"]),
    # What json.loads makes of the escapes "\ud800" and "a\udfff": lone surrogates.
    st.sampled_from(["\ud800", "a\udfff"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """Mostly objects (training documents are), sometimes nested 20 to 200 levels deep."""
    document = draw(st.dictionaries(keys, json_values, max_size=8) | json_values)
    depth = draw(st.sampled_from([0, 0, 0, 20, 200]))
    for _ in range(depth):
        key = draw(st.sampled_from(["a", "gpus", "x.y"]))
        document = {key: document} if draw(st.booleans()) else [document]
    return document


# --- mappings -------------------------------------------------------------------------------


def _segment(key: str) -> str:
    if (
        key
        and (key[0].isascii() and (key[0].isalpha() or key[0] == "_"))
        and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    ):
        return f".{key}"
    escaped = key.replace("\\", "\\\\").replace("'", "\\'")
    return f"['{escaped}']"


singular_paths = st.lists(
    keys.map(_segment) | st.integers(min_value=-2, max_value=3).map(lambda i: f"[{i}]"),
    max_size=4,
).map(lambda segments: "$" + "".join(segments))

many_paths = singular_paths.map(lambda p: p + "[*]") | st.sampled_from(
    [
        "$..loss",
        "$.gpus[*]",
        "$.*",
        "$.*.loss",
        "$.gpus[?(@.a > 1)]",
        "$.gpus[0:2]",
        "$['a','b']",
        "$..gpus[?(@.loss)]",
        "$.gpus[*].a",
    ]
)

#: Key patterns: one point (or element) per matching key, the matched text an attribute.
value_pattern_paths = singular_paths.flatmap(
    lambda p: st.sampled_from([p + "['{k}']", p + ".{k}", p + "['a-{k}']", p + ".x_{k}"])
)
for_each_pattern_paths = singular_paths.map(lambda p: p + ".{c}")

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
numbers = st.integers(min_value=-(10**20), max_value=10**20) | finite | st.integers(-5, 5)
yaml_scalars = st.text(max_size=10) | st.integers(-(10**6), 10**6) | finite | st.booleans()

attribute_values = st.one_of(
    yaml_scalars,
    st.fixed_dictionaries({"value": yaml_scalars}),
    st.fixed_dictionaries({"env": st.sampled_from(["POD", "NODE_NAME"]), "default": yaml_scalars}),
    st.fixed_dictionaries({"path": singular_paths}, optional={"default": yaml_scalars}),
    st.fixed_dictionaries({"root_path": singular_paths}, optional={"default": yaml_scalars}),
)
attribute_maps = st.dictionaries(st.text(min_size=1, max_size=10), attribute_values, max_size=3)

_CONDITION_PARTS: dict[str, st.SearchStrategy[Any]] = {
    "exists": singular_paths | many_paths,
    "absent": singular_paths | many_paths,
    "equals": st.fixed_dictionaries({"path": singular_paths, "value": yaml_scalars | st.none()}),
    "not": st.fixed_dictionaries({"exists": singular_paths | many_paths}),
}
conditions = st.lists(
    st.sampled_from(sorted(_CONDITION_PARTS)), min_size=1, max_size=3, unique=True
).flatmap(lambda parts: st.fixed_dictionaries({p: _CONDITION_PARTS[p] for p in parts}))

#: The loader reads a plain `1e5` as a number (YAML 1.2), where PyYAML's dumper leaves it
#: unquoted as a YAML 1.1 string: such text would turn a description into a number.
_LOOKS_LIKE_A_NUMBER = re.compile(r"^[-+]?(?:\.\d+|\d+(?:\.\d*)?)[eE][-+]?\d+$")
texts = st.text(max_size=12).filter(lambda t: not _LOOKS_LIKE_A_NUMBER.match(t))


@st.composite
def instrument_specs(draw: st.DrawFn, index: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["gauge", "counter", "updowncounter", "histogram"]))
    spec: dict[str, Any] = {
        "name": f"m{index}" + draw(st.from_regex(r"[A-Za-z0-9_./-]{0,6}", fullmatch=True)),
        "type": kind,
    }
    if draw(st.booleans()):
        spec["unit"] = draw(st.sampled_from(["", "1", "ms", "{batch}", "By", "%"]))
    if kind in ("counter", "updowncounter"):
        spec["mode"] = draw(st.sampled_from(["total", "increment"]))
    if kind == "histogram":
        bounds = draw(st.lists(finite, min_size=1, max_size=5, unique=True))
        spec["buckets"] = sorted(bounds)
    return spec


@st.composite
def rules(draw: st.DrawFn, instrument: dict[str, Any]) -> dict[str, Any]:
    value = draw(st.sampled_from(["path", "path", "pattern", "count"]))
    if value == "count":
        rule = {**instrument, "count": draw(many_paths)}
    else:
        paths = singular_paths if value == "path" else value_pattern_paths
        rule = {**instrument, "path": draw(paths)}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "description": texts,
        "for_each": many_paths | for_each_pattern_paths,
        "range": st.fixed_dictionaries({}, optional={"min": finite, "max": finite}).filter(
            lambda r: bool(r) and r.get("min", 0) <= r.get("max", r.get("min", 0))
        ),
        "when": conditions,
        "scale": numbers,
        "offset": numbers,
        "map": st.dictionaries(
            st.sampled_from(["running", "done", "true", "false", "x"]),
            numbers,
            min_size=1,
            max_size=3,
        ),
        "parse_strings": st.booleans(),
        "booleans": st.booleans(),
        "non_finite": st.sampled_from(["drop", "keep"]),
        "attributes": attribute_maps,
    }
    for key, strategy in optional.items():
        if draw(st.integers(0, 2)) == 0:
            rule[key] = draw(strategy)
    if instrument["type"] == "histogram" and rule.get("non_finite") == "keep":
        del rule["non_finite"]  # refused by the compiler: the SDK drops such observations
    # default and missing are refused where they can never apply (a key pattern, a count).
    missing = "" if value != "path" else draw(st.sampled_from(["", "default", "missing"]))
    if missing == "default":
        rule["default"] = draw(numbers)
    elif missing == "missing":
        rule["missing"] = draw(st.sampled_from(["drop", "skip"]))
    return rule


@st.composite
def mapping_texts(draw: st.DrawFn, source_path: str = "/tmp/never-read.json") -> str:
    """A mapping file (YAML text) that the schema accepts."""
    source: dict[str, Any] = {"path": source_path}
    if draw(st.booleans()):
        source["version_path"] = draw(singular_paths)
    mapping: dict[str, Any] = {"version": 1, "source": source}
    if draw(st.booleans()):
        mapping["attributes"] = draw(attribute_maps)
    if draw(st.booleans()):
        mapping["limits"] = {"max_series_per_metric": draw(st.integers(1, 5))}
    metrics = []
    for index in range(draw(st.integers(1, 4))):
        instrument = draw(instrument_specs(index))
        metrics += [draw(rules(instrument)) for _ in range(draw(st.integers(1, 2)))]
    mapping["metrics"] = metrics
    return yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True, width=10**6)


def compiled(text: str) -> Plan:
    try:
        return compile_mapping(text, "m.yaml", environ={})
    except MappingError:
        # Generated mappings are meant to be valid; hypothesis fails the test if this
        # happens often (its filter health check), so this cannot hide a broken strategy.
        reject()


# --- checks ---------------------------------------------------------------------------------


def _is_exportable_attribute(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, bool | float):
        return True
    return isinstance(value, int) and _INT64[0] <= value <= _INT64[1]


def check_points(plan: Plan, evaluation: Evaluation) -> None:
    rule_names = {rule.name for rule in plan.rules}
    for rule, attributes, value in evaluation.points:
        assert type(value) in (int, float), f"{rule.name}: {value!r} is not a number"
        if type(value) is float and not math.isfinite(value):
            assert rule.value.keep_non_finite, f"{rule.name}: {value} without non_finite: keep"
        if type(value) is int:
            # OTLP carries integers as sfixed64: a bigger one cannot be sent at all.
            assert _INT64[0] <= value <= _INT64[1], f"{rule.name}: {value} overflows int64"
        if rule.kind in (InstrumentKind.COUNTER, InstrumentKind.HISTOGRAM):
            assert not value < 0, f"{rule.name}: negative {rule.kind} value {value}"
        for key, attribute in attributes:
            assert isinstance(key, str)
            assert _is_exportable_attribute(attribute), f"{rule.name}: {key}={attribute!r}"
            if isinstance(attribute, str):
                assert len(attribute) <= 1024
    for drop in evaluation.drops:
        assert isinstance(drop.reason, DropReason)
        assert drop.rule.name in rule_names


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def encoder_complaints() -> Iterator[list[logging.LogRecord]]:
    """What the OTLP encoder logs while it drops something it cannot encode."""
    handler = _Records()
    logger = logging.getLogger("opentelemetry.exporter.otlp.proto.common")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


class Sdk:
    """A registry for `plan` on a real MeterProvider read by an InMemoryMetricReader."""

    def __init__(self, plan: Plan) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)
        self.registry = InstrumentRegistry()
        self.registry.install([plan])

    def collect(self) -> MetricsData | None:
        """What an exporter gets: the SDK's collection completed by the registry."""
        return self.registry.complete(self.reader.get_metrics_data(), Resource.create())

    def close(self) -> None:
        self.provider.shutdown()


def comparable(data: MetricsData | None) -> list[tuple[Any, ...]]:
    """Every data point without its collection time (NaN made comparable)."""
    out: list[tuple[Any, ...]] = []

    def norm(value: Any) -> Any:
        return "NaN" if isinstance(value, float) and math.isnan(value) else value

    for resource_metrics in data.resource_metrics if data else []:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    fields = {k: v for k, v in vars(point).items() if k != "time_unix_nano"}
                    attributes = tuple(sorted((fields.pop("attributes") or {}).items(), key=str))
                    values = tuple(
                        sorted(
                            (k, norm(v) if not isinstance(v, list | tuple) else tuple(v))
                            for k, v in fields.items()
                            if k != "exemplars"
                        )
                    )
                    out.append((metric.name, tuple((k, norm(v)) for k, v in attributes), values))
    return sorted(out, key=repr)


# --- properties -----------------------------------------------------------------------------


def _one_rule(rule: str) -> str:
    return f"version: 1\nmetrics:\n  - {{name: m, type: gauge, path: $.v, {rule}}}\n"


@_GENERATED_MAPPINGS
@given(mapping_texts(), documents(), st.integers(0, 3))
# Found by this property; kept so that they are tried on every run, not only by chance.
@example(_one_rule("scale: 4"), {"v": 2**62}, 0)
@example(_one_rule("offset: 1"), {"v": 2**63 - 1}, 0)
@example(_one_rule("scale: 1000000, default: 10000000000000"), {}, 0)
@example(_one_rule("attributes: {tag: {path: $.t}}"), {"v": 1, "t": "\ud800"}, 0)
def test_evaluation_never_raises_and_emits_only_exportable_points(
    text: str, document: Any, depth: int
) -> None:
    plan = compiled(text)
    check_points(plan, evaluate(plan, document))
    # A history record is evaluated against its own fields and the enclosing document.
    record = document
    for _ in range(depth):
        if isinstance(record, dict) and record:
            record = next(iter(record.values()))
        elif isinstance(record, list) and record:
            record = record[0]
    check_points(plan, evaluate(plan, record, document))


@settings(_GENERATED_MAPPINGS, max_examples=60)
@given(mapping_texts(), st.lists(documents(), min_size=1, max_size=3))
def test_whatever_the_registry_reports_can_be_encoded_as_otlp(
    text: str, sequence: list[Any]
) -> None:
    plan = compiled(text)
    sdk = Sdk(plan)
    try:
        with encoder_complaints() as complaints:
            for document in sequence:
                points = evaluate(plan, document).points
                sdk.registry.apply("f.json", points, replaces=True)
                sdk.registry.apply("g.jsonl", points, replaces=False)
                data = sdk.collect()
                if data is not None:
                    encode_metrics(data).SerializeToString()
        assert not complaints, [r.getMessage() for r in complaints]
    finally:
        sdk.close()


@settings(_GENERATED_MAPPINGS, max_examples=60)
@given(st.data(), documents())
def test_a_document_version_is_applied_once_and_then_exported_unchanged(
    data: st.DataObject, document: Any
) -> None:
    with tempfile.TemporaryDirectory(prefix="bridge-properties-") as folder:
        path = os.path.join(folder, "current.json")
        plan = compiled(data.draw(mapping_texts(source_path=path)))
        content = json.dumps(document).encode()
        with open(path, "wb") as fh:
            fh.write(content)
        source = DocumentSource(path, plan.source)
        sdk = Sdk(plan)
        try:
            snapshot = source.poll()
            assert snapshot is not None, "a new file is a new version"
            evaluation = Evaluation()
            for record in snapshot.records:
                evaluate_into(plan, record, snapshot.root, evaluation)
            sdk.registry.apply(path, evaluation.points, replaces=snapshot.replaces)
            first = comparable(sdk.collect())

            assert source.poll() is None, "an unchanged file is not a new version"
            with open(path, "wb") as fh:  # rewritten with the same bytes: same version
                fh.write(content)
            assert source.poll() is None, "the same content is not a new version"
            assert comparable(sdk.collect()) == first
        finally:
            sdk.close()


@_SETTINGS
@given(
    st.sampled_from(["counter", "updowncounter"]),
    st.sampled_from(["total", "increment"]),
    st.lists(
        st.integers(min_value=0, max_value=2**63 - 1)
        | st.integers(0, 1000)
        | st.sampled_from([2**62, 2**63 - 1]),
        min_size=1,
        max_size=6,
    ),
)
def test_a_counter_stays_exportable_however_large_its_values_grow(
    kind: str, mode: str, values: list[int]
) -> None:
    """Each value fits in int64, but a sum of increments, or totals across resets, may not."""
    plan = compiled(
        f"version: 1\nmetrics:\n  - {{name: c, type: {kind}, mode: {mode}, path: $.v}}\n"
    )
    sdk = Sdk(plan)
    try:
        for value in values:
            points = evaluate(plan, {"v": value}).points
            sdk.registry.apply("f.json", points, replaces=mode == "total")
            data = sdk.collect()
            assert data is not None
            encode_metrics(data).SerializeToString()
    finally:
        sdk.close()


json_texts = documents().map(lambda d: json.dumps(d).encode())


@st.composite
def damaged(draw: st.DrawFn, texts: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(texts))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        else:
            data[at:at] = draw(
                st.sampled_from(
                    [
                        b"\xff",
                        b"\xed\xa0\x80",
                        b"[",
                        b"{",
                        b'"',
                        b"NaN",
                        b"\x00",
                        b"9" * 30,
                        b"\\u",
                        b",",
                    ]
                )
            )
    return bytes(data)


@settings(_SETTINGS, max_examples=300)
@given(
    st.binary(max_size=300)
    | damaged(json_texts)
    | st.text(max_size=50).map(str.encode)
    | st.sampled_from([b"[" * 5000, b'{"a":' * 3000, b"-" + b"9" * 5000])
)
def test_parse_json_of_arbitrary_bytes_returns_or_raises_value_error_only(data: bytes) -> None:
    with suppress(ValueError):
        parse_json(data)


path_fragments = st.sampled_from(
    [
        ".",
        "..",
        "[",
        "]",
        "*",
        "?",
        "(",
        ")",
        "@",
        "'",
        '"',
        "`",
        "len",
        "sub",
        "split",
        "str()",
        "+",
        "-",
        "&",
        "|",
        "where",
        "wherenot",
        "=~",
        "==",
        ">",
        "0",
        "-1",
        ":",
        ",",
        "a",
        "x.y",
        "\\",
        "$",
        " ",
        "/",
        "parent",
        "this",
        "sorted",
        "~",
    ]
)


@settings(_SETTINGS, max_examples=400)
@given(
    st.text(max_size=30)
    | st.lists(path_fragments, max_size=12).map(lambda p: "$" + "".join(p))
    | st.text(max_size=20).map(lambda t: "$" + t),
    json_values,
)
def test_compile_path_accepts_or_raises_path_syntax_error_only(text: str, document: Any) -> None:
    try:
        path = compile_path(text)
    except PathSyntaxError:
        return
    path.all(document)
    path.first(document)
