"""The CapabilityStatement, generated from what the server really supports."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from capability.definitions import FHIR_VERSION, resource_types

SERVER_NAME = "fhir-server"
SERVER_VERSION = "0.1.0"

# Interactions every resource type supports, in the order the R4 TypeRestfulInteraction lists them.
TYPE_INTERACTIONS: tuple[str, ...] = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
)
SYSTEM_INTERACTIONS: tuple[str, ...] = ("transaction", "batch", "history-system")
FORMATS: tuple[str, ...] = ("application/fhir+json", "json")
PATCH_FORMATS: tuple[str, ...] = ("application/json-patch+json",)


SEARCH_RESULT_DOCUMENTATION = (
    "Search result parameters: _count (up to the configured maximum), _sort (several keys, - for "
    "descending), _total (none, estimate, accurate), _summary (true, count, data, text, false), _elements, _include and _revinclude (with :iterate, 3 levels), POST "
    "[type]/_search with a form body, compartment search [compartment]/[id]/[type] and "
    "[compartment]/[id]/*. Paging by the next link's opaque _page cursor. Unknown parameters get "
    "400 unless Prefer: handling=lenient."
)


def capability_statement(
    *,
    base_url: str,
    update_create: bool,
    date: str,
    search: Callable[[str], Mapping[str, list[Any]]] | None = None,
) -> dict[str, Any]:
    """`search(type)` gives the searchParam, searchInclude and searchRevInclude of a type."""
    resources: list[dict[str, Any]] = [
        {
            "type": name,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{name}",
            "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": update_create,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            **(search(name) if search else {}),
        }
        for name in sorted(resource_types())
    ]
    if search:
        for resource in resources:
            resource["interaction"].append({"code": "search-type"})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "fhir-server",
        "kind": "instance",
        "software": {"name": SERVER_NAME, "version": SERVER_VERSION},
        "implementation": {"description": "FHIR R4 server on PostgreSQL", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": list(FORMATS),
        "patchFormat": list(PATCH_FORMATS),
        "rest": [
            {
                "mode": "server",
                "resource": resources,
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                **({"documentation": SEARCH_RESULT_DOCUMENTATION} if search else {}),
            }
        ],
    }
