"""Literal references: which resource type and id a reference names."""

from __future__ import annotations

from compartments.references import split_reference as split_any_reference
from fhir_server.search.fhirpath.base import Resource
from fhir_server.search.fhirpath.model import _RESOURCE_TYPES

# --------------------------------------------------------------------------------------------
# References: read as compartments/references.py reads them for the whole server (the access
# facts too), here for R4 resource types; parameters.reference_targets and the index use it, so
# resolve(), indexing and access agree.


def split_reference(reference: str) -> tuple[str, str, str] | None:
    """``(base, type, id)`` of a literal reference to an R4 resource, or None
    (`compartments.references.split_reference`)."""
    return split_any_reference(reference, _RESOURCE_TYPES)


def reference_type(reference: str, resource: Resource | None = None) -> str | None:
    """The resource type a literal reference names, looking ``#id`` up in ``resource.contained``."""
    if reference[:1] == "#":
        if resource is None:
            return None
        if reference == "#":
            container_type = resource.get("resourceType")
            return container_type if isinstance(container_type, str) else None
        local_id = reference[1:]
        contained = resource.get("contained")
        if isinstance(contained, list):
            for item in contained:
                if isinstance(item, dict) and item.get("id") == local_id:
                    found = item.get("resourceType")
                    return found if isinstance(found, str) else None
        return None
    parsed = split_reference(reference)
    return None if parsed is None else parsed[1]
