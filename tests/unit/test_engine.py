"""The compartment engine, pure: the family rules, and properties that must hold for any input."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capability.definitions import resource_types
from compartments.engine import (
    ConsentFact,
    Decision,
    Facts,
    Identity,
    RelatedPersonFact,
    Request,
    Target,
    decide,
)
from compartments.periods import Window
from compartments.policy import OPERATIONS, Policy, Reason, Rule, default_policy

POLICY = Policy(default_policy(resource_types()))
TODAY = date(2026, 11, 23)
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
PARENT = Identity("RelatedPerson/9")
CHILD = "Patient/c"


def facts(born: date = date(2015, 6, 1), **overrides: Any) -> Facts:
    base: dict[str, Any] = {
        "now": NOW,
        "related_persons": {
            PARENT.reference: RelatedPersonFact(PARENT.reference, CHILD, frozenset({"MTH"}))
        },
        "birth_dates": {CHILD: born},
    }
    base.update(overrides)
    return Facts(**base)


def ask(
    operation: str,
    resource_type: str,
    *compartments: str,
    who: Identity = PARENT,
    created_by: str | None = None,
    **kw: Any,
) -> Request:
    target = Target(frozenset(compartments), created_by) if compartments or created_by else None
    return Request((who,), operation, resource_type, target, **kw)


def test_a_parent_reads_and_writes_a_minor_childs_record() -> None:
    read = decide(ask("read", "Immunization", CHILD), POLICY, facts())
    assert read.allowed and f"minor:{CHILD}" in read.evidence
    search = decide(ask("search", "Observation"), POLICY, facts())
    assert search.allowed and search.compartments == {CHILD}
    write = decide(ask("create", "CarePlan", CHILD, PARENT.reference), POLICY, facts())
    assert write.allowed


def test_a_write_must_reference_the_child_and_the_related_person() -> None:
    decision = decide(ask("create", "CarePlan", CHILD), POLICY, facts())
    assert not decision.allowed and decision.reason is Reason.REFERENCE_MISMATCH
    assert decision.message == "Reference mismatch"


def test_an_adult_dependent_needs_consent_beyond_demographics() -> None:
    adult = facts(born=date(1990, 1, 1))
    assert decide(ask("read", "Patient", CHILD), POLICY, adult).allowed
    denied = decide(ask("read", "Observation", CHILD), POLICY, adult)
    assert not denied.allowed and denied.reason is Reason.CONSENT_REQUIRED
    consent = ConsentFact.scoped(
        "Consent/1", CHILD, frozenset({PARENT.reference}), frozenset({"LAB_RESULTS"})
    )
    allowed = decide(
        ask("read", "Observation", CHILD), POLICY, facts(born=date(1990, 1, 1), consents=[consent])
    )
    assert allowed.allowed and "Consent/1" in allowed.evidence
    # the consent's scope is lab results, not encounters
    assert not decide(
        ask("read", "Encounter", CHILD), POLICY, facts(born=date(1990, 1, 1), consents=[consent])
    ).allowed


def test_turning_18_ends_full_access_on_the_birthday() -> None:
    born = date(2008, 11, 24)
    assert decide(ask("read", "Observation", CHILD), POLICY, facts(born=born)).allowed
    birthday = facts(born=born, now=datetime(2026, 11, 24, tzinfo=UTC))
    assert (
        decide(ask("read", "Observation", CHILD), POLICY, birthday).reason
        is Reason.CONSENT_REQUIRED
    )


def test_an_ended_or_inactive_link_gives_nothing() -> None:
    ended = RelatedPersonFact(
        PARENT.reference, CHILD, frozenset({"MTH"}), period=Window(end=NOW - timedelta(hours=1))
    )
    decision = decide(
        ask("read", "Patient", CHILD), POLICY, facts(related_persons={PARENT.reference: ended})
    )
    assert decision.reason is Reason.LINK_INACTIVE
    unknown = decide(
        ask("read", "Patient", CHILD, who=Identity("RelatedPerson/404")), POLICY, facts()
    )
    assert unknown.reason is Reason.LINK_INACTIVE


def test_an_unverified_link_sees_only_what_it_created() -> None:
    who = Identity(PARENT.reference, verified=False)
    mine = decide(
        ask("read", "Observation", CHILD, who=who, created_by=PARENT.reference), POLICY, facts()
    )
    assert mine.allowed
    history = decide(
        ask("read", "Observation", CHILD, who=who, created_by="Practitioner/1"), POLICY, facts()
    )
    assert not history.allowed
    search = decide(ask("search", "Observation", who=who), POLICY, facts())
    assert (
        search.allowed
        and search.compartments == frozenset()
        and search.creators == {PARENT.reference}
    )


def test_deny_rules_win_for_access_granting_resources() -> None:
    for resource_type in ("RelatedPerson", "Person"):
        decision = decide(ask("update", resource_type, CHILD, PARENT.reference), POLICY, facts())
        assert (
            not decision.allowed and decision.rule is not None and decision.rule.validator == "deny"
        )


def test_consents_about_a_minor_come_from_a_parent_never_for_itself() -> None:
    grandma = "RelatedPerson/g"

    def consent(*grantees: str, born: date = date(2015, 6, 1)) -> bool:
        request = Request(
            (PARENT,),
            "create",
            "Consent",
            Target(frozenset({CHILD}), grants_to=frozenset(grantees)),
        )
        return decide(request, POLICY, facts(born)).allowed

    assert consent(grandma)
    assert not consent(PARENT.reference)
    assert not consent(grandma, PARENT.reference)
    assert not consent(grandma, born=date(2000, 1, 1))  # an adult consents for herself


def test_patients_and_practitioners() -> None:
    me = Identity("Patient/p")
    assert decide(ask("read", "Observation", "Patient/p", who=me), POLICY, facts()).allowed
    other = decide(ask("read", "Observation", "Patient/q", who=me), POLICY, facts())
    assert other.reason is Reason.INVALID_COMPARTMENT
    doctor = Identity("Practitioner/d")
    cared = facts(care={"Practitioner/d": frozenset({"Patient/p"})})
    assert decide(ask("read", "Observation", "Patient/p", who=doctor), POLICY, cared).allowed
    assert not decide(ask("read", "Observation", "Patient/q", who=doctor), POLICY, cared).allowed


def test_break_glass_needs_the_switch_a_reason_and_is_flagged() -> None:
    doctor = Identity("Practitioner/d")
    request = ask(
        "read",
        "Observation",
        "Patient/q",
        who=doctor,
        purpose_of_use="BTG",
        reason="unconscious patient",
    )
    assert not decide(request, POLICY, facts()).allowed
    decision = decide(request, POLICY, facts(emergency_bypass=True))
    assert decision.allowed and decision.emergency
    no_reason = ask("read", "Observation", "Patient/q", who=doctor, purpose_of_use="BTG")
    assert not decide(no_reason, POLICY, facts(emergency_bypass=True)).allowed
    write = ask("update", "Observation", "Patient/q", who=doctor, purpose_of_use="BTG", reason="x")
    assert not decide(write, POLICY, facts(emergency_bypass=True)).allowed


# --- properties -------------------------------------------------------------------------------

REFS = [
    "Patient/c",
    "Patient/p",
    "Patient/q",
    "RelatedPerson/9",
    "RelatedPerson/8",
    "Practitioner/d",
]
TYPES = [
    "Observation",
    "Patient",
    "Encounter",
    "CarePlan",
    "Consent",
    "Appointment",
    "Immunization",
]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Request, Facts]:
    identities = tuple(
        Identity(ref, draw(st.booleans()))
        for ref in draw(
            st.lists(
                st.sampled_from(
                    ["Patient/p", "RelatedPerson/9", "RelatedPerson/8", "Practitioner/d"]
                ),
                min_size=1,
                max_size=2,
                unique=True,
            )
        )
    )
    target = draw(
        st.one_of(
            st.none(),
            st.builds(
                Target,
                st.frozensets(st.sampled_from(REFS), max_size=3),
                st.one_of(st.none(), st.sampled_from(REFS)),
            ),
        )
    )
    request = Request(
        identities, draw(st.sampled_from(OPERATIONS)), draw(st.sampled_from(TYPES)), target
    )
    links = {
        "RelatedPerson/9": RelatedPersonFact(
            "RelatedPerson/9",
            "Patient/c",
            frozenset(draw(st.lists(st.sampled_from(["MTH", "GUARD", "SPS", "FRND"]), max_size=2))),
            draw(st.booleans()),
        ),
        "RelatedPerson/8": RelatedPersonFact("RelatedPerson/8", "Patient/q", frozenset({"SPS"})),
    }
    consents = draw(
        st.lists(
            st.builds(
                ConsentFact.scoped,
                st.just("Consent/1"),
                st.sampled_from(["Patient/c", "Patient/q"]),
                st.frozensets(st.sampled_from(["RelatedPerson/9", "RelatedPerson/8"])),
                st.frozensets(st.sampled_from(["LAB_RESULTS", "ENCOUNTERS", "APPOINTMENTS"])),
                st.booleans(),
            ),
            max_size=2,
        )
    )
    world = Facts(
        now=draw(
            st.datetimes(
                min_value=datetime(2020, 1, 1),
                max_value=datetime(2040, 1, 1),
                timezones=st.just(UTC),
            )
        ),
        related_persons=links,
        birth_dates={
            "Patient/c": draw(st.dates(min_value=date(2000, 1, 1), max_value=date(2025, 1, 1)))
        },
        consents=consents,
        care={"Practitioner/d": draw(st.frozensets(st.sampled_from(["Patient/p", "Patient/q"])))},
    )
    return request, world


def reachable(request: Request, world: Facts) -> set[str]:
    """Every compartment any identity of the request could ever be granted."""
    out: set[str] = set()
    for identity in request.identities:
        out.add(identity.reference)
        link = world.related_persons.get(identity.reference)
        if link:
            out.add(link.patient)
        out |= world.care.get(identity.reference, frozenset())
    return out


@given(worlds())
def test_nothing_outside_the_identities_compartments_is_allowed(
    case: tuple[Request, Facts],
) -> None:
    request, world = case
    decision = decide(request, POLICY, world)
    if not decision.allowed or decision.everything:
        return
    assert decision.compartments <= reachable(request, world)
    assert decision.creators <= {i.reference for i in request.identities}
    if request.target is not None:
        assert (
            request.target.compartments & decision.compartments
            or request.target.created_by in decision.creators
        )


@given(worlds())
def test_revoking_consents_never_widens_access(case: tuple[Request, Facts]) -> None:
    request, world = case
    with_consents = decide(request, POLICY, world)
    revoked = Facts(
        **{
            **_fields(world),
            "consents": [
                ConsentFact(c.reference, c.patient, None, ("revoked",)) for c in world.consents
            ],
        }
    )
    without = decide(request, POLICY, revoked)
    assert _at_most(without, with_consents)


@given(worlds(), st.integers(min_value=1, max_value=3650))
def test_time_passing_never_widens_a_guardians_access(
    case: tuple[Request, Facts], days: int
) -> None:
    request, world = case
    if any(w.bounds for c in world.consents for w in c.windows):
        return
    now = decide(request, POLICY, world)
    later = decide(
        request, POLICY, Facts(**{**_fields(world), "now": world.now + timedelta(days=days)})
    )
    assert _at_most(later, now)


@given(worlds())
def test_a_deny_rule_always_wins(case: tuple[Request, Facts]) -> None:
    request, world = case
    roles = {i.role for i in request.identities}
    extra = (Rule(role, request.resource_type, request.operation, "deny") for role in roles)
    policy = Policy((*POLICY.rules, *extra))
    assert not decide(request, policy, world).allowed


def _fields(world: Facts) -> dict[str, Any]:
    return {name: getattr(world, name) for name in Facts.__dataclass_fields__}


def _at_most(narrow: Decision, wide: Decision) -> bool:
    if not narrow.allowed:
        return True
    return wide.allowed and (
        wide.everything
        or (narrow.compartments <= wide.compartments and narrow.creators <= wide.creators)
    )


@pytest.mark.parametrize("operation", ["read", "search"])
def test_decide_is_fast_enough_to_run_on_every_request(operation: str) -> None:
    # not a timing assertion: a smoke check that the call is allocation-light and pure
    request = (
        ask(operation, "Observation", CHILD)
        if operation == "read"
        else ask("search", "Observation")
    )
    assert decide(request, POLICY, facts()) == decide(request, POLICY, facts())
