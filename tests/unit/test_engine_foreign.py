"""The engine's rule that a write never lands in a stranger's record (issue 11, finding 1): for
Patient, RelatedPerson and unverified callers, the result of a create, update or patch (and the
stored version an update or patch changes) must not be in the Patient or RelatedPerson
compartment of anyone the caller may not write for. Each test tries to break it."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from capability.definitions import resource_types
from compartments import engine
from compartments.engine import (
    ConsentFact,
    Facts,
    Identity,
    Request,
    Target,
    decide,
    writes_for,
)
from compartments.policy import Policy, Reason, default_policy

POLICY = Policy(default_policy(resource_types()))
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
CHILD, ADULT, ME, STRANGER = "Patient/child", "Patient/adult", "Patient/me", "Patient/stranger"
PARENT = "RelatedPerson/parent"  # the caller's link to the child (mother)
OTHER_PARENT = "RelatedPerson/father"  # the child's other parent: a relative of the child
SPOUSE = "RelatedPerson/spouse"  # the caller's link to the adult, by Consent for lab results
THEIR_RELATIVE = "RelatedPerson/theirs"  # a RelatedPerson of the stranger


def facts(**overrides: Any) -> Facts:
    base: dict[str, Any] = {
        "now": NOW,
        "related_persons": {
            PARENT: engine.RelatedPersonFact(PARENT, CHILD, frozenset({"MTH"})),
            SPOUSE: engine.RelatedPersonFact(SPOUSE, ADULT, frozenset({"SPS"})),
        },
        "birth_dates": {CHILD: date(2018, 1, 1), ADULT: date(1990, 1, 1)},
        "consents": (ConsentFact.scoped("Consent/1", ADULT, {SPOUSE}, {"LAB_RESULTS"}),),
        "relatives": {
            PARENT: CHILD,
            OTHER_PARENT: CHILD,
            SPOUSE: ADULT,
            "RelatedPerson/mine": ME,
        },
    }
    base.update(overrides)
    return Facts(**base)


def write(
    who: str | tuple[Identity, ...],
    resource_type: str,
    *compartments: str,
    operation: str = "create",
    created_by: str | None = None,
    account: str | None = None,
    **facts_overrides: Any,
) -> Any:
    identities = (Identity(who),) if isinstance(who, str) else who
    request = Request(
        identities,
        operation,
        resource_type,
        Target(frozenset(compartments), created_by),
        account=account or identities[0].reference,
    )
    return decide(request, POLICY, facts(**facts_overrides))


def refused(decision: Any) -> bool:
    return not decision.allowed and decision.reason is Reason.FOREIGN_COMPARTMENT


def test_the_issue_example_a_parent_cannot_message_into_a_strangers_record() -> None:
    # subject the child, sender the parent herself, recipient an unrelated patient
    assert refused(write(PARENT, "Communication", CHILD, PARENT, STRANGER))
    assert write(PARENT, "Communication", CHILD, PARENT).allowed
    decision = write(PARENT, "Communication", CHILD, PARENT, STRANGER)
    assert STRANGER in decision.explanation and decision.message == "Foreign compartment"


def test_every_write_operation_is_held_and_the_stored_version_too() -> None:
    for operation in ("create", "update", "patch"):
        assert refused(write(PARENT, "Observation", CHILD, PARENT, STRANGER, operation=operation))
        assert write(PARENT, "Observation", CHILD, PARENT, operation=operation).allowed


def test_a_patient_cannot_name_another_patient_as_performer() -> None:
    assert refused(write(ME, "Observation", ME, STRANGER))
    assert refused(write(ME, "Coverage", ME, STRANGER))  # subscriber, payor, policy-holder
    assert refused(write(ME, "Group", ME, STRANGER))  # member
    assert write(ME, "Observation", ME).allowed


def test_practitioner_device_and_encounter_compartments_are_not_affected() -> None:
    assert write(ME, "Appointment", ME, "Practitioner/dr", "Device/pump").allowed
    assert write(PARENT, "Communication", CHILD, PARENT, "Practitioner/dr", "Encounter/e").allowed


def test_relatedperson_compartments_of_someone_else_are_foreign() -> None:
    # another patient's RelatedPerson, and a RelatedPerson nobody knows
    assert refused(write(PARENT, "Appointment", CHILD, PARENT, THEIR_RELATIVE))
    assert refused(write(PARENT, "Appointment", CHILD, PARENT, "RelatedPerson/unknown"))
    assert refused(write(ME, "Appointment", ME, THEIR_RELATIVE))
    # the relatives of the patients the caller writes for are not strangers
    assert write(PARENT, "Appointment", CHILD, PARENT, OTHER_PARENT).allowed
    assert write(ME, "Appointment", ME, "RelatedPerson/mine").allowed


def test_another_patient_as_participant_is_foreign_whoever_the_caller() -> None:
    assert refused(write(PARENT, "Appointment", CHILD, PARENT, STRANGER))
    # the adult's relative may write her lab results, not put them in someone else's record
    assert write(SPOUSE, "Observation", ADULT, SPOUSE).allowed
    assert refused(write(SPOUSE, "Observation", ADULT, SPOUSE, STRANGER))
    # the parent's own adult relative is a stranger to the parent's writes about the child
    assert refused(write(PARENT, "Observation", CHILD, PARENT, ADULT))


def test_what_a_related_person_may_write_depends_on_the_type() -> None:
    # no Consent opens the adult's appointments to the spouse: not writable for it
    spouse = Identity(SPOUSE)
    request = Request((spouse,), "create", "Appointment", None)
    assert writes_for(spouse, request, POLICY, facts()) == frozenset()
    request = Request((spouse,), "create", "Observation", None)
    assert writes_for(spouse, request, POLICY, facts()) == {ADULT, SPOUSE}


def test_a_person_writes_for_the_union_of_its_identities() -> None:
    # a Person who is a patient herself and the mother of the child
    both = (Identity(ME), Identity(PARENT))
    assert write(both, "Appointment", ME, CHILD, PARENT).allowed
    assert write(both, "Appointment", ME, CHILD).allowed  # allowed as ME; CHILD is hers too
    assert refused(write(both, "Appointment", ME, CHILD, PARENT, STRANGER))
    # without the parent identity the child is a stranger to the patient
    assert refused(write(ME, "Appointment", ME, CHILD))


def test_a_person_with_an_identity_that_may_not_write_the_type() -> None:
    # the spouse link has no Consent for appointments: it adds nothing to the union
    both = (Identity(ME), Identity(SPOUSE))
    assert refused(write(both, "Appointment", ME, ADULT))
    assert write(both, "Observation", ME, ADULT).allowed  # lab results: the Consent covers it


def test_an_unverified_link_writes_only_about_its_patient() -> None:
    unverified = (Identity("Patient/linked", verified=False),)
    account = "Person/acc"
    allowed = write(
        unverified, "Observation", "Patient/linked", created_by=account, account=account
    )
    assert allowed.allowed
    stranger = write(
        unverified, "Observation", "Patient/linked", STRANGER, created_by=account, account=account
    )
    assert refused(stranger)
    # an update of its own resource that adds a stranger
    update = write(
        unverified,
        "Observation",
        "Patient/linked",
        THEIR_RELATIVE,
        operation="update",
        created_by=account,
        account=account,
    )
    assert refused(update)


def test_an_unverified_related_person_link() -> None:
    identity = Identity(PARENT, verified=False)
    ok = Request(
        (identity,), "create", "Observation", Target(frozenset({CHILD}), "Person/p"), "Person/p"
    )
    assert decide(ok, POLICY, facts()).allowed
    bad = Request(
        (identity,),
        "create",
        "Observation",
        Target(frozenset({CHILD, STRANGER}), "Person/p"),
        "Person/p",
    )
    assert refused(decide(bad, POLICY, facts()))


def test_system_admin_and_verified_practitioners_are_not_restricted() -> None:
    for who in ("System/app", "Admin/root"):
        assert write(who, "Communication", CHILD, STRANGER, THEIR_RELATIVE).allowed
    doctor = "Practitioner/dr"
    care = {doctor: frozenset({CHILD})}
    assert write(doctor, "Observation", CHILD, STRANGER, care=care).allowed
    # a practitioner reached only through an unverified link is restricted like the others
    unverified = (Identity(doctor, verified=False),)
    assert refused(write(unverified, "Observation", CHILD, STRANGER, care=care))


def test_reads_searches_and_deletes_are_not_this_rules_business() -> None:
    # a parent reads a resource of the child that a practitioner also put in another record
    read = decide(
        Request((Identity(PARENT),), "read", "Observation", Target(frozenset({CHILD, STRANGER}))),
        POLICY,
        facts(),
    )
    assert read.allowed


PEOPLE = st.sampled_from(
    [CHILD, ADULT, ME, STRANGER, PARENT, OTHER_PARENT, SPOUSE, THEIR_RELATIVE, "Patient/x"]
)
OTHERS = st.sampled_from(["Practitioner/dr", "Device/d", "Encounter/e", "Location/l"])
CALLERS = st.sampled_from(
    [
        (Identity(PARENT),),
        (Identity(SPOUSE),),
        (Identity(ME),),
        (Identity(ME), Identity(PARENT)),
        (Identity(ME), Identity(SPOUSE)),
        (Identity(PARENT, verified=False),),
        (Identity("Patient/x", verified=False),),
    ]
)


@given(
    callers=CALLERS,
    operation=st.sampled_from(["create", "update", "patch"]),
    resource_type=st.sampled_from(["Observation", "Appointment", "Communication", "CarePlan"]),
    people=st.frozensets(PEOPLE, max_size=5),
    others=st.frozensets(OTHERS, max_size=2),
)
def test_an_allowed_write_of_a_restricted_caller_is_only_in_records_it_writes_for(
    callers: tuple[Identity, ...],
    operation: str,
    resource_type: str,
    people: frozenset[str],
    others: frozenset[str],
) -> None:
    known = facts()
    request = Request(
        callers, operation, resource_type, Target(people | others, "Person/p"), "Person/p"
    )
    decision = decide(request, POLICY, known)
    if not decision.allowed:
        return
    writable = frozenset().union(*(writes_for(i, request, POLICY, known) for i in callers))
    for compartment in people:
        assert compartment in writable or known.relatives.get(compartment) in writable
