"""The command line, called in-process through ``run(argv, stdout, stderr)``."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest

from translator.cli import run

ROOT = Path(__file__).resolve().parent.parent
BRIEF = ROOT / "tests" / "cases" / "brief-default" / "input.json"


def call(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


def test_validate_accepts_every_shipped_mapping() -> None:
    status, out, err = call("validate", str(ROOT / "mappings"))
    assert status == 0, out
    assert re.fullmatch(r"(\d+) of \1 mapping file\(s\) valid\n", err)


def test_validate_prints_every_error_of_every_file_and_exits_2(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nmetrics:\n  - {name: a, type: gauge, path: $.a}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmetrics:\n  - {name: a, type: gage, path: a}\n")
    status, out, err = call("validate", str(good), str(bad))
    assert status == 2
    assert out.splitlines() == [
        f"{bad}:3: metrics[0].path: 'a' is not a JSONPath; it must start with '$' (e.g. $.loss)",
        f"{bad}:3: metrics[0].type: 'gage' is not one of: gauge, counter, updowncounter, "
        "histogram (did you mean 'gauge'?)",
    ]
    assert err == "1 of 2 mapping file(s) valid\n"


def test_validate_does_not_need_the_pods_environment_variables(tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        "version: 1\nattributes:\n  pod: {env: SURELY_UNSET_POD_NAME}\n"
        "metrics:\n  - {name: a, type: gauge, path: $.a}\n"
    )
    assert call("validate", str(mapping))[0] == 0


def test_preview_json_lists_points_and_drops(tmp_path: Path) -> None:
    doc = json.loads(BRIEF.read_text())
    doc["training_metrics"]["accuracy"] = "high"
    source = tmp_path / "in.json"
    source.write_text(json.dumps(doc))
    status, out, _ = call(
        "preview",
        "--mapping",
        str(ROOT / "mappings/ml-training.yaml"),
        str(source),
        "--format",
        "json",
    )
    assert status == 0
    rows = json.loads(out)
    points = {r["name"]: r for r in rows if "dropped" not in r}
    assert points["ml.training.batch_number"] == {
        "name": "ml.training.batch_number",
        "type": "counter",
        "unit": "{batch}",
        "value": 150,
        "attributes": {
            "dataset": "imagenet",
            "job.id": "training-job-123",
            "model.name": "resnet-50",
        },
    }
    (dropped,) = [r for r in rows if "dropped" in r]
    assert dropped["name"] == "ml.training.accuracy"
    assert dropped["dropped"] == {
        "reason": "not_a_number",
        "detail": '$.training_metrics.accuracy = "high"',
        "rule": "metrics[2]",
    }


def test_preview_table_reports_series_per_metric() -> None:
    status, out, _ = call(
        "preview", "--mapping", str(ROOT / "mappings/ml-training.yaml"), str(BRIEF)
    )
    assert status == 0
    assert "series per metric (distinct attribute sets):" in out
    assert re.search(r"^  ml\.training\.loss\s+1$", out, re.M)


def test_preview_table_gives_the_unit_a_column_of_its_own() -> None:
    status, out, _ = call(
        "preview", "--mapping", str(ROOT / "mappings/ml-training.yaml"), str(BRIEF)
    )
    assert status == 0
    header, *lines = out.splitlines()
    # One line per exported series (preview shows what run exports), no record column.
    assert re.fullmatch(r"METRIC +TYPE +VALUE  UNIT +ATTRIBUTES", header)
    unit_at = header.index("UNIT")
    accuracy = next(line for line in lines if line.startswith("ml.training.accuracy "))
    loss = next(line for line in lines if line.startswith("ml.training.loss "))
    # "0.876" then the unit "1" under UNIT: not "0.876 1" under VALUE.
    assert accuracy[:unit_at].rstrip().endswith(" 0.876")
    assert accuracy[unit_at:].startswith("1 ")
    assert loss[unit_at:].startswith("  "), "no unit: the column stays blank"


def test_every_command_and_option_has_help_without_project_jargon(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in ("", "run", "validate", "preview", "init", "demo", "simulate"):
        assert call(*([command] if command else []), "--help")[0] == 0
        out = capsys.readouterr().out  # argparse prints help on sys.stdout
        assert out.startswith("usage: ml-metrics-bridge"), command
        assert "brief" not in out.lower(), command
        lines = out.split("\noptions:\n", 1)[1].splitlines()
        for number, line in enumerate(lines):
            if not line.startswith("  -"):
                continue
            # "  --opt VALUE   help", or the help alone on the next, deeper-indented line.
            spec, _, text = line.strip().partition("  ")
            following = lines[number + 1] if number + 1 < len(lines) else ""
            has_help = bool(text.strip()) or (
                following.startswith(" " * 8) and not following.strip().startswith("-")
            )
            assert has_help, f"{command or 'ml-metrics-bridge'} {spec}: no help"


# `validate --settings` (the Job's init container) must refuse exactly what `run` refuses,
# in the same words: each case runs through both commands.
CHECKS_SETTINGS = pytest.mark.parametrize(
    "command", [("run", "--once"), ("validate", "--settings")], ids=["run", "validate"]
)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "COLLECTION_INTERVAL",
            "fast",
            "COLLECTION_INTERVAL: 'fast' is not a number of seconds between 0.05 and 86400",
        ),
        (
            "COLLECTION_INTERVAL",
            "0",
            "COLLECTION_INTERVAL: '0' is not a number of seconds between 0.05 and 86400",
        ),
        (
            "LOG_LEVEL",
            "loud",
            "LOG_LEVEL: 'loud' is not one of: DEBUG, INFO, WARNING, ERROR, CRITICAL",
        ),
        (
            "MAPPING_PATH",
            "/nope.yaml",
            "MAPPING_PATH: '/nope.yaml' does not exist; give a mapping file or a directory of them",
        ),
        (
            "OTEL_METRICS_EXPORTER",
            "zipkin",
            "OTEL_METRICS_EXPORTER: 'zipkin': use a comma-separated list of otlp, console, prometheus, none",
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "thrift",
            "OTEL_EXPORTER_OTLP_PROTOCOL: 'thrift' is not one of: grpc, http/protobuf",
        ),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "collector:99999",
            "OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:99999' has a bad port; expected host:port or http(s)://host:port",
        ),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "ftp://c:21",
            "OTEL_EXPORTER_OTLP_ENDPOINT: 'ftp://c:21' is not an endpoint; expected host:port or http(s)://host:port",
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "api-key",
            "OTEL_EXPORTER_OTLP_HEADERS: entry 1 is not key=value (values are not shown: they may be secret)",
        ),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nope.pem",
            "OTEL_EXPORTER_OTLP_CERTIFICATE: '/nope.pem' is not a readable file",
        ),
        (
            "OTEL_EXPORTER_OTLP_INSECURE",
            "maybe",
            "OTEL_EXPORTER_OTLP_INSECURE: 'maybe' is not true or false",
        ),
        ("HEALTH_PORT", "http", "HEALTH_PORT: 'http' is not a TCP port (1-65535)"),
        (
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "0",
            "OTEL_EXPORTER_OTLP_TIMEOUT: '0' is not a number of milliseconds between 1 and 600000",
        ),
        ("LOG_FORMAT", "xml", "LOG_FORMAT: 'xml' is not one of: text, json"),
        ("STATE_DIR", "/nope/state", "STATE_DIR: '/nope/state' is not a directory this process can write to"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "-5", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT: '-5' is not a number of milliseconds between 1 and 600000"),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/hostname", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: mutual TLS needs both the client certificate and OTEL_EXPORTER_OTLP_CLIENT_KEY"),
    ],
)
@CHECKS_SETTINGS
def test_bad_setting_exits_2_naming_the_variable(
    variable: str, value: str, message: str, command: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv(variable, value)
    status, out, err = call(*command)
    assert status == 2
    assert err == f"ml-metrics-bridge: configuration error:\n{message}\n"
    assert out == ""


@CHECKS_SETTINGS
def test_every_bad_setting_is_reported_at_once(
    command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTION_INTERVAL", "x")
    monkeypatch.setenv("LOG_LEVEL", "y")
    status, _, err = call(*command)
    assert status == 2
    assert err.count("\n") == 3


@CHECKS_SETTINGS
def test_header_values_never_appear_in_messages(
    command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer s3cr3t,broken")
    status, _, err = call(*command)
    assert status == 2
    assert "s3cr3t" not in err and "entry 2 is not key=value" in err


def _mapping_path_reading(variable: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MAPPING_PATH names a mapping whose attribute `pod` comes from ``variable``."""
    mapping = folder / "m.yaml"
    mapping.write_text(
        f"version: 1\nattributes:\n  pod: {{env: {variable}}}\n"
        "metrics:\n  - {name: a, type: gauge, path: $.a}\n"
    )
    monkeypatch.setenv("MAPPING_PATH", str(mapping))
    return mapping


