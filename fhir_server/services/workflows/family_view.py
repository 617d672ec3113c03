"""What the account's family page shows (docs/account-family.md): the people the signed-in
person acts for, the people who act for them, and, per pair, why the engine decides as it does.

Nothing here decides access. "People I act for" is the SMART picker's own list
(launch_choices.py `choices()`, read off the engine's `decide()` through compartments/reach.py);
"people who act for me" is the same `reach()` asked as each RelatedPerson that names the
signed-in patient, with that RelatedPerson's facts loaded as its own token would load them
(guard.py `as_user`). The page only puts the answers into words, so what it says and what the
server enforces cannot drift. Every name and date shown is read through the signed-in person's
own grants (the SQL filter of the guard), and every read is recorded for the audit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

import orjson

from compartments.consent import CONSENT_SCOPES, ConsentFact
from compartments.engine import Decision, Facts, Identity, Request, decide
from compartments.facts import earliest_date
from compartments.policy import Reason
from compartments.reach import Reach, majority_on, reach
from fhir_server.services.access.guard import Guard, as_user
from fhir_server.services.context import Context
from fhir_server.services.workflows.launch_choices import SCOPE_WORDS, choices, display_name
from fhir_server.services.workflows.scope_words import RELATIONSHIP_WORDS
from fhir_server.storage import repository
from fhir_server.storage.sql import Connection

# The type the why? page asks about for each Consent scope: its most common one.
EXAMPLE_TYPES: Final = {
    "DEMOGRAPHICS": "Patient",
    "CLINICAL_SUMMARY": "Condition",
    "ENCOUNTERS": "Encounter",
    "PRESCRIPTIONS": "MedicationRequest",
    "LAB_RESULTS": "Observation",
    "APPOINTMENTS": "Appointment",
}
# The Consent scopes in the order the pages name them.
SCOPE_ORDER: Final = tuple(s for s in SCOPE_WORDS if s in CONSENT_SCOPES)


@dataclass(frozen=True, slots=True)
class ComingOfAge:
    """When a minor comes of age: the parents' full access ends that day, and from then on the
    minor decides what to share (every Consent scope, in words)."""

    on: date
    age: int  # the majority age the server counts with
    can_share: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Allowance:
    """What the engine lets one side see of the other's record today, as words: the whole
    record, or by default contact details plus what a Consent shares (`shared`, until the
    last day `shared_until`)."""

    whole_record: bool
    minor: bool
    age: int | None
    shown: tuple[str, ...]  # scope words seen without a Consent (an adult's contact details)
    shared: tuple[str, ...]  # scope words a Consent opens
    shared_until: date | None
    more: bool  # readable types that no scope names ("some other records")


@dataclass(frozen=True, slots=True)
class Link:
    """One row of the family page: `via` acts for `patient`."""

    patient: str
    via: str
    name: str  # the other person: the patient (I act for), the related person (acts for me)
    pronoun: str  # "her", "his", "their": of the other person
    relationship: str  # what `via` is to `patient`, in words ("father")
    since: date | None  # RelatedPerson.period.start
    born: date | None  # the patient's birth date, as the engine counts it
    allowance: Allowance
    coming_of_age: ComingOfAge | None
    evidence: tuple[str, ...]  # the RelatedPersons and Consents the engine relied on


@dataclass(frozen=True, slots=True)
class FamilyView:
    me: str  # the signed-in fhirUser
    name: str
    coming_of_age: ComingOfAge | None  # the signed-in person's own, while a minor
    act_for: tuple[Link, ...]
    act_for_me: tuple[Link, ...]


@dataclass(frozen=True, slots=True)
class ScopeDecision:
    """The engine's decision for reading one kind of data, for the "why?" page."""

    scope: str  # words
    resource_type: str  # the type asked about
    allowed: bool  # for this patient (the pair's Reach)
    decision: Decision


@dataclass(frozen=True, slots=True)
class Why:
    link: Link
    direction: str  # "act_for" or "act_for_me"
    decisions: tuple[ScopeDecision, ...]
    related_persons: tuple[
        tuple[str, tuple[str, ...], bool, str], ...
    ]  # ref, codes, active, period
    consents: tuple[tuple[str, tuple[str, ...]], ...]  # reference, interpretation lines
    majority_age: int


