"""`reach()`: whose record an identity may use, read off `decide()`, pure. The family of the
issue (John, his children Mary and Tom, his wife Jane) and properties over random facts: a
Reach never promises what the engine would refuse, nor leaves out what it allows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from capability.definitions import resource_types
from compartments.consent import CONSENT_SCOPES, ConsentFact
from compartments.engine import Facts, Identity, RelatedPersonFact, Request, decide
from compartments.periods import ALWAYS, Window
from compartments.policy import Policy, default_policy
from compartments.reach import DEFAULT_TYPES, Reach, majority_on, reach

POLICY = Policy(default_policy(resource_types()))
NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
JOHN, MARY, TOM, JANE = "Patient/john", "Patient/mary", "Patient/tom", "Patient/jane"
RP_MARY, RP_TOM, RP_JANE = "RelatedPerson/rm", "RelatedPerson/rt", "RelatedPerson/rj"
IDENTITIES = (Identity(JOHN), Identity(RP_MARY), Identity(RP_TOM), Identity(RP_JANE))


def family(*consents: ConsentFact, jane_link: RelatedPersonFact | None = None) -> Facts:
    return Facts(
        now=NOW,
        related_persons={
            RP_MARY: RelatedPersonFact(RP_MARY, MARY, frozenset({"FTH"})),
            RP_TOM: RelatedPersonFact(RP_TOM, TOM, frozenset({"FTH"})),
            RP_JANE: jane_link or RelatedPersonFact(RP_JANE, JANE, frozenset({"SPS"})),
        },
        birth_dates={MARY: date(2014, 5, 20), TOM: date(2018, 2, 1), JANE: date(1988, 7, 9)},
        consents=consents,
    )


def by_patient(facts: Facts) -> dict[str, Reach]:
    return {r.patient: r for r in reach(IDENTITIES, POLICY, facts)}


def test_john_reaches_himself_first_then_his_family() -> None:
    found = reach(IDENTITIES, POLICY, family())
    assert [r.patient for r in found] == [JOHN, JANE, MARY, TOM]
    john, jane, mary, tom = found
    assert john.via == JOHN and john.is_self and john.whole_record and not john.relationships
    assert john.evidence == () and john.until is None and not john.minor
    assert mary.via == RP_MARY and mary.relationships == {"FTH"} and mary.minor
    assert mary.whole_record and mary.scopes == set(CONSENT_SCOPES)
    assert mary.majority_on == date(2032, 5, 20)
    assert mary.until == datetime(2032, 5, 20, tzinfo=UTC)
    assert mary.evidence == (RP_MARY,)
    assert tom.whole_record and tom.majority_on == date(2036, 2, 1)
    # an adult: demographics only, without a Consent
    assert jane.via == RP_JANE and jane.relationships == {"SPS"} and not jane.minor
    assert not jane.whole_record and jane.scopes == {"DEMOGRAPHICS"}
    assert "Observation" not in jane.types and "Patient" in jane.types
    assert jane.majority_on is None and jane.until is None
    assert not jane.writes


def test_janes_consent_adds_her_lab_results_until_it_ends() -> None:
    end = datetime(2027, 3, 31, tzinfo=UTC)
    consent = ConsentFact.scoped(
        "Consent/3", JANE, {RP_JANE}, {"LAB_RESULTS"}, period=Window(None, end)
    )
    jane = by_patient(family(consent))[JANE]
    assert jane.scopes == {"DEMOGRAPHICS", "LAB_RESULTS"}
    assert {"Observation", "DiagnosticReport", "Specimen"} <= jane.types
    assert jane.evidence == ("Consent/3", RP_JANE)  # sorted
    assert jane.until == end
    assert not jane.whole_record


def test_a_consent_to_someone_else_or_expired_adds_nothing() -> None:
    elsewhere = ConsentFact.scoped("Consent/4", JANE, {"RelatedPerson/x"}, {"LAB_RESULTS"})
    past = ConsentFact.scoped(
        "Consent/5", JANE, {RP_JANE}, {"LAB_RESULTS"}, period=Window(None, NOW - timedelta(1))
    )
    jane = by_patient(family(elsewhere, past))[JANE]
    assert jane.scopes == {"DEMOGRAPHICS"}


def test_an_ended_or_inactive_relationship_drops_out() -> None:
    ended = RelatedPersonFact(
        RP_JANE, JANE, frozenset({"SPS"}), period=Window(None, NOW - timedelta(days=1))
    )
    assert JANE not in by_patient(family(jane_link=ended))
    inactive = RelatedPersonFact(RP_JANE, JANE, frozenset({"SPS"}), active=False)
    assert JANE not in by_patient(family(jane_link=inactive))


def test_a_relationship_that_starts_later_is_not_there_yet_and_says_nothing() -> None:
    later = RelatedPersonFact(
        RP_JANE, JANE, frozenset({"SPS"}), period=Window(NOW + timedelta(days=2), None)
    )
    assert JANE not in by_patient(family(jane_link=later))


def test_a_relationship_ending_later_sets_until() -> None:
    end = NOW + timedelta(days=10)
    link = RelatedPersonFact(RP_JANE, JANE, frozenset({"SPS"}), period=Window(None, end))
    assert by_patient(family(jane_link=link))[JANE].until == end


def test_an_unverified_link_reaches_no_record() -> None:
    found = reach((Identity(RP_MARY, verified=False),), POLICY, family())
    assert found == []


def test_a_practitioner_reaches_the_patients_in_its_care() -> None:
    facts = Facts(now=NOW, care={"Practitioner/d": frozenset({JANE})})
    (found,) = reach((Identity("Practitioner/d"),), POLICY, facts)
    assert found.patient == JANE and found.via == "Practitioner/d" and found.whole_record


def test_majority_on_29_february_is_1_march_in_a_common_year() -> None:
    assert majority_on(date(2008, 2, 29), 18) == date(2026, 3, 1)
    assert majority_on(date(2008, 2, 28), 18) == date(2026, 2, 28)
    assert majority_on(None, 18) is None
    # the engine agrees: on 28 February she is still a minor, on 1 March she is not
    for day, minor in ((date(2026, 2, 28), True), (date(2026, 3, 1), False)):
        facts = Facts(
            now=datetime.combine(day, datetime.min.time(), tzinfo=UTC),
            birth_dates={MARY: date(2008, 2, 29)},
        )
        assert facts.is_minor(MARY) is minor


def test_the_day_a_child_comes_of_age_the_whole_record_closes() -> None:
    facts = family()
    coming = Facts(
        now=datetime(2032, 5, 20, 0, tzinfo=UTC),
        related_persons=facts.related_persons,
        birth_dates=facts.birth_dates,
    )
    mary = by_patient(coming)[MARY]
    assert not mary.minor and not mary.whole_record
    assert mary.scopes == {"DEMOGRAPHICS"}


# --- properties over random facts ----------------------------------------------------------

CODES = st.frozensets(st.sampled_from(["MTH", "FTH", "GUARD", "SPS", "FRND", "CHILD"]), max_size=2)
BIRTH = st.one_of(st.none(), st.dates(date(1950, 1, 1), date(2026, 12, 1)))
WINDOW = st.sampled_from(
    [
        ALWAYS,
        Window(None, NOW - timedelta(days=1)),
        Window(None, NOW + timedelta(days=1)),
        Window(NOW + timedelta(days=1), None),
        Window(valid=False),
    ]
)


@st.composite
def random_facts(draw: st.DrawFn) -> tuple[tuple[Identity, ...], Facts]:
    patients = ["Patient/a", "Patient/b"]
    links = {}
    for n in range(draw(st.integers(1, 3))):
        ref = f"RelatedPerson/r{n}"
        links[ref] = RelatedPersonFact(
            ref,
            draw(st.sampled_from(patients)),
            draw(CODES),
            active=draw(st.booleans()),
            period=draw(WINDOW),
        )
    consents = tuple(
        ConsentFact.scoped(
            f"Consent/c{n}",
            draw(st.sampled_from(patients)),
            draw(st.frozensets(st.sampled_from(sorted(links)), max_size=2)),
            draw(st.frozensets(st.sampled_from(sorted(CONSENT_SCOPES)), max_size=4)),
            active=draw(st.booleans()),
            period=draw(WINDOW),
        )
        for n in range(draw(st.integers(0, 3)))
    )
    facts = Facts(
        now=NOW,
        related_persons=links,
        birth_dates={p: draw(BIRTH) for p in patients},
        consents=consents,
    )
    identities = tuple(
        Identity(ref, verified=draw(st.booleans())) for ref in sorted(links)
    ) + tuple(Identity(p) for p in patients[:1] if draw(st.booleans()))
    return identities, facts


def reads(identities: tuple[Identity, ...], patient: str, type_: str, facts: Facts) -> str:
    """'whole', 'part' or 'none': what decide() lets through of the patient's `type_`."""
    decision = decide(Request(identities, "read", type_), POLICY, facts)
    if not decision.allowed:
        return "none"
    if decision.everything or patient in decision.compartments:
        return "whole"
    if any(p.compartment == patient and not p.selection.empty for p in decision.parts):
        return "part"
    return "none"


