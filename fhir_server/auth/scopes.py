"""SMART on FHIR scopes, v1 and v2: what a token allows, before any policy.

v1: `patient/Observation.read`, `user/*.write`, `system/*.*`.
v2: `patient/Observation.rs`, `user/*.cruds`, granular `patient/Observation.rs?category=laboratory`.
Scopes that are not resource scopes (`openid`, `fhirUser`, `launch/patient`, `offline_access`)
are kept as they are and grant no resource access.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

CONTEXTS = frozenset({"patient", "user", "system"})
# v2 permissions, in the order SMART requires them to be written
PERMISSIONS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<access>[a-z*]+)"
    r"(?:\?(?P<query>.+))?$"
)


@dataclass(frozen=True, slots=True)
class Scope:
    """One resource scope: a context, a resource type (or `*`), permissions, and a filter."""

    context: str
    resource_type: str  # or "*"
    permissions: frozenset[str]  # of c r u d s
    query: tuple[
        tuple[str, str], ...
    ] = ()  # granular v2 filter, e.g. (("category", "laboratory"),)

    def allows(self, resource_type: str, permission: str) -> bool:
        return permission in self.permissions and self.resource_type in {"*", resource_type}


class ScopeError(ValueError):
    """A scope string that looks like a resource scope but is not a valid one."""


def parse_scope(text: str) -> Scope | None:
    """A resource scope, or None for a scope that grants no resource access (`openid`)."""
    match = _RESOURCE_SCOPE.match(text)
    if match is None:
        if "/" in text and text.split("/", 1)[0] in CONTEXTS:
            raise ScopeError(f"`{text}` is not a valid SMART scope")
        return None
    access = match.group("access")
    if access in _V1:
        permissions = _V1[access]
    else:
        # v2: a subsequence of "cruds", in that order
        if not access or any(p not in PERMISSIONS for p in access) or not _in_order(access):
            raise ScopeError(f"`{text}`: permissions must be a subsequence of `cruds`")
        permissions = access
    query = tuple(parse_qsl(match.group("query") or "", keep_blank_values=True))
    if query and access in _V1:
        raise ScopeError(f"`{text}`: a granular filter needs a v2 scope (`.rs?...`)")
    return Scope(
        context=match.group("context"),
        resource_type=match.group("type"),
        permissions=frozenset(permissions),
        query=query,
    )


def _in_order(access: str) -> bool:
    positions = [PERMISSIONS.index(p) for p in access]
    return positions == sorted(set(positions))


def parse_scopes(text: str | Iterable[str]) -> tuple[Scope, ...]:
    """The resource scopes of a `scope` claim (space-separated, or a list)."""
    parts = text.split() if isinstance(text, str) else list(text)
    scopes = []
    for part in parts:
        scope = parse_scope(part)
        if scope is not None:
            scopes.append(scope)
    return tuple(scopes)


def granted(scopes: Iterable[Scope], resource_type: str, permission: str) -> list[Scope]:
    """The scopes that allow `permission` (c r u d s) on `resource_type`."""
    return [s for s in scopes if s.allows(resource_type, permission)]


def covers(held: Scope, asked: Scope) -> bool:
    """Whether `held` allows everything `asked` allows, contexts aside: the same resource type
    (or `*`), no fewer permissions, and no filter that `asked` lacks (a filter only narrows)."""
    return (
        held.resource_type in {"*", asked.resource_type}
        and asked.permissions <= held.permissions
        and set(held.query) <= set(asked.query)
    )
