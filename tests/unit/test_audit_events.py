"""The AuditEvents of access decisions: stored exactly as the generic write path would store
them (content, compartments, search columns), only faster; and holding no demographics."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from compartments.engine import Decision
from compartments.ids import is_id
from compartments.policy import OPERATIONS, Reason, Rule
from fhir_server.audit.trail import (
    BOUNDED_EXTENSION,
    ID_MAX,
    MAX_PATIENTS,
    TYPE_MAX,
    audit_event,
    event_row,
    record_of,
)
from fhir_server.auth.tokens import principal_from_claims
from fhir_server.services.access.guard import Audited
from fhir_server.services.context import Context, server_guard
from fhir_server.services.interactions.versions import new_version
from fhir_server.settings import Settings
from fhir_server.storage.audit_events import COLUMNS, row_of, stamped_id, window_of
from fhir_server.validation import default_validator

CTX = Context(
    settings=Settings(),
    validator=default_validator(),
    base_url="http://x/fhir",
    guard=server_guard(),
)
ids = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=12)
accounts = st.one_of(
    st.builds(
        lambda t, i: f"{t}/{i}",
        st.sampled_from(["Patient", "RelatedPerson", "Practitioner", "Person", "System", "Admin"]),
        ids,
    )
)
resources = st.one_of(
    st.none(),
    st.builds(lambda t, i: f"{t}/{i}", st.sampled_from(["Patient", "Observation", "Consent"]), ids),
)


def _row(event: dict[str, Any], id: str, now: datetime) -> dict[str, Any]:
    """The trail's row of `event`, by column."""
    return dict(zip(COLUMNS, event_row(event, id, now), strict=True))


def _array(literal: str) -> list[str]:
    """The elements of a `text[]` literal as `text_array` writes it (each quoted)."""
    assert literal.startswith("{") and literal.endswith("}")
    return [
        re.sub(r"\\(.)", r"\1", element)
        for element in re.findall(r'"((?:[^"\\]|\\.)*)"', literal[1:-1])
    ]


def _generic_row(event: dict[str, Any], id: str, now: datetime) -> tuple[Any, ...]:
    """What a client's `POST AuditEvent` of `event` stores: the generic write path's version,
    as repository.insert_new makes it a row."""
    generic = new_version(CTX, dict(event), id=id, version_id=1, last_updated=now, method="POST")
    assert generic.content is not None
    return row_of(
        orjson.loads(generic.content), generic.content, id, now, sorted(generic.compartments)
    )


@given(
    account=accounts,
    operation=st.sampled_from(OPERATIONS),
    resource=resources,
    allowed=st.booleans(),
    patients=st.lists(ids, max_size=12),
    purpose=st.sampled_from([None, "BTG", "TREAT"]),
    emergency=st.booleans(),
    basis=st.sampled_from(
        [
            None,
            {"self": "Patient/p1"},
            {"relationship": "RelatedPerson/r9", "codes": ["MTH"], "consents": []},
            {
                "relationship": "RelatedPerson/r9",
                "codes": ["SPS"],
                "consents": ["Consent/c3", "Consent/c4"],
            },
        ]
    ),
)
def test_the_trails_row_is_what_a_posted_audit_event_stores(
    account: str,
    operation: str,
    resource: str | None,
    allowed: bool,
    patients: list[str],
    purpose: str | None,
    emergency: bool,
    basis: dict[str, Any] | None,
) -> None:
    guard = server_guard()
    guard.account = account
    if basis is not None:
        guard.principal = principal_from_claims(
            {"sub": "u", "fhirUser": "Person/u", "scope": "", "access_basis": basis}
        )
    guard.purpose_of_use = purpose
    guard.reason = "unconscious" if emergency else None
    decision = Decision(
        allowed=allowed,
        rule=Rule("RelatedPerson", "*", operation, "relatedperson_compartment"),
        reason=None if allowed else Reason.CONSENT_REQUIRED,
        explanation="because",
        compartments=frozenset(f"Patient/{p}" for p in patients),
        emergency=emergency and allowed,
    )
    now = datetime.now(UTC)
    touched = frozenset(f"Patient/{p}" for p in patients)
    record = record_of(guard, Audited(operation, "Observation", resource, decision, touched), now)
    event = audit_event(record, "s")
    CTX.validator.validate(dict(event), expected_type="AuditEvent")  # a valid R4 AuditEvent
    named = event["agent"][0].get("policy")
    if basis is None:
        assert named is None
    else:
        expected = (
            [basis["self"]] if "self" in basis else [basis["relationship"], *basis["consents"]]
        )
        assert named == expected
    assert event_row(dict(event), "id-1", now) == _generic_row(event, "id-1", now)


# --- hostile values: whatever a token, a header or a request carries, the event can be stored ---

# text as hostile as a token can make it: NUL, lone surrogates, any Unicode, long runs
hostile_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.sampled_from(["\x00", "\ud800", "\udfff", "x", "é", "\u2026", " "])),
    st.builds(
        lambda c, n: c * n, st.sampled_from(["x", "\x00", "\ud83d", "é"]), st.integers(60, 12_000)
    ),
)
hostile_accounts = st.builds(
    lambda t, i: f"{t}/{i}",
    st.sampled_from(["Patient", "RelatedPerson", "Practitioner", "Person", "System", "Admin"]),
    hostile_text,
)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


