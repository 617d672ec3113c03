"""The FHIR type model that compilation is directed by, read from the R4 JSON Schema."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from capability.definitions import json_schema, resource_types
from fhir_server.search.fhirpath.base import FhirPathUnsupported

# --------------------------------------------------------------------------------------------
# FHIR type facts the JSON Schema does not state.

PRIMITIVE_TYPES: Final = frozenset(
    {
        "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
        "instant", "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt",
        "uri", "url", "uuid", "xhtml",
    }
)  # fmt: skip

# Specializations by the R4 StructureDefinitions' baseDefinition, so `as`/`ofType` accept subtypes.
_SUBTYPES: Final[Mapping[str, frozenset[str]]] = {
    "Quantity": frozenset(
        {"Age", "Count", "Distance", "Duration", "MoneyQuantity", "SimpleQuantity"}
    ),
    "string": frozenset({"code", "id", "markdown"}),
    "uri": frozenset({"canonical", "oid", "url", "uuid"}),
    "integer": frozenset({"positiveInt", "unsignedInt"}),
}

_SYSTEM_TYPES: Final[Mapping[str, str]] = {
    "Boolean": "boolean",
    "String": "string",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
    "Quantity": "Quantity",
}

# The JSON Schema has no definitions for the abstract Resource and DomainResource.
_RESOURCE_ELEMENTS: Final[Mapping[str, str]] = {
    "id": "id",
    "meta": "Meta",
    "implicitRules": "uri",
    "language": "code",
}
_DOMAIN_RESOURCE_ELEMENTS: Final[Mapping[str, str]] = {
    **_RESOURCE_ELEMENTS,
    "text": "Narrative",
    "contained": "Resource",
    "extension": "Extension",
    "modifierExtension": "Extension",
}
_NOT_DOMAIN_RESOURCES: Final = frozenset({"Binary", "Bundle", "Parameters"})
_ABSTRACT_RESOURCES: Final = frozenset({"Resource", "DomainResource"})

_RESOURCE_TYPES: Final = resource_types()


# --------------------------------------------------------------------------------------------
# The type model, read from the JSON Schema.


@dataclass(frozen=True, slots=True)
class _Element:
    key: str  # the JSON property: `effectiveDateTime` for the choice alternative of `effective`
    type: str  # a FHIR type name; "Resource" where any resource may appear


class _Model:
    def __init__(self, definitions: Mapping[str, Any]) -> None:
        self.definitions = definitions
        self.memo: dict[tuple[str, str], tuple[_Element, ...]] = {}

    def is_type(self, name: str) -> bool:
        return (
            name in PRIMITIVE_TYPES
            or name in _ABSTRACT_RESOURCES
            or name in _RESOURCE_TYPES
            or "properties" in self.definitions.get(name, {})
        )

    def elements(self, owner: str, name: str) -> tuple[_Element, ...]:
        """The JSON properties that FHIRPath `owner.name` reads: one, or one per choice type."""
        key = (owner, name)
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = self._elements(owner, name)
        return found

    def _elements(self, owner: str, name: str) -> tuple[_Element, ...]:
        if owner in _ABSTRACT_RESOURCES:
            table = _RESOURCE_ELEMENTS if owner == "Resource" else _DOMAIN_RESOURCE_ELEMENTS
            return (_Element(name, table[name]),) if name in table else ()
        if owner in PRIMITIVE_TYPES:
            raise FhirPathUnsupported(
                f"`{name}` of the primitive type `{owner}` (primitive extensions) is not supported"
            )
        properties: Mapping[str, Any] = self.definitions.get(owner, {}).get("properties", {})
        if not properties:
            raise FhirPathUnsupported(f"unknown type `{owner}`")
        if name in properties and name != "resourceType":
            return (_Element(name, self._declared_type(properties[name])),)
        alternatives: list[_Element] = []
        for key, prop in properties.items():
            if len(key) <= len(name) or not key.startswith(name) or not key[len(name)].isupper():
                continue
            suffix = key[len(name) :]
            choice_type = suffix if suffix in self.definitions else suffix[0].lower() + suffix[1:]
            if not self.is_type(choice_type):
                continue
            declared = self._declared_type(prop)
            # An inline schema (pattern only) is how the schema spells some primitive alternatives;
            # a $ref that disagrees with the suffix means `key` is an ordinary element.
            if declared and declared != choice_type:
                continue
            alternatives.append(_Element(key, choice_type))
        return tuple(alternatives)

    @staticmethod
    def _declared_type(prop: Mapping[str, Any]) -> str:
        items: Mapping[str, Any] = prop.get("items", {})
        ref = prop.get("$ref") or items.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            return "Resource" if name == "ResourceList" else name
        if "enum" in prop or "enum" in items:
            return "code"
        return ""

    def is_subtype(self, actual: str, wanted: str) -> bool:
        if actual == wanted or actual in _SUBTYPES.get(wanted, ()):
            return True
        if actual in _RESOURCE_TYPES:
            return wanted == "Resource" or (
                wanted == "DomainResource" and actual not in _NOT_DOMAIN_RESOURCES
            )
        return actual == "DomainResource" and wanted == "Resource"

    def resolve_type_name(self, spec: str, expression: str) -> str:
        qualifier, _, name = spec.rpartition(".")
        if qualifier == "System" or (not qualifier and not self.is_type(name)):
            mapped = _SYSTEM_TYPES.get(name)
            if mapped is None:
                raise FhirPathUnsupported(f"unknown type `{spec}` in `{expression}`")
            return mapped
        if not self.is_type(name):
            raise FhirPathUnsupported(f"unknown type `{spec}` in `{expression}`")
        return name


@cache
def _model() -> _Model:
    return _Model(json_schema()["definitions"])


@cache
def element_keys(resource_type: str, name: str) -> frozenset[str]:
    """The JSON properties of a `resource_type` that carry its top-level element `name` (a base
    name: `value` for `value[x]`, whose properties are `valueQuantity`, `valueString`...), each
    with the `_name` property of a primitive's id and extensions. Empty for no such element."""
    name = name.removesuffix("[x]")
    try:
        found = _model().elements(resource_type, name) if name else ()
    except FhirPathUnsupported:
        return frozenset()
    return frozenset(k for e in found for k in (e.key, f"_{e.key}"))
