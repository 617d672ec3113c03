"""`reach(identities, policy, facts) -> list[Reach]`: whose record these identities may use,
and what of it (DESIGN.md 2.1, docs/security.md "Whose record: the picker's function").

The SMART picker's list, the approval page's narrowing of scopes and every later request must
agree, so a Reach is not worked out by rules of its own: it is read off `decide()`. For each
patient the identities are, are related to, or care for, the engine is asked for `read` (and
for the writes) of every resource type in `types` (by default the types of the Consent scopes
and a few others of the Patient compartment); a type is readable for that patient when the
Decision's filter holds the patient's compartment (all of it) or a part of it a Consent opens.
The whole record is "every type readable, all of it"; otherwise the Reach lists the Consent
scopes (compartments/consent.py `CONSENT_SCOPES`) whose types are all readable, and the types
themselves.

Pure: no clock (`facts.now`), no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Final

from compartments.consent import CONSENT_SCOPES
from compartments.engine import Decision, Facts, Identity, Request, decide
from compartments.periods import Window, next_change
from compartments.policy import Policy

# Types of the Patient compartment that no Consent scope names: a Consent by scope can never
# open them, so "whole record" means more than the sum of the scopes.
OUTSIDE_SCOPES: Final = frozenset(
    {
        "DocumentReference",
        "Goal",
        "ServiceRequest",
        "Communication",
        "QuestionnaireResponse",
        "Coverage",
        "CareTeam",
        "Flag",
    }
)
DEFAULT_TYPES: Final = frozenset(t for types in CONSENT_SCOPES.values() for t in types) | (
    OUTSIDE_SCOPES
)
# The writes a SMART scope names (`c`, `u`, `d`); patch counts as `u` and is decided as update.
WRITE_OPERATIONS: Final = ("create", "update", "delete")


@dataclass(frozen=True, slots=True)
class Reach:
    """What `via` may do for `patient`, as the engine decides it at `facts.now`."""

    patient: str  # "Patient/1"
    via: str  # the acting identity: "Patient/1" itself, "RelatedPerson/9", "Practitioner/3"
    relationships: frozenset[str]  # RelatedPerson.relationship codes ("MTH"); empty for self
    minor: bool
    whole_record: bool  # every type's read, the whole compartment (self, parent of a minor)
    scopes: frozenset[str]  # the CONSENT_SCOPES whose every type is readable
    evidence: tuple[str, ...]  # the RelatedPersons and Consents relied on
    until: datetime | None  # when this reach ends or may change (a period's end, majority)
    majority_on: date | None  # a minor's birthday of majority (facts.majority_age)
    # every type readable (all of it, or the part a Consent opens), and (type, write) pairs
    # the engine allows for this patient: what scopes may be narrowed to (launch_choices.py)
    types: frozenset[str] = frozenset()
    writes: frozenset[tuple[str, str]] = frozenset()
    # the types readable only in part (a Consent naming single resources)
    partial: frozenset[str] = frozenset()
    # every identity that reaches the patient (a Person's links): `via` is one of them
    identities: tuple[str, ...] = ()

    @property
    def is_self(self) -> bool:
        return self.via == self.patient


def reach(
    identities: Sequence[Identity],
    policy: Policy,
    facts: Facts,
    types: Collection[str] = DEFAULT_TYPES,
) -> list[Reach]:
    """Every patient whose record at least one of `types` may be read for, with what: the
    identities' own patient first, then the others in the order of their references."""
    candidates: dict[str, list[Identity]] = {}
    for identity in identities:
        for patient in _patients_of(identity, facts):
            candidates.setdefault(patient, []).append(identity)
    own = {i.reference for i in identities if i.role == "Patient"}
    found = []
    for patient in sorted(candidates, key=lambda p: (p not in own, p)):
        reached = _reach(patient, tuple(candidates[patient]), policy, facts, sorted(types))
        if reached is not None:
            found.append(reached)
    return found


