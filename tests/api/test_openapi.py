"""`openapi.yaml`, the OpenAPI 3.0 document of the non-FHIR APIs (Patient Service, Relationship,
operations, GraphQL), against the application: it is valid, it names every non-FHIR route of the
app and nothing else, and a short schemathesis run against a live server finds no server error
and no answer the document does not describe (status, content type, headers, body)."""

from __future__ import annotations

import copy
import functools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
import schemathesis
import yaml
from jsonschema import Draft202012Validator
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import WebSocketRoute

from compartments.engine import CONSENT_SCOPE_SYSTEM
from fhir_server.api import smart
from fhir_server.app import create_app
from fhir_server.settings import Settings
from fhir_server.storage.database import migrate
from tests.support.databases import drop_database, fresh_database
from tests.support.servers import LiveServer
from tests.support.tokens import auth, token

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})
KEY = "openapi-key-" + uuid.uuid4().hex

# Where the app's route and the document's path differ: the restore operation is
# `POST /api/v1/patients/{patient_id}:restore`, which the app routes as `/api/v1/patients/{tail}`
# and answers only when the tail ends with `:restore`.
ROUTE_TO_DOCUMENT = {
    ("POST", "/api/v1/patients/{tail}"): ("POST", "/api/v1/patients/{patient_id}:restore"),
}
# Routes under /fhir are FHIR's (its CapabilityStatement describes them), except SMART discovery,
# which FHIR places under the base but which is documented here.
DOCUMENTED_UNDER_FHIR = frozenset({smart.PATH, smart.OPENID_PATH})
# OpenAPI 3.0 cannot describe a WebSocket: strawberry's GraphQL router adds one at /graphql
# (graphql-transport-ws), and the schema has no subscriptions.
WEBSOCKETS = frozenset({"/graphql"})
# The pages a person's browser is sent to (HTML forms, not an API): docs/smart-authorize.md and
# the account pages (docs/account.md).
PAGES = frozenset({"/signin", "/signout", "/oauth/authorize"})


def is_page(path: str) -> bool:
    return path in PAGES or path == "/account" or path.startswith("/account/")


# Who may call what: the Patient Service takes an API key or a bearer token, the Relationship API
# and GraphQL a bearer token, the operations nothing.
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "/api/v1/patients": [{"apiKey": []}, {"bearer": []}],
    "/api/v1/relationships": [{"bearer": []}],
    "/graphql": [{"bearer": []}],
    "/healthz": [],
    "/readyz": [],
    "/metrics": [],
    smart.PATH: [],
    smart.OPENID_PATH: [],
    smart.JWKS_PATH: [],
    "/oauth/register": [{"bearer": []}],
    "/oauth/launch": [{"bearer": []}],
    # the OAuth endpoints: the client authenticates in the form (docs/smart-token.md)
    "/oauth/token": [],
    "/oauth/introspect": [],
    "/oauth/revoke": [],
}

# The schemathesis run: a fixed seed and derandomized generation, so CI runs the same cases
# every time; no example database written anywhere.
SEED = 20261129
MAX_EXAMPLES = 25
# Statuses that refuse a request: schemathesis's list for `negative_data_rejection`, and 412 (a
# PUT's `If-Match` is looked at before its body). 5xx is `not_a_server_error`'s to report.
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "412", "415", "422", "428", "5xx"]
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CHECKS = [not_a_server_error, *CONFORMANCE, negative_data_rejection, ignored_auth]


@functools.cache
def document() -> dict[str, Any]:
    """openapi.yaml (shared: read it, do not change it)."""
    loaded: dict[str, Any] = yaml.safe_load(OPENAPI.read_text())
    return loaded


def documented_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def app_routes() -> tuple[set[tuple[str, str]], set[str]]:
    """The app's non-FHIR (method, path) pairs, and its WebSockets."""
    app = create_app(Settings(), "postgresql://unused/unused")  # nothing connects before startup
    operations: set[tuple[str, str]] = set()
    websockets: set[str] = set()
    for route in app.routes:
        path: str = getattr(route, "path", "")
        if path.startswith("/fhir") and path not in DOCUMENTED_UNDER_FHIR:
            continue
        if is_page(path):
            continue
        if isinstance(route, WebSocketRoute):
            websockets.add(path)
            continue
        methods = getattr(route, "methods", None) or set()
        for method in methods:
            # HEAD is GET without its body, taken wherever GET is (RFC 9110 9.3.2,
            # api/methods.py); OpenAPI documents do not list it
            if method != "HEAD" or "GET" not in methods:
                operations.add((method, path))
    return operations, websockets


