"""The relationship service API of the source specification (docs/relationships.md):
`POST /api/v1/relationships/verify` and `POST /api/v1/relationships/delegate`, answered by the
same compartment engine and the same FHIR resources as the FHIR API.

Verification asks the engine, as the requesting user (its identities and facts, as a token of
its own would give them), whether it may read each requested kind of data of the patient, and
says through which relationship. A delegation is a Consent that the patient (or a guardian of a
minor, or a system caller) grants to a RelatedPerson of the patient; a related person may ask for
one, which then waits, `proposed`, until the patient approves it. With
`DELEGATION_APPROVAL=manual` every delegation waits for that approval.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from compartments.consent import consent_actors
from compartments.engine import CONSENT_SCOPE_SYSTEM, Decision, Target
from compartments.ids import is_id
from compartments.periods import format_instant, span, window
from compartments.references import reference_of
from fhir_server.errors import BadRequest, FhirError, Forbidden, NotFound
from fhir_server.metrics import DELEGATION_REQUESTS, RELATIONSHIP_VERIFICATIONS, VERIFICATION_TIME
from fhir_server.services.access.enforce import require_workflow_scope
from fhir_server.services.access.guard import Guard, as_user
from fhir_server.services.context import Context
from fhir_server.services.interactions import create
from fhir_server.services.interactions.versions import parse_json
from fhir_server.services.workflows.family import rewrite
from fhir_server.storage import repository
from fhir_server.storage.sql import Connection

# The specification's data scopes -> the Consent scopes of the family specification.
DATA_SCOPES: dict[str, tuple[str, ...]] = {
    "demographics": ("DEMOGRAPHICS",),
    "medical_history": ("CLINICAL_SUMMARY",),
    "clinical_summary": ("CLINICAL_SUMMARY",),
    "medication_list": ("PRESCRIPTIONS",),
    "prescriptions": ("PRESCRIPTIONS",),
    "lab_results": ("LAB_RESULTS",),
    "encounters": ("ENCOUNTERS",),
    "appointments": ("APPOINTMENTS",),
    # the specification's delegation example: who the patient is, and the clinical summary
    "basic_health_info": ("DEMOGRAPHICS", "CLINICAL_SUMMARY"),
}
# What a verification without `data_scope` asks about: every kind of data, once each, by the
# specification's own names (docs/relationships.md).
DEFAULT_DATA_SCOPE = (
    "demographics",
    "medical_history",
    "medication_list",
    "lab_results",
    "encounters",
    "appointments",
)
# The resource type whose read stands for each scope when the engine is asked.
PROBES = {
    "DEMOGRAPHICS": "Patient",
    "CLINICAL_SUMMARY": "Condition",
    "PRESCRIPTIONS": "MedicationRequest",
    "LAB_RESULTS": "Observation",
    "ENCOUNTERS": "Encounter",
    "APPOINTMENTS": "Appointment",
}
ROLE_NAMES = {
    "PRN": "parent",
    "MTH": "mother",
    "FTH": "father",
    "GUARD": "guardian",
    "SPS": "spouse",
    "CHILD": "child",
    "SIB": "sibling",
}
REQUESTER_TYPES = ("RelatedPerson", "Practitioner", "Patient", "Person")


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"`{name}` is required (a string)")
    return value.strip()


def _optional_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"`{name}` must be a string")
    return value


def _scopes(body: dict[str, Any], name: str, default: tuple[str, ...] | None = None) -> list[str]:
    value = body.get(name)
    if value is None and default is not None:
        return list(default)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"`{name}` must be a non-empty list")
    unknown = [v for v in value if v not in DATA_SCOPES]
    if unknown:
        raise BadRequest(
            f"`{name}` has unknown scopes {unknown}; known: {', '.join(sorted(DATA_SCOPES))}",
        )
    return list(dict.fromkeys(value))


async def _resolve(conn: Connection, value: str, types: tuple[str, ...]) -> str | None:
    """`Type/id` of a resource named as `Type/id` or by its id alone."""
    if "/" in value:
        type_, _, id = value.partition("/")
        candidates = [(type_, id)] if type_ in types else []
    else:
        candidates = [(t, value) for t in types]
    for type_, id in candidates:
        if not is_id(id):
            continue  # no resource has it (and PostgreSQL text cannot hold a NUL)
        found = await repository.read_current(conn, type_, id)
        if found is not None and not found.deleted:
            return f"{type_}/{id}"
    return None


def _may_ask(guard: Guard, *about: str) -> bool:
    """A service, or the requesting user or the patient asking about themselves."""
    if guard.privileged or guard.account in about:
        return True
    return any(i.reference in about and i.verified for i in guard.identities)


async def verify(ctx: Context, conn: Connection, body: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        answer = await _verify(ctx, conn, body)
    except FhirError:
        RELATIONSHIP_VERIFICATIONS.labels(result="error").inc()
        raise
    finally:
        VERIFICATION_TIME.observe(time.perf_counter() - started)
    granted = len(answer["access_scope"])
    result = "denied" if not granted else "granted" if answer["access_granted"] else "partial"
    RELATIONSHIP_VERIFICATIONS.labels(result=result).inc()
    return answer


async def _verify(ctx: Context, conn: Connection, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    requester_id = _text(body, "requesting_user_id")
    patient_id = _text(body, "patient_id")
    requested = _scopes(body, "data_scope", DEFAULT_DATA_SCOPE)
    asked = _optional_text(body, "relationship_type")
    # a stated purpose is accepted and checked, not used: the engine decides by relationship,
    # Consent and scopes, whatever the purpose (docs/relationships.md)
    _optional_text(body, "access_purpose")
    patient = await _resolve(conn, patient_id, ("Patient",))
    requester = await _resolve(conn, requester_id, REQUESTER_TYPES)
    if patient is None or requester is None:
        raise NotFound("patient or requesting user not found")
    if not _may_ask(ctx.guard, requester, patient):
        raise Forbidden("only the requesting user, the patient or a service may ask")
    guard = await as_user(conn, ctx.guard, requester, "user/*.rs", now=ctx.clock())
    target = Target(frozenset({patient}))
    decisions = {
        scope: [guard.decide("read", PROBES[code], target) for code in DATA_SCOPES[scope]]
        for scope in requested
    }
    granted = [scope for scope, ds in decisions.items() if all(d.allowed for d in ds)]
    chain, kind, verified, expiration = _relationship(guard, patient)
    return {
        "relationship_verified": verified,
        "relationship_type": kind or asked or "none",
        "access_granted": len(granted) == len(requested),
        "access_scope": granted,
        "expiration": expiration,
        "delegation_chain": chain
        + [
            {
                "delegator_id": patient.split("/", 1)[1],
                "delegated_to": requester.split("/", 1)[1],
                "relationship": f"consent:{e}",
            }
            for ds in decisions.values()
            if all(d.allowed for d in ds)
            for e in dict.fromkeys(e for d in ds for e in d.evidence)
            if e.startswith("Consent/")
        ],
        "reasons": {scope: _reason(ds) for scope, ds in decisions.items()},
    }


def _reason(decisions: list[Decision]) -> str:
    """The engine's reason for a scope: the first refusal's, else `allowed`."""
    for d in decisions:
        if not d.allowed:
            return d.reason.value if d.reason else "denied"
    return "allowed"


def _relationship(
    guard: Guard, patient: str
) -> tuple[list[dict[str, str]], str | None, bool, str | None]:
    """How the requester's identities relate to the patient: the chain, the kind, whether a
    verified one is in force, and when the first of them ends."""
    chain: list[dict[str, str]] = []
    kind: str | None = None
    verified = False
    ends: list[datetime] = []
    facts = guard.facts
    for identity in guard.identities:
        if identity.reference == patient:
            chain.append(_link(patient, identity.reference, "self"))
            kind, verified = kind or "self", verified or identity.verified
        link = facts.related_persons.get(identity.reference)
        if link is not None and link.patient == patient and link.in_force(facts.now):
            code = next(iter(sorted(link.relationships & set(ROLE_NAMES))), None)
            name = ROLE_NAMES.get(code or "", "related_person")
            chain.append(_link(patient, identity.reference, name))
            kind, verified = kind or name, verified or identity.verified
            if (last := link.period.last_instant) is not None:
                ends.append(last)
        if patient in facts.care.get(identity.reference, frozenset()):
            chain.append(_link(patient, identity.reference, "care_team"))
            kind, verified = kind or "healthcare_provider", verified or identity.verified
    expiration = format_instant(min(ends)) if ends else None
    return chain, kind, verified, expiration


def _link(patient: str, to: str, relationship: str) -> dict[str, str]:
    return {
        "delegator_id": patient.split("/", 1)[1],
        "delegated_to": to.split("/", 1)[1],
        "relationship": relationship,
    }


def _delegator(body: dict[str, Any]) -> str:
    """The patient who delegates: `patient_id`, or `delegator_id` as the specification's example
    and its `care_delegations` table name it."""
    if body.get("delegator_id") is None:
        return _text(body, "patient_id")
    delegator = _text(body, "delegator_id")
    if body.get("patient_id") is not None and _text(body, "patient_id") != delegator:
        raise BadRequest("`patient_id` and `delegator_id` name different patients")
    return delegator


def _expiry(body: dict[str, Any], now: datetime) -> str | None:
    """`expires_at` as the Consent's `provision.period.end`, to the precision it was given:
    a date lasts to the end of that (UTC) day, an instant (with its zone) to that second."""
    value = body.get("expires_at")
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("`expires_at` must be a date or instant")
    covered = span(value)
    if covered is None or not (len(value) == 10 or "T" in value):
        raise BadRequest(
            f"`expires_at` `{value[:40]}` is not a date (`2026-12-31`) or an instant with a "
            "time zone (`2026-12-31T18:00:00Z`)",
        )
    if covered[1] <= now:
        raise BadRequest("`expires_at` is in the past")
    return value


async def delegate(ctx: Context, conn: Connection, body: Any) -> dict[str, Any]:
    """Make the delegation Consent; the caller's transaction holds the write."""
    try:
        answer = await _delegate(ctx, conn, body)
    except FhirError:
        DELEGATION_REQUESTS.labels(status="refused").inc()
        raise
    DELEGATION_REQUESTS.labels(status=answer["status"]).inc()
    return answer


