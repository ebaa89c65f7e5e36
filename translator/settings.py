"""Every setting the bridge reads from its environment, parsed and checked at start.

All problems are reported together, each naming its variable and what would be right;
the values of secrets (OTLP headers) never appear in a message. Nothing here touches the
network or the metrics files.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import unquote, urlsplit

from translator.errors import SettingsError
from translator.mapping.compiler import DEFAULT_SOURCE_PATH

_EXPORTERS = ("otlp", "console", "prometheus", "none")
_PROTOCOLS = ("grpc", "http/protobuf")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def default_mapping_path() -> str:
    """The mapping shipped inside the package (a copy of mappings/ml-training.yaml)."""
    return str(resources.files("translator").joinpath("data/ml-training.yaml"))


@dataclass(frozen=True, slots=True)
class ExportSettings:
    exporters: tuple[str, ...] = ("otlp",)
    protocol: str = "grpc"
    endpoint: str = "http://localhost:4317"
    insecure: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    certificate_file: str | None = None
    client_certificate_file: str | None = None
    client_key_file: str | None = None
    timeout_s: float = 10.0
    prometheus_host: str = "localhost"
    prometheus_port: int = 9464


@dataclass(frozen=True, slots=True)
class Settings:
    mapping_path: str
    metrics_file_path: str
    metrics_file_path_set: bool
    collection_interval_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "text"
    health_port: int | None = None
    health_host: str = "0.0.0.0"
    """Every address by default: the kubelet probes the pod's IP, not its loopback."""
    state_dir: str | None = None
    export: ExportSettings = field(default_factory=ExportSettings)


