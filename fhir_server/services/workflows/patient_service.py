"""The Phase 1 Patient Service API (`/api/v1/patients`, docs/patient-api.md): its demographics,
validation rules and errors, mapped onto the same FHIR Patient resources as `/fhir/Patient`.

A patient created here is readable at `/fhir/Patient/{patient_id}` and the other way round.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

from fhir_server.errors import (
    BadRequest,
    Conflict,
    FhirError,
    InvalidFields,
    NotFound,
    PreconditionFailed,
)
from fhir_server.services.context import Context
from fhir_server.services.interactions import patient_profile, search
from fhir_server.services.interactions.versions import deletion, new_version, parse_json
from fhir_server.services.workflows.family import rewrite
from fhir_server.storage import repository
from fhir_server.storage.cursors import decode_cursor, encode_cursor
from fhir_server.storage.repository import StoredVersion
from fhir_server.storage.sql import Connection

EXT = "urn:fhir-server:StructureDefinition/patient-service-"
SEX_AT_BIRTH = ("female", "male", "intersex", "unknown", "undisclosed")
GENDER_IDENTITY = {
    "woman": "female",
    "man": "male",
    "nonbinary": "other",
    "other": "other",
    "undisclosed": "unknown",
}
FIELDS = frozenset(
    {
        "given_name",
        "middle_name",
        "family_name",
        "date_of_birth",
        "sex_at_birth",
        "gender_identity",
        "gender_identity_other",
        "email",
        "phone_e164",
        "address",
        "preferred_language",
        "consent_to_contact",
    }
)
# What the server sets and a GET returns: a PUT may send them back (read, modify, write) as long
# as they are what is stored; a POST may not set them.
READ_ONLY = ("patient_id", "created_at", "updated_at", "version", "is_deleted")
ADDRESS_FIELDS = frozenset({"line1", "line2", "city", "state_province", "postal_code", "country"})
_EMAIL, _E164, _COUNTRY = patient_profile.EMAIL, patient_profile.E164, patient_profile.COUNTRY
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_LIMIT = re.compile(r"[0-9]{1,3}")
MAX_LIMIT = 100


def _name(value: Any, field: str, problems: list[dict[str, str]], *, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip() and not required):
        if required:
            problems.append({"field": field, "issue": "required"})
        return None
    if not isinstance(value, str):
        problems.append({"field": field, "issue": "must be a string"})
        return None
    text = " ".join(unicodedata.normalize("NFC", value).split())
    if required and not text:
        problems.append({"field": field, "issue": "required"})
    elif why := patient_profile.name_problem(text):
        problems.append({"field": field, "issue": why})
    return text or None


@dataclass(frozen=True, slots=True)
class Demographics:
    fields: dict[str, Any]  # normalized


def validate(body: Any, today: date, *, stored: dict[str, Any] | None = None) -> Demographics:
    """The body as normalized demographics, or InvalidFields (`validation_error`) listing every
    problem.

    `stored`: the API's view of the patient a PUT replaces, whose read-only fields the body may
    repeat unchanged; without it (a POST) read-only fields are refused."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    problems: list[dict[str, str]] = []
    for unknown in sorted(set(body) - FIELDS - set(READ_ONLY)):
        problems.append({"field": unknown, "issue": "unknown field"})
    for field in READ_ONLY:
        if field not in body:
            continue
        if stored is None:
            problems.append({"field": field, "issue": "read-only: set by the server"})
        elif not _same(field, body[field], stored[field]):
            problems.append({"field": field, "issue": "read-only: differs from the stored value"})
    out: dict[str, Any] = {
        "given_name": _name(body.get("given_name"), "given_name", problems, required=True),
        "middle_name": _name(body.get("middle_name"), "middle_name", problems, required=False),
        "family_name": _name(body.get("family_name"), "family_name", problems, required=True),
    }
    dob = body.get("date_of_birth")
    try:
        born = date.fromisoformat(dob) if isinstance(dob, str) and len(dob) == 10 else None
    except ValueError:
        born = None
    if born is None:
        problems.append({"field": "date_of_birth", "issue": "required, YYYY-MM-DD"})
    elif why := patient_profile.age_problem(born, today):
        problems.append({"field": "date_of_birth", "issue": why})
    out["date_of_birth"] = dob
    sex = body.get("sex_at_birth")
    if sex not in SEX_AT_BIRTH:
        problems.append({"field": "sex_at_birth", "issue": f"one of {', '.join(SEX_AT_BIRTH)}"})
    out["sex_at_birth"] = sex
    gender = body.get("gender_identity")
    if gender is not None and (not isinstance(gender, str) or gender not in GENDER_IDENTITY):
        problems.append(
            {"field": "gender_identity", "issue": f"one of {', '.join(GENDER_IDENTITY)}"}
        )
    other = body.get("gender_identity_other")
    if other is not None and (gender != "other" or not isinstance(other, str) or not other.strip()):
        problems.append({"field": "gender_identity_other", "issue": "free text only with `other`"})
    out["gender_identity"], out["gender_identity_other"] = gender, other
    email = body.get("email")
    if email is not None:
        if not isinstance(email, str) or not _EMAIL.match(email.strip()) or len(email) > 254:
            problems.append({"field": "email", "issue": "not an email address"})
        else:
            email = email.strip().lower()
    out["email"] = email
    phone = body.get("phone_e164")
    if phone is not None and (not isinstance(phone, str) or not _E164.match(phone)):
        problems.append({"field": "phone_e164", "issue": "E.164, e.g. +254700000000"})
    out["phone_e164"] = phone
    out["address"] = _address(body.get("address"), problems)
    language = body.get("preferred_language")
    if language is not None and (not isinstance(language, str) or not _LANGUAGE.match(language)):
        problems.append({"field": "preferred_language", "issue": "a BCP 47 tag, e.g. en-KE"})
    out["preferred_language"] = language
    consent = body.get("consent_to_contact", False)
    if not isinstance(consent, bool):
        problems.append({"field": "consent_to_contact", "issue": "true or false"})
    out["consent_to_contact"] = consent
    if problems:
        raise InvalidFields("the patient is not valid", problems)
    return Demographics(out)


