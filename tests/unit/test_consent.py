"""Consents in standard R4 terms (compartments/consent.py): what each element grants, nested
provisions, and failing closed on whatever is not understood."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capability.definitions import resource_types
from compartments.consent import (
    CONSENT_CATEGORIES,
    EVERYTHING,
    NOTHING,
    ConsentFact,
    Query,
    Selection,
    read_consent,
)
from compartments.engine import Facts, Identity, RelatedPersonFact, Request, Target, decide
from compartments.periods import format_instant
from compartments.policy import Policy, Reason, default_policy

NOW = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)
ME = "RelatedPerson/9"
PATIENT = "Patient/a"
TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"
POLICY = Policy(default_policy(resource_types()))


def coding(system: str, code: str) -> dict[str, Any]:
    return {"system": system, "code": code}


def concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [coding(system, code)]}


def grantee(who: str = ME, role: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "role": role or concept(f"{TERMINOLOGY}/v3-ParticipationType", "IRCP"),
        "reference": {"reference": who},
    }


def klass(*types: str) -> list[dict[str, Any]]:
    return [coding("http://hl7.org/fhir/resource-types", t) for t in types]


def action(*codes: str) -> list[dict[str, Any]]:
    return [concept(f"{TERMINOLOGY}/consentaction", c) for c in codes]


def consent(provision: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": concept(f"{TERMINOLOGY}/consentscope", "patient-privacy"),
        "category": [concept("http://loinc.org", "59284-0")],
        "patient": {"reference": PATIENT},
        "provision": provision,
        **extra,
    }


def labs(**extra: Any) -> dict[str, Any]:
    """A standard permit: RelatedPerson/9 may access the patient's Observations."""
    return {"type": "permit", "actor": [grantee()], "class": klass("Observation"), **extra}


def ask(
    body: dict[str, Any],
    operation: str = "read",
    resource_type: str = "Observation",
    actor: str = ME,
    now: datetime = NOW,
    purpose: str | None = None,
    category: tuple[str, str] | None = None,
) -> tuple[Selection, Selection]:
    fact = read_consent("1", body)
    return fact.evaluate(Query(actor, operation, resource_type, now, purpose, category))


def permits(body: dict[str, Any], *args: Any, **kw: Any) -> Selection:
    return ask(body, *args, **kw)[0]


def test_a_standard_permit_grants_its_class_to_its_grantee_only() -> None:
    body = consent(labs())
    assert permits(body) == EVERYTHING
    assert permits(body, "search") == EVERYTHING
    assert permits(body, resource_type="Encounter") == NOTHING
    assert permits(body, actor="RelatedPerson/8") == NOTHING


@pytest.mark.parametrize(
    "role",
    [
        concept(f"{TERMINOLOGY}/v3-ParticipationType", "IRCP"),
        concept(f"{TERMINOLOGY}/v3-ParticipationType", "PRCP"),
        concept(f"{TERMINOLOGY}/v3-RoleCode", "GRANTEE"),
        concept(f"{TERMINOLOGY}/v3-RoleCode", "DELEGATEE"),
    ],
)
def test_grantee_roles(role: dict[str, Any]) -> None:
    assert permits(consent(labs(actor=[grantee(role=role)]))) == EVERYTHING


@pytest.mark.parametrize(
    "role",
    [
        {"text": "grantee"},
        {"coding": [{"code": "GRANTEE"}]},  # no system: the code means nothing
        concept(f"{TERMINOLOGY}/v3-ParticipationType", "CST"),  # the custodian
        concept(f"{TERMINOLOGY}/v3-RoleCode", "GRANTOR"),
        concept("urn:example:roles", "reader"),
    ],
)
def test_an_actor_in_any_other_role_gains_nothing(role: dict[str, Any]) -> None:
    assert permits(consent(labs(actor=[grantee(role=role)]))) == NOTHING


def test_a_permit_that_names_no_grantee_grants_nobody() -> None:
    body = consent({"type": "permit", "class": klass("Observation")})
    assert permits(body) == NOTHING


def test_actions_decide_the_operations() -> None:
    read_only = consent(labs(action=action("access")))
    assert permits(read_only, "read") == EVERYTHING
    assert permits(read_only, "search") == EVERYTHING
    assert permits(read_only, "create") == NOTHING
    assert permits(read_only, "update") == NOTHING
    correct = consent(labs(action=action("correct")))
    assert permits(correct, "update") == EVERYTHING and permits(correct, "read") == NOTHING
    collect = consent(labs(action=action("collect")))
    assert permits(collect, "create") == EVERYTHING and permits(collect, "delete") == NOTHING
    # no action element: every operation the policy allows
    assert permits(consent(labs()), "create") == EVERYTHING


