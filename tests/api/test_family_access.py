"""The family workflow under attack: the token's scopes (policy AND scope), an unverified link
made by typing a stranger's national id, and the Coverage that `$remove-dependent` ends. Every
refused write is proved to have changed nothing in the database."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from tests.support import resources
from tests.support.resources import parameters, patient, values, years_ago
from tests.support.servers import LiveServer
from tests.support.tokens import auth
from tests.support.world import World, add_child, snapshot
from tests.support.world import add_dependent as add

MY_FAMILY = """
query { me { id name dependents {
  id patient { id name birthDate gender } relationship isMinor
  insuranceCoverage { scheme memberNumber status } canViewClinicalData why addedDate } } }
"""
ADD = """
mutation Add($input: DependentInput!) { addDependent(input: $input) { id relationship } }
"""
REMOVE = """
mutation Remove($id: ID!) { removeDependent(dependentId: $id, confirm: true) { success message } }
"""


def gql(server: LiveServer, who: str, scope: str, query: str, **kw: Any) -> dict[str, Any]:
    variables = kw.pop("variables", {})
    answer = httpx.post(
        f"{server.origin}/graphql",
        json={"query": query, "variables": variables},
        headers=auth(who, scope, **kw),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def reason(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    code: str = response.json()["issue"][0]["details"]["coding"][0]["code"]
    return code


def members(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    found = []
    for parameter in response.json()["parameter"]:
        member: dict[str, Any] = {}
        for part in parameter["part"]:
            member.setdefault(part["name"], []).append(
                next(v for k, v in part.items() if k != "name")
            )
        found.append(member)
    return found


# a token for the primary with no scope for the workflow's writes: only sign-in scopes, a
# read-only token, and every permission but in another patient's launch context
NOT_ENOUGH = [
    pytest.param("openid fhirUser", False, id="openid-only"),
    pytest.param("user/*.rs", False, id="read-only"),
    pytest.param("patient/*.cruds", True, id="another-patients-context"),
]


@pytest.mark.parametrize(("scope", "elsewhere"), NOT_ENOUGH)
def test_the_family_operations_need_the_tokens_scopes(
    fam: World,
    live_server: LiveServer,
    db: psycopg.Connection[Any],
    scope: str,
    elsewhere: bool,
) -> None:
    primary = fam.patient("Pia", years_ago(40))
    other = fam.patient("Oz", years_ago(30))
    with fam.client(primary) as p:
        kid = add_child(p, primary, "Kip", years_ago(7))
    fam.posted(resources.coverage(kid, "NHIF", subscriber={"reference": primary}))
    context = {"patient": other.split("/")[1]} if elsewhere else {}
    before = snapshot(db)
    with fam.client(primary, scope, **context) as p:
        new = patient("Doe", "Nope", born=years_ago(3))
        assert reason(add(p, primary, relationship="CHILD", dependent=new)) == (
            "insufficient_scope"
        )
        removal = parameters(dependent=kid, confirm=True)
        refused = p.post(f"/{primary}/$remove-dependent", json=removal)
        assert reason(refused) == "insufficient_scope"
        if not scope.startswith("user/"):
            assert reason(p.get(f"/{primary}/$family")) == "insufficient_scope"
    for query, variables in (
        (ADD, {"input": {"relationship": "CHILD", "givenName": "Q", "birthDate": years_ago(2)}}),
        (REMOVE, {"id": kid.split("/")[1]}),
    ):
        answer = gql(live_server, primary, scope, query, variables=variables, **context)
        assert answer["errors"][0]["extensions"]["code"] == "access_denied", answer
    if not scope.startswith("user/"):
        answer = gql(live_server, primary, scope, MY_FAMILY, **context)
        assert (
            answer["data"] is None and answer["errors"][0]["extensions"]["code"] == "access_denied"
        )
    assert snapshot(db) == before  # nothing added, no link or Coverage ended


def test_a_read_only_token_sees_the_family_but_changes_nothing(
    fam: World, db: psycopg.Connection[Any]
) -> None:
    primary = fam.patient("Ray", years_ago(40))
    with fam.client(primary) as p:
        kid = add_child(p, primary, "Rue", years_ago(7))
    with fam.client(primary, "user/*.rs") as p:
        (member,) = members(p.get(f"/{primary}/$family"))
        assert member["patient"][0]["reference"] == kid
        assert member["patient"][0]["display"] == "Rue Doe"


def test_a_launch_context_of_the_primary_runs_the_workflow(fam: World) -> None:
    primary = fam.patient("Lia", years_ago(40))
    with fam.client(primary, "patient/*.cruds", patient=primary.split("/")[1]) as p:
        added = add(p, primary, relationship="CHILD", dependent=patient("Doe", "L", born="2020"))
        assert added.status_code == 201, added.text
        # the child's record is outside the launch context: a reference, no demographics
        (member,) = members(p.get(f"/{primary}/$family"))
        assert "display" not in member["patient"][0] and "isMinor" not in member


def victim_and_attacker(fam: World) -> dict[str, Any]:
    """Vera (national id on record) with her child and their insurance; Xan, a stranger, who
    adds Vera as his spouse by typing her national id."""
    vera = fam.patient("Vera", years_ago(40), fam.nid("vera"))
    with fam.client(vera) as v:
        kid = add_child(v, vera, "Vicky", years_ago(9))
    kid_cover = fam.posted(
        resources.coverage(kid, "AAR", subscriberId="KID-777", subscriber={"reference": vera})
    )
    own_cover = fam.posted(
        resources.coverage(vera, "NHIF", subscriberId="VERA-555", subscriber={"reference": vera})
    )
    xan = fam.patient("Xan", years_ago(45))
    with fam.client(xan, "openid fhirUser user/*.cruds") as x:
        added = add(x, xan, relationship="SPOUSE", nationalId=fam.nid("vera"))
    assert added.status_code == 201, added.text
    return {
        "vera": vera,
        "kid": kid,
        "xan": xan,
        "covers": [kid_cover, own_cover],
        "added": added.json(),
    }


def test_an_unverified_spouse_learns_nothing_of_the_strangers_family(
    fam: World, live_server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    case = victim_and_attacker(fam)
    vera, kid, xan = case["vera"], case["kid"], case["xan"]
    links = [p for p in case["added"]["parameter"] if p["name"] == "link"]
    assert len(links) == 1  # no reverse link written into Vera's account
    assert {"name": "assurance", "valueCode": "level2"} in links[0]["part"]
    # Vera's Person (made when she added her child) links nothing of Xan's
    persons = db.execute(
        "SELECT content::text FROM resources WHERE resource_type = 'Person'"
        " AND content::text LIKE %s",
        (f'%"{vera}"%',),
    ).fetchall()
    assert persons and all(xan not in text for (text,) in persons)
    with fam.client(xan) as x:
        answer = x.get(f"/{xan}/$family")
        (member,) = members(answer)
        # what Xan typed and was told: the reference and the relationship, nothing read
        assert member["patient"] == [{"reference": vera}]
        assert member["relationship"] == ["SPOUSE"]
        assert "isMinor" not in member and "insuranceCoverage" not in member
        assert member["canViewClinicalData"] == [False]
        for secret in (kid, "Vera", "Vicky", "AAR", "NHIF", "KID-777", "VERA-555"):
            assert secret not in answer.text, secret
        for cover in case["covers"]:
            assert cover["id"] not in answer.text
        # the same through GraphQL
        body = gql(live_server, xan, "user/*.cruds", MY_FAMILY)
        (dependent,) = body["data"]["me"]["dependents"]
        assert dependent["patient"] == {
            "id": vera.split("/")[1],
            "name": None,
            "birthDate": None,
            "gender": None,
        }
        assert dependent["isMinor"] is None and dependent["insuranceCoverage"] == []
        assert kid.split("/")[1] not in str(body)
    # and Vera's own family does not show the stranger
    with fam.client(vera) as v:
        assert [m["patient"][0]["reference"] for m in members(v.get(f"/{vera}/$family"))] == [kid]


def test_removal_never_touches_a_coverage_the_caller_may_not_change(
    fam: World, db: psycopg.Connection[Any]
) -> None:
    case = victim_and_attacker(fam)
    vera, xan = case["vera"], case["xan"]
    with fam.client(xan) as x:
        # nothing of Vera's insurance is named, and none of it is Xan's to end
        done = x.post(f"/{xan}/$remove-dependent", json=parameters(dependent=vera, confirm=True))
        assert done.status_code == 200, done.text
        assert "endedCoverage" not in done.text and "NHIF" not in done.text
    for cover in case["covers"]:
        stored = fam.system.get(f"/Coverage/{cover['id']}").json()
        assert stored["status"] == "active" and stored["meta"]["versionId"] == "1"


def test_removal_without_the_scope_to_end_the_coverage_changes_nothing(
    fam: World, db: psycopg.Connection[Any]
) -> None:
    primary = fam.patient("Mia", years_ago(40))
    with fam.client(primary) as p:
        kid = add_child(p, primary, "Moe", years_ago(6))
    cover = fam.posted(resources.coverage(kid, "NHIF", subscriber={"reference": primary}))
    before = snapshot(db)
    # may end the link, may read the Coverage, may not change it
    with fam.client(primary, "user/*.rs user/RelatedPerson.u") as p:
        refused = p.post(f"/{primary}/$remove-dependent", json=parameters(dependent=kid))
        assert refused.status_code == 409 and "NHIF" in refused.text
        removal = parameters(dependent=kid, confirm=True)
        assert reason(p.post(f"/{primary}/$remove-dependent", json=removal)) == (
            "insufficient_scope"
        )
    assert snapshot(db) == before
    assert fam.system.get(f"/Coverage/{cover['id']}").json()["status"] == "active"
    with fam.client(primary) as p:
        done = p.post(f"/{primary}/$remove-dependent", json=parameters(dependent=kid, confirm=True))
        assert done.status_code == 200, done.text
        assert values(done.json())["endedCoverage"]["reference"] == f"Coverage/{cover['id']}"
