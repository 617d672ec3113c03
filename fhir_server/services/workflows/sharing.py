"""What a person shares of a record and with whom (issue 14, item 2; docs/account-sharing.md).

A share is a Consent in exactly the shape the engine reads (compartments/consent.py): active,
scope patient-privacy, a permit whose one actor is the family member's RelatedPerson in the
grantee role, the server's scope codes, the action `access` (reads) and an optional
`provision.period.end`. Everything here runs as the signed-in person, through the FHIR API's
own interactions (search, read, create, update): the engine decides each of them and the audit
records it, so the pages have no access path of their own. A revocation is an update to
`status` `inactive` (a new version); a Consent write bumps the access epoch, so both count from
the next request (services/access/guard.py).

Whose record a person manages (`records`): their own, and a minor's for whom they act as parent
or guardian, as the engine's `reach` says (launch_choices.choices). The family members one may
share with (`family`) are the active RelatedPersons of that patient the person may read, less
the person's own identities (the engine refuses a relative granting itself anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

import orjson

from compartments.consent import (
    ACTION_SYSTEM,
    CONSENT_SCOPE_SYSTEM,
    CONSENT_SCOPES,
    GRANTEE_ROLES,
    ROLE_CODE_SYSTEM,
    SCOPE_SYSTEM,
    read_consent,
)
from compartments.engine import PARENT_OR_GUARDIAN
from compartments.periods import format_instant
from fhir_server.errors import BadRequest
from fhir_server.services.context import Context
from fhir_server.services.interactions import create, read, search, update
from fhir_server.services.workflows.launch_choices import SCOPE_WORDS, choices, display_name
from fhir_server.services.workflows.scope_words import RELATIONSHIP_WORDS
from fhir_server.storage.sql import Connection

# The specification's scopes, in the order the page lists them.
SCOPES: Final = tuple(s for s in SCOPE_WORDS if s in CONSENT_SCOPES)
MAX_SHARES = 100  # Consents listed per record


class ShareRefused(BadRequest):
    """Input the page refuses before anything is written, in words for the person."""


@dataclass(frozen=True, slots=True)
class Record:
    """A record the signed-in person manages the sharing of."""

    patient: str  # "Patient/1"
    name: str
    is_self: bool
    minor: bool


@dataclass(frozen=True, slots=True)
class Member:
    """A family member one may share with: a RelatedPerson of the patient."""

    reference: str  # "RelatedPerson/9"
    label: str


@dataclass(frozen=True, slots=True)
class Share:
    """A Consent in force that grants a family member access."""

    consent: str  # "Consent/3"
    grantees: tuple[str, ...]
    scopes: tuple[str, ...]
    until: date | None  # the last day it holds


async def records(ctx: Context, conn: Connection, fhir_user: str) -> list[Record]:
    """The records whose sharing `fhir_user` manages: its own, and those of the minors it acts
    for as parent or guardian (the engine's reach)."""
    found = []
    for choice in await choices(ctx, conn, fhir_user):
        guardian = choice.minor and bool(choice.relationships & PARENT_OR_GUARDIAN)
        if choice.is_self or (guardian and choice.whole_record):
            found.append(Record(choice.patient, choice.name, choice.is_self, choice.minor))
    return found


async def family(ctx: Context, conn: Connection, patient: str) -> list[Member]:
    """The active RelatedPersons of `patient` the caller may read, but the caller's own."""
    own = {i.reference for i in ctx.guard.identities}
    bundle = await search.search(
        ctx, conn, "RelatedPerson", [("patient", patient), ("_count", "100")]
    )
    found = []
    for resource in _entries(bundle):
        reference = f"RelatedPerson/{resource['id']}"
        if reference in own or resource.get("active") is False:
            continue
        found.append(Member(reference, _label(resource)))
    return sorted(found, key=lambda m: (m.label, m.reference))


def _label(related: dict[str, Any]) -> str:
    words = [
        RELATIONSHIP_WORDS.get(str(c.get("code")), str(c.get("display") or c.get("code")))
        for concept in related.get("relationship", ())
        if isinstance(concept, dict)
        for c in concept.get("coding", ())
        if isinstance(c, dict) and c.get("code")
    ]
    relation = ", ".join(dict.fromkeys(words)) or "relative"
    if related.get("name"):
        return f"{display_name(related)} ({relation})"
    return relation.capitalize()


async def shares(ctx: Context, conn: Connection, patient: str) -> list[Share]:
    """The Consents about `patient` in force now that grant a named family member access in
    the server's scopes, as the caller may read them."""
    bundle = await search.search(
        ctx,
        conn,
        "Consent",
        [("patient", patient), ("status", "active"), ("_count", str(MAX_SHARES))],
    )
    now = ctx.clock()
    found = []
    for resource in _entries(bundle):
        fact = read_consent(resource["id"], resource, ctx.reference_bases)
        provision = resource.get("provision")
        if fact.root is None or not fact.root.period.covers(now) or not isinstance(provision, dict):
            continue
        grantees = tuple(
            sorted(a["reference"]["reference"] for a in provision.get("actor", ()) if _grantee(a))
        )
        scopes = tuple(
            c["code"]
            for concept in provision.get("code", ())
            for c in concept.get("coding", ())
            if c.get("system") == CONSENT_SCOPE_SYSTEM and c.get("code") in CONSENT_SCOPES
        )
        if grantees and scopes:
            last = fact.root.period.last_instant
            found.append(
                Share(
                    f"Consent/{resource['id']}",
                    grantees,
                    tuple(s for s in SCOPES if s in scopes),
                    last.date() if last else None,
                )
            )
    return found


def _grantee(actor: Any) -> bool:
    if not isinstance(actor, dict) or not isinstance(actor.get("reference"), dict):
        return False
    roles = {
        (str(c.get("system", "")), str(c.get("code", "")))
        for c in (actor.get("role") or {}).get("coding", ())
        if isinstance(c, dict)
    }
    return bool(roles & GRANTEE_ROLES) and isinstance(actor["reference"].get("reference"), str)


def _entries(bundle: bytes) -> list[dict[str, Any]]:
    parsed = orjson.loads(bundle)
    return [
        e["resource"]
        for e in parsed.get("entry", ())
        if e.get("search", {}).get("mode", "match") == "match" and "resource" in e
    ]


def check_grant(
    members: list[Member], grantee: str, scopes: list[str], end: str, today: date
) -> date | None:
    """The form's values, checked before anything is written: a family member of the list,
    at least one known scope, an end date that is a date not in the past. The last day."""
    if grantee not in {m.reference for m in members}:
        raise ShareRefused("choose a family member from the list")
    if not scopes:
        raise ShareRefused("tick at least one kind of data to share")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ShareRefused(f"unknown kind of data `{unknown[0]}`")
    if not end:
        return None
    try:
        last = date.fromisoformat(end)
    except ValueError:
        raise ShareRefused("the end date is not a date (year-month-day)") from None
    if last < today:
        raise ShareRefused("the end date is in the past: choose today or a later day")
    return last


def consent_body(
    patient: str, grantee: str, scopes: list[str], last: date | None, now: datetime
) -> dict[str, Any]:
    """The Consent that lets `grantee` read those scopes of `patient`'s record, until the end
    of `last` (no end: until revoked)."""
    period: dict[str, str] = {"start": format_instant(now)}
    if last is not None:
        period["end"] = last.isoformat()
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient},
        "dateTime": format_instant(now),
        "provision": {
            "type": "permit",
            "period": period,
            "actor": [
                {
                    "role": {"coding": [{"system": ROLE_CODE_SYSTEM, "code": "GRANTEE"}]},
                    "reference": {"reference": grantee},
                }
            ],
            "action": [{"coding": [{"system": ACTION_SYSTEM, "code": "access"}]}],
            "code": [
                {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": s}]}
                for s in SCOPES
                if s in scopes
            ],
        },
    }


