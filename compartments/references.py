"""One reading of FHIR literal references, shared by the code that decides access (the facts
the engine gets, compartments/facts.py) and the code that stores compartments and the search
index (fhir_server/search/): the same reference is read the same way by both.

A reference names a resource of this server when it is relative (`Patient/1`) or absolute under
one of this server's own base URLs (`local_bases`: the configured ones and the base the client
addressed, compared without a trailing slash). An absolute URL under any other base names a
resource of another server: it never counts as a local one, whatever its last two segments say.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Final

from compartments.ids import is_id

NO_BASES: Final[frozenset[str]] = frozenset()


def _is_type_name(text: str) -> bool:
    """Whether ``text`` is spelled like a FHIR resource type (`Patient`)."""
    return text[:1].isupper() and text.isascii() and text.isalnum()


def bases(local_bases: Iterable[str]) -> frozenset[str]:
    """Base URLs as `split_reference` gives them: without a trailing slash."""
    return frozenset(base.rstrip("/") for base in local_bases if base)


@lru_cache(maxsize=16384)  # the same subjects and authors recur across a patient's resources
def split_reference(
    reference: str, types: frozenset[str] | None = None
) -> tuple[str, str, str] | None:
    """Split a literal reference into ``(base, type, id)``, or None when it names no resource.

    ``base`` is ``""`` for a relative reference and the service base URL for an absolute one; a
    ``/_history/<version>`` suffix and a canonical ``|<version>`` suffix are dropped. Contained
    (``#id``), ``urn:`` and conditional references, and ids outside ``[A-Za-z0-9\\-.]{1,64}``, give
    None; so does a type outside ``types`` (when given; else one not spelled like a type).
    """
    resource_type, _, resource_id = reference.partition("/")
    if (
        (resource_type in types if types is not None else _is_type_name(resource_type))
        and "/" not in resource_id
        and "|" not in resource_id
    ):
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
        not (resource_type in types if types is not None else _is_type_name(resource_type))
        or not is_id(resource_id)
        or (len(parts) > 2 and not base)
    ):
        return None
    return base, resource_type, resource_id


def local_reference(
    reference: str, local_bases: frozenset[str], types: frozenset[str] | None = None
) -> tuple[str, str] | None:
    """``(type, id)`` of the resource of this server that ``reference`` names, or None (not a
    literal reference, or one to another server). ``local_bases`` as `bases` gives them."""
    parsed = split_reference(reference, types)
    if parsed is None:
        return None
    base, resource_type, resource_id = parsed
    if base and base not in local_bases:
        return None
    return resource_type, resource_id


def reference_of(value: Any, local_bases: frozenset[str] = NO_BASES) -> str | None:
    """`Type/id` of the local resource a FHIR Reference (a JSON object) names, or None."""
    if not isinstance(value, dict):
        return None
    reference = value.get("reference")
    if not isinstance(reference, str):
        return None
    found = local_reference(reference, local_bases)
    return None if found is None else f"{found[0]}/{found[1]}"
