"""What outside testing of the REST layer found (2026-12), each as the class it stands for:
every `Prefer` line counts, a history entry says what its write was answered, `HEAD` wherever
`GET` works and a 405's `Allow` read from the route table, and a transaction's `fullUrl`s
replaced wherever the Bundle links to them."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from fhir_server.app import create_app
from fhir_server.settings import Settings
from tests.api.test_bundles import transaction
from tests.api.test_crud import create
from tests.support.resources import patient
from tests.support.servers import LiveServer

# --- Prefer: several field lines are one list (RFC 7240 2) ---------------------------------------


def test_every_prefer_line_counts(client: httpx.Client) -> None:
    two_lines = [("Prefer", "return=minimal"), ("Prefer", "handling=lenient")]
    searched = client.get("/Patient?nickname=x", headers=two_lines)
    assert searched.status_code == 200, searched.text
    assert searched.json()["type"] == "searchset"
    created = client.post("/Patient", json=patient("Prefer", "Lines"), headers=two_lines)
    assert created.status_code == 201
    assert created.content == b""  # return=minimal, though it came first
    reversed_lines = [("Prefer", "handling=lenient"), ("Prefer", "return=OperationOutcome")]
    outcome = client.post("/Patient", json=patient("Prefer", "Lines"), headers=reversed_lines)
    assert outcome.status_code == 201
    assert outcome.json()["resourceType"] == "OperationOutcome"


def test_preference_names_are_case_insensitive(client: httpx.Client) -> None:
    assert client.get("/Patient?nickname=x", headers={"Prefer": "HANDLING=lenient"}).is_success
    # values are compared exactly (RFC 7240 2): an unknown value, so strict handling
    strict = client.get("/Patient?nickname=x", headers={"Prefer": "handling=LENIENT"})
    assert strict.status_code == 400


# --- history: 201 for the version that created the resource -------------------------------------


def statuses(client: httpx.Client, url: str) -> list[tuple[str, str]]:
    bundle = client.get(url, params={"_count": 100}).json()
    return [(e["request"]["method"], e["response"]["status"]) for e in bundle["entry"]]


def test_history_says_201_for_every_version_that_created_its_resource(
    client: httpx.Client,
) -> None:
    id = f"hist-{uuid.uuid4().hex[:12]}"
    body = {**patient("History", "Status"), "id": id}
    first = client.put(f"/Patient/{id}", json=body)  # update as create
    assert first.status_code == 201
    assert client.put(f"/Patient/{id}", json={**body, "active": True}).status_code == 200
    assert client.delete(f"/Patient/{id}").status_code == 204
    again = client.put(f"/Patient/{id}", json=body)  # back from deletion
    assert again.status_code == 201
    assert client.put(f"/Patient/{id}", json={**body, "active": False}).status_code == 200
    expected = [
        ("PUT", "200 OK"),
        ("PUT", "201 Created"),
        ("DELETE", "204 No Content"),
        ("PUT", "200 OK"),
        ("PUT", "201 Created"),
    ]
    assert statuses(client, f"/Patient/{id}/_history") == expected
    # the same in type and system history, where entries of other resources lie between
    mine = [
        (e["request"]["method"], e["response"]["status"])
        for e in client.get("/Patient/_history", params={"_count": 200}).json()["entry"]
        if e["fullUrl"].endswith(f"/Patient/{id}")
    ]
    assert mine == expected
    created = create(client, patient("History", "Posted")).json()
    assert statuses(client, f"/Patient/{created['id']}/_history") == [("POST", "201 Created")]


# --- HEAD wherever GET works; a 405's Allow read from the route table (RFC 9110) ----------------

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def test_every_route_that_takes_get_takes_head() -> None:
    app = create_app(Settings(), "postgresql://unused/unused")  # nothing connects before startup
    gets = [r for r in app.routes if "GET" in (getattr(r, "methods", None) or ())]
    assert len(gets) > 20
    assert [r.path for r in gets if "HEAD" not in r.methods] == []  # type: ignore[attr-defined]


def test_head_answers_as_get_without_a_body(client: httpx.Client, live_server: LiveServer) -> None:
    id = create(client, patient("Head", "Method")).json()["id"]
    for url in [
        "/metadata",
        "/Patient",
        f"/Patient?_id={id}",
        f"/Patient/{id}",
        f"/Patient/{id}/_history",
        f"/Patient/{id}/_history/1",
        "/Patient/_history",
        "/_history",
        f"/Patient/{id}/Observation",
        "/.well-known/smart-configuration",
        f"{live_server.origin}/healthz",
        "/Patient/no-such-patient",
    ]:
        got = client.get(url)
        head = client.head(url)
        assert head.status_code == got.status_code, (url, head.status_code, head.text)
        assert head.content == b"", url
        assert head.headers["content-type"] == got.headers["content-type"], url
        assert head.headers.get("etag") == got.headers.get("etag"), url


def probe(client: httpx.Client, url: str) -> dict[str, httpx.Response]:
    """`url` asked with every method, without a body (no write can succeed)."""
    return {method: client.request(method, url) for method in METHODS}


def test_a_405_lists_exactly_the_methods_the_path_answers(
    client: httpx.Client, live_server: LiveServer
) -> None:
    id = create(client, patient("Allow", "Header")).json()["id"]
    origin = live_server.origin
    for url in [
        "/metadata",
        "/_history",
        "/Patient",
        f"/Patient/{id}/_history",
        f"/Patient/{id}/_history/1",
        "/Patient/_history",
        "/Patient/_search",
        f"/Patient/{id}/Observation",
        "/.well-known/smart-configuration",
        "",
        f"{origin}/healthz",
        f"{origin}/api/v1/patients",
        f"{origin}/api/v1/relationships/verify",
        f"{origin}/graphql",
    ]:
        answers = probe(client, url)
        served = [m for m in METHODS if answers[m].status_code != 405]
        refused = [m for m in METHODS if answers[m].status_code == 405]
        for method in refused:
            answer = answers[method]
            allow = answer.headers.get("allow")
            assert allow == ", ".join(served), (url, method, allow, answer.text)
        options = client.options(url)
        assert options.status_code == 405
        assert options.headers["allow"] == ", ".join(served), url
    # what the outside testing found
    assert client.delete("/metadata").headers["allow"] == "GET, HEAD"
    assert client.post("/metadata").headers["allow"] == "GET, HEAD"
    assert client.put("/_history").headers["allow"] == "GET, HEAD"
    assert client.options("/Patient").headers["allow"] == "GET, HEAD, POST, PUT, PATCH, DELETE"


def test_a_refusal_by_a_handler_names_the_paths_other_methods(client: httpx.Client) -> None:
    """`GET Patient/_search` reaches a route that takes GET and refuses it (405): its `Allow`
    is what the path takes but GET (a POST search; an invalid id to the instance writes)."""
    response = client.get("/Patient/_search")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST, PUT, PATCH, DELETE"


def test_a_write_to_a_path_that_is_no_resource_type_is_404(client: httpx.Client) -> None:
    """Where every route matching the path answers 404 to its values, there is no method to
    allow: 404, not a 405 naming the methods of `/fhir/{type}`."""
    for method in ("PUT", "OPTIONS"):
        response = client.request(method, "/no-type")
        assert response.status_code == 404, (method, response.text)
        assert "allow" not in response.headers


# --- transactions: every link to an entry's fullUrl is replaced (R4 http.html#trules) -----------

PATIENT = "urn:uuid:3f1a2b4c-0000-4000-8000-000000000001"
BINARY = "urn:uuid:3f1a2b4c-0000-4000-8000-000000000002"
ORGANIZATION = "urn:oid:1.2.3.4.5.6789"
RESTFUL = "http://elsewhere.example/fhir/Practitioner/abc"


def post(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    kind = resource["resourceType"]
    return {"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": kind}}


def narrative(html: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{html}</div>'}


def test_a_transaction_replaces_links_in_uris_and_narrative_not_in_other_text(
    client: httpx.Client,
) -> None:
    document = {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": PATIENT},
        "content": [{"attachment": {"contentType": "text/plain", "url": BINARY}}],
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": BINARY},  # a string
        "description": BINARY,  # a string, not a link
        "text": narrative(
            f'<a href="{PATIENT}">the patient</a> <img src="{BINARY}"/> '
            f'<a href="{PATIENT}#part">a part</a> {PATIENT} <a href="{RESTFUL}">by</a>'
        ),
        "extension": [
            {"url": "http://example.org/fhir/StructureDefinition/source", "valueUri": BINARY},
            {"url": "http://example.org/fhir/StructureDefinition/note", "valueString": BINARY},
        ],
    }
    care_plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": PATIENT},
        "instantiatesUri": [BINARY, f"{BINARY}/more", "http://example.org/protocol"],
        "author": {"reference": ORGANIZATION},
        "identifier": [{"system": ORGANIZATION, "value": "cp-1"}],
    }
    bundle = transaction(
        post("urn:uuid:3f1a2b4c-0000-4000-8000-000000000003", document),
        post("urn:uuid:3f1a2b4c-0000-4000-8000-000000000004", care_plan),
        post(PATIENT, {"resourceType": "Patient", "name": [{"family": "Links"}]}),
        post(BINARY, {"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="}),
        post(ORGANIZATION, {"resourceType": "Organization", "name": "Links"}),
        post(RESTFUL, {"resourceType": "Practitioner", "name": [{"family": "Links"}]}),
    )
    response = client.post("", json=bundle)
    assert response.status_code == 200, response.text
    locations = [e["response"]["location"].split("/_history")[0] for e in response.json()["entry"]]
    patient_ref, binary_ref, organization_ref, practitioner_ref = locations[2:]
    stored = client.get(locations[0]).json()
    assert stored["subject"] == {"reference": patient_ref}
    assert stored["content"][0]["attachment"]["url"] == binary_ref  # a `url`
    assert stored["extension"][0]["valueUri"] == binary_ref  # a `uri` of a choice
    assert stored["extension"][1]["valueString"] == BINARY  # a string stays as sent
    assert stored["masterIdentifier"]["value"] == BINARY
    assert stored["description"] == BINARY
    div = stored["text"]["div"]
    assert f'<a href="{patient_ref}">' in div and f'<img src="{binary_ref}"/>' in div
    assert f'<a href="{practitioner_ref}">' in div  # a RESTful fullUrl too
    assert f'<a href="{PATIENT}#part">' in div  # only whole attribute values
    assert f"</a> {PATIENT} <a" in div  # never text
    plan = client.get(locations[1]).json()
    assert plan["instantiatesUri"] == [binary_ref, f"{BINARY}/more", "http://example.org/protocol"]
    assert plan["author"] == {"reference": organization_ref}  # an `urn:oid:` fullUrl
    assert plan["identifier"][0]["system"] == organization_ref  # a `uri`