@given(
    account=hostile_accounts,
    resource=st.one_of(st.none(), st.builds(lambda i: f"Observation/{i}", hostile_text)),
    patients=st.lists(hostile_text, max_size=3),
    explanation=hostile_text,
    purpose=st.one_of(st.none(), hostile_text),
    reason=st.one_of(st.none(), hostile_text),
    diff=st.one_of(st.none(), hostile_text.filter(bool)),  # a diff is never empty
    emergency=st.booleans(),
)
def test_a_hostile_decision_is_bounded_flagged_and_still_a_valid_event(
    account: str,
    resource: str | None,
    patients: list[str],
    explanation: str,
    purpose: str | None,
    reason: str | None,
    diff: str | None,
    emergency: bool,
) -> None:
    guard = server_guard()
    guard.account = account
    guard.purpose_of_use = purpose
    guard.reason = reason
    if resource is not None and diff is not None:
        guard.changes[resource] = diff
    decision = Decision(
        allowed=True,
        explanation=explanation,
        compartments=frozenset(f"Patient/{p}" for p in patients),
        emergency=emergency,
    )
    now = datetime.now(UTC)
    touched = frozenset(f"Patient/{p}" for p in patients)
    record = record_of(guard, Audited("update", "Observation", resource, decision, touched), now)
    event = audit_event(record, "s")
    CTX.validator.validate(dict(event), expected_type="AuditEvent")
    row = _row(dict(event), "id-1", now)
    arrays = {c: _array(v) for c, v in row.items() if isinstance(v, str) and v.startswith("{")}
    # nothing the database refuses: no NUL (text, jsonb), no lone surrogate (UTF-8)
    for text in [row["content"], *(e for elements in arrays.values() for e in elements)]:
        assert "\x00" not in text and "\\u0000" not in text
        text.encode("utf-8")
    # a reference the row keeps names a resource only if the decision named it as it was
    named = {account, resource, *(f"Patient/{p}" for p in patients)}
    for reference in (*arrays["agents"], *arrays["entities"], *arrays["patients"]):
        kind, _, id = reference.partition("/")
        assert len(kind) <= TYPE_MAX
        assert not is_id(id) or reference in named
    for compartment in arrays["compartments"]:
        assert compartment in {account, *(f"Patient/{p}" for p in patients)}
    content = orjson.loads(row["content"])
    assert len(content["outcomeDesc"]) <= 1000
    # an event that had to be bounded says so, and names what; an event that did not, does not
    changed = (
        # a patient acting for others is named as `altId` (trail.agent_of)
        (record.account if record.behalf is None else record.behalf) != account
        or record.resource != resource
        or record.explanation != explanation
        or record.purpose_of_use != purpose
        or record.purpose_text != reason
        or (resource is not None and diff is not None and record.diff != diff)
        or list(record.patients) != sorted({f"Patient/{p}" for p in patients})[:MAX_PATIENTS]
    )
    tagged = [t for t in content.get("meta", {}).get("tag", ()) if t["code"] == "bounded"]
    assert bool(tagged) == changed == bool(record.bounded)
    if changed:
        assert content["extension"] == [
            {"url": BOUNDED_EXTENSION, "valueString": " ".join(record.bounded)}
        ]
    # and the fast path still stores what the generic write path would (references that name
    # no resource are kept as their text, as `new_version` does), whenever the generic path
    # reads the same references (it reads `|` as a canonical version and `/` as a path)
    if not any(c in s for s in (account, resource or "", *patients) for c in "|/"):
        assert tuple(row.values()) == _generic_row(event, "id-1", now)


def test_a_shortened_reference_cannot_name_a_real_resource() -> None:
    victim = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    guard = server_guard()
    guard.account = f"Patient/{victim}{'x' * 100}"
    decision = Decision(allowed=True, explanation="", compartments=frozenset({guard.account}))
    touched = frozenset({guard.account})
    record = record_of(
        guard, Audited("search", "Observation", None, decision, touched), datetime.now(UTC)
    )
    assert record.account.startswith(f"Patient/{victim}") and record.account.endswith("\u2026")
    assert len(record.account.split("/", 1)[1]) == ID_MAX
    row = _row(audit_event(record, "s"), "id-1", record.recorded)
    # the event is in nobody's compartment, and keeps the agent as the text it was given only
    assert _array(row["compartments"]) == []
    assert _array(row["agents"]) == [record.account]
    assert f"Patient/{victim}" not in _array(row["patients"])


@given(st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.sampled_from([UTC, None])))
def test_a_stamped_id_is_a_uuid7_of_the_millisecond_it_names(recorded: datetime) -> None:
    id = stamped_id(recorded)
    parsed = uuid.UUID(id)
    assert str(parsed) == id
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    window = window_of(id)
    moment = recorded.replace(tzinfo=recorded.tzinfo or UTC)
    assert window is not None and window[0] <= moment < window[1]
    assert window[1] - window[0] == timedelta(milliseconds=1)
    assert stamped_id(recorded) != id  # 74 random bits