def mother_verifies(client: httpx.Client, **fields: Any) -> httpx.Response:
    """The example mother asks about the example patient's demographics (fields as given)."""
    body = {
        "requesting_user_id": "RelatedPerson/example-mother",
        "patient_id": "example-patient",
        "data_scope": ["demographics"],
        **fields,
    }
    return client.post("/api/v1/relationships/verify", json=body)


def test_the_document_is_valid_openapi_3_0() -> None:
    raw = document()
    assert raw["openapi"].startswith("3.0.")
    schema = schemathesis.openapi.from_path(OPENAPI)
    schema.validate()  # against the OpenAPI 3.0 meta-schema
    operations = []
    for result in schema.get_all_operations():  # every $ref resolves
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert {(op.method.upper(), op.path) for op in operations} == documented_operations()
    try:
        from openapi_spec_validator import validate  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        validate(raw)


def test_the_document_names_every_non_fhir_route_and_nothing_else() -> None:
    routes, websockets = app_routes()
    assert set(ROUTE_TO_DOCUMENT) <= routes, "a route of ROUTE_TO_DOCUMENT is gone"
    operations = {ROUTE_TO_DOCUMENT.get(route, route) for route in routes}
    assert websockets == WEBSOCKETS
    documented = documented_operations()
    assert operations - documented == set(), "routes missing from openapi.yaml"
    assert documented - operations == set(), "openapi.yaml documents routes the app lacks"


def _json_schema(node: Any) -> Any:
    """The document with its schemas as JSON Schema: OpenAPI 3.0's `nullable` allows null."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [converted, {"type": "null"}]} if node.get("nullable") is True else converted


def _examples(node: Any, pointer: str = "#") -> Iterator[tuple[str, str, Any]]:
    """(where, its schema's pointer, value) of every example of a parameter, header or body."""
    if isinstance(node, list):
        for n, item in enumerate(node):
            yield from _examples(item, f"{pointer}/{n}")
        return
    if not isinstance(node, dict):
        return
    if "schema" in node:  # a parameter, a header or a media type
        named = document()["components"]["examples"]
        for name, example in node.get("examples", {}).items():
            if "$ref" in example:
                example = named[example["$ref"].rsplit("/", 1)[1]]
            yield f"{pointer}/examples/{name}", f"{pointer}/schema", example["value"]
        if "example" in node:
            yield f"{pointer}/example", f"{pointer}/schema", node["example"]
    for key, value in node.items():
        if key not in ("schema", "examples", "example"):
            escaped = str(key).replace("~", "~0").replace("/", "~1")
            yield from _examples(value, f"{pointer}/{quote(escaped)}")


def test_every_example_fits_its_schema() -> None:
    root = _json_schema(document())
    checked = 0
    for where, schema_pointer, value in _examples(document()):
        validator = Draft202012Validator(
            {**root, "$ref": schema_pointer}, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
        problems = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(value)]
        assert problems == [], (unquote(where), problems)
        checked += 1
    assert checked > 40


def test_each_operation_names_the_credentials_it_takes() -> None:
    for path, item in document()["paths"].items():
        expected = next(v for prefix, v in SECURITY.items() if path.startswith(prefix))
        for method, operation in item.items():
            if method in HTTP_METHODS:
                assert operation.get("security") == expected, (method, path)


# --- the schemathesis run -------------------------------------------------------------------


@pytest.fixture(scope="module")
def database(admin_url: str) -> Iterator[str]:
    """A database of this module's own: the run creates patients at random."""
    name, url = fresh_database(admin_url)
    try:
        migrate(url)
        yield url
    finally:
        drop_database(admin_url, name)


def _settings(**changes: Any) -> Settings:
    keys = Settings.from_env({"PATIENT_API_KEYS": f"tests:{KEY}"}).patient_api_keys
    return Settings(patient_api_keys=keys, **changes)


@pytest.fixture(scope="module")
def server(database: str) -> Iterator[LiveServer]:
    """A live server with a Patient API key, holding what the document's examples name."""
    with LiveServer(_settings(), database) as s:
        _seed(s.origin)
        yield s


def _seed(origin: str) -> None:
    """The resources the document's examples name, so that their requests reach the success
    paths: a patient of the Patient Service, a minor with a mother, a proposed delegation."""
    example = document()["components"]["parameters"]["PatientId"]["example"]
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Patient",
            "id": example,
            "name": [{"use": "official", "family": "Kamau", "given": ["Jane"]}],
            "birthDate": "1990-04-01",
        },
        {
            "resourceType": "Patient",
            "id": "example-patient",
            "name": [{"family": "Otieno", "given": ["Amani"]}],
            "birthDate": "2015-03-02",
        },
        {
            "resourceType": "RelatedPerson",
            "id": "example-mother",
            "patient": {"reference": "Patient/example-patient"},
            "relationship": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                            "code": "MTH",
                        }
                    ]
                }
            ],
        },
        {
            "resourceType": "Consent",
            "id": "example-delegation",
            "status": "proposed",
            "scope": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                        "code": "patient-privacy",
                    }
                ]
            },
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "Patient/example-patient"},
            "provision": {
                "type": "permit",
                "period": {"start": "2026-01-01", "end": "2027-06-30"},
                "actor": [
                    {
                        "role": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                    "code": "DELEGATEE",
                                }
                            ]
                        },
                        "reference": {"reference": "RelatedPerson/example-mother"},
                    }
                ],
                "code": [
                    {
                        "coding": [
                            {
                                "system": CONSENT_SCOPE_SYSTEM,
                                "code": "ENCOUNTERS",
                            }
                        ]
                    }
                ],
            },
        },
    ]
    with httpx.Client(base_url=f"{origin}/fhir", headers=auth(), timeout=30) as fhir:
        for resource in resources:
            answer = fhir.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert answer.status_code in (200, 201), answer.text