def test_validate_settings_accepts_the_environment_run_starts_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _mapping_path_reading("POD_NAME", tmp_path, monkeypatch)
    monkeypatch.setenv("POD_NAME", "trainer-0")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "otel-collector.monitoring:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cr3t")
    monkeypatch.setenv("COLLECTION_INTERVAL", "10")
    monkeypatch.setenv("HEALTH_PORT", "8081")
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    valid = "settings valid\n1 of 1 mapping file(s) valid\n"
    assert call("validate", "--settings") == (0, "", valid)


def test_validate_settings_checks_the_mapping_path_names_with_the_real_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mapping = _mapping_path_reading("SURELY_UNSET_POD_NAME", tmp_path, monkeypatch)
    # Plain `validate` runs on CI machines, without the pod's variables; the sidecar would
    # refuse this mapping, and so does the check of its environment.
    assert call("validate", str(mapping))[0] == 0
    status, out, err = call("validate", "--settings")
    assert status == 2
    assert out == (
        f"{mapping}:3: attributes.pod: environment variable SURELY_UNSET_POD_NAME is not "
        "set and no 'default' is given\n"
    )
    assert err == "settings valid\n0 of 1 mapping file(s) valid\n"
    assert call("run", "--once")[0] == 2


@pytest.mark.parametrize("argv", [("validate",), ("validate", "--settings", "mappings")])
def test_validate_takes_either_paths_or_settings(argv: tuple[str, ...]) -> None:
    refused = "ml-metrics-bridge validate: give either mapping PATHs or --settings\n"
    assert call(*argv) == (2, "", refused)


