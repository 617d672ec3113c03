"""`POST [base]/$explain-access`: what the engine would decide, without doing it.

The input is a Parameters resource: `operation` (read, search, history, create, update, patch,
delete), then `resource` (`Observation/1`) or `resourceType`, and, for system callers only,
`identity` (a fhirUser reference to evaluate as) with an optional `scope`. The answer is a
Parameters resource with the Decision: `allowed`, `rule`, `reason`, `message`, `explanation`,
`evidence`, `emergency`, for a type the search filter (`compartment`, `creator`, `part`), and a
`consent` part per Consent that names the caller's identities: how the server reads it
(`interpretation`, one line per provision, and what it does not understand).

A caller may ask only about itself, and about a resource it cannot see it learns no more than a
read would tell it (403 `invalid_compartment`, whether or not the resource exists).
"""

from __future__ import annotations

from typing import Any

from compartments.engine import Decision, Target
from compartments.policy import OPERATIONS
from fhir_server.errors import BadRequest, Forbidden, Unauthorized
from fhir_server.services.access.enforce import outside
from fhir_server.services.access.guard import Guard, as_user
from fhir_server.services.context import Context
from fhir_server.services.formats.parameters import parameter_values
from fhir_server.storage import repository
from fhir_server.storage.sql import Connection


async def explain(ctx: Context, conn: Connection, body: Any) -> dict[str, Any]:
    values = parameter_values(body, "$explain-access")
    operation = values.get("operation")
    if operation not in OPERATIONS:
        raise BadRequest(
            f"`operation` must be one of {', '.join(OPERATIONS)}", expression=["operation"]
        )
    resource = values.get("resource")
    resource_type = values.get("resourceType")
    if isinstance(resource, str) and resource.count("/") == 1:
        resource_type, id = resource.split("/")
    elif isinstance(resource_type, str) and resource is None:
        id = None
    else:
        raise BadRequest("give `resource` (`Type/id`) or `resourceType`", expression=["resource"])
    guard = await _guard_for(ctx, conn, values)
    if id is None:
        decision = guard.decide(operation, resource_type)
        return _answer(decision, guard)
    return _answer(await _instance_decision(guard, conn, operation, resource_type, id), guard)


async def _guard_for(ctx: Context, conn: Connection, values: dict[str, Any]) -> Guard:
    caller = ctx.guard
    identity = values.get("identity")
    own = caller.principal.fhir_user if caller.principal else None
    if identity is None or identity == own:
        return caller
    if not caller.privileged:
        raise Forbidden("a caller may ask only about its own access", code="forbidden")
    try:
        return await as_user(
            conn,
            caller,
            str(identity),
            values.get("scope") or "user/*.cruds",
            now=ctx.clock(),
            purpose_of_use=values.get("purposeOfUse"),
            reason=values.get("reason"),
        )
    except Unauthorized as exc:
        raise BadRequest(f"cannot evaluate as `{identity}`: {exc}") from None


async def _instance_decision(
    guard: Guard, conn: Connection, operation: str, resource_type: str, id: str
) -> Decision:
    grants = guard.grants("read", (resource_type,))
    visible = await repository.read_current(conn, resource_type, id, grants)
    grant = grants[resource_type]
    if visible is None and not (grant is not None and grant.unrestricted):
        # what a read would say: nothing about whether the resource exists
        decision = guard.type_decision(operation, resource_type)
        return decision if not decision.allowed else outside(decision)
    stored = await repository.lock_current(conn, resource_type, id, lock=False)
    if stored is None:
        return guard.decide(operation, resource_type)
    return guard.decide(
        operation,
        resource_type,
        Target(frozenset(stored.compartments), stored.created_by, id=id),
    )


def _answer(decision: Decision, guard: Guard) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [{"name": "allowed", "valueBoolean": decision.allowed}]
    if decision.rule is not None:
        rule = decision.rule
        parameters.append(
            {
                "name": "rule",
                "valueString": (
                    f"{rule.client_role} {rule.entity_name} {rule.operation} {rule.validator}"
                ),
            }
        )
        if rule.description:
            parameters.append({"name": "ruleDescription", "valueString": rule.description})
    if decision.reason is not None:
        parameters.append({"name": "reason", "valueCode": decision.reason.value})
    parameters.append({"name": "message", "valueString": decision.message})
    if decision.explanation:
        parameters.append({"name": "explanation", "valueString": decision.explanation})
    parameters.extend({"name": "evidence", "valueString": e} for e in decision.evidence)
    if decision.allowed:
        parameters.append({"name": "everything", "valueBoolean": decision.everything})
        parameters.extend(
            {"name": "compartment", "valueString": c} for c in sorted(decision.compartments)
        )
        parameters.extend({"name": "creator", "valueString": c} for c in sorted(decision.creators))
        parameters.extend(
            {
                "name": "part",
                "valueString": f"{p.compartment}: {p.selection.describe()}"
                + "".join(f" where {k}={v}" for k, v in p.where),
            }
            for p in sorted(decision.parts, key=lambda p: p.compartment)
        )
    parameters.append({"name": "emergency", "valueBoolean": decision.emergency})
    identities = [i.reference for i in guard.identities]
    for consent in guard.facts.consents:
        if consent.names(identities):
            parameters.append(
                {
                    "name": "consent",
                    "part": [
                        {"name": "reference", "valueReference": {"reference": consent.reference}},
                        *(
                            {"name": "interpretation", "valueString": line}
                            for line in consent.describe()
                        ),
                    ],
                }
            )
    return {"resourceType": "Parameters", "parameter": parameters}