# Loaded when the module is: `schemathesis.pytest.from_fixture` (a schema made by a fixture)
# fails under pytest 9 (it sets `request.node._nodeid`), so the server's origin is given per call.
schema = schemathesis.openapi.from_path(
    OPENAPI,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            # how fast cases are drawn on a loaded CI machine is not this test's business
            "suppress-health-check": ["too_slow"],
            # a refusal for another reason than the invalid part comes first: a PUT's `If-Match`
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}},
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "auth": {
                "openapi": {
                    "apiKey": {"api_key": KEY},
                    # a System client's, every permission; made at collection, so it outlives
                    # a long test session
                    "bearer": {"bearer": token(lifetime_seconds=24 * 3600)},
                }
            },
        }
    ),
)


@schema.parametrize()
def test_no_server_error_and_every_answer_as_documented(
    case: schemathesis.Case[Any], server: LiveServer
) -> None:
    case.call_and_validate(base_url=server.origin, checks=CHECKS)


def test_writes_switched_off_are_answered_as_documented(database: str) -> None:
    """`FHIR_WRITES_DISABLED=true`: the operations that document a 503 get it, as described;
    the others go on."""
    raw = document()
    parameters = raw["components"]["parameters"]
    path_parameters = {
        "patient_id": parameters["PatientId"]["example"],
        "id": "example-delegation",
    }
    refused = set()
    with LiveServer(_settings(writes_disabled=True), database) as off:
        for path, item in raw["paths"].items():
            for method, operation in item.items():
                if method not in HTTP_METHODS or path == "/readyz":
                    continue
                body = operation.get("requestBody", {})
                if "$ref" in body:
                    body = raw["components"]["requestBodies"][body["$ref"].rsplit("/", 1)[1]]
                examples = body.get("content", {}).get("application/json", {}).get("examples")
                if examples:
                    example = next(iter(examples.values()))
                    if "$ref" in example:
                        example = raw["components"]["examples"][example["$ref"].rsplit("/", 1)[1]]
                case = schema[path][method.upper()].Case(
                    path_parameters={k: v for k, v in path_parameters.items() if k in path},
                    headers={"If-Match": 'W/"1"'} if method == "put" else {},
                    query={"query": "{ __typename }"} if path == "/graphql" else {},
                    **(
                        {"body": copy.deepcopy(example["value"]), "media_type": "application/json"}
                        if examples
                        else {}
                    ),
                )
                response = case.call_and_validate(
                    base_url=off.origin, headers={"x-api-key": KEY, **auth()}, checks=CONFORMANCE
                )
                if "503" in operation["responses"]:
                    assert response.status_code == 503, (method, path)
                    refused.add((method.upper(), path))
                else:
                    assert response.status_code < 500, (method, path)
    # the Patient Service's writes, delegate and approve, client registration and EHR launch;
    # the OAuth endpoints (tokens, revocation and the audit of introspection are writes)
    assert len(refused) == 11


# --- what the run found, and what reading the code for the document found --------------------
# Each of these answered 500 before it was fixed, except where said.


