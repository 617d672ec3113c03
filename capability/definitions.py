"""Loaders for the HL7 R4 definition files shipped in ``capability/data`` (see PROVENANCE.md there).

Every loader is cached: the files are read once per process.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

FHIR_VERSION = "4.0.1"

COMPARTMENT_TYPES: tuple[str, ...] = (
    "Patient",
    "RelatedPerson",
    "Practitioner",
    "Encounter",
    "Device",
)


def _load(name: str) -> Any:
    with resources.files("capability").joinpath("data", name).open("rb") as f:
        return json.load(f)


@cache
def json_schema() -> dict[str, Any]:
    """The official R4 JSON Schema (draft-06). Validate a resource against ``#/definitions/<Type>``."""
    schema: dict[str, Any] = _load("fhir.schema.json")
    return schema


@cache
def search_parameter_bundle() -> dict[str, Any]:
    """The Bundle of all R4 SearchParameter resources."""
    bundle: dict[str, Any] = _load("search-parameters.json")
    return bundle


@cache
def compartment_definition(compartment_type: str) -> dict[str, Any]:
    """The official CompartmentDefinition for one of :data:`COMPARTMENT_TYPES`."""
    if compartment_type not in COMPARTMENT_TYPES:
        raise KeyError(compartment_type)
    definition: dict[str, Any] = _load(f"compartmentdefinition-{compartment_type.lower()}.json")
    return definition


@cache
def summary_elements() -> dict[str, frozenset[str]]:
    """Per resource type, its top-level elements marked `isSummary` (choices as `name[x]`)."""
    elements: dict[str, list[str]] = _load("summary-elements.json")
    return {name: frozenset(names) for name, names in elements.items()}


@cache
def required_elements() -> dict[str, tuple[str, ...]]:
    """Per JSON Schema definition (``Observation``, ``Bundle_Link``), its required elements that
    the schema's ``required`` cannot list: primitives and choices (``value[x]``).

    Generated from the R4 StructureDefinitions by ``capability/generate.py``.
    """
    table: dict[str, list[str]] = _load("required-elements.json")
    return {name: tuple(elements) for name, elements in table.items()}


@cache
def resource_types() -> frozenset[str]:
    """The 146 resource types of FHIR R4.

    The shipped JSON Schema copy also defines a few non-R4 (Medplum) types, so the list is taken
    from the Patient CompartmentDefinition, which names every R4 resource type that is a
    DomainResource or Bundle/Binary, plus ``Parameters``.
    """
    names = {entry["code"] for entry in compartment_definition("Patient")["resource"]}
    names.add("Parameters")
    return frozenset(names)