def test_bad_mapping_at_start_exits_2_with_its_problems(tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_text("version: 1\nmetrics: []\n")
    status, _, err = call("run", "--once", "--mapping", str(mapping))
    assert status == 2
    assert err == (
        f"ml-metrics-bridge: configuration error:\n{mapping}:2: metrics: [] should be non-empty\n"
    )


def test_run_once_prints_the_documents_metrics_with_the_console_exporter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_FILE_PATH", str(BRIEF))
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "console")
    status, out, err = call("run", "--once")
    assert status == 0, err
    labels = "{dataset=imagenet,job.id=training-job-123,model.name=resnet-50}"
    assert f"  ml.training.loss{labels} 0.342\n" in out
    assert f"  ml.training.batch_number{labels} 150 [{{batch}}]\n" in out
    assert f"  ml.training.processing_time_ms{labels} count=1 sum=245 min=245 max=245 [ms]\n" in out


def test_run_once_exits_1_when_the_file_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_FILE_PATH", str(tmp_path / "absent.json"))
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    status, _, err = call("run", "--once")
    assert status == 1
    # The last line says why the exit status is 1, naming the file.
    assert err.splitlines()[-1].endswith(
        f"ERROR   run --once exits 1: {tmp_path / 'absent.json'}: does not exist (yet)"
    )


def test_run_once_says_how_to_name_the_file_when_it_read_the_unset_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from translator.settings import DEFAULT_SOURCE_PATH

    if os.path.exists(DEFAULT_SOURCE_PATH):
        pytest.skip(f"{DEFAULT_SOURCE_PATH} exists on this machine")
    monkeypatch.delenv("METRICS_FILE_PATH", raising=False)
    monkeypatch.delenv("MAPPING_PATH", raising=False)  # the packaged default: no source.path
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    status, _, err = call("run", "--once")
    assert status == 1
    assert err.splitlines()[-1].endswith(
        f"ERROR   run --once exits 1: {DEFAULT_SOURCE_PATH}: does not exist (yet) (the "
        "default, METRICS_FILE_PATH being unset: set it, or the mapping's source.path, to the "
        "file the job writes)"
    )


def test_demo_prints_simulated_training_metrics_until_stopped() -> None:
    status, out, err = call("demo", "--duration-s", "2.5", "--interval-s", "0.5")
    assert status == 0, err
    assert out.count("--- export at") >= 2
    assert re.search(
        r"ml\.training\.batch_number\{.*job\.id=training-job-123.*\} [1-9]\d* \[\{batch\}\]", out
    )