def test_the_servers_scope_codes_and_classes_combine() -> None:
    scoped = labs(code=[concept("urn:fhir-server:consent-scope", "LAB_RESULTS")])
    scoped.pop("class")
    assert permits(consent(scoped), resource_type="DiagnosticReport") == EVERYTHING
    both = labs(code=[concept("urn:fhir-server:consent-scope", "LAB_RESULTS")])
    # class Observation AND the lab results scope: laboratory Observations only
    assert permits(consent(both), resource_type="DiagnosticReport") == NOTHING
    assert permits(consent(both)) == NOTHING
    assert permits(consent(both), category=LABORATORY) == EVERYTHING


LABORATORY = CONSENT_CATEGORIES[("LAB_RESULTS", "Observation")]


def test_lab_results_open_laboratory_observations_only() -> None:
    scoped = labs(code=[concept("urn:fhir-server:consent-scope", "LAB_RESULTS")])
    scoped.pop("class")
    body = consent(scoped)
    # any category: nothing; the laboratory category: all of them
    assert permits(body) == NOTHING
    assert permits(body, "create") == NOTHING
    assert permits(body, "search", category=LABORATORY) == EVERYTHING
    assert permits(body, "create", category=LABORATORY) == EVERYTHING
    assert permits(body, category=("category", "vital-signs")) == NOTHING
    # the other lab types are opened whole
    assert permits(body, resource_type="Specimen") == EVERYTHING
    # a class Observation permit beside it opens every category again
    assert permits(consent(labs())) == EVERYTHING


def test_a_lab_results_deny_covers_every_category() -> None:
    denial = consent(
        {
            "type": "deny",
            "actor": [grantee()],
            "code": [concept("urn:fhir-server:consent-scope", "LAB_RESULTS")],
        }
    )
    assert ask(denial)[1] == EVERYTHING


def test_data_references_grant_those_resources_only() -> None:
    body = consent(
        labs(
            data=[
                {"meaning": "instance", "reference": {"reference": "Observation/5"}},
                {"meaning": "instance", "reference": {"reference": "Observation/6"}},
                {"meaning": "instance", "reference": {"reference": "Encounter/7"}},
            ]
        )
    )
    assert permits(body) == Selection(False, frozenset({"5", "6"}))
    assert permits(body, resource_type="Encounter") == NOTHING  # class Observation only
    body["provision"].pop("class")
    assert permits(body, resource_type="Encounter") == Selection(False, frozenset({"7"}))


def test_a_nested_deny_narrows_the_permit() -> None:
    body = consent(
        labs(
            **{"class": klass("Observation", "Encounter")},
            provision=[
                {"type": "deny", "class": klass("Encounter")},
                {
                    "type": "deny",
                    "data": [{"meaning": "instance", "reference": {"reference": "Observation/5"}}],
                },
            ],
        )
    )
    assert permits(body) == Selection(True, frozenset({"5"}))
    assert permits(body, resource_type="Encounter") == NOTHING
    # the deny only narrows this Consent: it denies nothing of its own
    assert ask(body)[1] == NOTHING


def test_a_nested_permit_reopens_part_of_a_deny() -> None:
    body = consent(
        labs(
            provision=[
                {
                    "type": "deny",
                    "action": action("access"),
                    "provision": [
                        {
                            "type": "permit",
                            "data": [
                                {"meaning": "instance", "reference": {"reference": "Observation/5"}}
                            ],
                        }
                    ],
                }
            ]
        )
    )
    assert permits(body, "read") == Selection(False, frozenset({"5"}))
    assert permits(body, "update") == EVERYTHING  # the deny is of access only


def test_a_deny_for_another_actor_does_not_touch_mine() -> None:
    body = consent(
        {
            "type": "permit",
            "actor": [grantee(), grantee("RelatedPerson/8")],
            "class": klass("Observation"),
            "provision": [{"type": "deny", "actor": [grantee("RelatedPerson/8")]}],
        }
    )
    assert permits(body) == EVERYTHING
    assert permits(body, actor="RelatedPerson/8") == NOTHING


def test_a_deny_applies_to_an_actor_named_in_any_role() -> None:
    body = consent(
        labs(
            provision=[
                {"type": "deny", "actor": [grantee(role={"text": "whoever"})]},
            ]
        )
    )
    assert permits(body) == NOTHING


