"""The `access_basis` claim of tokens this server's authorization server mints: kept on the
Principal in one of its two shapes; anything else is a 401, since it reaches every AuditEvent."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.auth.tokens import principal_from_claims
from fhir_server.errors import Unauthorized


def claims(basis: Any, **more: Any) -> dict[str, Any]:
    return {"sub": "u", "fhirUser": "RelatedPerson/9", "scope": "", "access_basis": basis, **more}


def test_a_relationship_basis_is_kept() -> None:
    basis = {"relationship": "RelatedPerson/9", "codes": ["MTH"], "consents": ["Consent/3"]}
    principal = principal_from_claims(claims(basis))
    assert principal.access_basis == basis
    assert principal.basis == ("RelatedPerson/9", "Consent/3")


def test_a_self_basis_is_kept() -> None:
    principal = principal_from_claims(claims({"self": "Patient/1"}, patient="1"))
    assert principal.basis == ("Patient/1",)


def test_no_basis_is_none() -> None:
    principal = principal_from_claims({"sub": "u", "fhirUser": "Patient/1", "scope": ""})
    assert principal.access_basis is None and principal.basis == ()


@pytest.mark.parametrize(
    "basis",
    [
        "RelatedPerson/9",
        [],
        {},
        {"self": "RelatedPerson/9"},
        {"self": "Patient/1", "codes": []},
        {"self": "Patient/a b"},
        {"relationship": "Observation/1"},
        {"relationship": "RelatedPerson/9", "extra": 1},
        {"relationship": "RelatedPerson/9", "codes": "MTH"},
        {"relationship": "RelatedPerson/9", "codes": ["M TH"]},
        {"relationship": "RelatedPerson/9", "codes": ["\x00"]},
        {"relationship": "RelatedPerson/9", "codes": ["x" * 65]},
        {"relationship": "RelatedPerson/9", "consents": ["Patient/1"]},
        {"relationship": "RelatedPerson/9", "consents": ["Consent/1"] * 21},
        {"relationship": "http://elsewhere/RelatedPerson/9"},
        {"codes": ["MTH"]},
    ],
)
def test_a_malformed_basis_is_401(basis: Any) -> None:
    with pytest.raises(Unauthorized, match="access_basis"):
        principal_from_claims(claims(basis))


def test_self_must_be_the_launch_patient() -> None:
    with pytest.raises(Unauthorized, match="another patient"):
        principal_from_claims(claims({"self": "Patient/1"}, patient="2"))
