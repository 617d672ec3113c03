"""The picker's scope narrowing, the token's identity and its `access_basis` claim, pure: each
checked against the engine's own answer for the same choice."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capability.definitions import resource_types
from compartments.consent import CONSENT_SCOPES, ConsentFact, Provision
from compartments.engine import Facts, Identity, RelatedPersonFact, Request, decide
from compartments.periods import Window
from compartments.policy import Policy, default_policy
from compartments.reach import Reach, reach
from fhir_server.auth.scopes import parse_scope, parse_scopes
from fhir_server.services.workflows.launch_choices import (
    access_basis,
    describe,
    display_name,
    narrow_scopes,
    patient_compartment_types,
    token_identity,
)

POLICY = Policy(default_policy(resource_types()))
NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
JOHN, MARY, JANE = "Patient/john", "Patient/mary", "Patient/jane"
RP_MARY, RP_JANE = "RelatedPerson/rm", "RelatedPerson/rj"
LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
TYPES = patient_compartment_types()


def facts(*consents: ConsentFact) -> Facts:
    return Facts(
        now=NOW,
        related_persons={
            RP_MARY: RelatedPersonFact(RP_MARY, MARY, frozenset({"FTH"})),
            RP_JANE: RelatedPersonFact(RP_JANE, JANE, frozenset({"SPS"})),
        },
        birth_dates={MARY: date(2014, 5, 20), JANE: date(1988, 7, 9)},
        consents=consents,
    )


def choice_of(patient: str, *consents: ConsentFact, identities: tuple[str, ...] = ()) -> Reach:
    who = tuple(Identity(i) for i in identities or (JOHN, RP_MARY, RP_JANE))
    return next(r for r in reach(who, POLICY, facts(*consents), TYPES) if r.patient == patient)


LAB_CONSENT = ConsentFact.scoped(
    "Consent/3",
    JANE,
    {RP_JANE},
    {"LAB_RESULTS"},
    period=Window(None, datetime(2027, 4, 1, tzinfo=UTC)),
)


def test_non_resource_scopes_pass_through() -> None:
    jane = choice_of(JANE)
    asked = "openid fhirUser launch launch/patient offline_access online_access"
    assert narrow_scopes(asked, jane) == (asked, [])


def test_the_whole_record_keeps_clinical_scopes_as_asked() -> None:
    mary = choice_of(MARY)
    assert mary.whole_record
    granted, dropped = narrow_scopes("launch/patient patient/*.rs patient/Observation.read", mary)
    assert granted == "launch/patient patient/*.rs patient/Observation.read" and dropped == []
    granted, _ = narrow_scopes("patient/Observation.rs?category=" + LAB, mary)
    assert granted == "patient/Observation.rs?category=" + LAB


def test_the_whole_record_drops_writes_the_engine_never_allows() -> None:
    john = choice_of(JOHN)
    # a patient may create and update in its own record, never delete (the default policy)
    granted, dropped = narrow_scopes("patient/*.cruds patient/Observation.write", john)
    assert granted == "patient/*.crus patient/Observation.cu"
    assert dropped == ["patient/*.cruds", "patient/Observation.write"]
    assert not decide(Request((Identity(JOHN),), "delete", "Observation"), POLICY, facts()).allowed


def test_system_and_invalid_scopes_are_dropped() -> None:
    granted, dropped = narrow_scopes("openid system/*.rs patient/Observation.rx", choice_of(MARY))
    assert granted == "openid"
    assert dropped == ["system/*.rs", "patient/Observation.rx"]


def test_an_adult_without_consent_gives_demographics_only() -> None:
    jane = choice_of(JANE)
    granted, dropped = narrow_scopes("launch/patient patient/*.rs", jane)
    assert granted == "launch/patient patient/Patient.rs"
    assert dropped == ["patient/*.rs"]
    granted, dropped = narrow_scopes("patient/*.read patient/Observation.read", jane)
    assert granted == "patient/Patient.read"
    assert dropped == ["patient/*.read", "patient/Observation.read"]


def test_janes_lab_consent_becomes_laboratory_observations() -> None:
    jane = choice_of(JANE, LAB_CONSENT)
    granted, dropped = narrow_scopes("launch/patient patient/*.rs", jane)
    assert set(granted.split()) == {
        "launch/patient",
        "patient/Patient.rs",
        "patient/Observation.rs?category=" + LAB,
        "patient/DiagnosticReport.rs",
        "patient/Specimen.rs",
    }
    assert dropped == ["patient/*.rs"]
    # v1: the category needs a v2 scope
    granted, _ = narrow_scopes("patient/Observation.read", jane)
    assert granted == "patient/Observation.rs?category=" + LAB
    # asking for that category keeps it; another category is dropped
    lab = "patient/Observation.rs?category=" + LAB
    assert narrow_scopes(lab, jane) == (lab, [])
    vitals = "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
    assert narrow_scopes(vitals, jane) == ("", [vitals])


def test_writes_only_where_the_engine_allows_them() -> None:
    # a Consent for reading only (action access): no writes
    reading = ConsentFact(
        "Consent/5",
        JANE,
        Provision(
            "permit",
            grantees=frozenset({RP_JANE}),
            operations=frozenset({"read", "search", "history"}),
            types=CONSENT_SCOPES["LAB_RESULTS"],
        ),
    )
    jane = choice_of(JANE, reading)
    granted, _ = narrow_scopes("patient/Observation.cruds patient/Patient.write", jane)
    assert granted == "patient/Observation.rs?category=" + LAB
    # a Consent without actions: the relative may also create and update (never delete)
    jane = choice_of(JANE, LAB_CONSENT)
    granted, _ = narrow_scopes("patient/Observation.cruds patient/Patient.write", jane)
    assert granted == "patient/Observation.crus?category=" + LAB
    writes = ConsentFact.scoped("Consent/4", JANE, {RP_JANE}, {"APPOINTMENTS"})
    jane = choice_of(JANE, writes)
    allowed = decide(Request((Identity(RP_JANE),), "create", "Appointment"), POLICY, facts(writes))
    granted, _ = narrow_scopes("patient/Appointment.cruds", jane)
    assert ("c" in granted.split(".")[1]) is allowed.allowed


def test_user_scopes_are_narrowed_alike() -> None:
    granted, _ = narrow_scopes("user/*.rs", choice_of(JANE))
    assert granted == "user/Patient.rs"


SCOPE_TEXT = st.sampled_from(
    [
        "patient/*.rs",
        "patient/*.cruds",
        "patient/*.read",
        "patient/*.write",
        "patient/*.*",
        "user/*.rs",
        "patient/Observation.rs",
        "patient/Observation.read",
        "patient/Appointment.cruds",
        "patient/Patient.write",
        "patient/Condition.rs",
        "patient/Observation.rs?category=" + LAB,
        "openid",
        "fhirUser",
        "launch/patient",
        "system/*.rs",
    ]
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(SCOPE_TEXT, min_size=1, max_size=6),
    st.sampled_from([JOHN, MARY, JANE]),
    st.frozensets(st.sampled_from(["LAB_RESULTS", "APPOINTMENTS", "CLINICAL_SUMMARY"])),
)
def test_narrowed_scopes_never_grant_what_the_engine_refuses(
    asked: list[str], patient: str, consented: frozenset[str]
) -> None:
    consents = (ConsentFact.scoped("Consent/9", JANE, {RP_JANE}, consented),) if consented else ()
    choice = choice_of(patient, *consents)
    granted, dropped = narrow_scopes(" ".join(asked), choice)
    via = (Identity(choice.via),)
    for scope in parse_scopes(granted):
        assert scope.context != "system"
        types = [scope.resource_type] if scope.resource_type != "*" else sorted(TYPES)
        if not choice.whole_record:
            assert scope.resource_type != "*"
        for type_ in types:
            for letter, operation in (
                ("r", "read"),
                ("s", "search"),
                ("c", "create"),
                ("u", "update"),
                ("d", "delete"),
            ):
                if letter not in scope.permissions:
                    continue
                if scope.resource_type == "*" and letter in "cud":
                    continue  # a wildcard's write holds where some type allows it
                if choice.whole_record and scope.resource_type != "*" and letter in "rs":
                    continue  # kept as asked: the engine still decides each request
                assert decide(Request(via, operation, type_), POLICY, facts(*consents)).allowed
    for text in asked:
        assert text in granted.split() or text in dropped


def test_token_identity() -> None:
    mary, john = choice_of(MARY), choice_of(JOHN)
    assert token_identity("Person/p", john) == JOHN
    assert token_identity("Patient/john", john) == JOHN
    assert token_identity("Person/p", mary) == RP_MARY
    assert token_identity(RP_MARY, choice_of(MARY, identities=(RP_MARY,))) == RP_MARY
    # a Person with two links reaching Mary (mother and guardian): the Person acts for her
    both = RelatedPersonFact("RelatedPerson/g", MARY, frozenset({"GUARD"}))
    two = Facts(
        now=NOW,
        related_persons={RP_MARY: facts().related_persons[RP_MARY], both.reference: both},
        birth_dates={MARY: date(2014, 5, 20)},
    )
    (shared,) = reach((Identity(RP_MARY), Identity(both.reference)), POLICY, two, TYPES)
    assert shared.identities == (both.reference, RP_MARY)
    assert token_identity("Person/p", shared) == "Person/p"
    # whoever signed in, the RelatedPerson acts for Mary
    assert token_identity(JOHN, mary) == RP_MARY
    assert token_identity(RP_JANE, mary) == RP_MARY
    care = Facts(now=NOW, care={"Practitioner/d": frozenset({MARY})})
    (cared,) = reach((Identity("Practitioner/d"),), POLICY, care, TYPES)
    assert token_identity("Practitioner/d", cared) == "Practitioner/d"


def test_access_basis() -> None:
    assert access_basis(choice_of(JOHN)) == {"self": JOHN}
    assert access_basis(choice_of(MARY)) == {
        "relationship": RP_MARY,
        "codes": ["FTH"],
        "consents": [],
    }
    assert access_basis(choice_of(JANE, LAB_CONSENT)) == {
        "relationship": RP_JANE,
        "codes": ["SPS"],
        "consents": ["Consent/3"],
    }


@pytest.mark.parametrize(
    ("patient", "consents", "name", "age", "expected"),
    [
        (JOHN, (), "John Doe", 40, "John (you): the whole record"),
        (MARY, (), "Mary Doe", 12, "Mary is 12: the whole record"),
        (JANE, (), "Jane Doe", 38, "Jane is an adult: contact details"),
        (
            JANE,
            (LAB_CONSENT,),
            "Jane Doe",
            38,
            "Jane is an adult: contact details; lab results until 31 March 2027 by her consent",
        ),
    ],
)
def test_descriptions(
    patient: str, consents: tuple[ConsentFact, ...], name: str, age: int, expected: str
) -> None:
    assert describe(choice_of(patient, *consents), name, age, "female") == expected


def test_display_name() -> None:
    assert display_name({"name": [{"given": ["Mary", "Ann"], "family": "Doe"}]}) == "Mary Ann Doe"
    assert display_name({"name": [{"text": "J. D."}]}) == "J. D."
    assert (
        display_name({"name": [{"use": "old", "family": "X"}, {"use": "official", "given": ["Y"]}]})
        == "Y"
    )
    assert display_name({}) == "(no name)"


def test_parse_scope_accepts_every_narrowed_form() -> None:
    for text in (
        "patient/Observation.rs?category=" + LAB,
        "patient/Patient.read",
        "patient/*.crus",
    ):
        assert parse_scope(text) is not None