@settings(max_examples=150, deadline=None)
@given(random_facts())
def test_a_reach_says_exactly_what_decide_allows(drawn: tuple[tuple[Identity, ...], Facts]) -> None:
    identities, facts = drawn
    found = {r.patient: r for r in reach(identities, POLICY, facts)}
    for patient in ("Patient/a", "Patient/b"):
        mine = tuple(
            i
            for i in identities
            if i.reference == patient
            or (
                (link := facts.related_persons.get(i.reference)) is not None
                and link.patient == patient
            )
        )
        answers = (
            {t: reads(mine, patient, t, facts) for t in DEFAULT_TYPES}
            if mine
            else dict.fromkeys(DEFAULT_TYPES, "none")
        )
        readable = {t for t, a in answers.items() if a != "none"}
        if not readable:
            assert patient not in found
            continue
        r = found[patient]
        assert r.types == readable
        assert r.whole_record == all(a == "whole" for a in answers.values())
        for scope in r.scopes:
            assert CONSENT_SCOPES[scope] <= readable
        for scope, members in CONSENT_SCOPES.items():
            if members <= readable:
                assert scope in r.scopes
        assert r.minor == facts.is_minor(patient)
        for type_, operation in r.writes:
            assert decide(Request(mine, operation, type_), POLICY, facts).allowed
        if r.until is not None:
            assert r.until > NOW


@settings(max_examples=50, deadline=None)
@given(random_facts())
def test_the_order_is_self_first_then_by_reference(
    drawn: tuple[tuple[Identity, ...], Facts],
) -> None:
    identities, facts = drawn
    found = [r.patient for r in reach(identities, POLICY, facts)]
    own = [i.reference for i in identities if i.role == "Patient"]
    others = [p for p in found if p not in own]
    assert others == sorted(others)
    assert found[: len(found) - len(others)] == [p for p in own if p in found]
    assert reach(tuple(reversed(identities)), POLICY, facts) == reach(identities, POLICY, facts)