@pytest.mark.parametrize(
    "unknown",
    [
        {"securityLabel": [coding(f"{TERMINOLOGY}/v3-Confidentiality", "R")]},
        {"dataPeriod": {"start": "2020-01-01"}},
        {"modifierExtension": [{"url": "urn:x", "valueBoolean": True}]},
        {"action": [*action("access"), concept("urn:example:actions", "print")]},
        {"class": [*klass("Observation"), coding("urn:example:classes", "labs")]},
        {"code": [concept("http://loinc.org", "2345-7")]},
        {"data": [{"meaning": "related", "reference": {"reference": "Encounter/1"}}]},
        {
            "data": [
                {
                    "meaning": "instance",
                    "reference": {"reference": "http://x.org/fhir/Observation/5"},
                }
            ]
        },
        {"purpose": [coding("urn:example:purposes", "care")]},
        {"period": {"end": "2026-12-31T10:00:00"}},  # a time without a zone
    ],
)
def test_what_is_not_understood_grants_nothing(unknown: dict[str, Any]) -> None:
    assert permits(consent(labs(**unknown))) == NOTHING
    # nested, the part not understood denies what its understood conditions cover
    nested = consent(labs(provision=[{"type": "permit", **unknown}]))
    assert permits(nested) == NOTHING


def test_a_nested_deny_not_understood_denies_more_not_less() -> None:
    body = consent(
        labs(
            provision=[
                {
                    "type": "deny",
                    "data": [{"meaning": "instance", "reference": {"reference": "Observation/5"}}],
                    "securityLabel": [coding(f"{TERMINOLOGY}/v3-Confidentiality", "R")],
                }
            ]
        )
    )
    assert permits(body) == Selection(True, frozenset({"5"}))  # the data is understood
    wide = consent(
        labs(
            provision=[
                {
                    "type": "deny",
                    "securityLabel": [coding(f"{TERMINOLOGY}/v3-Confidentiality", "R")],
                }
            ]
        )
    )
    assert permits(wide) == NOTHING


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"status": "proposed"}, "status"),
        ({"status": "inactive"}, "status"),
        ({"scope": concept(f"{TERMINOLOGY}/consentscope", "research")}, "scope"),
        ({"modifierExtension": [{"url": "urn:x", "valueBoolean": True}]}, "modifierExtension"),
    ],
)
def test_only_an_active_privacy_consent_counts(change: dict[str, Any], why: str) -> None:
    body = {**consent(labs()), **change}
    assert permits(body) == NOTHING
    assert why in " ".join(read_consent("1", body).describe())


def test_policy_rule_is_the_base_of_a_root_without_type() -> None:
    opt_in = consent(
        {"actor": [grantee()], "class": klass("Observation")},
        policyRule=concept(f"{TERMINOLOGY}/v3-ActCode", "OPTIN"),
    )
    assert permits(opt_in) == EVERYTHING
    opt_out = {**opt_in, "policyRule": concept(f"{TERMINOLOGY}/v3-ActCode", "OPTOUT")}
    assert permits(opt_out) == NOTHING
    unknown = {**opt_in, "policyRule": concept("urn:example:policy", "share")}
    assert permits(unknown) == NOTHING


def test_a_root_deny_consent_takes_from_other_consents() -> None:
    deny = consent({"type": "deny", "actor": [grantee()], "class": klass("Observation")})
    assert ask(deny) == (NOTHING, EVERYTHING)
    everyone = consent({"type": "deny", "class": klass("Observation")})
    assert ask(everyone, actor="RelatedPerson/1")[1] == EVERYTHING
    facts = Facts(
        now=NOW,
        related_persons={ME: RelatedPersonFact(ME, PATIENT, frozenset({"SPS"}))},
        birth_dates={PATIENT: None},
        consents=(read_consent("1", consent(labs())), read_consent("2", deny)),
    )
    request = Request((Identity(ME),), "read", "Observation", Target(frozenset({PATIENT})))
    decision = decide(request, POLICY, facts)
    assert not decision.allowed and decision.reason is Reason.CONSENT_REQUIRED


def test_periods_are_instants() -> None:
    hour_ago = format_instant(NOW - timedelta(hours=1))
    assert permits(consent(labs(period={"end": hour_ago}))) == NOTHING
    assert permits(consent(labs(period={"end": "2026-12-03"}))) == EVERYTHING
    in_an_hour = format_instant(NOW + timedelta(hours=1))
    assert permits(consent(labs(period={"start": in_an_hour}))) == NOTHING
    # a nested deny in force for one hour only
    body = consent(labs(provision=[{"type": "deny", "period": {"end": in_an_hour}}]))
    assert permits(body) == NOTHING
    assert permits(body, now=NOW + timedelta(hours=2)) == EVERYTHING


def test_purpose_matches_the_requests_purpose_of_use() -> None:
    body = consent(labs(purpose=[coding(f"{TERMINOLOGY}/v3-ActReason", "CAREMGT")]))
    assert permits(body) == NOTHING
    assert permits(body, purpose="CAREMGT") == EVERYTHING


