"""The R4 SearchParameters per resource type, each with its compiled accessor.

Built from ``capability``'s copy of the official ``search-parameters.json``. A SearchParameter shared
by several base types (``clinical-patient``: ``AllergyIntolerance.patient | CarePlan.subject.where(...)
| ...``) is kept, for each base, with only the part of its expression that applies to that base:
indexing a CarePlan must not evaluate the other thirty parts.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any, Final

from capability.definitions import resource_types, search_parameter_bundle
from compartments.references import bases as normalized_bases
from compartments.references import local_reference
from fhir_server.search.fhirpath import (
    Accessor,
    FhirPathUnsupported,
    RelativeAccessor,
    compile_expression,
    compile_relative,
    restrict_expression,
    result_types,
)

_RESOURCE_TYPES: Final = resource_types()

UNSUPPORTED_EXPRESSIONS: Final[Mapping[str, str]] = MappingProxyType({})
"""SearchParameter id -> why its expression is not compiled (such a parameter has no accessor).

Empty: every one of the 1,375 R4 expressions compiles. A new entry must say why, and the test
``test_every_expression_compiles`` keeps this list honest in both directions.
"""

# Modifiers by parameter type, as the R4 search page lists them, in their URL spelling
# (`of-type`, `not-in`); "type" stands for the reference modifier `:[type]` (`subject:Patient`).
MODIFIERS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "number": ("missing",),
        "date": ("missing",),
        "string": ("missing", "exact", "contains"),
        "token": ("missing", "text", "not", "above", "below", "in", "not-in", "of-type"),
        "reference": ("missing", "type", "identifier", "above", "below"),
        "composite": ("missing",),
        "quantity": ("missing",),
        "uri": ("missing", "above", "below"),
        "special": (),
    }
)

_NOT_DOMAIN_RESOURCES: Final = frozenset({"Binary", "Bundle", "Parameters"})


@dataclass(frozen=True, slots=True)
class Component:
    """One part of a composite SearchParameter, evaluated on each value of the composite's path."""

    definition: str  # canonical URL of the SearchParameter that gives the part's type and name
    code: str
    type: str
    expression: str
    accessor: RelativeAccessor = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class SearchParam:
    """A SearchParameter as it applies to one resource type."""

    code: str
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    resource_type: str  # the base type this entry serves
    id: str
    url: str
    expression: str | None  # restricted to `resource_type`; None for _text, _content, _query
    targets: tuple[str, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    multiple_or: bool = True
    multiple_and: bool = True
    components: tuple[Component, ...] = ()
    accessor: Accessor | None = field(default=None, repr=False, compare=False)


@cache
def _definitions() -> tuple[Mapping[str, list[dict[str, Any]]], Mapping[str, dict[str, Any]]]:
    """SearchParameter resources by base type, and by canonical URL (for composite components)."""
    by_base: dict[str, list[dict[str, Any]]] = {}
    by_url: dict[str, dict[str, Any]] = {}
    for entry in search_parameter_bundle()["entry"]:
        definition: dict[str, Any] = entry["resource"]
        by_url[definition["url"]] = definition
        for base in definition["base"]:
            by_base.setdefault(base, []).append(definition)
    return by_base, by_url


def _applies_to(base: str, resource_type: str) -> bool:
    return (
        base == resource_type
        or base == "Resource"
        or (base == "DomainResource" and resource_type not in _NOT_DOMAIN_RESOURCES)
    )


def _build(definition: Mapping[str, Any], resource_type: str) -> SearchParam:
    sp_id: str = definition["id"]
    sp_type: str = definition["type"]
    full = definition.get("expression")
    expression = restrict_expression(full, resource_type) if full else None
    if full and expression is None:
        raise FhirPathUnsupported(
            f"search parameter `{sp_id}` has no expression part for `{resource_type}`"
        )
    accessor: Accessor | None = None
    components: tuple[Component, ...] = ()
    if expression is not None and sp_id not in UNSUPPORTED_EXPRESSIONS:
        accessor = compile_expression(expression, context_type=resource_type)
        if sp_type == "composite":
            context = result_types(expression, context_types=(resource_type,))
            components = tuple(
                _component(c, context, resource_type, sp_id) for c in definition["component"]
            )
    return SearchParam(
        code=definition["code"],
        type=sp_type,
        resource_type=resource_type,
        id=sp_id,
        url=definition["url"],
        expression=expression,
        targets=tuple(definition.get("target", ())),
        modifiers=MODIFIERS[sp_type],
        comparators=tuple(definition.get("comparator", ())),
        # Absent means "not said"; R4 servers accept several values unless told otherwise.
        multiple_or=definition.get("multipleOr", True),
        multiple_and=definition.get("multipleAnd", True),
        components=components,
        accessor=accessor,
    )


def _component(
    component: Mapping[str, Any], context: tuple[str, ...], resource_type: str, sp_id: str
) -> Component:
    url: str = component["definition"]
    referenced = _definitions()[1].get(url)
    if referenced is None:
        raise FhirPathUnsupported(f"composite `{sp_id}` names an unknown component `{url}`")
    expression: str = component["expression"]
    return Component(
        definition=url,
        code=referenced["code"],
        type=referenced["type"],
        expression=expression,
        accessor=compile_relative(expression, context_types=context, resource_type=resource_type),
    )


@cache
def search_params(resource_type: str) -> Mapping[str, SearchParam]:
    """The SearchParameters of ``resource_type`` by code, with those of Resource/DomainResource.

    Compiled on first use per type and cached. Raises ValueError for a type that is not R4.
    """
    if resource_type not in resource_types():
        raise ValueError(f"unknown resource type `{resource_type}`")
    by_base = _definitions()[0]
    params: dict[str, SearchParam] = {}
    for base, definitions in by_base.items():
        if not _applies_to(base, resource_type):
            continue
        for definition in definitions:
            param = _build(definition, resource_type)
            if param.code in params:
                raise ValueError(
                    f"search parameter code `{param.code}` is defined twice for `{resource_type}`"
                )
            params[param.code] = param
    return MappingProxyType(dict(sorted(params.items())))


def extract_values(resource: Mapping[str, Any], param: SearchParam) -> list[Any]:
    """The JSON values ``param``'s expression selects from ``resource`` (none if it has none)."""
    accessor = param.accessor
    return [] if accessor is None else accessor(resource)


def reference_targets(
    values: Iterable[Any], *, local_bases: Collection[str] = ()
) -> list[tuple[str, str]]:
    """The local resources that Reference values (or reference/canonical strings) point to.

    Gives unique ``(type, id)`` pairs in order of appearance, for: relative ``Type/id``; absolute
    ``<base>/Type/id`` whose ``<base>`` is one of ``local_bases`` (compared without a trailing
    slash, e.g. ``http://127.0.0.1:8080/fhir``); either with ``/_history/<version>`` or a canonical
    ``|<version>``, which is dropped. Skipped: ``#contained`` and ``urn:uuid:``/``urn:oid:``
    references (the resource they name has no identity of its own on this server),
    identifier-only and conditional references, references to other servers, types that are not
    R4 resource types, and ids outside ``[A-Za-z0-9\\-.]{1,64}``.
    """
    targets: list[tuple[str, str]] = []
    bases: frozenset[str] | None = None
    for value in values:
        if isinstance(value, dict):
            reference = value.get("reference")
            if not isinstance(reference, str):
                continue
        elif isinstance(value, str):
            reference = value
        else:
            continue
        if bases is None:
            bases = normalized_bases(local_bases)
        pair = local_reference(reference, bases, _RESOURCE_TYPES)
        if pair is None:
            continue
        if pair not in targets:
            targets.append(pair)
    return targets
