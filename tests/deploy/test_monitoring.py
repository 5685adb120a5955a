"""deploy/monitoring: the runbook's alerts as installed, and names that exist.

``make deploy-check`` runs the same checks (and promtool); these keep them honest.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"


@pytest.fixture(scope="module")
def validate() -> ModuleType:
    """deploy/validate.py, the script behind make deploy-check, as a module."""
    spec = importlib.util.spec_from_file_location(
        "deploy_validate", ROOT / "deploy" / "validate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def runbook_groups() -> object:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text[text.index("### Alerts worth setting") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    return yaml.safe_load(block.group(1))["groups"]


def test_the_prometheus_rule_holds_the_runbooks_alerts() -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text(encoding="utf-8"))
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == runbook_groups()


def test_every_alert_and_dashboard_query_names_exported_metrics(validate: ModuleType) -> None:
    expressions = {**validate.rule_expressions(), **validate.dashboard_expressions()}
    assert len(expressions) > 20
    problems = {name: validate.expression_problems(e) for name, e in expressions.items()}
    assert {name: found for name, found in problems.items() if found} == {}


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("rate(relay_events_publishd_total[5m])", "no metric relay_events_publishd_total"),
        ("relay_circuit_state == 2", None),
        ('max(relay_circuit_state{kind="open"})', "relay_circuit_state has no label kind"),
        ("sum by (route) (relay_events_published_total)", "no label route"),
        ('sum by (pod) (relay_ready{namespace="x"})', None),
        (
            "relay_publish_latency_seconds_created",
            "no metric relay_publish_latency_seconds_created",
        ),
    ],
)
def test_the_name_check_finds_what_the_relay_does_not_export(
    validate: ModuleType, expression: str, problem: str | None
) -> None:
    found = validate.expression_problems(expression)
    assert found[0].startswith(problem) if problem else found == [], found


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    board = json.loads((MONITORING / "relay-dashboard.json").read_text(encoding="utf-8"))
    queries = " ".join(
        target["expr"] for panel in board["panels"] for target in panel.get("targets", [])
    )
    for metric in (
        "relay_events_published_total",
        "relay_events_retried_total",
        "relay_events_dead_lettered_total",
        "relay_publish_latency_seconds_bucket",
        "relay_oldest_pending_age_seconds",
        "relay_route_paused",
        "relay_circuit_state",
        "relay_ready",
    ):
        assert metric in queries, metric
    assert "histogram_quantile(0.99" in queries
    assert "by (outcome_class)" in queries


def test_the_inbox_is_watched_by_alerts_and_the_dashboard() -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text(encoding="utf-8"))
    inbox = {
        alert["alert"]: alert["expr"]
        for group in rule["spec"]["groups"]
        if group["name"] == "relay-inbox"
        for alert in group["rules"]
    }
    assert sorted(inbox) == [
        "RelayInboxConsumersBehind",
        "RelayInboxMalformedItems",
        "RelayInboxNotPolled",
        "RelayInboxReceiveErrors",
        "RelayInboxStale",
    ]
    assert "max by (country, tenant) (relay_inbox_polling) == 0" in inbox["RelayInboxNotPolled"]
    # A route no relay is configured for any more must not alert for ever.
    assert "relay_inbox_polling" in inbox["RelayInboxStale"]
    tests = yaml.safe_load((MONITORING / "prometheusrule.test.yaml").read_text(encoding="utf-8"))[
        "tests"
    ]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert set(inbox) <= tested

    board = json.loads((MONITORING / "relay-dashboard.json").read_text(encoding="utf-8"))
    queries = " ".join(
        target["expr"] for panel in board["panels"] for target in panel.get("targets", [])
    )
    for metric in (
        "relay_inbox_events_received_total",
        "relay_inbox_lag_seconds",
        "relay_inbox_checkpoint_age_seconds",
        "relay_inbox_receive_errors_total",
        "relay_inbox_items_malformed_total",
        "relay_inbox_polling",
        "relay_inbox_pending_events",
        "relay_inbox_oldest_pending_age_seconds",
    ):
        assert metric in queries, metric
    assert "by (country, tenant, event_type)" in queries


def test_the_component_lists_its_files() -> None:
    component = yaml.safe_load((MONITORING / "kustomization.yaml").read_text(encoding="utf-8"))
    assert component["kind"] == "Component"
    for name in component["resources"]:
        assert (MONITORING / name).exists()
    [generator] = component["configMapGenerator"]
    assert generator["files"] == ["relay-dashboard.json"]
    assert generator["options"]["labels"]["grafana_dashboard"] == "1"