def _same(field: str, given: Any, stored: Any) -> bool:
    """Whether a read-only field sent back is the stored one: timestamps as instants (a client
    may write `Z` for `+00:00`), the rest exactly, of the same JSON type."""
    if field in {"created_at", "updated_at"}:
        if not isinstance(given, str) or not isinstance(stored, str):
            return False
        try:
            return _instant(given) == _instant(stored)
        except ValueError:
            return False
    return type(given) is type(stored) and bool(given == stored)


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("an instant has a time zone")
    return moment


def _limit(query: dict[str, str]) -> int:
    limit = query.get("limit", "20")
    if not _LIMIT.fullmatch(limit) or not 1 <= int(limit) <= MAX_LIMIT:
        raise BadRequest(f"`limit` must be 1 to {MAX_LIMIT}", error_code="invalid_query")
    return int(limit)


def _address(value: Any, problems: list[dict[str, str]]) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append({"field": "address", "issue": "must be an object"})
        return None
    for unknown in sorted(set(value) - ADDRESS_FIELDS):
        problems.append({"field": f"address.{unknown}", "issue": "unknown field"})
    clean = {k: " ".join(v.split()) if isinstance(v, str) else v for k, v in value.items()}
    line1 = clean.get("line1")
    if not isinstance(line1, str) or not 1 <= len(line1) <= 200:
        problems.append({"field": "address.line1", "issue": "required, 1 to 200 characters"})
    country = clean.get("country")
    if clean.get("postal_code") and not country:
        problems.append({"field": "address.country", "issue": "required with a postal code"})
    if country is not None and (not isinstance(country, str) or not _COUNTRY.match(country)):
        problems.append({"field": "address.country", "issue": "ISO 3166-1 alpha-2, e.g. KE"})
    return clean