def test_the_patient_service_refuses_what_it_used_to_fail_on(server: LiveServer) -> None:
    with httpx.Client(
        base_url=f"{server.origin}/api/v1", headers={"x-api-key": KEY}, timeout=30
    ) as api:
        jane = document()["components"]["examples"]["PatientInput"]["value"]
        # a gender identity that is not a string (an unhashable one: `{} in dict`)
        genders: tuple[object, ...] = ({}, [])
        for gender in genders:
            answer = api.post("/patients", json={**jane, "gender_identity": gender})
            assert answer.status_code == 400, answer.text
            assert "gender_identity" in {d["field"] for d in answer.json()["details"]}
        # NUL, which PostgreSQL text cannot hold, in a field or the address
        for body in (
            {**jane, "family_name": "Ka\x00mau"},
            {**jane, "address": {**jane["address"], "city": "Nai\x00robi"}},
        ):
            answer = api.post("/patients", json=body)
            assert answer.status_code == 400, answer.text
            assert "NUL characters are not allowed" in answer.text
        # an Idempotency-Key longer than a btree index row
        answer = api.post("/patients", json=jane, headers={"Idempotency-Key": "k" * 5000})
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_idempotency_key"
        id = document()["components"]["parameters"]["PatientId"]["example"]
        # a `limit` of digits `int()` cannot read (a superscript, more than 4,300 digits)
        for path in ("/patients", f"/patients/{id}/audit"):
            for limit in ("²", "9" * 5000):
                answer = api.get(path, params={"limit": limit})
                assert answer.status_code == 400, answer.text
                assert answer.json()["code"] == "invalid_query"
        answer = api.get("/patients", params={"family_name": "Ka\x00mau"})
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_query"
        # an If-Match of such digits
        for tag in ("²".encode("latin-1"), b"9" * 5000):
            answer = api.put(f"/patients/{id}", json=jane, headers=[(b"If-Match", tag)])
            assert answer.status_code == 412 and answer.json()["code"] == "version_mismatch"
        # a path id that is no FHIR id (NUL)
        for method, path in (
            ("GET", "/patients/%00"),
            ("DELETE", "/patients/%00"),
            ("POST", "/patients/%00:restore"),
            ("GET", "/patients/%00/audit"),
        ):
            answer = api.request(method, path)
            assert answer.status_code == 404 and answer.json()["code"] == "not_found", path
        answer = api.put("/patients/%00", json=jane, headers={"If-Match": 'W/"1"'})
        assert answer.status_code == 404


def test_the_relationship_api_refuses_what_it_used_to_fail_on(server: LiveServer) -> None:
    with httpx.Client(base_url=server.origin, headers=auth(), timeout=30) as client:
        # NUL in a body is refused (PostgreSQL text cannot hold it); an id that is no FHIR id is
        # no resource's
        for field in ("requesting_user_id", "patient_id"):
            answer = mother_verifies(client, **{field: "example\x00"})
            assert answer.status_code == 400 and answer.json()["code"] == "invalid_request"
        answer = client.post(
            "/api/v1/relationships/delegate",
            json={
                "patient_id": "example-patient",
                "delegate_id": "RelatedPerson/\x00",
                "delegation_scope": ["encounters"],
            },
        )
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_request"
        answer = client.post("/api/v1/relationships/delegate/%00/approve")
        assert answer.status_code == 404 and answer.json()["code"] == "not_found"
        # a Consent made through FHIR without a patient is no delegation
        consent = {
            "resourceType": "Consent",
            "id": "openapi-no-patient",
            "status": "proposed",
            "scope": {"text": "privacy"},
            "category": [{"text": "privacy"}],
        }
        assert client.put("/fhir/Consent/openapi-no-patient", json=consent).status_code in (
            200,
            201,
        )
        answer = client.post("/api/v1/relationships/delegate/openapi-no-patient/approve")
        assert answer.status_code == 404 and answer.json()["code"] == "not_found"
        # `relationship_type` is answered back: a string, or refused (was answered back as sent)
        answer = mother_verifies(client, relationship_type={"kind": "mother"})
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_request"


def test_graphql_refuses_what_it_used_to_fail_on(server: LiveServer) -> None:
    with httpx.Client(base_url=server.origin, headers=auth(), timeout=30) as client:
        json = {"Content-Type": "application/json"}
        for body in (b'"AAA"', b"null", b"5", b"\xec"):  # not an object, not UTF-8
            answer = client.post("/graphql", content=body, headers=json)
            assert answer.status_code == 400, (body, answer.text)
        # an `operationName` that is not a string (was taken, GraphQL over HTTP requires a 400)
        answer = client.post("/graphql", json={"query": "{ __typename }", "operationName": {}})
        assert answer.status_code == 400
        answer = client.post("/graphql", json={"query": "{ __typename }", "operationName": None})
        assert answer.status_code == 200 and answer.json() == {"data": {"__typename": "Query"}}
        assert client.post("/graphql", json=[{"query": "{ __typename }"}]).status_code == 400
