"""The pure rules of the sign-in page and the authorization endpoint: where `next` may send a
browser, PKCE, which scopes a client may ask for, and the scopes in plain words."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_server.oauth.authorize import Refusal, check_pkce, check_scope
from fhir_server.services.workflows.scope_words import describe, you_are
from fhir_server.storage.oauth import Client
from fhir_server.web.signin import DEFAULT_NEXT, safe_next

SERVER = "https://fhir.example.org/signin"


def client(**kw: object) -> Client:
    values: dict[str, object] = {
        "client_id": "app",
        "name": "App",
        "kind": "public",
        "redirect_uris": ("https://app.example/cb",),
        "scope": "openid fhirUser patient/*.rs user/Observation.rs",
        "launch_types": ("standalone",),
    }
    values.update(kw)
    return Client(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        "//evil.example",
        "https://evil.example/x",
        "/\\evil.example",
        "/\\\\evil.example",
        "javascript:alert(1)",
        "http:/evil.example",
        "evil.example/path",
        "/\x00/evil",
        "/\t/evil.example",
        " /signin",
        "",
        None,
        42,
        "/" + "a" * 9000,
    ],
)
def test_next_never_leaves_the_server(value: object) -> None:
    assert safe_next(value) == DEFAULT_NEXT


@pytest.mark.parametrize("value", ["/oauth/authorize?client_id=a&state=b", "/signin", "/a/b#c"])
def test_a_local_path_is_kept(value: str) -> None:
    assert safe_next(value) == value


@given(st.text(max_size=80))
def test_whatever_next_is_the_browser_stays_on_the_server(value: str) -> None:
    resolved = urlsplit(urljoin(SERVER, safe_next(value)))
    assert (resolved.scheme, resolved.netloc) == ("https", "fhir.example.org")


CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_pkce_is_required_of_public_clients_only() -> None:
    check_pkce(client(kind="confidential"), None, None)
    check_pkce(client(), CHALLENGE, "S256")
    with pytest.raises(Refusal):
        check_pkce(client(), None, None)


@pytest.mark.parametrize(
    ("challenge", "method"),
    [
        (CHALLENGE, "plain"),
        (CHALLENGE, None),
        (None, "S256"),
        ("short", "S256"),
        ("x" * 129, "S256"),
        (CHALLENGE[:-1] + "=", "S256"),
    ],
)
@pytest.mark.parametrize("kind", ["public", "confidential"])
def test_plain_or_malformed_pkce_is_refused_for_everyone(
    challenge: str | None, method: str | None, kind: str
) -> None:
    with pytest.raises(Refusal) as refused:
        check_pkce(client(kind=kind), challenge, method)
    assert refused.value.error == "invalid_request"


def test_scopes_outside_the_registration_are_dropped() -> None:
    asked = (
        "launch/patient openid profile patient/Observation.rs patient/*.cruds user/*.rs system/*.rs"
    )
    assert check_scope(client(), asked, None) == "launch/patient openid patient/Observation.rs"


def test_a_narrower_granular_scope_is_within_a_wider_one() -> None:
    asked = "launch/patient patient/Observation.rs?category=laboratory user/Observation.r"
    assert check_scope(client(), asked, None) == asked


def test_a_wider_scope_than_registered_is_dropped() -> None:
    registered = client(scope="patient/Observation.rs?category=laboratory")
    with pytest.raises(Refusal) as refused:
        check_scope(registered, "launch/patient patient/Observation.rs", None)
    assert refused.value.error == "invalid_scope"


@pytest.mark.parametrize(
    ("asked", "launch", "kind", "error"),
    [
        ("", None, ("standalone",), "invalid_scope"),
        ("launch/patient patient/Obs.bogus", None, ("standalone",), "invalid_scope"),
        ("launch openid", None, ("ehr",), "invalid_request"),
        ("openid patient/*.rs", "L", ("standalone",), "unauthorized_client"),
        ("openid patient/*.rs", "L", ("ehr",), "invalid_scope"),
        ("launch/patient patient/*.rs", None, ("ehr",), "unauthorized_client"),
        ("openid patient/*.rs", None, ("standalone",), "invalid_scope"),
        ("launch/patient", None, ("standalone",), "invalid_scope"),
    ],
)
def test_launch_rules(asked: str, launch: str | None, kind: tuple[str, ...], error: str) -> None:
    with pytest.raises(Refusal) as refused:
        check_scope(client(launch_types=kind), asked, launch)
    assert refused.value.error == error


def test_scopes_in_plain_words() -> None:
    assert describe("patient/Observation.rs", "Mary") == (
        "Read and search observations and lab results of Mary"
    )
    assert describe("patient/Observation.rs?category=http://x|laboratory", "Mary").endswith(
        "(lab results only)"
    )
    assert describe("user/*.cruds") == (
        "Read, search, add, change and delete all kinds of records that you may see"
    )
    assert (
        describe("patient/CarePlan.read")
        == "Read and search care plan records of the chosen person"
    )
    assert describe("offline_access").startswith("Keep access")


def test_relationships_in_plain_words() -> None:
    assert you_are(frozenset({"FTH"}), "RelatedPerson/1", False) == "You are their father"
    assert you_are(frozenset(), "Patient/1", True) == "Your own record"
    assert you_are(frozenset(), "Practitioner/1", False) == "In your care"