async def family_view(ctx: Context, conn: Connection) -> FamilyView:
    """The family page of the signed-in person (`ctx.guard`, loaded for their session)."""
    guard = ctx.guard
    me = _user(guard)
    today = ctx.clock().date()
    majority = ctx.settings.majority_age
    act_for: list[Link] = []
    name = me
    own_coming: ComingOfAge | None = None
    grants = guard.grants("read", ("Patient", "RelatedPerson"))
    for choice in await choices(ctx, conn, me, policy=guard.policy):
        if choice.is_self:
            name = choice.name
            continue
        if not choice.via.startswith("RelatedPerson/"):
            continue  # a practitioner's patients are not family (docs/account-family.md)
        # the gender, for "her" or "his": read as the signed-in person (contact details)
        stored = await repository.read_current(conn, "Patient", _id(choice.patient), grants)
        gender = orjson.loads(stored.content).get("gender") if stored and stored.content else None
        guard.record("read", "Patient", choice.patient, guard.type_decision("read", "Patient"))
        act_for.append(_link(choice, choice.name, _pronoun(gender), guard.facts, majority))
    mine = _own_patients(guard)
    for patient in mine:
        stored = await repository.read_current(conn, "Patient", _id(patient), grants)
        if stored is None or stored.deleted or stored.content is None:
            continue
        guard.record("read", "Patient", patient, guard.type_decision("read", "Patient"))
        content = orjson.loads(stored.content)
        born = earliest_date(content.get("birthDate"))
        age = _age(born, today)
        if age is not None and age < majority:
            own_coming = _coming_of_age(born, majority)
    act_for_me = await _acting_for_me(ctx, conn, mine, grants)
    return FamilyView(me, name, own_coming, tuple(act_for), tuple(act_for_me))


async def explain_link(ctx: Context, conn: Connection, patient: str, via: str) -> Why | None:
    """The "why?" of one row of the signed-in person's family page; None (and a denial in the
    audit) when the pair is not one of their rows: a tampered link learns nothing."""
    guard = ctx.guard
    view = await family_view(ctx, conn)
    rows = [("act_for", r) for r in view.act_for] + [("act_for_me", r) for r in view.act_for_me]
    found = next(((d, r) for d, r in rows if r.patient == patient and r.via == via), None)
    if found is None:
        guard.record(
            "read",
            "Patient",
            patient if patient.startswith("Patient/") else None,
            Decision(
                allowed=False,
                reason=Reason.INVALID_COMPARTMENT,
                explanation=f"the family page's why? of {via} for {patient}: not a pair of "
                f"{view.me}",
            ),
        )
        return None
    direction, link = found
    if direction == "act_for":
        identities, facts = _identities_of(guard.identities, link.evidence, via), guard.facts
    else:
        other = await as_user(conn, guard, via, "user/*.cruds", now=ctx.clock())
        identities, facts = _identities_of(other.identities, link.evidence, via), other.facts
    reached = next(
        (r for r in reach(identities, guard.policy, facts) if r.patient == patient), None
    )
    decisions = tuple(
        ScopeDecision(
            SCOPE_WORDS[scope],
            _example_type(scope),
            reached is not None and scope in reached.scopes,
            decide(Request(identities, "read", _example_type(scope)), guard.policy, facts),
        )
        for scope in SCOPE_ORDER
    )
    guard.record_workflow(
        "read", patient, f"the family page's why? of {via} for {patient}", patients=[patient]
    )
    related = tuple(
        (
            ref,
            tuple(sorted(fact.relationships)),
            fact.active,
            fact.period.describe(),
        )
        for ref in link.evidence
        if (fact := facts.related_persons.get(ref)) is not None
    )
    consents = tuple(
        (c.reference, tuple(c.describe())) for c in _consents(facts.consents, link.evidence)
    )
    return Why(link, direction, decisions, related, consents, ctx.settings.majority_age)


# --- the rows ------------------------------------------------------------------------------


def _link(
    reached: Reach,
    name: str,
    pronoun: str,
    facts: Facts,
    majority_age: int,
) -> Link:
    """A row from the engine's Reach of `reached.via` for `reached.patient`."""
    link = facts.related_persons.get(reached.via)
    born = facts.birth_dates.get(reached.patient)
    since = link.period.start.date() if link is not None and link.period.start else None
    coming = (
        ComingOfAge(reached.majority_on, majority_age, _scope_words(SCOPE_ORDER))
        if reached.minor and reached.majority_on is not None
        else None
    )
    return Link(
        patient=reached.patient,
        via=reached.via,
        name=name,
        pronoun=pronoun,
        relationship=relationship_words(reached.relationships),
        since=since,
        born=born,
        allowance=allowance(reached, _age(born, facts.today)),
        coming_of_age=coming,
        evidence=reached.evidence,
    )


