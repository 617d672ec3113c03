"""Compartment membership of a resource, from the five official R4 CompartmentDefinitions.

Computed at write time and stored on the row (DESIGN.md section 3), so that every access check and
every search filter is part of the SQL WHERE. For each resource type, the parameters that the
definitions name are resolved once into (accessor, compartment types) rules; a call then evaluates
each distinct parameter once, however many compartments name it (Observation ``performer`` counts
for the Patient, Practitioner and RelatedPerson compartments).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from capability.definitions import COMPARTMENT_TYPES, compartment_definition, resource_types
from compartments.ids import is_id
from fhir_server.search.fhirpath import Accessor
from fhir_server.search.parameters import reference_targets, search_params

SELF_PARAM: Final = "{def}"
"""The CompartmentDefinition param that stands for the focal resource itself."""


@dataclass(frozen=True, slots=True)
class _Rule:
    code: str
    accessor: Accessor
    compartments: frozenset[str]  # the compartment types whose references this param yields


@dataclass(frozen=True, slots=True)
class _Plan:
    rules: tuple[_Rule, ...]
    # The five compartment types are each in their own compartment (Patient/7 is in Patient/7),
    # whether or not the definition says `{def}`: R4's Patient and Device definitions do not.
    is_compartment_type: bool


@cache
def _plan(resource_type: str) -> _Plan:
    by_code: dict[str, set[str]] = {}
    for compartment in COMPARTMENT_TYPES:
        for entry in compartment_definition(compartment)["resource"]:
            if entry["code"] != resource_type:
                continue
            for code in entry.get("param", ()):
                if code != SELF_PARAM:
                    by_code.setdefault(code, set()).add(compartment)
    params = search_params(resource_type)
    rules: list[_Rule] = []
    for code, compartments in sorted(by_code.items()):
        param = params.get(code)
        if param is None or param.accessor is None:
            raise ValueError(
                f"compartment definitions name `{code}`, which `{resource_type}` has no "
                "expression for"
            )
        rules.append(_Rule(code, param.accessor, frozenset(compartments)))
    return _Plan(tuple(rules), resource_type in COMPARTMENT_TYPES)


def compartment_params(resource_type: str) -> Mapping[str, frozenset[str]]:
    """The search parameter codes that place a ``resource_type`` in compartments, and which ones."""
    return {rule.code: rule.compartments for rule in _plan(resource_type).rules}


def compartment_membership(
    resource: Mapping[str, Any], *, local_bases: Collection[str] = ()
) -> list[str]:
    """Every compartment the resource is in, as sorted unique ``"Type/id"`` strings.

    An Observation with subject ``Patient/1`` and performers ``Practitioner/3`` and
    ``RelatedPerson/9`` gives ``["Patient/1", "Practitioner/3", "RelatedPerson/9"]``. References
    count as :func:`~fhir_server.search.parameters.reference_targets` reads them, with
    ``local_bases`` naming this server's absolute base URLs. The caller sets ``id`` first, also on
    create. Raises ValueError for a resource whose ``resourceType`` is not an R4 type.
    """
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or resource_type not in resource_types():
        raise ValueError(f"unknown resource type `{resource_type}`")
    plan = _plan(resource_type)
    found: set[str] = set()
    if plan.is_compartment_type:
        own_id = resource.get("id")
        if isinstance(own_id, str) and is_id(own_id):
            found.add(f"{resource_type}/{own_id}")
    for rule in plan.rules:
        values = rule.accessor(resource)
        if not values:
            continue
        for target_type, target_id in reference_targets(values, local_bases=local_bases):
            if target_type in rule.compartments:
                found.add(f"{target_type}/{target_id}")
    return sorted(found)
