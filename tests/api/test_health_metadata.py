"""/healthz, /readyz and the CapabilityStatement."""

from __future__ import annotations

import httpx
import jsonschema
import psycopg

from capability.definitions import json_schema, resource_types
from fhir_server.settings import Settings
from fhir_server.storage.database import migrate
from tests.support.servers import LiveServer


def test_healthz_and_readyz(live_server: LiveServer) -> None:
    assert httpx.get(f"{live_server.origin}/healthz").status_code == 200
    ready = httpx.get(f"{live_server.origin}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_readyz_is_503_until_migrated(empty_database: str) -> None:
    with LiveServer(Settings(), empty_database) as server:
        response = httpx.get(f"{server.origin}/readyz")
        assert response.status_code == 503
        assert "schema" in response.json()["issue"][0]["diagnostics"]
        migrate(empty_database, "0003_access")  # an older migration than this code's
        older = httpx.get(f"{server.origin}/readyz")
        assert older.status_code == 503 and "0003_access" in older.json()["issue"][0]["diagnostics"]
        migrate(empty_database)
        assert httpx.get(f"{server.origin}/readyz").status_code == 200
        # a rollout migrates first: this (previous) version stays ready on a newer schema
        with psycopg.connect(empty_database, autocommit=True) as conn:
            (head,) = conn.execute("SELECT version_num FROM alembic_version").fetchone() or ("",)
            conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
            try:
                assert httpx.get(f"{server.origin}/readyz").status_code == 200
            finally:
                conn.execute("UPDATE alembic_version SET version_num = %s", (head,))


def test_capability_statement(client: httpx.Client) -> None:
    response = client.get("/metadata")
    assert response.status_code == 200
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert "application/fhir+json" in statement["format"]
    rest = statement["rest"][0]
    types = {r["type"] for r in rest["resource"]}
    assert types == set(resource_types())
    assert len(types) == 146
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient["interaction"]}
    assert {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
    } <= codes
    assert patient["updateCreate"] is True
    assert "search-type" in codes
    params = {p["name"]: p for p in patient["searchParam"]}
    assert params["name"]["type"] == "string"
    assert params["birthdate"]["type"] == "date"
    assert ":exact" in params["name"]["documentation"]
    assert "Patient:general-practitioner" in patient["searchInclude"]
    assert "Observation:subject" in patient["searchRevInclude"]
    observation = next(r for r in rest["resource"] if r["type"] == "Observation")
    observation_params = {p["name"] for p in observation["searchParam"]}
    assert {"code", "date", "patient", "value-quantity"} <= observation_params
    # composites over the resource itself work; those over repeating elements are not announced
    assert "code-value-quantity" in observation_params
    assert "component-code-value-quantity" not in observation_params
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system"}
    schema = json_schema()
    validator = jsonschema.Draft6Validator({"$ref": "#/definitions/CapabilityStatement", **schema})
    errors = [e.message for e in validator.iter_errors(statement)]
    assert errors == []


def test_capability_statement_names_the_explain_operation(client: httpx.Client) -> None:
    rest = client.get("/metadata").json()["rest"][0]
    assert {"name": "explain-access"}.items() <= rest["operation"][0].items()
    assert rest["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