def allowance(reached: Reach, age: int | None) -> Allowance:
    """The engine's Reach in words: the whole record, or contact details plus what a Consent
    shares, and until when (the Reach's `until`: the first instant it may change)."""
    if reached.whole_record:
        return Allowance(True, reached.minor, age, (), (), None, False)
    consented = any(e.startswith("Consent/") for e in reached.evidence)
    shown = _scope_words(s for s in ("DEMOGRAPHICS",) if s in reached.scopes)
    shared = _scope_words(s for s in SCOPE_ORDER if s != "DEMOGRAPHICS" and s in reached.scopes)
    listed = frozenset(t for s in reached.scopes for t in CONSENT_SCOPES[s])
    until = None
    if consented and shared and reached.until is not None:
        until = (reached.until - timedelta(microseconds=1)).date()  # the last day it holds
    return Allowance(False, reached.minor, age, shown, shared, until, bool(reached.types - listed))


def relationship_words(codes: Iterable[str]) -> str:
    words = sorted({RELATIONSHIP_WORDS.get(c, "family member") for c in codes})
    return " and ".join(words) if words else "family member"


def _scope_words(scopes: Iterable[str]) -> tuple[str, ...]:
    return tuple(SCOPE_WORDS[s] for s in scopes)


def _coming_of_age(born: date | None, majority_age: int) -> ComingOfAge | None:
    on = majority_on(born, majority_age)
    return None if on is None else ComingOfAge(on, majority_age, _scope_words(SCOPE_ORDER))


async def _acting_for_me(
    ctx: Context,
    conn: Connection,
    mine: Sequence[str],
    grants: dict[str, Any],
) -> list[Link]:
    """The RelatedPersons of the signed-in patient(s), each with what the engine lets it do
    for them (its own facts, as its own token would load them)."""
    guard = ctx.guard
    found = []
    majority = ctx.settings.majority_age
    for related, patient in sorted(guard.facts.relatives.items()):
        if patient not in mine:
            continue
        stored = await repository.read_current(conn, "RelatedPerson", _id(related), grants)
        if stored is None or stored.deleted or stored.content is None:
            continue  # not readable by the signed-in person: not shown
        guard.record("read", "RelatedPerson", related, guard.type_decision("read", "RelatedPerson"))
        content = orjson.loads(stored.content)
        other = await as_user(conn, guard, related, "user/*.cruds", now=ctx.clock())
        identities = _identities_of(other.identities, (related,), related)
        reached = next(
            (r for r in reach(identities, guard.policy, other.facts) if r.patient == patient),
            None,
        )
        if reached is None:
            continue  # an ended or inactive link: it acts for nobody today
        name = display_name(content) if content.get("name") else ""
        found.append(_link(reached, name, _pronoun(content.get("gender")), other.facts, majority))
    return found


def _identities_of(
    identities: Sequence[Identity], evidence: Iterable[str], via: str
) -> tuple[Identity, ...]:
    """The identities that a row rests on: `via` and the other identities in its evidence
    (a Person's several links to the same patient)."""
    wanted = {via, *evidence}
    return tuple(i for i in identities if i.reference in wanted)


def _consents(consents: Sequence[ConsentFact], evidence: Iterable[str]) -> list[ConsentFact]:
    wanted = set(evidence)
    return [c for c in consents if c.reference in wanted]


def _example_type(scope: str) -> str:
    """The resource type the why? page asks the engine about for a scope."""
    return EXAMPLE_TYPES[scope]


def _own_patients(guard: Guard) -> list[str]:
    return [i.reference for i in guard.identities if i.role == "Patient"]


def _user(guard: Guard) -> str:
    assert guard.principal is not None and guard.principal.fhir_user is not None
    return guard.principal.fhir_user


def _pronoun(gender: Any) -> str:
    return {"female": "her", "male": "his"}.get(str(gender), "their")


def _age(born: date | None, today: date) -> int | None:
    if born is None:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _id(reference: str) -> str:
    return reference.split("/", 1)[1]
