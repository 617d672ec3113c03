"""The checks the interactions make with the caller's guard: a type at all (`check_type`), the
stored version (`check_stored`), the version a write would make (`check_result`), the one answer
about a resource outside what the caller may see (`hidden`), and the fields a non-privileged
caller may not change (`protect_meta`, `protect_links`), and the scopes a workflow that writes as
the server needs (`workflow_scope`, `require_workflow_scope`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from compartments.consent import consent_actors
from compartments.engine import Decision, Target
from compartments.policy import Reason
from fhir_server.auth.scopes import granted
from fhir_server.errors import AccessDenied
from fhir_server.search.grants import Grant
from fhir_server.services.access.guard import PERMISSION, Guard, denied
from fhir_server.storage.repository import StoredVersion


def patients_among(compartments: Iterable[str]) -> frozenset[str]:
    """The patients among the compartments a resource was stored in: whose record it is part
    of, what an AuditEvent of reading it names. The same values its security predicate checked,
    computed once when it was written (`NewVersion.compartments`)."""
    return frozenset(c for c in compartments if c.startswith("Patient/"))


def patients_of(version: StoredVersion) -> frozenset[str]:
    """`patients_among` the compartments of a stored version; nobody for a deletion."""
    return frozenset() if version.content is None else patients_among(version.compartments)


def unrestricted(guard: Guard, operation: str, resource_type: str) -> bool:
    """Whether the caller sees every resource of the type (System, Admin): it alone may learn
    that a resource does not exist."""
    grant = guard.grant(operation, resource_type)
    return grant is not None and grant.unrestricted


def hidden(guard: Guard, operation: str, resource_type: str, id: str) -> AccessDenied:
    """The answer about a resource outside what the caller may see: the same 403 whether or not
    it exists (DESIGN.md 5.5)."""
    decision = guard.type_decision(operation, resource_type)
    if decision.allowed:
        decision = outside(decision)
    guard.record(operation, resource_type, f"{resource_type}/{id}", decision)
    return denied(decision)


def outside(allowed: Decision) -> Decision:
    """The denial for a resource outside an allowed decision's filter."""
    if allowed.creators and not allowed.compartments and not allowed.everything:
        return Decision(
            allowed=False,
            rule=allowed.rule,
            reason=Reason.UNVERIFIED_LINK,
            explanation="an unverified link sees only what it created",
        )
    return Decision(
        allowed=False,
        rule=allowed.rule,
        reason=Reason.INVALID_COMPARTMENT,
        explanation="the resource is outside the permitted compartments",
    )


def check_type(guard: Guard, operation: str, resource_type: str) -> None:
    """A search or type history: 403 when the caller may see nothing of the type."""
    decision = guard.type_decision(operation, resource_type)
    guard.record(operation, resource_type, None, decision)
    if not decision.allowed:
        raise denied(decision)


def check_stored(
    guard: Guard,
    operation: str,
    resource_type: str,
    id: str,
    compartments: Iterable[str],
    created_by: str | None,
) -> Decision:
    """An update, patch or delete of the stored version: it must be permitted as it is."""
    return guard.require(
        operation,
        resource_type,
        target=Target(frozenset(compartments), created_by, id=id),
        resource=f"{resource_type}/{id}",
    )


def check_result(
    guard: Guard,
    operation: str,
    version: Any,
    created_by: str | None,
) -> Decision:
    """The version a create, update or patch would write (a `NewVersion`): it must be permitted
    too, so nobody moves a resource into or out of a compartment; scopes narrow as for reads."""
    resource_type: str = version.resource_type
    decision = guard.require(
        operation,
        resource_type,
        target=Target(
            frozenset(version.compartments),
            created_by,
            _grants_to(version, guard.local_bases),
            id=version.id,
        ),
        resource=f"{resource_type}/{version.id}",
    )
    grant = guard.grant(operation, resource_type)
    outside_scope = grant is None or (
        (grant.within is not None and grant.within not in version.compartments)
        or (bool(grant.criteria) and not _index_matches(version.index, grant.criteria))
        or not _admitted_by_parts(grant, version, created_by)
    )
    if outside_scope:
        refused = Decision(
            allowed=False,
            rule=decision.rule,
            reason=Reason.INSUFFICIENT_SCOPE,
            explanation="the token's scopes do not cover this resource",
        )
        guard.record(operation, resource_type, f"{resource_type}/{version.id}", refused)
        raise denied(refused)
    return decision