def test_json_logs_are_one_object_per_line_naming_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "absent.json"
    monkeypatch.setenv("METRICS_FILE_PATH", str(missing))
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    monkeypatch.setenv("LOG_FORMAT", "json")
    status, _, err = call("run", "--once")
    assert status == 1
    entries = [json.loads(line) for line in err.splitlines()]
    (about_file,) = [e for e in entries if e.get("source") == str(missing)]
    assert about_file["level"] == "info"
    assert about_file["message"] == f"{missing}: does not exist (yet)"
    assert {"time", "logger"} <= set(about_file)


def test_preview_of_json_lines_exports_the_newest_lines_value_and_skips_bad_lines(
    tmp_path: Path,
) -> None:
    source = tmp_path / "metrics.jsonl"
    source.write_text(
        '{"iteration": 19, "total_loss": 1.5}\n{oops\n{"iteration": 39, "total_loss": 1.2}\n'
    )
    mapping = ROOT / "mappings/examples/detectron2-jsonl.yaml"
    status, out, err = call("preview", "--mapping", str(mapping), str(source), "--format", "json")
    assert status == 0
    assert (
        err
        == f"{source}:2: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); skipped\n"
    )
    # What run exports after reading the file: a gauge's value is the newest line's.
    losses = [r["value"] for r in json.loads(out) if r["name"] == "detectron2.loss"]
    assert losses == [1.2]


def test_public_surface_is_small_and_pinned() -> None:
    import translator

    assert translator.__all__ == sorted(translator.__all__)
    assert translator.__all__ == [
        "BridgeError", "ConfigError", "DropReason", "Evaluation", "MappingError", "Point",
        "SettingsError", "SourceError", "__version__", "evaluate", "load_plan",
    ]  # fmt: skip


def test_two_mappings_reading_one_file_keep_each_others_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "a.yaml").write_text("version: 1\nmetrics:\n  - {name: a, type: gauge, path: $.a}\n")
    (folder / "b.yaml").write_text("version: 1\nmetrics:\n  - {name: b, type: gauge, path: $.b}\n")
    doc = tmp_path / "m.json"
    doc.write_text('{"a": 1, "b": 2}')
    monkeypatch.setenv("METRICS_FILE_PATH", str(doc))
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "console")
    status, out, err = call("run", "--once", "--mapping", str(folder))
    assert status == 0, err
    assert "  a 1\n" in out and "  b 2\n" in out


def test_validate_reports_one_name_declared_differently_in_two_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 1\nmetrics:\n  - {name: x, type: gauge, path: $.a}\n")
    (tmp_path / "b.yaml").write_text(
        "version: 1\nmetrics:\n  - {name: y, type: gauge, path: $.a}\n"
        "  - {name: x, type: counter, mode: total, path: $.b}\n"
    )
    status, out, err = call("validate", str(tmp_path))
    assert status == 2
    assert out == (
        f"{tmp_path / 'b.yaml'}:4: metrics[1].name: 'x' is counter (total) unit '' here but "
        f"gauge unit '' in {tmp_path / 'a.yaml'}; one name is one instrument across all "
        "mapping files\n"
    )
    status, _, err = call("run", "--once", "--mapping", str(tmp_path))
    assert status == 2 and "one name is one instrument across all mapping files" in err


