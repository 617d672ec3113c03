"""Media types of request bodies on every surface that takes one: the type, its `charset` (only
UTF-8, in any spelling of its name, quoted or not) and FHIR's `fhirVersion` parameter (only R4's
4.0); and `fhirVersion` asked for in `Accept` or `_format` (docs/architecture.md, "Decisions where the specification leaves a choice")."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from tests.support.servers import LiveServer
from tests.support.tokens import auth

PATIENT = b'{"resourceType": "Patient"}'
WRONG_CHARSETS = ["iso-8859-1", "ISO-8859-1", "utf-16", '"latin1"', "us-ascii", "utf-8x", ""]
UTF8_SPELLINGS = ["utf-8", "UTF-8", "Utf-8", "utf8", "UTF8", '"utf-8"', '"UTF-8"']


def history_rows(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM resource_history").fetchone()
    assert row is not None
    return int(row[0])


def assert_415(response: httpx.Response, *, fhir: bool = True) -> None:
    assert response.status_code == 415, response.text
    body = response.json()
    if fhir:
        assert body["resourceType"] == "OperationOutcome"
        issue = body["issue"][0]
        assert issue["code"] == "not-supported"
        assert issue["expression"] == ["http.Content-Type"]
        assert "`" in issue["diagnostics"]


def refused_post(client: httpx.Client, db: psycopg.Connection[Any], content_type: str) -> str:
    """POST a Patient with this Content-Type: a 415 that stores nothing; its diagnostics."""
    before = history_rows(db)
    response = client.post("/Patient", content=PATIENT, headers={"Content-Type": content_type})
    assert_415(response)
    assert history_rows(db) == before
    return str(response.json()["issue"][0]["diagnostics"])


@pytest.mark.parametrize("charset", WRONG_CHARSETS)
def test_a_fhir_body_in_another_charset_is_415_and_stores_nothing(
    client: httpx.Client, db: psycopg.Connection[Any], charset: str
) -> None:
    diagnostics = refused_post(client, db, f"application/fhir+json; charset={charset}")
    assert "UTF-8" in diagnostics


@pytest.mark.parametrize("charset", UTF8_SPELLINGS)
@pytest.mark.parametrize("media", ["application/fhir+json", "application/json"])
def test_utf8_in_any_spelling_is_accepted(client: httpx.Client, media: str, charset: str) -> None:
    response = client.post(
        "/Patient", content=PATIENT, headers={"Content-Type": f"{media}; charset={charset}"}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "content_type",
    [
        "application/fhir+json; fhirVersion=4.0",
        "application/fhir+json; fhirversion=4.0; charset=utf-8",
        "application/fhir+json;fhirVersion=4.0.1",
        'application/fhir+json; fhirVersion="4.0"',
        "application/fhir+json; charset=utf-8; profile=whatever",  # unknown parameters ignored
    ],
)
def test_r4_version_parameter_is_accepted(client: httpx.Client, content_type: str) -> None:
    response = client.post("/Patient", content=PATIENT, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("version", ["3.0", "4.3", "5.0", "1.0.2", "4"])
def test_another_fhir_version_in_the_body_is_415(
    client: httpx.Client, db: psycopg.Connection[Any], version: str
) -> None:
    diagnostics = refused_post(client, db, f"application/fhir+json; fhirVersion={version}")
    assert f"fhirVersion={version}" in diagnostics


def test_every_fhir_body_surface_checks_the_charset(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    patient = client.post("/Patient", json={"resourceType": "Patient"}).json()
    url = f"/Patient/{patient['id']}"
    latin1 = "application/fhir+json; charset=iso-8859-1"
    before = history_rows(db)
    # update, batch/transaction, an operation
    assert_415(client.put(url, content=PATIENT, headers={"Content-Type": latin1}))
    bundle = b'{"resourceType": "Bundle", "type": "batch", "entry": []}'
    assert_415(client.post("", content=bundle, headers={"Content-Type": latin1}))
    assert_415(client.post("/$explain-access", content=b"{}", headers={"Content-Type": latin1}))
    # JSON Patch
    patch = b'[{"op": "add", "path": "/gender", "value": "male"}]'
    for charset in ("iso-8859-1", "utf-16"):
        response = client.patch(
            url,
            content=patch,
            headers={"Content-Type": f"application/json-patch+json; charset={charset}"},
        )
        assert_415(response)
    # _search as a form
    for charset in ("iso-8859-1", "windows-1252"):
        response = client.post(
            "/Patient/_search",
            content=b"_id=x",
            headers={"Content-Type": f"application/x-www-form-urlencoded; charset={charset}"},
        )
        assert_415(response)
    assert history_rows(db) == before
    assert client.get(url).json()["meta"]["versionId"] == "1"


def test_the_same_surfaces_take_utf8_in_any_spelling(client: httpx.Client) -> None:
    patient = client.post("/Patient", json={"resourceType": "Patient"}).json()
    url = f"/Patient/{patient['id']}"
    patched = client.patch(
        url,
        content=b'[{"op": "add", "path": "/gender", "value": "male"}]',
        headers={"Content-Type": 'application/json-patch+json; charset="UTF-8"'},
    )
    assert patched.status_code == 200, patched.text
    found = client.post(
        "/Patient/_search",
        content=f"_id={patient['id']}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF8"},
    )
    assert found.status_code == 200, found.text
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [patient["id"]]


def test_a_form_search_body_that_is_not_utf8_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/Patient/_search",
        content="family=Müller".encode("latin-1"),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["http.body"]


def test_a_patch_without_a_content_type_is_415(client: httpx.Client) -> None:
    patient = client.post("/Patient", json={"resourceType": "Patient"}).json()
    response = client.patch(
        f"/Patient/{patient['id']}", content=b'[{"op": "add", "path": "/gender", "value": "male"}]'
    )
    assert_415(response)


@pytest.mark.parametrize(
    "accept", ["application/fhir+json; fhirVersion=3.0", "application/json;fhirVersion=5.0"]
)
def test_another_fhir_version_asked_for_is_406(client: httpx.Client, accept: str) -> None:
    response = client.get("/metadata", headers={"Accept": accept})
    assert response.status_code == 406
    issue = response.json()["issue"][0]
    assert "fhirVersion" in issue["diagnostics"]
    assert issue["expression"] == ["http.Accept"]
    fmt = client.get("/metadata", params={"_format": accept})
    assert fmt.status_code == 406


@pytest.mark.parametrize(
    "accept",
    [
        "application/fhir+json; fhirVersion=4.0",
        "application/fhir+json; fhirVersion=3.0, application/fhir+json; fhirVersion=4.0",
        "application/fhir+json; fhirVersion=3.0, */*",
    ],
)
def test_r4_asked_for_is_served(client: httpx.Client, accept: str) -> None:
    assert client.get("/metadata", headers={"Accept": accept}).status_code == 200


def test_the_patient_api_checks_the_media_type(
    live_server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    headers = auth(None, "patient:read patient:write")
    body = (
        b'{"given_name": "Ana", "family_name": "Media", "date_of_birth": "1990-01-01",'
        b' "sex_at_birth": "female"}'
    )
    with httpx.Client(base_url=f"{live_server.origin}/api/v1", headers=headers) as api:
        before = history_rows(db)
        for content_type in (
            "application/json; charset=iso-8859-1",
            "application/json; charset=utf-16",
            "text/plain",
            "application/x-www-form-urlencoded",
        ):
            response = api.post("/patients", content=body, headers={"Content-Type": content_type})
            assert response.status_code == 415, response.text
            assert response.json()["code"] == "unsupported_media_type"
        assert history_rows(db) == before
        created = api.post(
            "/patients", content=body, headers={"Content-Type": "application/json; charset=UTF-8"}
        )
        assert created.status_code == 201, created.text
        view = created.json()
        replaced = api.put(
            f"/patients/{view['patient_id']}",
            content=body,
            headers={"Content-Type": "application/json; charset=latin1", "If-Match": 'W/"1"'},
        )
        assert replaced.status_code == 415
        assert replaced.json()["code"] == "unsupported_media_type"
        assert api.get(f"/patients/{view['patient_id']}").json()["version"] == 1


def test_the_relationship_api_checks_the_media_type(live_server: LiveServer) -> None:
    with httpx.Client(base_url=f"{live_server.origin}/api/v1/relationships", headers=auth()) as api:
        for path in ("/verify", "/delegate"):
            for content_type in ("application/json; charset=iso-8859-1", "text/plain"):
                response = api.post(path, content=b"{}", headers={"Content-Type": content_type})
                assert response.status_code == 415, response.text
                assert response.json()["code"] == "unsupported_media_type"
            # the right type gets past the media check to the body's own checks
            ok = api.post(path, content=b"{}", headers={"Content-Type": "application/json"})
            assert ok.status_code == 400


def test_graphql_checks_the_media_type(live_server: LiveServer) -> None:
    query = b'{"query": "{ __typename }"}'
    with httpx.Client(base_url=live_server.origin, headers=auth()) as api:
        for content_type in (
            "application/json; charset=iso-8859-1",
            "text/plain",
            "application/json-patch+json",  # strawberry took anything with application/json in it
        ):
            response = api.post("/graphql", content=query, headers={"Content-Type": content_type})
            assert response.status_code == 415, (content_type, response.text)
        ok = api.post(
            "/graphql", content=query, headers={"Content-Type": 'application/json; charset="utf8"'}
        )
        assert ok.status_code != 415
