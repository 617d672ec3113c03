"""A registration never grants more than the registering token holds
(fhir_server/oauth/register.py `beyond_caller`, on `auth.scopes.covers`)."""

from __future__ import annotations

import pytest

from fhir_server.auth.scopes import Scope, covers, parse_scope, parse_scopes
from fhir_server.auth.tokens import Principal, principal_from_claims
from fhir_server.oauth.register import beyond_caller


def caller(scope: str) -> Principal:
    return principal_from_claims({"sub": "ehr", "client_id": "ehr", "scope": scope})


@pytest.mark.parametrize(
    ("held", "asked", "beyond"),
    [
        ("system/*.rs", "system/*.cruds", "system/*.cruds"),
        ("system/*.rs", "system/Patient.rs system/Patient.u", "system/Patient.u"),
        ("system/*.read", "system/Observation.write", "system/Observation.write"),
        ("system/Observation.rs", "system/*.rs", "system/*.rs"),
        ("system/Observation.rs?category=laboratory", "system/Observation.rs", "system/Observation.rs"),
        ("system/*.rs", "launch/patient patient/*.cruds", "patient/*.cruds"),
        ("system/*.rs", "openid user/Observation.rs user/Patient.c", "user/Patient.c"),
        ("system/*.cruds", "system/*.cruds patient/*.cruds user/*.rs openid", None),
        ("system/*.*", "system/Patient.cruds", None),
        ("system/*.rs", "system/Observation.rs?category=laboratory", None),
        ("system/Observation.rs?category=laboratory",
         "system/Observation.s?category=laboratory&code=1", None),
        ("system/*.rs", "openid fhirUser launch launch/patient offline_access online_access", None),
    ],
)  # fmt: skip
def test_each_resource_scope_must_be_within_a_system_scope_of_the_caller(
    held: str, asked: str, beyond: str | None
) -> None:
    assert beyond_caller(asked, caller(held)) == beyond


def test_only_the_callers_system_scopes_count() -> None:
    held = Principal("ehr", None, parse_scopes("system/Patient.rs user/*.rs patient/*.rs"))
    assert beyond_caller("user/Observation.rs", held) == "user/Observation.rs"
    assert beyond_caller("patient/Patient.r", held) is None


def test_covers_compares_type_permissions_and_filter() -> None:
    def scope(text: str) -> Scope:
        found = parse_scope(text)
        assert found is not None
        return found

    assert covers(scope("user/*.rs"), scope("patient/Observation.r"))
    assert not covers(scope("user/Patient.rs"), scope("user/Observation.r"))
    assert not covers(scope("user/*.r"), scope("user/Observation.rs"))
    assert not covers(scope("user/*.rs?a=1"), scope("user/*.rs"))
    assert covers(scope("user/*.rs?a=1"), scope("user/*.rs?a=1&b=2"))