def test_a_port_already_taken_is_a_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("METRICS_FILE_PATH", str(BRIEF))
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
        monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
        monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", str(port))
        status, _, err = call("run", "--once")
    assert status == 2
    assert err.endswith(
        "ml-metrics-bridge: configuration error:\n"
        f"OTEL_EXPORTER_PROMETHEUS_PORT: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def test_validate_json_lists_problem_objects_for_tools(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('version: 1\nattributes:\n  "my key": {envv: x}\nmetrics: []\n')
    status, out, _ = call("validate", "--format", "json", str(bad))
    assert status == 2
    assert json.loads(out) == [
        {
            "file": str(bad),
            "line": 3,
            "yaml_path": 'attributes["my key"]',
            "message": "an attribute is a string, number or boolean, or a mapping with exactly "
            "one of 'value', 'env', 'path', 'root_path' (and optionally 'default')",
        },
        {"file": str(bad), "line": 4, "yaml_path": "metrics", "message": "[] should be non-empty"},
    ]


def test_resource_attributes_from_the_document_that_otlp_cannot_carry_fall_back_to_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        "version: 1\nresource:\n  run.id: {path: $.run, default: unknown}\n"
        "metrics:\n  - {name: a, type: gauge, path: $.a}\n"
    )
    doc = tmp_path / "m.json"
    # NaN sends the document to the standard parser, which keeps the integer exact.
    doc.write_text('{"a": 1, "run": 100000000000000000000000, "x": NaN}')
    monkeypatch.setenv("METRICS_FILE_PATH", str(doc))
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "console")
    status, out, err = call("run", "--once", "--mapping", str(mapping))
    assert status == 0, err
    assert "run.id=unknown" in out


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (
            b'{"loss": 1}\n{"loss": 2}\n',
            "; it looks like JSON Lines (one JSON value per line): say source.format: jsonl in the mapping",
        ),
        (b"step,loss\n1,0.5\n", "; it looks like CSV: say source.format: csv in the mapping"),
    ],
    ids=["jsonl", "csv"],
)
def test_preview_of_another_format_with_a_document_mapping_names_the_format(
    tmp_path: Path, content: bytes, hint: str
) -> None:
    data = tmp_path / "metrics.log"
    data.write_bytes(content)
    mapping = tmp_path / "m.yaml"
    mapping.write_text("version: 1\nmetrics:\n  - {name: a, type: gauge, path: $.loss}\n")
    out, err = io.StringIO(), io.StringIO()
    assert run(["preview", "--mapping", str(mapping), str(data)], out, err) == 1
    assert err.getvalue().endswith(hint + "\n"), err.getvalue()


def test_preview_of_a_pretty_printed_document_with_a_json_lines_mapping_names_the_format(
    tmp_path: Path,
) -> None:
    # Was one "not JSON; skipped" per line of the document, no point, and exit 0.
    data = tmp_path / "metrics.json"
    data.write_text('{\n  "iteration": 19,\n  "total_loss": 1.5\n}\n')
    mapping = ROOT / "mappings/examples/detectron2-jsonl.yaml"
    assert call("preview", "--mapping", str(mapping), str(data)) == (1, "", (
        f"ml-metrics-bridge: cannot read {data}: it is one JSON document, not JSON Lines (one "
        "object per line): say source.format: document in the mapping\n"
    ))  # fmt: skip


def test_preview_table_shows_a_drop_no_one_record_made(tmp_path: Path) -> None:
    # Two running totals for one series in one document: the registry drops the second.
    # The table raised KeyError: 'record' (init proposes such a for_each when nothing
    # tells the elements apart).
    data = tmp_path / "metrics.json"
    data.write_text('{"h": [{"step": 1}, {"step": 2}]}')
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        "version: 1\nmetrics:\n"
        '  - {name: s, type: counter, mode: total, for_each: "$.h[*]", path: $.step}\n'
    )
    status, out, err = call("preview", "--mapping", str(mapping), str(data))
    assert (status, err) == (0, "")
    assert "\ndropped (1):\n  s  metrics[0]: duplicate_series: s already has a running total" in out


def test_preview_of_a_missing_input_says_so_plainly(tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    status, out, err = call("preview", "--mapping", str(ROOT / "mappings/ml-training.yaml"),
                            str(missing))  # fmt: skip
    assert (status, out, err) == (
        1, "", f"ml-metrics-bridge: cannot read {missing}: No such file or directory\n"
    )  # fmt: skip


def test_preview_of_a_file_no_mapping_names_uses_every_mapping_and_says_what_run_would_add(
    tmp_path: Path,
) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for name in ("a", "b"):
        (mappings / f"{name}.yaml").write_text(
            f"version: 1\nsource: {{path: '/runs/{{run_id}}/{name}.json'}}\nmetrics:\n"
            f"  - {{name: m.{name}, type: gauge, path: $.{name}}}\n"
        )
    sample = tmp_path / "sample.json"
    sample.write_text('{"a": 1, "b": 2}')
    status, out, err = call("preview", "--mapping", str(mappings), str(sample))
    assert status == 0, err
    assert out.startswith(f"== {mappings / 'a.yaml'}\n")
    assert f"== {mappings / 'b.yaml'}\n" in out and "m.b" in out
    assert err == "".join(
        f"note: {sample} is not a file of {mappings / n}'s source.path /runs/{{run_id}}/"
        f"{n.replace('.yaml', '.json')}: run would add the attributes run_id from its path\n"
        for n in ("a.yaml", "b.yaml")
    )
