"""`decide(request, policy, facts) -> Decision`: the compartment rules of DESIGN.md 5.3 and 5.4.

Pure: the caller hands in everything (the identities from the token, the facts loaded from the
database, today's date) and gets a value back. Default deny; a `deny` rule that applies wins over
any `allow`; the caller ANDs the result with the token's scopes. For a search the Decision carries
the compartments (and the creator) that the SQL filter must restrict to.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime

from compartments.consent import (
    CONSENT_CATEGORIES,
    CONSENT_SCOPE_SYSTEM,
    CONSENT_SCOPES,
    NOTHING,
    ConsentFact,
    Query,
    Selection,
)
from compartments.periods import ALWAYS, Window
from compartments.policy import RESULTS, WRITES, Policy, Reason, Rule

__all__ = ["CONSENT_SCOPES", "CONSENT_SCOPE_SYSTEM", "ConsentFact", "Selection", "Window"]

# v3 RoleCode parents (natural, adoptive, step) and guardian, and the seed's own codes.
PARENT_OR_GUARDIAN = frozenset(
    {
        "PRN", "MTH", "FTH", "NPRN", "NMTH", "NFTH", "ADOPTP", "ADOPTM", "ADOPTF",
        "STPPRN", "STPMTH", "STPFTH", "GUARD", "PARENT", "GUARDIAN",
    }
)  # fmt: skip
# What a related person of an adult sees without a Consent.
DEMOGRAPHICS = CONSENT_SCOPES["DEMOGRAPHICS"]


@dataclass(frozen=True, slots=True)
class Identity:
    """An acting identity: the token's `fhirUser`, or a target of its Person's links."""

    reference: str  # "RelatedPerson/9"
    verified: bool = True  # Person.link assurance level3/level4 (or the fhirUser itself)

    @property
    def role(self) -> str:
        return self.reference.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class RelatedPersonFact:
    reference: str  # "RelatedPerson/9"
    patient: str  # "Patient/1"
    relationships: frozenset[str] = frozenset()
    active: bool = True
    period: Window = ALWAYS  # RelatedPerson.period, as instants (compartments/periods.py)

    def in_force(self, now: datetime) -> bool:
        return self.active and self.period.covers(now)


@dataclass(frozen=True, slots=True)
class Facts:
    # The moment of the request (timezone-aware): periods are compared with it as instants,
    # birthdays with its UTC date. The engine has no clock: the caller passes it.
    now: datetime
    related_persons: Mapping[str, RelatedPersonFact] = field(default_factory=dict)
    birth_dates: Mapping[str, date | None] = field(default_factory=dict)  # "Patient/1" -> date
    consents: Sequence[ConsentFact] = ()
    care: Mapping[str, frozenset[str]] = field(default_factory=dict)  # practitioner -> patients
    # "RelatedPerson/4" -> "Patient/1": the RelatedPersons of the patients the identities are or
    # are related to, so a write may name a patient's own relatives (see `foreign_compartment`)
    relatives: Mapping[str, str] = field(default_factory=dict)
    majority_age: int = 18
    emergency_bypass: bool = False

    @property
    def today(self) -> date:
        return self.now.date()

    def is_minor(self, patient: str) -> bool:
        born = self.birth_dates.get(patient)
        if born is None:
            return False  # no birthDate counts as adult
        today = self.today
        years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
        return years < self.majority_age


@dataclass(frozen=True, slots=True)
class Target:
    """The resource an instance operation touches: its compartments and creator. For update
    and patch, the caller decides on the stored version and on the result, both."""

    compartments: frozenset[str]
    created_by: str | None = None
    # whom the resource grants access to: a Consent's `provision.actor` references
    grants_to: frozenset[str] = frozenset()
    id: str | None = None  # the resource's id, when a Consent grants single resources


@dataclass(frozen=True, slots=True)
class Part:
    """Part of a compartment a Consent opens: the resources of the decided type in
    `compartment` that `selection` admits (ids: `provision.data` references) and, when `where`
    is set, that also match that search (`category=...laboratory`: a Consent's lab results).
    The engine cannot see a resource's content: it admits an instance in the compartment, and
    `where` is enforced by the SQL filter of reads and of the stored version of a write, and on
    a write's result by its search index (services/access/enforce.py)."""

    compartment: str
    selection: Selection
    where: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Request:
    identities: tuple[Identity, ...]
    operation: str
    resource_type: str
    target: Target | None = None  # None: a search, answered with a filter
    # Who acts ("Person/5", "RelatedPerson/9"): an unverified link sees what this account created.
    account: str | None = None
    purpose_of_use: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: Rule | None = None
    reason: Reason | None = None
    explanation: str = ""
    evidence: tuple[str, ...] = ()  # the links, Consents, care relationships relied on
    everything: bool = False  # the filter is "all resources" (allow validator)
    compartments: frozenset[str] = frozenset()  # the search filter
    creators: frozenset[str] = frozenset()  # resources these identities created
    parts: frozenset[Part] = frozenset()  # parts of compartments (a Consent's data or denies)
    emergency: bool = False

    @property
    def message(self) -> str:
        return self.reason.message if self.reason else "Allowed"


# Denial reasons from the most to the least telling, to pick one when every identity says no.
_SPECIFICITY = {
    reason: rank
    for rank, reason in enumerate(
        (
            Reason.LINK_INACTIVE,
            Reason.CONSENT_REQUIRED,
            Reason.UNVERIFIED_LINK,
            Reason.REFERENCE_MISMATCH,
            Reason.FOREIGN_COMPARTMENT,
            Reason.INVALID_COMPARTMENT,
            Reason.INVALID_ROLE,
        )
    )
}


def deny(reason: Reason, explanation: str, rule: Rule | None = None) -> Decision:
    return Decision(allowed=False, rule=rule, reason=reason, explanation=explanation)


def decide(request: Request, policy: Policy, facts: Facts) -> Decision:
    """The decision for a request. Several identities: allowed if any is, filters united."""
    if not request.identities:
        return deny(Reason.INVALID_ROLE, "no identity")
    decisions = [_decide_one(identity, request, policy, facts) for identity in request.identities]
    pairs = [(i, d) for i, d in zip(request.identities, decisions, strict=True) if d.allowed]
    allowed = [d for _, d in pairs]
    if not allowed:
        # the most telling reason: an identity that came close says more than one with no rule
        return min(
            decisions,
            key=lambda d: _SPECIFICITY.get(d.reason, 0) if d.reason else len(_SPECIFICITY),
        )
    first = allowed[0]
    stranger = foreign_compartment(request, policy, facts, pairs)
    if stranger is not None:
        return deny(
            Reason.FOREIGN_COMPARTMENT,
            f"the write touches the compartment of `{stranger}`, whom this caller may not "
            "write for",
            first.rule,
        )
    return Decision(
        allowed=True,
        rule=first.rule,
        explanation="; ".join(d.explanation for d in allowed),
        evidence=tuple(e for d in allowed for e in d.evidence),
        everything=any(d.everything for d in allowed),
        compartments=frozenset().union(*(d.compartments for d in allowed)),
        creators=frozenset().union(*(d.creators for d in allowed)),
        parts=frozenset().union(*(d.parts for d in allowed)),
        emergency=any(d.emergency for d in allowed),
    )


# The types whose content grants access (a Person's links, a RelatedPerson's patient, a Consent,
# a Patient's general practitioner, a CareTeam's participants: what the access facts are read
# from, storage/access_facts.py WALKED). Writing one is giving someone access: an unverified link
# writes none, and nobody but a System or Admin caller writes one into the record of a patient
# it may not write for, not even a practitioner (who may otherwise file an Observation that
# names another patient).
GRANTING = frozenset({"Person", "RelatedPerson", "Consent", "Patient", "CareTeam"})

# The compartments that are someone's record: a restricted caller's write may land only in those
# of people it may write for. Practitioner, Device and Encounter compartments are not records of
# a person the caller could be a stranger to (an Appointment names its practitioner freely).
PERSONAL_COMPARTMENTS = ("Patient", "RelatedPerson")


def restricted(identity: Identity) -> bool:
    """Whether the identity's writes must stay inside the records of those it may write for:
    a patient, a related person, or any identity reached only through an unverified link."""
    return identity.role in PERSONAL_COMPARTMENTS or not identity.verified


def foreign_compartment(
    request: Request,
    policy: Policy,
    facts: Facts,
    allowed: Sequence[tuple[Identity, Decision]],
) -> str | None:
    """The first Patient or RelatedPerson compartment of a write's result (or, for update and
    patch, of the stored version) that belongs to nobody the caller may write for; None when
    there is none, or when the write is allowed by an identity the rule does not restrict
    (System, Admin, and a verified practitioner unless the type grants access: `GRANTING`).

    What the caller may write for is the union over all its identities (a Person's links): the
    patients whose records each may write this type into, each identity itself, and the
    RelatedPersons of those patients (another parent of the same child)."""
    target = request.target
    if target is None or request.operation not in RESULTS:
        return None
    if any(d.everything for _, d in allowed):
        return None
    if request.resource_type not in GRANTING and any(not restricted(i) for i, _ in allowed):
        return None
    writable: set[str] = set()
    for identity in request.identities:
        writable |= writes_for(identity, request, policy, facts)
    return first_foreign(target.compartments, writable, facts.relatives)


def first_foreign(
    compartments: Iterable[str], writable: Collection[str], relatives: Mapping[str, str]
) -> str | None:
    """The first Patient or RelatedPerson compartment (in sorted order) that is neither in
    `writable` nor the compartment of a RelatedPerson of a patient in `writable`."""
    for compartment in sorted(compartments):
        kind = compartment.split("/", 1)[0]
        if kind not in PERSONAL_COMPARTMENTS or compartment in writable:
            continue
        if kind == "RelatedPerson" and relatives.get(compartment) in writable:
            continue
        return compartment
    return None


def writes_for(
    identity: Identity, request: Request, policy: Policy, facts: Facts
) -> frozenset[str]:
    """The Patient and RelatedPerson compartments this identity may put a resource of the
    request's type in, by the request's operation: nothing when the policy denies it the type."""
    typed = _decide_one(identity, replace(request, target=None), policy, facts)
    if not typed.allowed:
        return frozenset()
    own = {identity.reference}
    link = facts.related_persons.get(identity.reference)
    if link is not None:
        own.add(link.patient)  # also through an unverified link, which filters by creator only
    return typed.compartments | own


def _decide_one(identity: Identity, request: Request, policy: Policy, facts: Facts) -> Decision:
    rules = policy.applicable(identity.role, request.resource_type, request.operation)
    if not rules:
        return deny(
            Reason.INVALID_ROLE,
            f"no rule lets a {identity.role} {request.operation} {request.resource_type}",
        )
    for rule in rules:
        if rule.validator == "deny":
            return deny(Reason.INVALID_ROLE, rule.description or "denied by policy", rule)
    last = deny(Reason.INVALID_ROLE, "no rule applies")
    for rule in rules:
        decision = _VALIDATORS[rule.validator](identity, request, facts, rule)
        if decision.allowed:
            return decision
        last = decision
    return last


def _within(decision: Decision, request: Request, rule: Rule) -> Decision:
    """An instance operation is allowed when its resource is inside the decision's filter."""
    target = request.target
    if target is None or decision.everything:
        return decision
    if target.compartments & decision.compartments or (target.created_by in decision.creators):
        return decision
    if any(
        p.compartment in target.compartments and p.selection.admits(target.id)
        for p in decision.parts
    ):
        return decision
    if decision.creators and not decision.compartments:
        return deny(Reason.UNVERIFIED_LINK, "an unverified link sees only what it created", rule)
    return deny(
        Reason.INVALID_COMPARTMENT, "the resource is outside the permitted compartments", rule
    )


def _allow(identity: Identity, request: Request, facts: Facts, rule: Rule) -> Decision:
    return Decision(
        allowed=True, rule=rule, explanation=f"{identity.role}: allowed by policy", everything=True
    )


def _patient(identity: Identity, request: Request, facts: Facts, rule: Rule) -> Decision:
    if identity.role != "Patient":
        return deny(Reason.INVALID_ROLE, "the patient_compartment rule is for patients", rule)
    if not identity.verified:
        return _unverified_within(identity, identity.reference, request, rule)
    decision = Decision(
        allowed=True,
        rule=rule,
        explanation=f"{identity.reference}: own compartment",
        evidence=(identity.reference,),
        compartments=frozenset({identity.reference}),
    )
    return _within(decision, request, rule)


def _unverified(identity: Identity, request: Request, rule: Rule) -> Decision:
    account = request.account or identity.reference
    return Decision(
        allowed=True,
        rule=rule,
        reason=None,
        explanation=f"{identity.reference}: unverified link, only what {account} created",
        evidence=(f"unverified:{identity.reference}",),
        creators=frozenset({account}),
    )


def _unverified_within(identity: Identity, patient: str, request: Request, rule: Rule) -> Decision:
    """An unverified link: only what its account created, and what it writes must be about the
    linked patient (it cannot put data into anyone else's record) and grant nobody access
    (`GRANTING`: a link made by typing someone's national id opens their record to no one)."""
    if request.operation in WRITES and request.resource_type in GRANTING:
        return deny(
            Reason.UNVERIFIED_LINK,
            f"an unverified link cannot write a {request.resource_type}: it would grant access",
            rule,
        )
    target = request.target
    if target is not None and request.operation in WRITES and patient not in target.compartments:
        return deny(
            Reason.UNVERIFIED_LINK,
            f"an unverified link writes only about {patient}",
            rule,
        )
    return _within(_unverified(identity, request, rule), request, rule)


def _related_person(identity: Identity, request: Request, facts: Facts, rule: Rule) -> Decision:
    if identity.role != "RelatedPerson":
        return deny(
            Reason.INVALID_ROLE, "the relatedperson_compartment rule is for related persons", rule
        )
    link = facts.related_persons.get(identity.reference)
    if link is None or not link.in_force(facts.now):
        return deny(Reason.LINK_INACTIVE, f"{identity.reference} is not active", rule)
    if not identity.verified:
        return _unverified_within(identity, link.patient, request, rule)
    patient = link.patient
    if request.resource_type == "Consent" and request.operation in WRITES:
        return _guardian_consent(identity, link, request, facts, rule)
    evidence = [identity.reference]
    if facts.is_minor(patient) and link.relationships & PARENT_OR_GUARDIAN:
        evidence.append(f"minor:{patient}")
    elif request.resource_type in DEMOGRAPHICS and request.operation not in WRITES:
        evidence.append(f"demographics:{patient}")
    else:
        selection, used = consented(identity.reference, patient, request, facts)
        narrowed = consented_categories(identity.reference, patient, request, facts, selection)
        if selection.empty and not narrowed:
            if request.resource_type == "RelatedPerson" and request.operation not in WRITES:
                # a related person always sees its own record
                own = Decision(
                    allowed=True,
                    rule=rule,
                    explanation=f"{identity.reference}: its own record",
                    evidence=(identity.reference,),
                    compartments=frozenset({identity.reference}),
                )
                return _within(own, request, rule)
            return deny(
                Reason.CONSENT_REQUIRED, f"{patient} is an adult: a Consent must permit this", rule
            )
        evidence.extend(used)
        for _part, more in narrowed:
            evidence.extend(e for e in more if e not in evidence)
        if not selection.whole or narrowed:
            parts = {p for p, _ in narrowed}
            described = [f"{p.selection.describe()} where {_where(p)}" for p in parts]
            if not selection.empty:
                parts.add(Part(patient, selection))
                described.insert(0, selection.describe())
            decision = Decision(
                allowed=True,
                rule=rule,
                explanation=(
                    f"{identity.reference} for {patient}: {request.resource_type} "
                    f"{'; '.join(described)} by consent"
                ),
                evidence=tuple(evidence),
                parts=frozenset(parts),
            )
            return _related_write(decision, identity, patient, request, rule)
    decision = Decision(
        allowed=True,
        rule=rule,
        explanation=f"{identity.reference} for {patient}",
        evidence=tuple(evidence),
        compartments=frozenset({patient}),
    )
    return _related_write(decision, identity, patient, request, rule)


def consented(
    actor: str,
    patient: str,
    request: Request,
    facts: Facts,
    category: tuple[str, str] | None = None,
) -> tuple[Selection, tuple[str, ...]]:
    """What the patient's Consents let `actor` do for this request: the union of what they
    permit, less what any Consent whose root is a deny denies; and the Consents that decided.
    `category`: asked about the resources of that category only (see `consented_categories`)."""
    query = Query(
        actor,
        request.operation,
        request.resource_type,
        facts.now,
        request.purpose_of_use,
        category,
    )
    permitted, denied, used = NOTHING, NOTHING, []
    for consent in facts.consents:
        if consent.patient != patient:
            continue
        allows, denies = consent.evaluate(query)
        if not allows.empty:
            permitted = permitted | allows
            used.append(consent.reference)
        if not denies.empty:
            denied = denied | denies
            used.append(f"deny:{consent.reference}")
    return permitted - denied, tuple(used)


def consented_categories(
    actor: str, patient: str, request: Request, facts: Facts, whole: Selection
) -> list[tuple[Part, tuple[str, ...]]]:
    """What the patient's Consents let `actor` see of the type only within a category (lab
    results: laboratory Observations), beyond `whole`, what they let it see of any category:
    each a Part whose `where` the SQL filter enforces, with the Consents that decided."""
    found = []
    for category in sorted(
        {c for (_, t), c in CONSENT_CATEGORIES.items() if t == request.resource_type}
    ):
        selection, used = consented(actor, patient, request, facts, category)
        extra = selection - whole
        if not extra.empty:
            found.append((Part(patient, extra, (category,)), used))
    return found


def _where(part: Part) -> str:
    return " and ".join(f"{param}={value}" for param, value in part.where)


def _related_write(
    decision: Decision, identity: Identity, patient: str, request: Request, rule: Rule
) -> Decision:
    target = request.target
    if (
        target is not None
        and request.operation in WRITES
        and not {patient, identity.reference} <= target.compartments
    ):
        return deny(
            Reason.REFERENCE_MISMATCH,
            f"a write must reference both {patient} and {identity.reference}",
            rule,
        )
    return _within(decision, request, rule)


def _guardian_consent(
    identity: Identity, link: RelatedPersonFact, request: Request, facts: Facts, rule: Rule
) -> Decision:
    """A Consent about a patient is written by the patient, by a parent or guardian while the
    patient is a minor, or by a system caller; never by a relative for itself."""
    patient = link.patient
    if not (facts.is_minor(patient) and link.relationships & PARENT_OR_GUARDIAN):
        return deny(
            Reason.INVALID_ROLE,
            "a Consent is written by the patient, or by a parent or guardian of a minor",
            rule,
        )
    target = request.target
    if target is not None and identity.reference in target.grants_to:
        return deny(Reason.INVALID_ROLE, "a relative cannot grant itself access", rule)
    decision = Decision(
        allowed=True,
        rule=rule,
        explanation=f"{identity.reference}: guardian of the minor {patient}",
        evidence=(identity.reference, f"minor:{patient}"),
        compartments=frozenset({patient}),
    )
    return _within(decision, request, rule)


def _practitioner(identity: Identity, request: Request, facts: Facts, rule: Rule) -> Decision:
    if identity.role != "Practitioner":
        return deny(
            Reason.INVALID_ROLE, "the practitioner_relationship rule is for practitioners", rule
        )
    patients = facts.care.get(identity.reference, frozenset())
    decision = Decision(
        allowed=True,
        rule=rule,
        explanation=f"{identity.reference}: care relationships",
        evidence=tuple(sorted(patients)),
        compartments=patients,
    )
    within = (
        _within(decision, request, rule)
        if patients
        else deny(Reason.INVALID_COMPARTMENT, "no care relationship", rule)
    )
    if within.allowed:
        return within
    if (
        facts.emergency_bypass
        and request.purpose_of_use == "BTG"
        and request.reason
        and request.operation not in WRITES
        and request.target is not None
    ):
        patients_of_target = frozenset(
            c for c in request.target.compartments if c.startswith("Patient/")
        )
        if patients_of_target:
            return Decision(
                allowed=True,
                rule=rule,
                explanation=f"{identity.reference}: emergency access ({request.reason})",
                evidence=("break-glass", *sorted(patients_of_target)),
                compartments=patients_of_target,
                emergency=True,
            )
    return within


_VALIDATORS = {
    "allow": _allow,
    "patient_compartment": _patient,
    "relatedperson_compartment": _related_person,
    "practitioner_relationship": _practitioner,
}
