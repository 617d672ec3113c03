"""The AuditEvents of access decisions: stored exactly as the generic write path would store
them (content, compartments, search index), only faster; and holding no demographics."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from compartments.engine import Decision
from compartments.policy import OPERATIONS, Reason, Rule
from fhir_server.audit.trail import audit_event, record_of, stored_event
from fhir_server.services.access import Audited
from fhir_server.services.context import Context, server_guard
from fhir_server.services.resources import new_version
from fhir_server.settings import Settings
from fhir_server.validation import default_validator

CTX = Context(settings=Settings(), validator=default_validator(), base_url="http://x/fhir")
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


@given(
    account=accounts,
    operation=st.sampled_from(OPERATIONS),
    resource=resources,
    allowed=st.booleans(),
    patients=st.lists(ids, max_size=12),
    purpose=st.sampled_from([None, "BTG", "TREAT"]),
    emergency=st.booleans(),
)
def test_stored_event_is_what_the_generic_write_path_stores(
    account: str,
    operation: str,
    resource: str | None,
    allowed: bool,
    patients: list[str],
    purpose: str | None,
    emergency: bool,
) -> None:
    guard = server_guard()
    guard.account = account
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
    record = record_of(guard, Audited(operation, "Observation", resource, decision), now)
    event = audit_event(record, "s")
    CTX.validator.validate(dict(event), expected_type="AuditEvent")  # a valid R4 AuditEvent
    fast = stored_event(dict(event), "id-1", now)
    generic = new_version(
        CTX, dict(event), id="id-1", version_id=1, last_updated=now, method="POST"
    )
    assert fast.content == generic.content
    assert sorted(fast.compartments) == sorted(generic.compartments)
    assert fast.index is not None and generic.index is not None
    for kind in ("string", "token", "date", "reference", "number", "quantity", "uri"):
        assert sorted(map(repr, getattr(fast.index, kind))) == sorted(
            map(repr, getattr(generic.index, kind))
        ), kind
