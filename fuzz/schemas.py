"""Self-contained, bounded JSON Schemas cut from the official R4 schema, for hypothesis-jsonschema.

The R4 schema is recursive (Extension holds Extensions, Identifier holds a Reference that holds an
Identifier, a Bundle holds any resource) and hypothesis-jsonschema cannot generate from recursive
references. `resource_schema()` inlines every `$ref` of one resource definition down to a depth,
drops the elements that only add recursion or size (extensions, primitive-extension `_x`
elements, `contained`, narrative, `meta`) and caps arrays, so what comes out is a finite schema
whose instances are still valid against the official definition (it only ever removes optional
elements and narrows arrays).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from capability.definitions import json_schema, required_elements

# The server's own tables of what the R4 JSON Schema cannot say (private to the validator; a tool
# that generates what the validator accepts reads them rather than copying them).
from fhir_server.validation import (
    _INTEGER_RANGES,
    _NON_R4_PROPERTIES,
    _PATTERN_OVERRIDES,
)

_REQUIRED_VALUES = required_elements()

# Optional elements never generated: recursion (extension, contained), size (text), or set by the
# server (meta, id).
_DROPPED = frozenset(
    {"extension", "modifierExtension", "contained", "text", "meta", "implicitRules", "id"}
)
_MAX_ITEMS = 2
# Of a choice element's variants (value[x]), the one generated: the first of these it has.
_PREFERRED = ("Quantity", "String", "CodeableConcept", "DateTime", "Reference", "Boolean", "Period")


def _definitions() -> dict[str, Any]:
    definitions: dict[str, Any] = json_schema()["definitions"]
    return definitions


@functools.cache
def _type_names() -> frozenset[str]:
    return frozenset(n[0].upper() + n[1:] for n in _definitions() if "_" not in n)


def _choices(properties: dict[str, Any]) -> dict[str, list[str]]:
    """The variants of each choice element by its base name (as the server's validator groups
    them: single-valued elements named base + type that share one description)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for key, spec in properties.items():
        if key.startswith("_") or spec.get("type") == "array":
            continue
        for cut in range(1, len(key)):
            if key[cut].isupper() and key[cut:] in _type_names():
                groups.setdefault((key[:cut], spec.get("description", "")), []).append(key)
    return {base: variants for (base, _), variants in groups.items() if len(variants) > 1}


def _inline(node: Any, depth: int, required: bool) -> Any | None:
    """`node` with every `$ref` inlined; None when an optional element is past the depth."""
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name == "ResourceList":
            return None
        target = _definitions()[name]
        if "properties" in target:
            if depth <= 0 and not required:
                return None
            return _object(name, target, depth - 1)
        if name in _INTEGER_RANGES:
            low, high = _INTEGER_RANGES[name]
            return {"type": "integer", "minimum": low, "maximum": high}
        primitive = {k: v for k, v in target.items() if k != "description"}
        if primitive.get("type") == "number":
            primitive.pop("pattern", None)
        if name in _PATTERN_OVERRIDES:
            primitive = {"type": "string", "pattern": _PATTERN_OVERRIDES[name]}
        return primitive
    if node.get("type") == "array" and "items" in node:
        items = _inline(node["items"], depth, required)
        if items is None:
            return None
        return {"type": "array", "items": items, "minItems": 1, "maxItems": _MAX_ITEMS}
    return {k: v for k, v in node.items() if k != "description"}


def _object(name: str, definition: dict[str, Any], depth: int) -> dict[str, Any]:
    every = definition["properties"]
    required = set(definition.get("required", ()))
    choices = _choices(every)
    skipped: set[str] = set(_NON_R4_PROPERTIES.get(name, ()))
    for base, variants in choices.items():
        kept = next((v for t in _PREFERRED for v in variants if v == base + t), variants[0])
        skipped.update(v for v in variants if v != kept)
        if f"{base}[x]" in _REQUIRED_VALUES.get(name, ()):
            required.add(kept)
    required.update(e for e in _REQUIRED_VALUES.get(name, ()) if not e.endswith("[x]"))
    properties: dict[str, Any] = {}
    for key, prop in every.items():
        if key in skipped or (key not in required and (key.startswith("_") or key in _DROPPED)):
            continue
        inlined = _inline(prop, depth, key in required)
        if inlined is not None:
            properties[key] = inlined
        elif key in required:
            raise ValueError(f"required element `{name}.{key}` cannot be generated")
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "minProperties": 1,
    }
    if required:
        schema["required"] = sorted(required)
    return schema


@functools.cache
def _resource_schema(resource_type: str, depth: int) -> dict[str, Any]:
    schema = _object(resource_type, _definitions()[resource_type], depth)
    schema["required"] = sorted({*schema.get("required", ()), "resourceType"})
    return schema


def resource_schema(resource_type: str, depth: int = 2) -> dict[str, Any]:
    """A finite schema of `resource_type`: datatypes inlined `depth` levels deep."""
    return copy.deepcopy(_resource_schema(resource_type, depth))