def _patients_of(identity: Identity, facts: Facts) -> list[str]:
    """The patients an identity could act for: itself, its RelatedPerson's patient, the
    patients of a practitioner's care relationships. The engine decides what of them."""
    if identity.role == "Patient":
        return [identity.reference]
    if identity.role == "RelatedPerson":
        link = facts.related_persons.get(identity.reference)
        return [link.patient] if link is not None and link.patient else []
    if identity.role == "Practitioner":
        return sorted(facts.care.get(identity.reference, ()))
    return []


def _reach(
    patient: str,
    identities: tuple[Identity, ...],
    policy: Policy,
    facts: Facts,
    types: list[str],
) -> Reach | None:
    whole: set[str] = set()
    part: set[str] = set()
    evidence: dict[str, None] = {}
    for resource_type in types:
        decision = decide(Request(identities, "read", resource_type), policy, facts)
        covered = _covers(decision, patient)
        if covered is None:
            continue
        (whole if covered else part).add(resource_type)
        for item in decision.evidence:
            if item.startswith(("RelatedPerson/", "Consent/")):
                evidence[item] = None
    readable = frozenset(whole | part)
    if not readable:
        return None
    writes = frozenset(
        (resource_type, operation)
        for resource_type in sorted(readable)
        for operation in WRITE_OPERATIONS
        if _covers(decide(Request(identities, operation, resource_type), policy, facts), patient)
        is not None
    )
    self_identity = next((i for i in identities if i.reference == patient), None)
    related = sorted(i.reference for i in identities if i.role == "RelatedPerson")
    via = (
        self_identity.reference
        if self_identity is not None
        else (related[0] if related else identities[0].reference)
    )
    relationships = frozenset(
        code
        for reference in related
        if (link := facts.related_persons.get(reference)) is not None
        for code in link.relationships
    )
    minor = facts.is_minor(patient)
    majority = majority_on(facts.birth_dates.get(patient), facts.majority_age) if minor else None
    return Reach(
        patient=patient,
        via=via,
        relationships=frozenset() if self_identity is not None else relationships,
        minor=minor,
        whole_record=len(whole) == len(types),
        scopes=frozenset(name for name, members in CONSENT_SCOPES.items() if members <= readable),
        evidence=tuple(sorted(evidence)),  # whatever the order of the identities
        until=_until(patient, related, majority, facts),
        majority_on=majority,
        types=readable,
        writes=writes,
        partial=frozenset(part),
        identities=tuple(sorted(i.reference for i in identities)),
    )


def _covers(decision: Decision, patient: str) -> bool | None:
    """True: the decision lets the patient's whole compartment through (for its type); False:
    a part of it a Consent opens; None: nothing of it."""
    if not decision.allowed:
        return None
    if decision.everything or patient in decision.compartments:
        return True
    if any(p.compartment == patient and not p.selection.empty for p in decision.parts):
        return False
    return None


def majority_on(born: date | None, majority_age: int) -> date | None:
    """The day someone born on `born` comes of age: a 29 February birthday comes on 1 March in
    a year without one (Facts.is_minor counts the same way)."""
    if born is None:
        return None
    try:
        return born.replace(year=born.year + majority_age)
    except ValueError:
        return date(born.year + majority_age, 3, 1)


def _until(
    patient: str, related: list[str], majority: date | None, facts: Facts
) -> datetime | None:
    """The first instant after now at which a period the reach rests on starts or ends (a
    RelatedPerson's, a Consent's about the patient), or the patient comes of age."""
    windows: list[Window] = []
    for reference in related:
        link = facts.related_persons.get(reference)
        if link is not None:
            windows.append(link.period)
    for consent in facts.consents:
        if consent.patient == patient:
            windows.extend(consent.windows)
    moments = [m for m in (next_change(windows, facts.now),) if m is not None]
    if majority is not None:
        moments.append(datetime.combine(majority, time(), tzinfo=UTC))
    return min(moments) if moments else None
