"""Builders of the FHIR resources the tests create: plain dicts, with each test's specifics as
arguments. Nothing here talks to a server (see `tests.support.world` for that)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from compartments.engine import CONSENT_SCOPE_SYSTEM

TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"
V3_ROLE = f"{TERMINOLOGY}/v3-RoleCode"
V2_0131 = f"{TERMINOLOGY}/v2-0131"  # contact roles (emergency contacts)

LAB = {"coding": [{"system": f"{TERMINOLOGY}/observation-category", "code": "laboratory"}]}
VITALS = {"coding": [{"system": f"{TERMINOLOGY}/observation-category", "code": "vital-signs"}]}

# Consent codes: the scope and category most tests use, and the two actor roles the server reads
PRIVACY = {"coding": [{"system": f"{TERMINOLOGY}/consentscope", "code": "patient-privacy"}]}
CONSENT_DOCUMENT = {"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}
IRCP = {"coding": [{"system": f"{TERMINOLOGY}/v3-ParticipationType", "code": "IRCP"}]}
GRANTEE = {"coding": [{"system": V3_ROLE, "code": "GRANTEE"}]}


def years_ago(years: int, days: int = 0) -> str:
    """The birth date of someone `years` old today (and `days` more)."""
    today = date.today()
    try:
        born = today.replace(year=today.year - years)
    except ValueError:  # 29 February
        born = today.replace(year=today.year - years, day=28)
    return (born - timedelta(days=days)).isoformat()


def ref(reference: str) -> dict[str, str]:
    return {"reference": reference}


def patient(
    family: str | None = None, *given: str, born: str | None = None, **elements: Any
) -> dict[str, Any]:
    """A Patient: a name when `family` is given (with `given` names, if any), a birth date when
    `born` is, and any other elements as they are."""
    body: dict[str, Any] = {"resourceType": "Patient"}
    if family is not None:
        body["name"] = [{"family": family, **({"given": list(given)} if given else {})}]
    if born is not None:
        body["birthDate"] = born
    return {**body, **elements}


def related_person(
    patient: str,
    code: str | None = None,
    *,
    system: str = V3_ROLE,
    active: bool | None = True,
    **elements: Any,
) -> dict[str, Any]:
    """A RelatedPerson of `patient` (active unless `active` says otherwise; None: not said),
    related as `code` (v3 RoleCode by default) if given, with any other elements as they are."""
    body: dict[str, Any] = {"resourceType": "RelatedPerson"}
    if active is not None:
        body["active"] = active
    body["patient"] = ref(patient)
    if code is not None:
        body["relationship"] = [{"coding": [{"system": system, "code": code}]}]
    return {**body, **elements}


def observation(
    subject: str,
    *performers: str,
    code: str = "x",
    text: str | None = None,
    category: dict[str, Any] | None = LAB,
    **elements: Any,
) -> dict[str, Any]:
    """A final Observation about `subject` in `category` (laboratory; None for none), coded
    `urn:test|code` (or only by `text`, if given), by `performers` if any."""
    body: dict[str, Any] = {"resourceType": "Observation", "status": "final"}
    if category is not None:
        body["category"] = [category]
    body["code"] = (
        {"text": text} if text is not None else {"coding": [{"system": "urn:test", "code": code}]}
    )
    body["subject"] = ref(subject)
    if performers:
        body["performer"] = [ref(p) for p in performers]
    return {**body, **elements}


def care_team(subject: str, *members: str, **elements: Any) -> dict[str, Any]:
    """An active CareTeam of `subject` with `members` as participants."""
    return {
        "resourceType": "CareTeam",
        "status": "active",
        "subject": ref(subject),
        "participant": [{"member": ref(m)} for m in members],
        **elements,
    }


def coverage(beneficiary: str, payor: str, **elements: Any) -> dict[str, Any]:
    """An active Coverage of `beneficiary`, paid by `payor` (a display name)."""
    return {
        "resourceType": "Coverage",
        "status": "active",
        "beneficiary": ref(beneficiary),
        "payor": [{"display": payor}],
        **elements,
    }


def permit(
    actor: str, *scopes: str, role: dict[str, Any] = IRCP, **provision: Any
) -> dict[str, Any]:
    """A permit provision for `actor` (an information recipient by default), of the server's data
    `scopes` if any are given, with any other provision elements as they are."""
    body: dict[str, Any] = {"type": "permit", "actor": [{"role": role, "reference": ref(actor)}]}
    if scopes:
        body["code"] = [{"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": s}]} for s in scopes]
    return {**body, **provision}


def consent(
    patient: str,
    provision: dict[str, Any],
    *,
    scope: dict[str, Any] = PRIVACY,
    category: dict[str, Any] = CONSENT_DOCUMENT,
    **elements: Any,
) -> dict[str, Any]:
    """An active Consent of `patient` with `provision`."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": scope,
        "category": [category],
        "patient": ref(patient),
        **elements,
        "provision": provision,
    }


def transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def create_entry(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    """A Bundle entry that POSTs `resource` (as `full_url`, e.g. a `urn:uuid:`, if given)."""
    return {
        **({"fullUrl": full_url} if full_url is not None else {}),
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def parameters(**values: Any) -> dict[str, Any]:
    """A Parameters resource of an operation's inputs: resources as `resource`, booleans as
    `valueBoolean`, `relationship` and `operation` as codes, a `dependent` string as a reference,
    else strings."""
    parameter: list[dict[str, Any]] = []
    for name, value in values.items():
        if isinstance(value, dict) and "resourceType" in value:
            parameter.append({"name": name, "resource": value})
        elif isinstance(value, bool):
            parameter.append({"name": name, "valueBoolean": value})
        elif name in ("relationship", "operation"):
            parameter.append({"name": name, "valueCode": value})
        elif name == "dependent" and isinstance(value, str):
            parameter.append({"name": name, "valueReference": {"reference": value}})
        else:
            parameter.append({"name": name, "valueString": value})
    return {"resourceType": "Parameters", "parameter": parameter}


def values(parameters: dict[str, Any]) -> dict[str, Any]:
    """The values of a Parameters resource by name (the last of each name)."""
    return {
        p["name"]: next(v for k, v in p.items() if k != "name") for p in parameters["parameter"]
    }