def to_fhir(d: Demographics, id: str, created_at: str) -> dict[str, Any]:
    f = d.fields
    given = [g for g in (f["given_name"], f["middle_name"]) if g]
    extension: list[dict[str, Any]] = [
        {"url": EXT + "sex-at-birth", "valueCode": f["sex_at_birth"]},
        {"url": EXT + "consent-to-contact", "valueBoolean": f["consent_to_contact"]},
        {"url": EXT + "created-at", "valueDateTime": created_at},
    ]
    if f["gender_identity"]:
        extension.append({"url": EXT + "gender-identity", "valueCode": f["gender_identity"]})
    if f["gender_identity_other"]:
        extension.append(
            {"url": EXT + "gender-identity-other", "valueString": f["gender_identity_other"]}
        )
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": id,
        "extension": extension,
        "name": [{"use": "official", "family": f["family_name"], "given": given}],
        "birthDate": f["date_of_birth"],
    }
    telecom = []
    if f["email"]:
        telecom.append({"system": "email", "value": f["email"]})
    if f["phone_e164"]:
        telecom.append({"system": "phone", "value": f["phone_e164"]})
    if telecom:
        resource["telecom"] = telecom
    if f["gender_identity"]:
        resource["gender"] = GENDER_IDENTITY[f["gender_identity"]]
    a = f["address"]
    if a:
        address = {
            "line": [x for x in (a.get("line1"), a.get("line2")) if x],
            **({"city": a["city"]} if a.get("city") else {}),
            **({"state": a["state_province"]} if a.get("state_province") else {}),
            **({"postalCode": a["postal_code"]} if a.get("postal_code") else {}),
            **({"country": a["country"]} if a.get("country") else {}),
        }
        resource["address"] = [address]
    if f["preferred_language"]:
        resource["communication"] = [
            {
                "language": {
                    "coding": [{"system": "urn:ietf:bcp:47", "code": f["preferred_language"]}]
                },
                "preferred": True,
            }
        ]
    return resource


def from_fhir(found: StoredVersion) -> dict[str, Any]:
    """The API's view of a stored FHIR Patient (made here or through `/fhir`)."""
    assert found.content is not None
    return _view(parse_json(found.content), found.version_id, found.last_updated, found.deleted)


def _view(
    p: dict[str, Any], version_id: int, last_updated: datetime, deleted: bool
) -> dict[str, Any]:
    ext = {e.get("url"): e for e in p.get("extension", [])}

    def value(name: str) -> Any:
        e = ext.get(EXT + name)
        return None if e is None else next((v for k, v in e.items() if k.startswith("value")), None)

    name = (p.get("name") or [{}])[0]
    given = name.get("given", [])
    telecom = {t.get("system"): t.get("value") for t in p.get("telecom", [])}
    a = (p.get("address") or [None])[0]
    lines = (a or {}).get("line", [])
    language = next(
        (
            c.get("code")
            for com in p.get("communication", [])
            for c in com.get("language", {}).get("coding", [])
        ),
        None,
    )
    return {
        "patient_id": p["id"],
        "given_name": given[0] if given else None,
        "middle_name": " ".join(given[1:]) or None,
        "family_name": name.get("family"),
        "date_of_birth": p.get("birthDate"),
        "sex_at_birth": value("sex-at-birth"),
        "gender_identity": value("gender-identity"),
        "gender_identity_other": value("gender-identity-other"),
        "email": telecom.get("email"),
        "phone_e164": telecom.get("phone"),
        "address": None
        if a is None
        else {
            "line1": lines[0] if lines else None,
            "line2": lines[1] if len(lines) > 1 else None,
            "city": a.get("city"),
            "state_province": a.get("state"),
            "postal_code": a.get("postalCode"),
            "country": a.get("country"),
        },
        "preferred_language": language,
        "consent_to_contact": bool(value("consent-to-contact")),
        "created_at": value("created-at") or last_updated.isoformat(),
        "updated_at": last_updated.isoformat(),
        "version": version_id,
        "is_deleted": deleted,
    }


