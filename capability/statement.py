"""The CapabilityStatement, generated from what the server really supports."""

from __future__ import annotations

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


def capability_statement(*, base_url: str, update_create: bool, date: str) -> dict[str, Any]:
    resources = [
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
        }
        for name in sorted(resource_types())
    ]
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
            }
        ],
    }
