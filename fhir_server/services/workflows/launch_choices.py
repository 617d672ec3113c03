"""Whose record a SMART app may use: the picker's list, the narrowing of the scopes an app asks
for, and what the token then says (issue 13; docs/security.md "Whose record: the picker's
function").

`choices(ctx, conn, fhir_user)` loads the identities and facts exactly as the Guard does for a
token with that `fhirUser` and asks the engine (compartments/reach.py `reach`, itself read off
`decide()`) whom they may act for and with what; each `Choice` adds the name, age and a plain
sentence for the page. `narrow_scopes(requested, choice)` cuts a SMART scope string down to
what the choice allows; `token_identity` and `access_basis` say whom the token names and on
what grounds. Every later request is decided again by the same engine on the same facts, so the
page cannot promise more than the server enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from typing import Any, Final

import orjson

from capability.definitions import compartment_definition
from compartments.consent import CONSENT_CATEGORIES, CONSENT_SCOPES
from compartments.facts import earliest_date
from compartments.policy import Policy
from compartments.reach import Reach, reach
from fhir_server.auth.scopes import PERMISSIONS, ScopeError, parse_scope
from fhir_server.auth.tokens import principal_from_claims
from fhir_server.services.access.guard import load_guard
from fhir_server.services.context import Context
from fhir_server.storage import repository
from fhir_server.storage.sql import Connection

# What each Consent scope is called on the page.
SCOPE_WORDS: Final = {
    "DEMOGRAPHICS": "contact details",
    "CLINICAL_SUMMARY": "clinical summary",
    "ENCOUNTERS": "visits",
    "PRESCRIPTIONS": "prescriptions",
    "LAB_RESULTS": "lab results",
    "APPOINTMENTS": "appointments",
}
_WRITE_LETTERS: Final = {"create": "c", "update": "u", "delete": "d"}
_V1: Final = {frozenset("rs"): "read", frozenset("cud"): "write", frozenset("cruds"): "*"}
_READ_LETTERS: Final = frozenset("rs")


@dataclass(frozen=True, slots=True)
class Choice(Reach):
    """A Reach, with what the picker shows of the person: never more than name and age."""

    name: str = ""
    age: int | None = None
    description: str = ""


@cache
def patient_compartment_types() -> frozenset[str]:
    """The resource types of the official Patient CompartmentDefinition: a whole record is
    every one of them readable."""
    definition = compartment_definition("Patient")
    return frozenset(r["code"] for r in definition["resource"] if r.get("param"))


async def choices(
    ctx: Context, conn: Connection, fhir_user: str, *, policy: Policy | None = None
) -> list[Choice]:
    """Whose record `fhir_user` may let an app use: itself and everyone the engine lets it
    act for, self first. `policy`: the server's (the runtime's); by default the one of
    `ctx.guard`, which must then be a guard built with it (a `nobody()` guard has none, and
    the list is empty)."""
    rules = policy if policy is not None else ctx.guard.policy
    now = ctx.clock()
    principal = principal_from_claims(
        {"sub": fhir_user, "fhirUser": fhir_user, "scope": "user/Patient.rs"}
    )
    guard = await load_guard(
        conn,
        principal,
        rules,
        now=now,
        majority_age=ctx.settings.majority_age,
        emergency_bypass=False,  # a picker never breaks the glass
        admin_role="",
        local_bases=ctx.reference_bases,
    )
    grants = guard.grants("read", ("Patient",))
    found = []
    for reached in reach(guard.identities, rules, guard.facts, patient_compartment_types()):
        stored = await repository.read_current(
            conn, "Patient", reached.patient.split("/", 1)[1], grants
        )
        if stored is None or stored.deleted or stored.content is None:
            continue
        content = orjson.loads(stored.content)
        name = display_name(content)
        age = _age(earliest_date(content.get("birthDate")), now.date())
        found.append(
            Choice(
                **{f: getattr(reached, f) for f in Reach.__dataclass_fields__},
                name=name,
                age=age,
                description=describe(reached, name, age, content.get("gender")),
            )
        )
    return found


def display_name(patient: dict[str, Any]) -> str:
    """Given and family names of the first `official` (else first) HumanName."""
    names = [n for n in patient.get("name", ()) if isinstance(n, dict)]
    if not names:
        return "(no name)"
    name = next((n for n in names if n.get("use") == "official"), names[0])
    given = [g for g in name.get("given", ()) if isinstance(g, str)]
    family = name.get("family")
    words = [*given, *([family] if isinstance(family, str) else [])]
    text = name.get("text")
    return " ".join(words) or (text if isinstance(text, str) and text else "(no name)")


def _age(born: date | None, today: date) -> int | None:
    if born is None:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def describe(choice: Reach, name: str, age: int | None, gender: Any = None) -> str:
    """One plain sentence of what the choice grants: "Mary is 12: the whole record"."""
    first = name.split(" ", 1)[0]
    if choice.is_self:
        return f"{first} (you): the whole record"
    if choice.minor:
        who = f"{first} is {age}" if age is not None else f"{first} is a minor"
    elif choice.via.startswith("Practitioner/"):
        who = f"{first} is in your care"
    else:
        who = f"{first} is an adult"
    if choice.whole_record:
        return f"{who}: the whole record"
    parts = []
    if "DEMOGRAPHICS" in choice.scopes:
        parts.append(SCOPE_WORDS["DEMOGRAPHICS"])
    consented = [SCOPE_WORDS[s] for s in CONSENT_SCOPES if s in choice.scopes and s in SCOPE_WORDS]
    consented = [w for w in consented if w != SCOPE_WORDS["DEMOGRAPHICS"]]
    listed = frozenset(t for s in choice.scopes for t in CONSENT_SCOPES[s])
    if choice.types - listed:
        consented.append("some other records")
    if consented:
        pronoun = {"female": "her", "male": "his"}.get(str(gender), "their")
        words = _join(consented)
        if choice.until is not None and any(e.startswith("Consent/") for e in choice.evidence):
            # `until` is the first instant after it: the page names the last day it holds
            last = choice.until - timedelta(microseconds=1)
            words += f" until {last.day} {last:%B %Y}"
        parts.append(f"{words} by {pronoun} consent")
    return f"{who}: " + ("; ".join(parts) if parts else "nothing yet")


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


# --- scopes ----------------------------------------------------------------------------------


def narrow_scopes(requested: str, choice: Reach) -> tuple[str, list[str]]:
    """The requested SMART scopes narrowed to what `choice` allows, and the requested scopes
    not granted as written. Scopes that grant no resource access (`openid`, `fhirUser`,
    `launch/patient`, `offline_access`, ...) pass through; `system/` scopes and invalid ones
    are dropped. The whole record keeps `patient/` and `user/` scopes as asked, less the
    writes the engine allows of no type; anything less becomes explicit per-type scopes of the
    readable types, with the category a Consent scope stands for (lab results: laboratory
    Observations), and only the writes the engine allows for that type."""
    granted: dict[str, None] = {}
    dropped: list[str] = []
    for text in requested.split():
        try:
            scope = parse_scope(text)
        except ScopeError:
            dropped.append(text)
            continue
        if scope is None:
            granted[text] = None
            continue
        if scope.context == "system":
            dropped.append(text)
            continue
        v1 = _is_v1(text)
        made = []
        if choice.whole_record:
            allowed = _allowed(choice, None if scope.resource_type == "*" else scope.resource_type)
            permissions = scope.permissions & allowed
            made.append(_format(scope.context, scope.resource_type, permissions, scope.query, v1))
        else:
            types = (
                sorted(choice.types)
                if scope.resource_type == "*"
                else [t for t in (scope.resource_type,) if t in choice.types]
            )
            for resource_type in types:
                permissions = scope.permissions & _allowed(choice, resource_type)
                query = _query(choice, resource_type, scope.query)
                if query is None:
                    continue
                made.append(_format(scope.context, resource_type, permissions, query, v1))
        kept = [m for m in made if m is not None]
        for m in kept:
            granted[m] = None
        if kept != [text]:
            dropped.append(text)
    return " ".join(granted), dropped


def _allowed(choice: Reach, resource_type: str | None) -> frozenset[str]:
    """The SMART letters the engine allows: read and search of a readable type, and its
    writes (of any type, for None)."""
    writes = {
        _WRITE_LETTERS[operation]
        for type_, operation in choice.writes
        if resource_type is None or type_ == resource_type
    }
    return _READ_LETTERS | frozenset(writes)


def _query(
    choice: Reach, resource_type: str, asked: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...] | None:
    """The granular filter of a narrowed scope: the category a Consent scope stands for, when
    the type is readable through it (the engine's grant holds the same filter for every caller:
    the token only says so); the asked filter when it is that one or none is needed; None when
    the asked filter asks for something else (dropped)."""
    needed = [
        pair
        for (scope, type_), pair in CONSENT_CATEGORIES.items()
        if type_ == resource_type and scope in choice.scopes
    ]
    if not needed:
        return asked
    if not asked:
        return tuple(needed[:1])
    return asked if set(asked) <= set(needed) else None


def _is_v1(text: str) -> bool:
    access = text.split("?", 1)[0].rsplit(".", 1)[-1]
    return access in {"read", "write", "*"}


def _format(
    context: str,
    resource_type: str,
    permissions: frozenset[str],
    query: tuple[tuple[str, str], ...],
    v1: bool,
) -> str | None:
    if not permissions:
        return None
    base = f"{context}/{resource_type}."
    if v1 and not query and permissions in _V1:
        return base + _V1[permissions]
    letters = "".join(p for p in PERMISSIONS if p in permissions)
    if v1 and not query:
        # v1 names read and write as wholes: what is left of one is written in v2 letters
        return base + letters
    filter_ = "&".join(f"{k}={v}" for k, v in query)
    return base + letters + (f"?{filter_}" if filter_ else "")


# --- what the token says -----------------------------------------------------------------------


def token_identity(fhir_user: str, choice: Reach) -> str:
    """The `fhirUser` of the token for this choice: the Patient for self; the Person itself
    when several of its links reach the patient; else the RelatedPerson that acts for the
    patient (`choice.via`), whoever signed in (the Patient or RelatedPerson a Person links,
    or the Person); a practitioner stays itself. The Guard of the token loads the same
    identities either way (a user a Person links acts with all of its links)."""
    if choice.is_self:
        return choice.patient
    if fhir_user.startswith("Person/") and len(choice.identities) > 1:
        return fhir_user
    if choice.via.startswith("RelatedPerson/"):
        return choice.via
    return fhir_user


def access_basis(choice: Reach) -> dict[str, Any]:
    """The token's `access_basis` claim: on what grounds it acts for the patient."""
    if choice.is_self:
        return {"self": choice.patient}
    return {
        "relationship": choice.via,
        "codes": sorted(choice.relationships),
        "consents": [e for e in choice.evidence if e.startswith("Consent/")],
    }