async def _unique(conn: Connection, patient: dict[str, Any], own_id: str | None) -> None:
    """Email and phone (of a FHIR Patient's telecom) belong to one live patient; concurrent
    writers of the same value queue."""
    telecom = {t.get("system"): t.get("value") for t in patient.get("telecom", [])}
    for field, code, duplicate in (
        ("email", "email", "duplicate_email"),
        ("phone_e164", "phone", "duplicate_phone"),
    ):
        value = telecom.get(code)
        if not value:
            continue
        ids = await repository.live_patients_with_token(conn, code, value)
        if any(id != own_id for id in ids):
            raise Conflict(
                f"another patient has this {field}", code="duplicate", error_code=duplicate
            )


async def create(ctx: Context, conn: Connection, body: Any) -> StoredVersion:
    d = validate(body, ctx.clock().date())
    id = str(uuid.uuid4())
    now = ctx.clock()
    resource = to_fhir(d, id, now.isoformat())
    await _unique(conn, resource, None)
    ctx.validator.validate(resource, expected_type="Patient")
    version = new_version(
        ctx.as_server(), resource, id=id, version_id=1, last_updated=now, method="POST"
    )
    await repository.insert_new(conn, version)
    found = version.stored()
    ctx.guard.changed(f"Patient/{id}", None, _demographics(from_fhir(found), present=True))
    return found


def _demographics(view: dict[str, Any], *, present: bool = False) -> dict[str, Any]:
    """The demographic fields of the API's view (what a write's audit diff compares), without
    the bookkeeping; `present`: only those with a value."""
    return {k: v for k, v in view.items() if k in FIELDS and (v is not None or not present)}


async def _current(conn: Connection, id: str) -> StoredVersion:
    found = await repository.read_current(conn, "Patient", id)
    if found is None:
        raise NotFound("no patient with this id")
    return found


async def read(conn: Connection, id: str) -> StoredVersion:
    found = await _current(conn, id)
    if found.deleted:
        raise NotFound("the patient was deleted (it can be restored)")
    return found


async def replace(
    ctx: Context, conn: Connection, id: str, body: Any, if_match: int
) -> StoredVersion:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    locked = await repository.lock_current(conn, "Patient", id)
    if locked is None or locked.deleted:
        raise NotFound("no patient with this id")
    if locked.version_id != if_match:
        raise PreconditionFailed(
            f"the patient is at version {locked.version_id}, not {if_match}",
            error_code="version_mismatch",
        )
    assert locked.content is not None
    stored = _view(parse_json(locked.content), locked.version_id, locked.last_updated, False)
    d = validate(body, ctx.clock().date(), stored=stored)
    resource = to_fhir(d, id, stored["created_at"])
    await _unique(conn, resource, id)
    ctx.validator.validate(resource, expected_type="Patient")
    version = await rewrite(ctx.as_server(), conn, "Patient", id, resource, after=if_match)
    found = version.stored()
    ctx.guard.changed(f"Patient/{id}", _demographics(stored), _demographics(from_fhir(found)))
    return found


async def delete(ctx: Context, conn: Connection, id: str) -> None:
    locked = await repository.lock_current(conn, "Patient", id)
    if locked is None or locked.deleted:
        raise NotFound("no patient with this id")
    version = deletion(
        ctx.as_server(),
        "Patient",
        id,
        version_id=locked.version_id + 1,
        last_updated=ctx.clock(),
        compartments=locked.compartments,
    )
    await repository.write_version(conn, version)
    ctx.guard.changed(f"Patient/{id}", {"is_deleted": False}, {"is_deleted": True})


