"""OperationOutcome bodies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from fhir_server.errors import Issue


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    body: list[dict[str, Any]] = []
    for issue in issues:
        item: dict[str, Any] = {"severity": issue.severity, "code": issue.code}
        if issue.details:
            system, code, display = issue.details
            item["details"] = {
                "coding": [{"system": system, "code": code, "display": display}],
                "text": display,
            }
        if issue.diagnostics:
            item["diagnostics"] = issue.diagnostics
        if issue.expression:
            item["expression"] = list(issue.expression)
        body.append(item)
    return {"resourceType": "OperationOutcome", "issue": body}


def operation_outcome_bytes(issues: Sequence[Issue]) -> bytes:
    return orjson.dumps(operation_outcome(issues))


def information(diagnostics: str) -> bytes:
    return operation_outcome_bytes([Issue("informational", diagnostics, severity="information")])
