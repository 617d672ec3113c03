"""`Idempotency-Key` on POST (the Patient Service API, FHIR create, transaction Bundles): the same
key and body replay the first response, another body is a 409, concurrent requests with one key
make one resource, and keys belong to their caller."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.settings import Settings
from tests.support.servers import LiveServer
from tests.support.tokens import auth

KEY = "idem-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[LiveServer]:
    keys = Settings.from_env({"PATIENT_API_KEYS": f"tests:{KEY}"}).patient_api_keys
    with LiveServer(Settings(patient_api_keys=keys), database_url) as s:
        yield s


def person() -> dict[str, Any]:
    return {
        "given_name": "Ida",
        "family_name": "Empotent",
        "date_of_birth": "1985-05-05",
        "sex_at_birth": "female",
        "email": f"ida.{uuid.uuid4().hex[:10]}@example.org",
    }


def new_patient_request(server: LiveServer) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The Patient Service API's URL, a new person, and headers with the API key and a new
    Idempotency-Key."""
    headers = {"x-api-key": KEY, "Idempotency-Key": uuid.uuid4().hex}
    return f"{server.origin}/api/v1/patients", person(), headers


def patients_with_email(db: psycopg.Connection[Any], email: str) -> Any:
    """The row of the count of the Patients the search index finds by this email."""
    return db.execute(
        "SELECT count(*) FROM search_token WHERE resource_type = 'Patient' AND code = 'email'"
        " AND value = %s",
        (email,),
    ).fetchone()


def test_patient_api_replays_and_refuses_another_body(
    server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    url, body, key = new_patient_request(server)
    first = httpx.post(url, json=body, headers=key)
    again = httpx.post(url, json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and first.headers["ETag"] == again.headers["ETag"]
    assert patients_with_email(db, body["email"]) == (1,)
    other = httpx.post(url, json={**body, "given_name": "Other"}, headers=key)
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"


def test_concurrent_requests_with_one_key_make_one_patient(
    server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    url, body, headers = new_patient_request(server)
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(lambda _: httpx.post(url, json=body, headers=headers, timeout=30), range(6))
        )
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["patient_id"] for a in answers}) == 1
    assert patients_with_email(db, body["email"]) == (1,)


def test_fhir_create_and_transaction_replay(server: LiveServer) -> None:
    base = f"{server.origin}/fhir"
    key = uuid.uuid4().hex
    patient = {"resourceType": "Patient", "name": [{"family": "Idem"}]}
    first = httpx.post(f"{base}/Patient", json=patient, headers={**auth(), "Idempotency-Key": key})
    again = httpx.post(f"{base}/Patient", json=patient, headers={**auth(), "Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert (
        first.json()["id"] == again.json()["id"]
        and first.headers["Location"] == again.headers["Location"]
    )
    conflict = httpx.post(
        f"{base}/Patient",
        json={**patient, "gender": "male"},
        headers={**auth(), "Idempotency-Key": key},
    )
    assert conflict.status_code == 409 and conflict.json()["resourceType"] == "OperationOutcome"
    # a key is the caller's own: another caller with the same key makes its own resource
    someone = auth(extra={"client_id": "another-client", "sub": "another"})
    theirs = httpx.post(
        f"{base}/Patient", json=patient, headers={**someone, "Idempotency-Key": key}
    )
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": patient, "request": {"method": "POST", "url": "Patient"}}],
    }
    tx_key = {**auth(), "Idempotency-Key": uuid.uuid4().hex}
    one = httpx.post(base, json=bundle, headers=tx_key).json()
    two = httpx.post(base, json=bundle, headers=tx_key).json()
    assert one["entry"][0]["response"]["location"] == two["entry"][0]["response"]["location"]
