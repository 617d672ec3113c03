"""`/graphql` for the portal: MyFamily, addDependent, removeDependent, through the same services,
engine and audit as the FHIR operations, with depth and cost limits."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import pytest

from tests.support.resources import years_ago
from tests.support.servers import LiveServer
from tests.support.tokens import auth

MY_FAMILY = """
query MyFamily {
  me {
    id
    name
    dependents {
      id
      patient { id name birthDate gender }
      relationship
      isMinor
      insuranceCoverage { scheme memberNumber status }
      canViewClinicalData
    }
  }
}
"""
ADD = """
mutation Add($input: DependentInput!) {
  addDependent(input: $input) { id patient { id name } relationship isMinor canViewClinicalData }
}
"""
REMOVE = """
mutation Remove($id: ID!, $confirm: Boolean!) {
  removeDependent(dependentId: $id, confirm: $confirm) { success message }
}
"""


def adult(client: httpx.Client) -> str:
    """A new Patient of thirty: its reference."""
    patient = client.post(
        "/Patient", json={"resourceType": "Patient", "birthDate": years_ago(30)}
    ).json()
    return f"Patient/{patient['id']}"


def add_an_old_child(server: LiveServer, me: str, given_name: str) -> httpx.Response:
    """$add-dependent through GraphQL with a "child" of sixty: refused (child-younger)."""
    child = {"relationship": "CHILD", "givenName": given_name, "birthDate": years_ago(60)}
    return gql(server, me, ADD, input=child)


def gql(server: LiveServer, who: str | None, query: str, **variables: Any) -> httpx.Response:
    headers = auth(who, "user/*.cruds") if who else {}
    return httpx.post(
        f"{server.origin}/graphql",
        json={"query": query, "variables": variables},
        headers=headers,
        timeout=30,
    )


def test_my_family_through_graphql(live_server: LiveServer, client: httpx.Client) -> None:
    john = client.post(
        "/Patient",
        json={
            "resourceType": "Patient",
            "name": [{"family": "Gql", "given": ["John"]}],
            "birthDate": years_ago(40),
        },
    ).json()
    me = f"Patient/{john['id']}"
    added = gql(
        live_server,
        me,
        ADD,
        input={
            "relationship": "CHILD",
            "givenName": "Mary",
            "familyName": "Gql",
            "birthDate": years_ago(9),
            "gender": "female",
        },
    )
    assert added.status_code == 200, added.text
    assert "errors" not in added.json(), added.json()
    mary = added.json()["data"]["addDependent"]
    assert mary["relationship"] == "CHILD" and mary["isMinor"] is True
    assert mary["canViewClinicalData"] is True and mary["patient"]["name"] == "Mary Gql"

    family = gql(live_server, me, MY_FAMILY).json()
    assert "errors" not in family, family
    dependents = family["data"]["me"]["dependents"]
    assert [d["patient"]["id"] for d in dependents] == [mary["patient"]["id"]]
    # the same engine: the FHIR API agrees that John reads Mary's record
    with httpx.Client(base_url=f"{live_server.origin}/fhir", headers=auth(me, "user/*.rs")) as j:
        assert j.get(f"/Patient/{mary['patient']['id']}").status_code == 200

    removed = gql(live_server, me, REMOVE, id=mary["patient"]["id"], confirm=False).json()
    assert removed["data"]["removeDependent"]["success"] is True
    assert gql(live_server, me, MY_FAMILY).json()["data"]["me"]["dependents"] == []


def test_graphql_refuses_strangers_and_costly_queries(
    live_server: LiveServer, client: httpx.Client
) -> None:
    assert gql(live_server, None, MY_FAMILY).status_code == 401
    practitioner = client.post("/Practitioner", json={"resourceType": "Practitioner"}).json()
    answer = gql(live_server, f"Practitioner/{practitioner['id']}", MY_FAMILY).json()
    assert answer["data"] is None and answer["errors"]
    me = adult(client)
    aliases = "query { " + " ".join(f"a{i}: me {{ id }}" for i in range(20)) + " }"
    costly = gql(live_server, me, aliases).json()
    assert costly["errors"] and "alias" in costly["errors"][0]["message"].lower()
    deep = "query { me { dependents { patient { id } } } }"
    assert "errors" not in gql(live_server, me, deep).json()
    bad = add_an_old_child(live_server, me, "Old").json()
    assert bad["errors"] and "child-younger" in bad["errors"][0]["message"]


def test_graphql_mistakes_are_answered_not_logged(
    live_server: LiveServer, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """strawberry logged every error of a response at ERROR, quoting the query text: a syntax
    error put a national id into the logs (found by `make fuzz`)."""
    me = adult(client)
    secret = f"NID{uuid.uuid4().hex[:10]}"
    with caplog.at_level(logging.DEBUG):
        syntax = gql(live_server, me, f'{{ me {{ name(nationalId: "{secret}") ')
        unknown = gql(live_server, me, f'{{ unknownField(nationalId: "{secret}") }}')
        nul = gql(live_server, me, "\x00")
        refused = add_an_old_child(live_server, me, secret)
    for answer in (syntax, unknown, nul, refused):
        assert answer.status_code < 500 and answer.json()["errors"], answer.text
    server_records = [
        r for r in caplog.records if not r.name.startswith(("httpx", "httpcore", "tests"))
    ]
    assert [r.getMessage() for r in server_records if r.levelno >= logging.ERROR] == []
    assert not any(secret in r.getMessage() or secret in str(r.exc_info) for r in server_records)


def test_graphql_errors_carry_the_stable_code(
    live_server: LiveServer, client: httpx.Client
) -> None:
    """A domain error in a resolver is a GraphQL error with its stable code in
    `extensions.code` (fhir_server/api/errors.py); the message is the same as before."""
    practitioner = client.post("/Practitioner", json={"resourceType": "Practitioner"}).json()
    refused = gql(live_server, f"Practitioner/{practitioner['id']}", MY_FAMILY).json()
    assert refused["errors"][0]["extensions"] == {"code": "forbidden"}
    assert refused["errors"][0]["message"] == (
        "the portal's `me` is the token's Patient (`fhirUser`)"
    )
    me = adult(client)
    old = add_an_old_child(live_server, me, "Old").json()
    assert old["errors"][0]["extensions"] == {"code": "unprocessable"}
    unknown = gql(live_server, me, ADD, input={"relationship": "COUSIN"}).json()
    assert unknown["errors"][0]["extensions"] == {"code": "bad_request"}
    syntax = gql(live_server, me, "{ me { id ").json()
    assert "extensions" not in syntax["errors"][0]  # GraphQL's own errors, as strawberry says
