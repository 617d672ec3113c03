"""The access policy: rules `{client_role, entity_name, operation, validator}`, default deny.

A policy is a JSON list of rules. It is checked against `POLICY_SCHEMA` when the server starts;
a bad file stops the server with a message naming the rule (by position) and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

import jsonschema

ROLES = ("Patient", "RelatedPerson", "Practitioner", "System", "Admin")
OPERATIONS = ("read", "search", "history", "create", "update", "patch", "delete")
VALIDATORS = (
    "patient_compartment",
    "relatedperson_compartment",
    "practitioner_relationship",
    "allow",
    "deny",
)
WRITES = frozenset({"create", "update", "patch", "delete"})
# The writes that leave a resource behind: what they write is checked, not only what they touch.
RESULTS = frozenset({"create", "update", "patch"})


class Reason(StrEnum):
    """Why a request was denied: stable codes clients and auditors can rely on."""

    INVALID_ROLE = "invalid_role"
    INVALID_COMPARTMENT = "invalid_compartment"
    REFERENCE_MISMATCH = "reference_mismatch"
    CONSENT_REQUIRED = "consent_required"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    UNVERIFIED_LINK = "unverified_link"
    LINK_INACTIVE = "link_inactive"
    FOREIGN_COMPARTMENT = "foreign_compartment"

    @property
    def message(self) -> str:
        """The short human message of the reason ("Invalid role")."""
        return self.value.replace("_", " ").capitalize()


@dataclass(frozen=True, slots=True)
class Rule:
    client_role: str  # a role of ROLES, or "*"
    entity_name: str  # a resource type, or "*"
    operation: str  # an operation of OPERATIONS, or "*"
    validator: str
    description: str = ""

    def matches(self, role: str, resource_type: str, operation: str) -> bool:
        return (
            self.client_role in {"*", role}
            and self.entity_name in {"*", resource_type}
            and self.operation in {"*", operation}
        )


def policy_schema(resource_types: Iterable[str]) -> dict[str, Any]:
    """The JSON Schema of a policy file, for the given resource types."""
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "array",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["client_role", "entity_name", "operation", "validator"],
            "properties": {
                "client_role": {"enum": [*ROLES, "*"]},
                "entity_name": {"enum": [*sorted(resource_types), "*"]},
                "operation": {"enum": [*OPERATIONS, "*"]},
                "validator": {"enum": list(VALIDATORS)},
                "description": {"type": "string"},
            },
        },
    }


class PolicyError(ValueError):
    """A policy file that does not follow the schema; the message names the rule and field."""


def load_policy(document: Any, resource_types: Iterable[str]) -> tuple[Rule, ...]:
    """The rules of a parsed policy file, or PolicyError naming every problem found."""
    validator = jsonschema.Draft7Validator(policy_schema(resource_types))
    problems = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if problems:
        raise PolicyError("; ".join(_describe(problem) for problem in problems[:20]))
    return tuple(Rule(**rule) for rule in document)


def _describe(problem: jsonschema.ValidationError) -> str:
    path = list(problem.absolute_path)
    if not path:
        return f"the policy must be a list of rules: {problem.message}"
    where = f"rule {path[0] + 1}" if isinstance(path[0], int) else str(path[0])
    if len(path) > 1:
        where += f", field `{path[1]}`"
    elif problem.validator == "required" or problem.validator == "additionalProperties":
        return f"{where}: {problem.message}"
    if problem.validator == "enum":
        return f"{where}: {problem.instance!r} is not one of the allowed values"
    return f"{where}: {problem.message}"


def default_policy(resource_types: Iterable[str]) -> tuple[Rule, ...]:
    """The policy shipped with the server (`default-policy.json`, every rule documented)."""
    text = resources.files("compartments").joinpath("default-policy.json").read_text()
    return load_policy(json.loads(text), resource_types)


def applicable(rules: Iterable[Rule], role: str, resource_type: str, operation: str) -> list[Rule]:
    """The rules that apply to a request, in file order."""
    return [rule for rule in rules if rule.matches(role, resource_type, operation)]


class Policy:
    """The rules, with the rules that apply to each (role, type, operation) remembered: a
    decision looks them up instead of scanning the file."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        self._applicable: dict[tuple[str, str, str], tuple[Rule, ...]] = {}

    def applicable(self, role: str, resource_type: str, operation: str) -> tuple[Rule, ...]:
        key = (role, resource_type, operation)
        found = self._applicable.get(key)
        if found is None:
            found = self._applicable[key] = tuple(
                applicable(self.rules, role, resource_type, operation)
            )
        return found