async def _delegate(ctx: Context, conn: Connection, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    patient_id = _delegator(body)
    delegate_id = _text(body, "delegate_id")
    scopes = _scopes(body, "delegation_scope")
    now = ctx.clock()
    expires = _expiry(body, now)
    patient = await _resolve(conn, patient_id, ("Patient",))
    delegate_ref = await _resolve(conn, delegate_id, ("RelatedPerson",))
    if patient is None or delegate_ref is None:
        raise NotFound("patient or delegate (RelatedPerson) not found")
    stored = await repository.read_current(conn, "RelatedPerson", delegate_ref.split("/", 1)[1])
    assert stored is not None and stored.content is not None
    if reference_of(parse_json(stored.content).get("patient"), ctx.reference_bases) != patient:
        raise BadRequest("the delegate must be a RelatedPerson of the patient")
    guard = ctx.guard
    # the Consent is written as the server, proposed or active: either way the token must grant
    # creating Consents for this patient (policy AND scope), also to a relative asking
    require_workflow_scope(guard, "create", "Consent", patient, "delegation")
    consent = _consent(patient, delegate_ref, scopes, format_instant(now), expires)
    as_grantor = guard.decide(
        "create",
        "Consent",
        Target(frozenset({patient}), grants_to=frozenset({delegate_ref})),
    )
    asks_for_itself = any(i.reference == delegate_ref and i.verified for i in guard.identities)
    if as_grantor.allowed:
        status = "proposed" if ctx.settings.delegation_approval == "manual" else "active"
    elif asks_for_itself:
        status = "proposed"  # a relative never grants itself access: the patient approves it
    else:
        raise Forbidden("only the patient, a guardian of a minor or a service delegates")
    consent["status"] = status
    server = ctx.as_server()
    version = create.creation(server, consent, create.new_id(), method="POST")
    await repository.insert_new(conn, version)
    reference = f"Consent/{version.id}"
    guard.record_workflow(
        "create", reference, f"delegation to {delegate_ref} ({status})", [patient]
    )
    return _delegation(reference, consent, patient, delegate_ref, scopes, expires)


def _consent(
    patient: str, delegate_ref: str, scopes: list[str], now: str, expires: str | None
) -> dict[str, Any]:
    period = {"start": now, **({"end": expires} if expires else {})}
    return {
        "resourceType": "Consent",
        "status": "proposed",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient},
        "dateTime": now,
        "provision": {
            "type": "permit",
            "period": period,
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                "code": "DELEGATEE",
                            }
                        ]
                    },
                    "reference": {"reference": delegate_ref},
                }
            ],
            "code": [
                {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": code}]}
                for code in dict.fromkeys(c for s in scopes for c in DATA_SCOPES[s])
            ],
        },
    }