def _admitted_by_parts(grant: Grant, version: Any, created_by: str | None) -> bool:
    """A result the engine admitted only through a Consent's part with a category (lab
    results: laboratory Observations) must be of that category: its index says."""
    filtered = [p for p in grant.parts if p.criteria]
    if grant.everything or not filtered:
        return True
    compartments = frozenset(version.compartments)
    if compartments & grant.compartments or created_by in grant.creators:
        return True
    for part in grant.parts:
        if part.compartment not in compartments:
            continue
        admits = (version.id not in part.ids) if part.every else (version.id in part.ids)
        if admits and (not part.criteria or _index_matches(version.index, (part.criteria,))):
            return True
    return False


def _grants_to(version: Any, local_bases: frozenset[str]) -> frozenset[str]:
    """Whom a Consent may grant access to: the `actor` references of every provision, nested
    ones included (a relative may not name itself anywhere in a Consent it writes)."""
    if version.resource_type != "Consent" or version.content is None:
        return frozenset()
    return consent_actors(orjson.loads(version.content).get("provision"), local_bases)


def _index_matches(index: Any, alternatives: tuple[tuple[Any, ...], ...]) -> bool:
    """Whether a resource's token search values satisfy one of a granular scope's conjunctions
    (`category=laboratory`); other kinds of criteria are not evaluated on writes and refuse."""
    tokens = index.token if index is not None else []

    def one(criterion: Any) -> bool:
        if criterion.param.type != "token" or criterion.modifier or criterion.chain:
            return False
        for value in criterion.values:
            system, bar, code = value.rpartition("|")
            for row_code, row_system, row_value, _ in tokens:
                if row_code != criterion.param.code or row_value != code:
                    continue
                if not bar or row_system in (system or None, None):
                    return True
        return False

    return any(all(one(c) for c in alternative) for alternative in alternatives)


def protect_meta(guard: Guard, resource: dict[str, Any], stored: dict[str, Any] | None) -> None:
    """`meta.security` and `meta.tag` are labels that other systems act on: from a
    non-privileged caller they are ignored, the stored labels kept (none on a create).
    `meta.versionId` and `meta.lastUpdated` are always the server's."""
    if guard.privileged:
        return
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        meta = {}
    kept = stored.get("meta", {}) if stored else {}
    for name in ("security", "tag"):
        meta.pop(name, None)
        if name in kept:
            meta[name] = kept[name]
    resource["meta"] = meta
    if not meta:
        resource.pop("meta")


# Fields that grant access (DESIGN.md 5.2) that a non-privileged caller may not change on a
# resource it may otherwise write.
_GRANTING_FIELDS = {"Patient": ("link",)}


def protect_links(guard: Guard, resource: dict[str, Any], stored: dict[str, Any] | None) -> None:
    if guard.privileged:
        return
    for name in _GRANTING_FIELDS.get(resource.get("resourceType", ""), ()):
        before = stored.get(name) if stored else None
        if resource.get(name) != before:
            refused = Decision(
                allowed=False,
                reason=Reason.INVALID_ROLE,
                explanation=f"`{resource['resourceType']}.{name}` is written by the family workflow",
            )
            guard.record("update", resource["resourceType"], None, refused)
            raise denied(refused)


def workflow_scope(guard: Guard, operation: str, resource_type: str, patient: str) -> bool:
    """Whether the token's scopes let a workflow `operation` a `resource_type` for `patient`
    (`Patient/id`) on the caller's behalf, when the workflow itself writes or reads as the
    server (the family workflow, a delegation): an unconditional `user/` or `system/` scope, or
    a `patient/` scope whose launch context is that patient. A granular scope (`?category=`)
    grants no workflow: the workflow's resources are whole, and its criteria are not checked
    on them. The server's own work (no token) needs no scope."""
    principal = guard.principal
    if principal is None:
        return True
    wanted = PERMISSION[operation]
    return any(
        not s.query and (s.context != "patient" or f"Patient/{principal.patient}" == patient)
        for s in granted(principal.scopes, resource_type, wanted)
    )


def require_workflow_scope(
    guard: Guard, operation: str, resource_type: str, patient: str, why: str
) -> None:
    """`workflow_scope`, or 403 `insufficient_scope`, audited, before anything is written."""
    if workflow_scope(guard, operation, resource_type, patient):
        return
    refused = Decision(
        allowed=False,
        reason=Reason.INSUFFICIENT_SCOPE,
        explanation=f"{why}: no scope grants `{PERMISSION[operation]}` on {resource_type} "
        f"for {patient}",
    )
    guard.record(operation, resource_type, None, refused, (patient,))
    raise denied(refused)