async def grant(
    ctx: Context,
    conn: Connection,
    patient: str,
    grantee: str,
    scopes: list[str],
    end: str,
) -> str:
    """Share: the form checked against the family the caller may read, then the Consent
    created through the FHIR create interaction as the caller (the engine decides). Its
    reference."""
    members = await family(ctx, conn, patient)
    now = ctx.clock()
    last = check_grant(members, grantee, scopes, end, now.date())
    body = consent_body(patient, grantee, scopes, last, now)
    result = await create.create(ctx, conn, "Consent", body)
    return f"Consent/{result.version.id}"


async def revoke(ctx: Context, conn: Connection, patient: str, consent: str) -> int:
    """Stop a share: the Consent, read as the caller, set `inactive` through the update
    interaction (the engine decides; If-Match: the version read). The new version's number."""
    kind, _, id = consent.partition("/")
    if kind != "Consent" or not id:
        raise ShareRefused("choose a share from the list")
    stored = await read.read(ctx, conn, "Consent", id)
    content = orjson.loads(stored.content or b"{}")
    if (content.get("patient") or {}).get("reference") != patient:
        raise ShareRefused("choose a share from the list")
    content["status"] = "inactive"
    result = await update.update(ctx, conn, "Consent", id, content, if_match=stored.version_id)
    return result.version.version_id
