"""Hostile input (issue 11, finding 3): every class the outside fuzz run reached a 500 with, and
its siblings on every surface, now gets a 4xx OperationOutcome (or the API's own error format)
naming the problem, leaves the database as it was and keeps the connection open.

The limits are documented in docs/limits.md.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.settings import Settings
from tests.support import resources
from tests.support.servers import LiveServer
from tests.support.tokens import auth, token

PATCH = {"Content-Type": "application/json-patch+json"}


def snapshot(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """What a failed request must leave exactly as it was."""
    # AuditEvents are left out: the audit trail writes them for refused requests too
    rows = db.execute(
        "SELECT (SELECT count(*) FROM resource_history WHERE resource_type <> 'AuditEvent'),"
        " (SELECT coalesce(max(last_updated)::text, '') FROM resource_history"
        "  WHERE resource_type <> 'AuditEvent'),"
        " (SELECT count(*) FROM resources WHERE resource_type <> 'AuditEvent')"
    ).fetchone()
    assert rows is not None
    return tuple(rows)


def nested(depth: int, *, lossy: bool = False) -> str:
    """A Patient whose `extension` nests `depth` arrays deep; `lossy` adds a decimal that sends
    the body through the text-keeping parser (services/interactions/versions.py)."""
    extra = '"multipleBirthInteger": 2, "x": 1.50, ' if lossy else ""
    return (
        '{"resourceType": "Patient", ' + extra + '"extension": ' + "[" * depth + "]" * depth + "}"
    )


def outcome(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    text: str = body["issue"][0]["diagnostics"]
    assert "traceback" not in text.lower() and "psycopg" not in text.lower()
    return text


@pytest.fixture
def patient(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/Patient", json=resources.patient("Hostile"))
    assert response.status_code == 201
    body: dict[str, Any] = response.json()
    return body


# --- nesting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [150, 1100, 5000])
@pytest.mark.parametrize("lossy", [False, True])
def test_deep_nesting_in_a_create_is_400(
    client: httpx.Client, db: psycopg.Connection[Any], depth: int, lossy: bool
) -> None:
    before = snapshot(db)
    response = client.post("/Patient", content=nested(depth, lossy=lossy))
    text = outcome(response, 400)
    assert "nest" in text or "recursion" in text
    assert snapshot(db) == before


def test_depth_limit_names_where_it_was_met(client: httpx.Client) -> None:
    body = {"resourceType": "Patient", "extension": [{"url": "http://x", "extension": []}]}
    inner = body["extension"][0]["extension"]  # type: ignore[index]
    for _ in range(60):
        deeper: list[Any] = []
        inner.append({"url": "http://x", "extension": deeper})
        inner = deeper
    response = client.post("/Patient", json=body)
    text = outcome(response, 400)
    assert "deeper than 100 levels" in text
    where = response.json()["issue"][0]["expression"][0]
    assert where.startswith("Patient.extension[0].extension[0].extension[0]")


@pytest.mark.parametrize("depth", [150, 3000])
def test_deep_nesting_in_a_patch_is_400(
    client: httpx.Client, db: psycopg.Connection[Any], patient: dict[str, Any], depth: int
) -> None:
    before = snapshot(db)
    body = '[{"op": "add", "path": "/extension", "value": ' + "[" * depth + "]" * depth + "}]"
    response = client.patch(f"/Patient/{patient['id']}", content=body, headers=PATCH)
    outcome(response, 400)
    assert snapshot(db) == before


def test_deep_nesting_in_a_bundle_is_400(client: httpx.Client, db: psycopg.Connection[Any]) -> None:
    before = snapshot(db)
    body = '{"resourceType": "Bundle", "type": "batch", "entry": ' + "[" * 900 + "]" * 900 + "}"
    outcome(client.post("", content=body), 400)
    assert snapshot(db) == before


def test_deep_nesting_in_graphql_variables_is_400(live_server: LiveServer) -> None:
    body = '{"query": "{ __typename }", "variables": {"x": ' + "[" * 3000 + "]" * 3000 + "}}"
    response = httpx.post(
        f"{live_server.origin}/graphql",
        content=body,
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    "path", ["/api/v1/patients", "/api/v1/relationships/verify", "/api/v1/relationships/delegate"]
)
def test_deep_nesting_in_the_json_apis_is_400(live_server: LiveServer, path: str) -> None:
    body = '{"given_name": ' + "[" * 3000 + "]" * 3000 + ', "x": 1.50}'
    headers = {**auth(scope="system/*.cruds patient:write"), "Content-Type": "application/json"}
    response = httpx.post(f"{live_server.origin}{path}", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert "internal" not in response.text


# --- text no database or encoder can hold ------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        b'"\\ud800"',  # an escaped lone surrogate
        b'"\\udc00 tail"',
        b'"\xed\xa0\x80"',  # its UTF-8-like bytes, which `json` lets through
    ],
)
@pytest.mark.parametrize("resource_type", ["Observation", "AuditEvent", "Basic"])
def test_a_lone_surrogate_is_400(
    client: httpx.Client, db: psycopg.Connection[Any], text: bytes, resource_type: str
) -> None:
    before = snapshot(db)
    # `1.50` keeps its text, which sends the body through `json` rather than orjson
    body = (
        b'{"resourceType": "Observation", "status": "final", "code": {"text": '
        + text
        + b'}, "valueQuantity": {"value": 1.50}}'
        if resource_type == "Observation"
        else b'{"resourceType": "'
        + resource_type.encode()
        + b'", "language": "en", "implicitRules": '
        + text
        + b', "x": 1.50}'
    )
    response = client.post(f"/{resource_type}", content=body)
    assert response.status_code == 400, response.text
    assert snapshot(db) == before


def test_a_surrogate_pair_is_a_character_and_kept(client: httpx.Client) -> None:
    body = (
        b'{"resourceType": "Observation", "status": "final", "code": {"text": "\\ud83d\\udca5"},'
        b' "valueQuantity": {"value": 1.50}}'
    )
    response = client.post("/Observation", content=body)
    assert response.status_code == 201, response.text
    assert response.json()["code"]["text"] == "\U0001f4a5"


@pytest.mark.parametrize(
    ("resource_type", "parameter"),
    [
        ("Patient", "name"),  # string
        ("Patient", "name:contains"),
        ("Patient", "identifier"),  # token
        ("Patient", "gender:not"),
        ("Observation", "subject"),  # reference
        ("Observation", "date"),  # date
        ("Observation", "value-quantity"),  # quantity
        ("RiskAssessment", "probability"),  # number
        ("ValueSet", "url"),  # uri
        ("Patient", "_id"),
        ("Patient", "_lastUpdated"),
        ("Patient", "_sort"),
        ("Patient", "_include"),
        ("Patient", "_elements"),
        ("Patient", "_page"),
        ("Patient", "_has:Observation:patient:code"),
        ("Observation", "subject:Patient.name"),
    ],
)
def test_a_nul_in_a_search_is_400(client: httpx.Client, resource_type: str, parameter: str) -> None:
    for params in ({parameter: "a\x00b"}, {f"{parameter}\x00": "a"}):
        text = outcome(client.get(f"/{resource_type}", params=params), 400)
        assert "NUL" in text


def test_a_nul_in_a_post_search_a_history_or_conditional_request_is_400(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    before = snapshot(db)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    outcome(client.post("/Patient/_search", content=b"name=a%00b", headers=form), 400)
    outcome(client.get("/Patient/_history", params={"_since": "2020\x00"}), 400)
    outcome(client.delete("/Patient", params={"name": "\x00"}), 400)
    outcome(client.put("/Patient", params={"name": "\x00"}, json={"resourceType": "Patient"}), 400)
    entry = {
        "resource": {"resourceType": "Patient"},
        "request": {"method": "POST", "url": "Patient"},
    }
    entry["request"]["ifNoneExist"] = "name=a\x00b"  # type: ignore[index]
    response = client.post(
        "", json={"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    )
    outcome(response, 400)
    search = {"request": {"method": "GET", "url": "Patient?name=a%00b"}}
    response = client.post("", json={"resourceType": "Bundle", "type": "batch", "entry": [search]})
    assert response.status_code == 200
    assert response.json()["entry"][0]["response"]["status"].startswith("400")
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/patients?family_name=a%00b",
        "/api/v1/patients/x/audit?limit=%00",
        "/fhir/Patient?name=a%00b",
        "/fhir/Patient/x/_history?_since=%00",
    ],
)
def test_a_nul_anywhere_in_a_query_is_400(live_server: LiveServer, path: str) -> None:
    response = httpx.get(f"{live_server.origin}{path}", headers=auth())
    assert response.status_code == 400
    if path.startswith("/api/"):  # that API's own error format
        assert response.json()["code"] == "invalid_query"
        assert "NUL" in response.json()["message"]
    else:
        assert "NUL" in outcome(response, 400)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/fhir/Patient/a%00b/_history/1", 404),
        ("PUT", "/fhir/Patient/a%00b", 400),
        ("DELETE", "/fhir/Patient/a%00b", 400),
        ("GET", "/api/v1/patients/a%00b", 404),
    ],
)
def test_a_nul_in_a_path_names_no_resource(
    live_server: LiveServer, method: str, path: str, status: int
) -> None:
    response = httpx.request(
        method,
        f"{live_server.origin}{path}",
        headers=auth(),
        json={"resourceType": "Patient", "id": "a"} if method == "PUT" else None,
    )
    assert response.status_code == status, response.text


def test_a_nul_in_a_graphql_argument_is_a_graphql_error(live_server: LiveServer) -> None:
    """GraphQL answers a NUL (here one that would reach a database lookup) as it answers any
    mistake of a valid request: `errors`, never a server error."""
    response = httpx.post(
        f"{live_server.origin}/graphql",
        json={"query": "query($id: ID!) { Patient(id: $id) { id } }", "variables": {"id": "\x00"}},
        headers=auth(),
    )
    assert response.status_code < 500
    assert response.json()["errors"]


# --- dates and numbers at the edges ------------------------------------------------------------

PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
EDGES = [
    "0001",
    "0001-01-01",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "9999",
    "9999-12",
    "9999-12-31",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59-14:00",
]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(
    ("resource_type", "parameter"),
    [
        ("Patient", "birthdate"),
        ("Patient", "_lastUpdated"),
        ("Observation", "date"),
        ("Encounter", "date"),
        ("Appointment", "date"),
    ],
)
def test_dates_at_the_edge_of_the_calendar_with_every_prefix(
    client: httpx.Client, resource_type: str, parameter: str, prefix: str
) -> None:
    for edge in EDGES:
        response = client.get(f"/{resource_type}", params={parameter: prefix + edge})
        assert response.status_code == 200, (edge, response.text)
        assert response.json()["resourceType"] == "Bundle"


def test_history_since_at_the_edge_of_the_calendar(client: httpx.Client) -> None:
    for edge in ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]:
        for path in ["/_history", "/Patient/_history"]:
            response = client.get(path, params={"_since": edge})
            assert response.status_code in {200, 400}, response.text


@pytest.mark.parametrize("prefix", PREFIXES)
def test_numbers_beyond_any_range_with_every_prefix(client: httpx.Client, prefix: str) -> None:
    for value in ["1e400", "-1e400", "1e-400", "9" * 400, "1e131072"]:
        for resource_type, parameter in [
            ("RiskAssessment", "probability"),
            ("Observation", "value-quantity"),
        ]:
            response = client.get(f"/{resource_type}", params={parameter: prefix + value})
            assert response.status_code in {200, 400}, (value, response.text)
            assert response.json()["resourceType"] in {"Bundle", "OperationOutcome"}


# --- JSON Patch --------------------------------------------------------------------------------


@pytest.mark.parametrize("pointer", ["x/y", "~2", "/~2", "/name/~", "name"])
@pytest.mark.parametrize("op", ["add", "remove", "replace", "move", "copy", "test"])
def test_a_malformed_pointer_in_a_patch_is_4xx(
    client: httpx.Client,
    db: psycopg.Connection[Any],
    patient: dict[str, Any],
    op: str,
    pointer: str,
) -> None:
    before = snapshot(db)
    bodies = [[{"op": op, "path": pointer, "value": 1, "from": "/name"}]]
    if op in {"move", "copy"}:  # the only operations with a `from`
        bodies.append([{"op": op, "path": "/name", "from": pointer}])
    for body in bodies:
        response = client.patch(f"/Patient/{patient['id']}", json=body, headers=PATCH)
        assert response.status_code in {400, 422}, (body, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "body",
    [
        [{"op": 1, "path": "/a"}],
        [{"op": "add", "path": 1, "value": 1}],
        [{"op": "add", "path": ["/a"], "value": 1}],
        [{"op": "move", "from": 5, "path": "/a"}],
        [{"op": "add", "path": "/name/0/family/x", "value": 1}],
        [{"op": "add", "path": "/name/0/family/0", "value": 1}],
        [{"op": "add", "path": "/name/999999999999999999999", "value": {}}],
        [{"op": "remove", "path": "/name/-"}],
        [{"op": "copy", "from": "/name/7", "path": "/name/-"}],
    ],
)
def test_a_patch_that_does_not_fit_is_4xx(
    client: httpx.Client, db: psycopg.Connection[Any], patient: dict[str, Any], body: Any
) -> None:
    before = snapshot(db)
    response = client.patch(f"/Patient/{patient['id']}", json=body, headers=PATCH)
    assert response.status_code in {400, 422}, response.text
    assert snapshot(db) == before


def test_a_patch_copying_an_array_into_itself_is_refused_before_it_is_built(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    names = [{"family": f"Family{n}", "given": ["Given"] * 20} for n in range(50)]
    created = client.post("/Patient", json={"resourceType": "Patient", "name": names}).json()
    grow = [{"op": "copy", "from": "/name", "path": "/name/-"}]
    before = snapshot(db)
    # `/name/-` gets the whole array as one more item, so the size doubles with each copy
    response = client.patch(f"/Patient/{created['id']}", json=grow * 25, headers=PATCH)
    text = outcome(response, 400)
    assert "larger than" in text
    assert snapshot(db) == before


def test_too_many_patch_operations_are_400(
    client: httpx.Client, db: psycopg.Connection[Any], patient: dict[str, Any]
) -> None:
    before = snapshot(db)
    body = [{"op": "test", "path": "/id", "value": patient["id"]}] * 1001
    text = outcome(client.patch(f"/Patient/{patient['id']}", json=body, headers=PATCH), 400)
    assert "1001 operations" in text
    assert snapshot(db) == before
    body = [{"op": "test", "path": "/id", "value": patient["id"]}] * 1000
    assert client.patch(f"/Patient/{patient['id']}", json=body, headers=PATCH).status_code == 200


# --- fields of the wrong JSON type -------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        {
            "request": {"method": ["POST"], "url": "Patient"},
            "resource": {"resourceType": "Patient"},
        },
        {"request": {"method": {"x": 1}, "url": "Patient"}},
        {"request": {"method": "POST", "url": "Patient", "ifNoneExist": 5}},
        {"request": {"method": "PUT", "url": "Patient/x", "ifMatch": 5}},
        {"request": {"method": "PUT", "url": "Patient/x", "ifMatch": ['W/"1"']}},
        {"request": {"method": "GET", "url": "Patient", "ifNoneMatch": {}}},
    ],
)
@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_bundle_request_fields_of_the_wrong_type(
    client: httpx.Client, db: psycopg.Connection[Any], entry: dict[str, Any], kind: str
) -> None:
    entry = {**entry, "resource": {"resourceType": "Patient", "id": "x"}}
    before = snapshot(db)
    response = client.post("", json={"resourceType": "Bundle", "type": kind, "entry": [entry]})
    if kind == "transaction":
        outcome(response, 400)
    else:
        assert response.status_code == 200
        assert response.json()["entry"][0]["response"]["status"].startswith("400")
    assert snapshot(db) == before


@pytest.mark.parametrize("kind", [["batch"], {"x": "batch"}, 5])
def test_bundle_type_of_the_wrong_json_type(client: httpx.Client, kind: Any) -> None:
    outcome(client.post("", json={"resourceType": "Bundle", "type": kind, "entry": []}), 400)


@pytest.mark.parametrize("operation", ["$add-dependent", "$remove-dependent"])
@pytest.mark.parametrize("parameter", [5, {"name": "x"}, "x"])
def test_operation_parameters_of_the_wrong_json_type(
    client: httpx.Client,
    db: psycopg.Connection[Any],
    patient: dict[str, Any],
    operation: str,
    parameter: Any,
) -> None:
    before = snapshot(db)
    body = {"resourceType": "Parameters", "parameter": parameter}
    response = client.post(f"/Patient/{patient['id']}/{operation}", json=body)
    assert response.status_code in {400, 403, 422}, response.text
    assert snapshot(db) == before


def test_explain_access_parameters_of_the_wrong_json_type(client: httpx.Client) -> None:
    body = {"resourceType": "Parameters", "parameter": {"name": "operation"}}
    outcome(client.post("/$explain-access", json=body), 400)


# --- token claims of the wrong type -------------------------------------------------------------

BAD_CLAIMS: list[dict[str, Any]] = [
    {"scope": 5},
    {"scope": None},
    {"scope": {"system/*.cruds": True}},
    {"scope": ["system/*.cruds", 5]},
    {"fhirUser": 5},
    {"fhirUser": ["Patient/1"]},
    {"patient": 5},
    {"client_id": 5},
    {"client_id": None, "azp": ["x"]},
    {"sub": 5},
    {"sub": {"id": "x"}},
    {"exp": "tomorrow"},
    {"exp": float("inf")},
    {"nbf": "x"},
    {"nbf": {}},
    {"iat": "x"},
    {"aud": 5},
    {"aud": [5]},
]


@pytest.fixture(scope="module")
def bad_tokens() -> list[str]:
    return [token(extra=claims) for claims in BAD_CLAIMS]


@pytest.mark.parametrize("index", range(len(BAD_CLAIMS)), ids=[str(c) for c in BAD_CLAIMS])
def test_token_claims_of_the_wrong_type_are_401(
    live_server: LiveServer, patient: dict[str, Any], bad_tokens: list[str], index: int
) -> None:
    headers = {"Authorization": f"Bearer {bad_tokens[index]}"}
    origin = live_server.origin
    with httpx.Client(headers=headers, timeout=30) as http:
        for response in (
            http.get(f"{origin}/fhir/Patient/{patient['id']}"),
            http.get(f"{origin}/fhir/Patient", params={"name": "x"}),
            http.post(f"{origin}/fhir/Patient", json={"resourceType": "Patient"}),
            http.post(f"{origin}/graphql", json={"query": "{ __typename }"}),
            http.get(f"{origin}/api/v1/patients"),
            http.post(f"{origin}/api/v1/relationships/verify", json={}),
        ):
            assert response.status_code == 401, (response.request.url, response.text)


def test_a_roles_claim_of_the_wrong_type_grants_nothing(
    live_server: LiveServer, patient: dict[str, Any]
) -> None:
    for roles in (5, "fhir-admin", [5], {"fhir-admin": True}):
        headers = auth(
            "Patient/someone-else", "patient/*.rs", patient="someone-else", extra={"roles": roles}
        )
        response = httpx.get(f"{live_server.origin}/fhir/Patient/{patient['id']}", headers=headers)
        assert response.status_code == 403, response.text


# --- headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"If-Match": 'W/"99999999999999999999999"'},
        {"If-Match": 'W/"-1"'},
        {"If-Match": "*"},
        {"If-None-Exist": "birthdate=ap9999-12-31T23:59:59-14:00"},
        {"If-None-Exist": "%00=1"},
        {"If-None-Exist": "&&&"},
        {"Prefer": "return=" + "x" * 5000},
        {"Prefer": ";;;=;"},
        {"Idempotency-Key": "k" * 5000},
    ],
)
def test_odd_headers_on_writes_are_never_a_500(
    client: httpx.Client, patient: dict[str, Any], headers: dict[str, str]
) -> None:
    for response in (
        client.post("/Patient", json={"resourceType": "Patient"}, headers=headers),
        client.put(
            f"/Patient/{patient['id']}",
            json={"resourceType": "Patient", "id": patient["id"]},
            headers=headers,
        ),
    ):
        assert response.status_code < 500, response.text
        assert response.json()["resourceType"] in {"Patient", "OperationOutcome"}


# --- limits ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_limits(database_url: str) -> Iterator[LiveServer]:
    settings = replace(
        Settings(),
        max_body_bytes=64 * 1024,
        max_string_length=100,
        max_array_length=10,
        max_json_depth=8,
        max_search_parameters=5,
        max_patch_operations=3,
        max_patch_result_bytes=4096,
        max_search_bytes=3000,
    )
    with LiveServer(settings, database_url) as server:
        yield server


def test_a_string_beyond_the_limit_is_400_naming_where(
    small_limits: LiveServer, db: psycopg.Connection[Any]
) -> None:
    before = snapshot(db)
    body = {"resourceType": "Patient", "name": [{"family": "x" * 101}]}
    response = httpx.post(f"{small_limits.origin}/fhir/Patient", json=body, headers=auth())
    assert outcome(response, 400).startswith("a string of 101 characters; at most 100")
    assert response.json()["issue"][0]["expression"] == ["Patient.name[0].family"]
    body = {"resourceType": "Patient", "name": [{"family": "x" * 100}]}
    assert httpx.post(f"{small_limits.origin}/fhir/Patient", json=body, headers=auth()).is_success
    assert snapshot(db) != before


def test_an_array_beyond_the_limit_is_400_naming_where(small_limits: LiveServer) -> None:
    body = {"resourceType": "Patient", "name": [{"given": ["a"] * 11}]}
    response = httpx.post(f"{small_limits.origin}/fhir/Patient", json=body, headers=auth())
    assert "11 items; at most 10" in outcome(response, 400)
    assert response.json()["issue"][0]["expression"] == ["Patient.name[0].given"]


def test_nesting_beyond_the_configured_limit_is_400(small_limits: LiveServer) -> None:
    body = {"resourceType": "Patient", "extension": [[[[[[[[[]]]]]]]]]}
    response = httpx.post(f"{small_limits.origin}/fhir/Patient", json=body, headers=auth())
    assert "deeper than 8 levels" in outcome(response, 400)


def test_too_many_query_parameters_are_400(small_limits: LiveServer) -> None:
    origin = small_limits.origin
    five = "name=a&name=b&gender=male&_count=1&birthdate=gt2000"
    assert httpx.get(f"{origin}/fhir/Patient?{five}", headers=auth()).status_code == 200
    response = httpx.get(f"{origin}/fhir/Patient?{five}&family=x", headers=auth())
    assert "6 parameters; at most 5" in outcome(response, 400)
    form = {**auth(), "Content-Type": "application/x-www-form-urlencoded"}
    response = httpx.post(
        f"{origin}/fhir/Patient/_search", content=f"{five}&family=x", headers=form
    )
    assert "at most 5 parameters" in outcome(response, 400)


def test_the_patch_limits_are_configurable(small_limits: LiveServer) -> None:
    origin = small_limits.origin
    created = httpx.post(
        f"{origin}/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": "f" * 90}] * 10},
        headers=auth(),
    ).json()
    url = f"{origin}/fhir/Patient/{created['id']}"
    test = {"op": "test", "path": "/id", "value": created["id"]}
    response = httpx.patch(url, json=[test] * 4, headers={**auth(), **PATCH})
    assert "at most 3 are accepted" in outcome(response, 400)
    grow = [{"op": "copy", "from": "/name", "path": "/name/-"}] * 3
    response = httpx.patch(url, json=grow, headers={**auth(), **PATCH})
    assert "larger than 4096 bytes" in outcome(response, 400)


def test_a_search_page_is_held_to_the_result_size_and_pages_on(small_limits: LiveServer) -> None:
    origin = small_limits.origin
    family = f"Budget{uuid.uuid4().hex[:8]}"
    given = ["g" * 90] * 5
    created = set()
    with httpx.Client(base_url=f"{origin}/fhir", headers=auth(), timeout=30) as http:
        for _ in range(12):
            body = {"resourceType": "Patient", "name": [{"family": family, "given": given}]}
            created.add(http.post("/Patient", json=body).json()["id"])
        found: list[str] = []
        page = http.get("/Patient", params={"family": family, "_count": "10"}).json()
        sizes = []
        while True:
            ids = [e["resource"]["id"] for e in page.get("entry", [])]
            sizes.append(len(ids))
            found += ids
            following = [link["url"] for link in page["link"] if link["relation"] == "next"]
            if not following:
                break
            page = http.get(following[0]).json()
    assert sorted(found) == sorted(created)  # every match once, none lost at the cuts
    assert max(sizes) < 10  # 3000 bytes hold fewer than 10 of these


def test_a_history_page_is_held_to_the_result_size_and_pages_on(small_limits: LiveServer) -> None:
    with httpx.Client(base_url=f"{small_limits.origin}/fhir", headers=auth(), timeout=30) as http:
        body: dict[str, Any] = {"resourceType": "Patient", "name": [{"given": ["g" * 90] * 5}]}
        id = http.post("/Patient", json=body).json()["id"]
        for n in range(9):
            body = {**body, "id": id, "gender": ["male", "female"][n % 2]}
            assert http.put(f"/Patient/{id}", json=body).status_code == 200
        versions: list[str] = []
        sizes = []
        page = http.get(f"/Patient/{id}/_history", params={"_count": "10"}).json()
        while True:
            entries = page.get("entry", [])
            sizes.append(len(entries))
            versions += [e["resource"]["meta"]["versionId"] for e in entries]
            following = [link["url"] for link in page["link"] if link["relation"] == "next"]
            if not following:
                break
            page = http.get(following[0]).json()
    assert sorted(versions, key=int) == [str(n) for n in range(1, 11)]
    assert max(sizes) < 10


def test_the_body_limit_holds_for_graphql_and_chunked_bodies(small_limits: LiveServer) -> None:
    origin = small_limits.origin
    big = json.dumps({"query": "{ __typename }", "variables": {"x": "y" * 70_000}}).encode()
    response = httpx.post(
        f"{origin}/graphql", content=big, headers={**auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 8192

    response = httpx.post(
        f"{origin}/graphql",
        content=chunks(),
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    response = httpx.post(
        f"{origin}/fhir/Patient",
        content=chunks(),
        headers={**auth(), "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 413
    assert response.json()["resourceType"] == "OperationOutcome"


# --- the connection and the log ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "media"),
    [
        ("POST", "/fhir/Patient", "application/fhir+json"),
        ("POST", "/fhir", "application/fhir+json"),
        ("PATCH", "/fhir/Patient/x", "application/json-patch+json"),
        ("POST", "/graphql", "application/json"),
        ("POST", "/api/v1/patients", "application/json"),
        ("POST", "/api/v1/relationships/verify", "application/json"),
    ],
)
def test_a_client_that_disconnects_mid_body_is_logged_quietly(
    live_server: LiveServer,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    media: str,
) -> None:
    bearer = f"Bearer {token(scope='system/*.cruds patient:write')}"
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", live_server.port)) as sock:
                sock.sendall(
                    f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode()
                    + f"Content-Type: {media}\r\nContent-Length: 100000\r\n".encode()
                    + f"Authorization: {bearer}\r\n\r\n".encode()
                    + b'{"resourceType": "Pat'
                )
        time.sleep(0.3)  # the server notices the closed connections
        # the server goes on serving, and has said nothing worse than INFO about it
        assert httpx.get(f"{live_server.origin}/fhir/metadata").status_code == 200
        assert httpx.get(f"{live_server.origin}/fhir/Patient", headers=auth()).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [r.getMessage() for r in errors]
    assert any("disconnected" in r.getMessage() for r in caplog.records)
    # the request log and the metrics say the client closed the request (499), not a 500
    statuses = [
        getattr(r, "status", None)
        for r in caplog.records
        if r.name == "fhir_server.requests" and getattr(r, "method", None) == method
    ]
    assert statuses.count(499) == 3, statuses


def test_refused_requests_keep_the_connection_open(live_server: LiveServer) -> None:
    """One keep-alive connection answers a stream of hostile requests, then a plain one."""
    connection = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=30)
    headers = {**auth(), "Content-Type": "application/fhir+json"}
    try:
        for method, path, body in [
            ("POST", "/fhir/Patient", nested(5000, lossy=True).encode()),
            ("GET", "/fhir/Patient?birthdate=ap9999-12-31", None),
            ("GET", "/fhir/Patient?name=%00", None),
            ("POST", "/fhir/Patient", b'{"resourceType": "Patient", "x": 1.50, "y": "\\ud800"}'),
        ]:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            assert response.status in {200, 400}, (path, response.status)
        connection.request("GET", "/fhir/metadata")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_unusual_http_methods_share_one_metrics_label(live_server: LiveServer) -> None:
    """Any token is a valid HTTP method (uvicorn's parser knows some thirty, h11 takes any); a
    label per method would let clients grow the metrics without bound."""
    with httpx.Client(base_url=live_server.origin, timeout=30) as http:
        for method in ("PROPFIND", "LOCK", "PURGE", "MKCOL"):
            response = http.request(method, "/fhir/Patient")
            assert response.status_code in {400, 401, 405}
        metrics = http.get("/metrics").text
    assert 'method="PROPFIND"' not in metrics and 'method="PURGE"' not in metrics
    assert 'method="OTHER"' in metrics


def test_a_search_of_a_thousand_values_is_answered(client: httpx.Client) -> None:
    """Planned off the event loop (services/interactions/search.py): still the right answer."""
    created = client.post(
        "/Patient", json={"resourceType": "Patient", "identifier": [{"value": "needle-999"}]}
    ).json()
    values = ",".join(f"needle-{n}" for n in range(1000))
    response = client.get("/Patient", params={"identifier": values, "_total": "accurate"})
    assert response.status_code == 200
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [created["id"]]
    assert response.json()["total"] == 1
    response = client.get("/Patient", params={"identifier": values + ",one-more"})
    assert "more than 1000 values" in outcome(response, 400)


# --- numbers that keep their text, wherever a response is encoded -----------------------------


def test_an_idempotent_create_of_a_body_with_decimals(client: httpx.Client) -> None:
    """The body's numbers keep their text (`1.50`); the Idempotency-Key's fingerprint of the
    body used to fail on them."""
    body = (
        b'{"resourceType": "Observation", "status": "final", "code": {"text": "weight"},'
        b' "valueQuantity": {"value": 71.50, "unit": "kg"}}'
    )
    headers = {"Idempotency-Key": f"decimal-{uuid.uuid4().hex}"}
    first = client.post("/Observation", content=body, headers=headers)
    assert first.status_code == 201, first.text
    assert b'"value":71.50' in first.content
    again = client.post("/Observation", content=body, headers=headers)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]


def test_the_patient_api_shows_a_decimal_extension_made_through_fhir(
    live_server: LiveServer, client: httpx.Client
) -> None:
    body = (
        b'{"resourceType": "Patient", "name": [{"family": "Decimal", "given": ["Dee"]}],'
        b' "extension": [{"url": "urn:fhir-server:StructureDefinition/patient-service-'
        b'gender-identity", "valueDecimal": 1.50}]}'
    )
    created = client.post("/Patient", content=body)
    assert created.status_code == 201, created.text
    response = httpx.get(
        f"{live_server.origin}/api/v1/patients/{created.json()['id']}",
        headers=auth(scope="system/*.cruds patient:read"),
    )
    assert response.status_code == 200, response.text
    assert b'"gender_identity":1.50' in response.content
