"""The Prometheus alerting rules shipped in deploy/prometheus: each expression parses as PromQL
and selects only metrics, labels and label values that the server exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client.metrics import MetricWrapperBase

from fhir_server import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Series Prometheus itself writes for each scrape of the job, and their labels.
SCRAPE_SERIES = {"up": {"job", "instance"}}
# Labels every series gets from the scrape.
TARGET_LABELS = {"job", "instance"}
# The values some labels take (a matcher on another value would never match).
LABEL_VALUES = {
    ("db_pool_connections", "figure"): {"max", "size", "available", "requests_waiting"},
    ("relationship_verifications_total", "result"): {"granted", "partial", "denied", "error"},
}


def exported() -> dict[str, set[str]]:
    """Each series name the server exports, with its labels."""
    series: dict[str, set[str]] = dict(SCRAPE_SERIES)
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        name, kind = value._name, value._type
        labels = set(value._labelnames) | TARGET_LABELS
        if kind == "counter":
            series[f"{name}_total"] = labels
        elif kind == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_count"] = series[f"{name}_sum"] = labels
        else:
            series[name] = labels
    return series


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def selectors(expr: str) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def test_the_alerts_the_specifications_ask_for_are_there() -> None:
    names = {rule["alert"] for rule in rules()}
    assert {
        "FhirServerHighErrorRate",
        "FhirServerGetLatencyP95",
        "FhirServerWriteLatencyP95",
        "FhirServerInstanceDown",
        "FhirServerDatabasePoolSaturated",
        "RelationshipVerificationFailures",
        "RelationshipUnusualDelegationPattern",
        "EmergencyBypassUsed",
    } <= names
    for rule in rules():
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_every_expression_selects_what_the_server_exports() -> None:
    series = exported()
    for rule in rules():
        found = selectors(rule["expr"])
        assert found, rule["alert"]
        for selector in found:
            assert selector.name in series, (rule["alert"], selector.name)
            for matcher in selector.matchers.matchers:
                assert matcher.name in series[selector.name], (rule["alert"], matcher.name)
                values = LABEL_VALUES.get((selector.name, matcher.name))
                if values is not None and str(matcher.op) == "MatchOp.Equal":
                    assert matcher.value in values, (rule["alert"], matcher.value)
                if values is not None and str(matcher.op) == "MatchOp.Re":
                    assert set(matcher.value.split("|")) <= values, (rule["alert"], matcher.value)


def test_the_checks_catch_a_wrong_rule() -> None:
    """The checks above fail on a misspelt metric, an unknown label and bad PromQL."""
    series = exported()
    assert selectors('rate(http_request_total{status="500"}[5m])')[0].name not in series
    label = selectors('rate(http_requests_total{code="500"}[5m])')[0].matchers.matchers[0]
    assert label.name not in series["http_requests_total"]
    try:
        promql_parser.parse("rate(http_requests_total[5m)")
    except ValueError:
        pass
    else:
        raise AssertionError("bad PromQL parsed")


def test_the_emergency_alert_fires_at_once() -> None:
    emergency = next(r for r in rules() if r["alert"] == "EmergencyBypassUsed")
    assert "for" not in emergency and emergency["labels"]["sla"] == "immediate"


def test_prometheus_configuration_loads_the_rules_and_scrapes_the_job() -> None:
    config = yaml.safe_load((RULES.parent / "prometheus.yml").read_text())
    assert all((RULES.parent / f).exists() for f in config["rule_files"])
    assert [job["job_name"] for job in config["scrape_configs"]] == ["fhir-server"]