def test_a_data_grant_is_a_part_of_the_compartment_in_the_decision() -> None:
    body = consent(
        labs(data=[{"meaning": "instance", "reference": {"reference": "Observation/5"}}])
    )
    facts = Facts(
        now=NOW,
        related_persons={ME: RelatedPersonFact(ME, PATIENT, frozenset({"SPS"}))},
        consents=(read_consent("1", body),),
    )
    search = decide(Request((Identity(ME),), "search", "Observation"), POLICY, facts)
    assert search.allowed and not search.compartments
    assert [(p.compartment, p.selection.ids) for p in search.parts] == [(PATIENT, frozenset({"5"}))]

    def read(id: str) -> bool:
        target = Target(frozenset({PATIENT}), id=id)
        return decide(
            Request((Identity(ME),), "read", "Observation", target), POLICY, facts
        ).allowed

    assert read("5") and not read("6")


# --- properties ---------------------------------------------------------------------------------

_UNKNOWN = [
    {"securityLabel": [coding(f"{TERMINOLOGY}/v3-Confidentiality", "R")]},
    {"dataPeriod": {"start": "2020"}},
    {"code": [concept("http://loinc.org", "1-8")]},
]


@st.composite
def provisions(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    p: dict[str, Any] = {"type": draw(st.sampled_from(["permit", "deny"]))}
    if draw(st.booleans()):
        p["actor"] = [grantee(draw(st.sampled_from([ME, "RelatedPerson/8"])))]
    if draw(st.booleans()):
        p["class"] = klass(
            *draw(st.sets(st.sampled_from(["Observation", "Encounter"]), min_size=1))
        )
    if draw(st.booleans()):
        p["action"] = action(*draw(st.sets(st.sampled_from(["access", "correct"]), min_size=1)))
    if draw(st.booleans()):
        p["data"] = [
            {"meaning": "instance", "reference": {"reference": f"Observation/{i}"}}
            for i in draw(st.sets(st.sampled_from("1234"), min_size=1))
        ]
    if depth < 2:
        p["provision"] = draw(st.lists(provisions(depth + 1), max_size=2))
    return p


def _paths(p: dict[str, Any], at: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    return [at] + [q for i, n in enumerate(p.get("provision", ())) for q in _paths(n, (*at, i))]


def _at(p: dict[str, Any], path: tuple[int, ...]) -> dict[str, Any]:
    for i in path:
        p = p["provision"][i]
    return p


def _copy_with_a_provision(
    root: dict[str, Any], data: st.DataObject
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The Consent of `root`, a copy of it to change, and one provision of the copy, drawn."""
    body = consent(root)
    path = data.draw(st.sampled_from(_paths(root)))
    changed = copy.deepcopy(body)
    return body, changed, _at(changed["provision"], path)


def _within(narrow: Selection, wide: Selection) -> bool:
    return (narrow - wide).empty


QUERIES = st.tuples(
    st.sampled_from(["read", "update"]),
    st.sampled_from(["Observation", "Encounter"]),
    st.sampled_from([ME, "RelatedPerson/8"]),
)


@given(provisions(), st.data(), QUERIES)
def test_something_not_understood_never_widens_a_consent(
    root: dict[str, Any], data: st.DataObject, query: tuple[str, str, str]
) -> None:
    body, changed, provision = _copy_with_a_provision(root, data)
    provision.update(data.draw(st.sampled_from(_UNKNOWN)))
    before, before_denied = ask(body, *query)
    after, after_denied = ask(changed, *query)
    assert _within(after, before)
    # and what a root deny denies only grows
    assert _within(before_denied, after_denied) or root["type"] == "permit"


@given(provisions(), st.data(), QUERIES)
def test_adding_a_nested_deny_never_widens_a_consent(
    root: dict[str, Any], data: st.DataObject, query: tuple[str, str, str]
) -> None:
    body, changed, provision = _copy_with_a_provision(root, data)
    deny = data.draw(provisions(depth=2))
    deny["type"] = "deny"
    provision.setdefault("provision", []).append(deny)
    assert _within(ask(changed, *query)[0], ask(body, *query)[0])


@given(provisions(), QUERIES)
def test_a_consent_grants_only_to_actors_it_names_as_grantees(
    root: dict[str, Any], query: tuple[str, str, str]
) -> None:
    operation, resource_type, actor = query
    named = any(
        a["reference"]["reference"] == actor
        for path in _paths(root)
        for a in _at(root, path).get("actor", ())
    )
    if not named:
        assert ask(consent(root), operation, resource_type, actor)[0] == NOTHING


def test_scoped_helper_matches_a_stored_scope_consent() -> None:
    stored = consent(
        {
            "type": "permit",
            "actor": [grantee()],
            "code": [concept("urn:fhir-server:consent-scope", "LAB_RESULTS")],
        }
    )
    helper = ConsentFact.scoped("Consent/1", PATIENT, {ME}, {"LAB_RESULTS"})
    for resource_type in ("Observation", "Specimen", "Encounter", "Patient"):
        query = Query(ME, "read", resource_type, NOW)
        assert read_consent("1", stored).evaluate(query) == helper.evaluate(query)
