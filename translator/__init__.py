"""ml-metrics-bridge: ML-training JSON metric files in, OpenTelemetry metrics out.

The data flows one way through these modules::

    settings ─┐
    mapping ──┴─> sources ──> engine ──> instruments ──> export
     (YAML -> Plan)  (file -> Snapshot)  (record -> Points)  (OTel SDK)  (OTLP, console, Prometheus)

``runtime`` drives the loop; ``cli`` is the command line.
"""

from __future__ import annotations

__version__ = "0.1.0"

from translator.engine import DropReason, Evaluation, Point, evaluate
from translator.errors import BridgeError, ConfigError, MappingError, SettingsError, SourceError
from translator.mapping import load_plan

__all__ = [
    "BridgeError",
    "ConfigError",
    "DropReason",
    "Evaluation",
    "MappingError",
    "Point",
    "SettingsError",
    "SourceError",
    "__version__",
    "evaluate",
    "load_plan",
]