async def restore(ctx: Context, conn: Connection, id: str) -> StoredVersion:
    locked = await repository.lock_current(conn, "Patient", id)
    if locked is None:
        raise NotFound("no patient with this id")
    if not locked.deleted:
        raise Conflict("the patient is not deleted", error_code="not_deleted")
    before = await repository.read_version(conn, "Patient", id, locked.version_id - 1)
    assert before is not None and before.content is not None
    content = parse_json(before.content)
    # someone may have taken its email or phone while it was deleted
    await _unique(conn, content, id)
    version = await rewrite(ctx.as_server(), conn, "Patient", id, content, after=locked.version_id)
    ctx.guard.changed(f"Patient/{id}", {"is_deleted": True}, {"is_deleted": False})
    return version.stored()


async def list_patients(ctx: Context, conn: Connection, query: dict[str, str]) -> dict[str, Any]:
    params: list[tuple[str, str]] = []
    known = {"family_name", "dob", "email", "phone", "limit", "cursor"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise BadRequest(f"unknown parameters: {', '.join(unknown)}", error_code="invalid_query")
    if "family_name" in query:
        params.append(("family:exact", query["family_name"]))
    if "dob" in query:
        params.append(("birthdate", f"eq{query['dob']}"))
    if "email" in query:
        params.append(("email", query["email"].strip().lower()))
    if "phone" in query:
        params.append(("phone", query["phone"]))
    params.append(("_count", str(_limit(query))))
    if "cursor" in query:
        params.append(("_page", query["cursor"]))
    try:
        bundle = parse_json(await search.search(ctx, conn, "Patient", params))
    except BadRequest as exc:  # a bad cursor or date is the caller's
        raise BadRequest(str(exc), error_code="invalid_query") from None
    items = []
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        meta = resource["meta"]
        last_updated = datetime.fromisoformat(meta["lastUpdated"])
        items.append(_view(resource, int(meta["versionId"]), last_updated, False))
    next_link = next(
        (link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None
    )
    cursor = parse_qs(urlparse(next_link).query).get("_page", [None])[0] if next_link else None
    return {"items": items, "next_cursor": cursor}


_CHANGE_ACTIONS = {"C": "create", "U": "update", "D": "delete"}


async def changes(conn: Connection, id: str, query: dict[str, str]) -> dict[str, Any]:
    """`GET /api/v1/patients/{id}/audit`: the audit trail of the patient's changes, newest
    first, as the specification's AuditLog (`audit_id, actor, action, patient_id, diff,
    occurred_at`); `diff` names the fields changed, never their values."""
    unknown = sorted(set(query) - {"limit", "cursor"})
    if unknown:
        raise BadRequest(f"unknown parameters: {', '.join(unknown)}", error_code="invalid_query")
    limit = _limit(query)
    before = None
    if "cursor" in query:
        try:
            before = decode_cursor(query["cursor"], 2)
        except FhirError:
            raise BadRequest(
                "`cursor` was not given out here", error_code="invalid_query"
            ) from None
    await _current(conn, id)  # 404 for a patient never known (a deleted one has its trail)
    events = await repository.change_events(conn, f"Patient/{id}", limit, before)
    items = []
    for event in events:
        agent = event["agent"][0]["who"]
        subtype = event.get("subtype", [{}])[0].get("code")
        detail = next(
            (d["valueString"] for d in event["entity"][0].get("detail", ()) if d["type"] == "diff"),
            None,
        )
        items.append(
            {
                "audit_id": event["id"],
                "actor": agent.get("reference") or agent.get("identifier", {}).get("value"),
                "action": "restore" if subtype == "restore" else _CHANGE_ACTIONS[event["action"]],
                "patient_id": id,
                "diff": None if detail is None else parse_json(detail),
                "occurred_at": event["recorded"],
            }
        )
    cursor = None
    if len(events) == limit:
        cursor = encode_cursor((events[-1]["recorded"], events[-1]["id"]))
    return {"items": items, "next_cursor": cursor}
