"""Literal references: which resource type and id a reference names."""

from __future__ import annotations

from functools import lru_cache

from compartments.ids import is_id
from fhir_server.search.fhirpath.base import Resource
from fhir_server.search.fhirpath.model import _RESOURCE_TYPES

# --------------------------------------------------------------------------------------------
# References: shared with parameters.reference_targets, so resolve() and indexing agree.


@lru_cache(maxsize=16384)  # the same subjects and authors recur across a patient's resources
def split_reference(reference: str) -> tuple[str, str, str] | None:
    """Split a literal reference into ``(base, type, id)``, or None when it names no R4 resource.

    ``base`` is ``""`` for a relative reference and the service base URL for an absolute one; a
    ``/_history/<version>`` suffix and a canonical ``|<version>`` suffix are dropped. Contained
    (``#id``), ``urn:`` and conditional references, and ids outside ``[A-Za-z0-9\\-.]{1,64}``, give
    None.
    """
    resource_type, _, resource_id = reference.partition("/")
    if resource_type in _RESOURCE_TYPES and "/" not in resource_id and "|" not in resource_id:
        # the usual relative `Type/id`, on the write path of every resource: no regex, no split
        return ("", resource_type, resource_id) if is_id(resource_id) else None
    if not reference or reference[0] == "#" or reference.startswith("urn:"):
        return None
    bar = reference.find("|")
    if bar >= 0:
        reference = reference[:bar]
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        if not is_id(parts[-1]):
            return None
        del parts[-2:]
    if len(parts) < 2:
        return None
    resource_type, resource_id = parts[-2], parts[-1]
    base = "/".join(parts[:-2])
    if (
        resource_type not in _RESOURCE_TYPES
        or not is_id(resource_id)
        or (len(parts) > 2 and not base)
    ):
        return None
    return base, resource_type, resource_id


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