def _delegation(
    reference: str,
    consent: dict[str, Any],
    patient: str,
    delegate_ref: str,
    scopes: list[str],
    expires: str | None,
) -> dict[str, Any]:
    return {
        "delegation_id": reference.split("/", 1)[1],
        "status": consent["status"],
        "delegator_id": patient.split("/", 1)[1],
        "delegate_id": delegate_ref.split("/", 1)[1],
        "delegation_scope": scopes,
        "expires_at": _last_instant(expires),
    }


def _last_instant(end: str | None) -> str | None:
    """The last second a `provision.period.end` covers (`2026-12-31` -> `...T23:59:59Z`)."""
    last = window({"end": end}).last_instant if end else None
    return format_instant(last) if last is not None else None


async def approve(ctx: Context, conn: Connection, delegation_id: str) -> dict[str, Any]:
    """The patient (or a guardian of a minor, or a service) approves a proposed delegation."""
    stored = None
    if is_id(delegation_id):
        stored = await repository.read_current(conn, "Consent", delegation_id)
    if stored is None or stored.content is None:
        raise NotFound("delegation not found")
    consent = parse_json(stored.content)
    patient = reference_of(consent.get("patient"), ctx.reference_bases)
    provision = consent.get("provision") or {}
    actors = consent_actors(provision, ctx.reference_bases)
    if patient is None:  # a Consent made through FHIR, not a delegation
        raise NotFound("delegation not found")
    require_workflow_scope(ctx.guard, "update", "Consent", patient, "delegation approval")
    decision = ctx.guard.decide("update", "Consent", Target(frozenset({patient}), grants_to=actors))
    if not decision.allowed:
        raise Forbidden("only the patient approves a delegation")
    if consent.get("status") != "proposed":
        raise BadRequest("the delegation is not waiting for approval")
    consent["status"] = "active"
    await rewrite(ctx.as_server(), conn, "Consent", delegation_id, consent)
    ctx.guard.record_workflow(
        "update", f"Consent/{delegation_id}", "delegation approved", [patient]
    )
    DELEGATION_REQUESTS.labels(status="approved").inc()
    codes = [
        c.get("code") for concept in provision.get("code", ()) for c in concept.get("coding", ())
    ]
    scopes = [name for name, wanted in DATA_SCOPES.items() if all(c in codes for c in wanted)]
    end = (provision.get("period") or {}).get("end")
    return _delegation(
        f"Consent/{delegation_id}", consent, patient, next(iter(sorted(actors)), ""), scopes, end
    )