class _Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[tuple[str, str]] = []

    def get(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def bad(self, name: str, message: str) -> None:
        self.problems.append((name, message))

    def number(
        self, name: str, default: float, *, minimum: float, maximum: float, unit: str = "seconds"
    ) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not minimum <= value <= maximum:
            self.bad(name, f"{raw!r} is not a number of {unit} between {minimum:g} and {maximum:g}")
            return default
        return value

    def port(self, name: str) -> int | None:
        raw = self.get(name)
        if raw is None:
            return None
        if not raw.isdigit() or not 1 <= int(raw) <= 65535:
            self.bad(name, f"{raw!r} is not a TCP port (1-65535)")
            return None
        return int(raw)

    def choice(
        self, name: str, default: str, allowed: tuple[str, ...], *, upper: bool = False
    ) -> str:
        raw = self.get(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            self.bad(name, f"{raw!r} is not one of: {', '.join(allowed)}")
            return default
        return value

    def boolean(self, name: str) -> bool | None:
        raw = self.get(name)
        if raw is None:
            return None
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        self.bad(name, f"{raw!r} is not true or false")
        return None

    def signal_or_generic_file(self, suffix: str) -> str | None:
        """OTEL_EXPORTER_OTLP_METRICS_<suffix> when set, else OTEL_EXPORTER_OTLP_<suffix>."""
        specific = f"OTEL_EXPORTER_OTLP_METRICS_{suffix}"
        if self.get(specific) is not None:
            return self.readable_file(specific)
        return self.readable_file(f"OTEL_EXPORTER_OTLP_{suffix}")

    def writable_directory(self, name: str) -> str | None:
        raw = self.get(name)
        if raw is None:
            return None
        if not os.path.isdir(raw) or not os.access(raw, os.W_OK | os.X_OK):
            self.bad(name, f"{raw!r} is not a directory this process can write to")
            return None
        return raw

    def readable_file(self, name: str) -> str | None:
        raw = self.get(name)
        if raw is None:
            return None
        if not os.path.isfile(raw) or not os.access(raw, os.R_OK):
            self.bad(name, f"{raw!r} is not a readable file")
            return None
        return raw


def load_settings(
    environ: Mapping[str, str] | None = None, *, mapping_path: str | None = None
) -> Settings:
    """Read the environment (``os.environ`` by default).

    Raises SettingsError listing every problem found.
    """
    env = _Reader(os.environ if environ is None else environ)
    mapping = mapping_path or env.get("MAPPING_PATH") or default_mapping_path()
    if not os.path.exists(mapping):
        env.bad(
            "--mapping" if mapping_path else "MAPPING_PATH",
            f"{mapping!r} does not exist; give a mapping file or a directory of them",
        )
    metrics_file = env.get("METRICS_FILE_PATH")
    settings = Settings(
        mapping_path=mapping,
        metrics_file_path=metrics_file or DEFAULT_SOURCE_PATH,
        metrics_file_path_set=metrics_file is not None,
        collection_interval_s=env.number("COLLECTION_INTERVAL", 10.0, minimum=0.05, maximum=86400),
        log_level=env.choice("LOG_LEVEL", "INFO", _LEVELS, upper=True),
        log_format=env.choice("LOG_FORMAT", "text", ("text", "json")),
        health_port=env.port("HEALTH_PORT"),
        health_host=env.get("HEALTH_HOST") or "0.0.0.0",
        state_dir=env.writable_directory("STATE_DIR"),
        export=_export_settings(env),
    )
    if env.problems:
        raise SettingsError(env.problems)
    return settings


def _export_settings(env: _Reader) -> ExportSettings:
    exporters = _exporters(env)
    protocol = env.choice("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "", _PROTOCOLS) or env.choice(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", _PROTOCOLS
    )
    certificate = env.signal_or_generic_file("CERTIFICATE")
    insecure_flag = env.boolean("OTEL_EXPORTER_OTLP_METRICS_INSECURE")
    if insecure_flag is None:
        insecure_flag = env.boolean("OTEL_EXPORTER_OTLP_INSECURE")
    endpoint, insecure = _endpoint(env, protocol, insecure_flag, certificate is not None)
    headers = _headers(env, "OTEL_EXPORTER_OTLP_HEADERS", protocol) | _headers(
        env, "OTEL_EXPORTER_OTLP_METRICS_HEADERS", protocol
    )
    timeout_name = "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"
    if env.get(timeout_name) is None:
        timeout_name = "OTEL_EXPORTER_OTLP_TIMEOUT"
    timeout_ms = env.number(timeout_name, 10_000, minimum=1, maximum=600_000, unit="milliseconds")
    client_certificate = env.signal_or_generic_file("CLIENT_CERTIFICATE")
    client_key = env.signal_or_generic_file("CLIENT_KEY")
    if (client_certificate is None) != (client_key is None):
        env.bad(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            "mutual TLS needs both the client certificate and OTEL_EXPORTER_OTLP_CLIENT_KEY",
        )
    return ExportSettings(
        exporters=exporters,
        protocol=protocol,
        endpoint=endpoint,
        insecure=insecure,
        headers=headers,
        certificate_file=certificate,
        client_certificate_file=client_certificate,
        client_key_file=client_key,
        timeout_s=timeout_ms / 1000,
        prometheus_host=env.get("OTEL_EXPORTER_PROMETHEUS_HOST") or "localhost",
        prometheus_port=env.port("OTEL_EXPORTER_PROMETHEUS_PORT") or 9464,
    )


def _exporters(env: _Reader) -> tuple[str, ...]:
    raw = env.get("OTEL_METRICS_EXPORTER")
    if raw is None:
        return ("otlp",)
    names = tuple(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    unknown = [n for n in names if n not in _EXPORTERS]
    if unknown or not names:
        env.bad(
            "OTEL_METRICS_EXPORTER",
            f"{raw!r}: use a comma-separated list of {', '.join(_EXPORTERS)}",
        )
        return ("otlp",)
    if "none" in names and len(names) > 1:
        env.bad("OTEL_METRICS_EXPORTER", f"{raw!r}: 'none' cannot be combined with other exporters")
    return tuple(n for n in names if n != "none")


def _endpoint(
    env: _Reader, protocol: str, insecure_flag: bool | None, has_certificate: bool
) -> tuple[str, bool]:
    """The exporter URL, and whether it is plaintext.

    A scheme-less ``host:port`` (the seed deployment's ``otel-collector:4317``) is taken as
    plaintext unless OTEL_EXPORTER_OTLP_INSECURE=false or a certificate asks for TLS. The
    OTLP specification would try TLS there, which fails against a plaintext collector with
    nothing delivered; an explicit ``https://`` always means TLS.
    """
    name = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    raw = env.get(name)
    signal_specific = raw is not None
    if raw is None:
        name = "OTEL_EXPORTER_OTLP_ENDPOINT"
        raw = env.get(name)
    default_port = 4317 if protocol == "grpc" else 4318
    if raw is None:
        raw = f"localhost:{default_port}"
    scheme_less = "://" not in raw
    url = urlsplit(("http://" if scheme_less else "") + raw)
    try:
        port = url.port
    except ValueError:
        env.bad(name, f"{raw!r} has a bad port; expected host:port or http(s)://host:port")
        return raw, True
    if url.scheme not in ("http", "https") or not url.hostname:
        env.bad(name, f"{raw!r} is not an endpoint; expected host:port or http(s)://host:port")
        return raw, True
    tls = (insecure_flag is False or has_certificate) if scheme_less else url.scheme == "https"
    scheme = "https" if tls else "http"
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    base = f"{scheme}://{host}:{port or default_port}"
    if protocol == "grpc":
        return base, not tls
    path = url.path.rstrip("/")
    if signal_specific:
        return base + (path or "/v1/metrics"), not tls
    return base + path + "/v1/metrics", not tls


#: Header names: an HTTP token; gRPC metadata keys are narrower (lower case, digits, -_.).
_HEADER_NAME = {
    "grpc": re.compile(r"[0-9a-z_.-]+"),
    "http/protobuf": re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+"),
}
#: What a header value can carry: no control character anywhere; gRPC metadata (other than
#: "-bin" keys) is printable ASCII, HTTP/1.1 sends latin-1.
_HEADER_VALUE = {
    "grpc": re.compile(r"[\x20-\x7e]*"),
    "http/protobuf": re.compile(r"[\x20-\x7e\xa0-\xff]*"),
}


def _headers(env: _Reader, name: str, protocol: str) -> dict[str, str]:
    """Parse ``key=value,...`` (values URL-decoded), refusing what no request could carry:
    such a header would make every export fail, and the exporter's error would quote it."""
    raw = env.get(name)
    if raw is None:
        return {}
    headers = {}
    # Never echo a value: headers carry API keys.
    hidden = "values are not shown: they may be secret"
    for i, item in enumerate(raw.split(","), start=1):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            env.bad(name, f"entry {i} is not key=value ({hidden})")
            continue
        key, value = unquote(key.strip()).lower(), unquote(value.strip())
        if not _HEADER_NAME[protocol].fullmatch(key):
            allowed = {
                "grpc": "lower-case letters, digits, '-', '_' and '.'",
                "http/protobuf": "letters, digits and !#$%&'*+-.^_`|~",
            }[protocol]
            env.bad(name, f"entry {i}: the name is not a header name ({allowed}; {hidden})")
            continue
        if not _HEADER_VALUE[protocol].fullmatch(value):
            what = "printable ASCII" if protocol == "grpc" else "printable latin-1"
            env.bad(
                name,
                f"entry {i} ({key}): the value holds a character {protocol} headers cannot "
                f"carry (a newline, NUL or other control character, or not {what}; {hidden})",
            )
            continue
        if protocol != "grpc" and value[:1] == " ":
            # Only an encoded space survives the strip above; an HTTP field value does not
            # start with one (requests refuses it at every export).
            env.bad(
                name,
                f"entry {i} ({key}): the value starts with a space (encoded as %20), which "
                f"HTTP does not send ({hidden})",
            )
            continue
        headers[key] = value
    return headers
