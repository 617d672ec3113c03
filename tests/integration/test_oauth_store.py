"""The authorization server's records on a real PostgreSQL (storage/oauth.py): codes and launch
values are good once, a reused refresh token revokes its whole chain, a client assertion's `jti`
is accepted once, and nothing secret is stored as given."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest

from fhir_server.storage import oauth
from fhir_server.storage.sql import Connection

T = TypeVar("T")
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def run(database_url: str, work: Callable[[Connection], Awaitable[T]]) -> T:
    async def go() -> T:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await work(conn)

    return asyncio.run(go())


def grant(**kw: Any) -> oauth.Grant:
    values: dict[str, Any] = {
        "client_id": "app",
        "scope": "launch/patient patient/*.rs",
        # an account of the identity provider: no local account needed
        "subject": f"oidc:https://idp.example|{uuid.uuid4().hex}",
        "fhir_user": "RelatedPerson/9",
        "patient": "1",
        "claims": {"access_basis": {"relationship": "RelatedPerson/9"}},
    }
    values.update(kw)
    return oauth.Grant(**values)


def test_a_code_is_good_for_one_redemption_and_stored_only_as_a_digest(database_url: str) -> None:
    code = uuid.uuid4().hex
    record = oauth.Code(grant(), "https://app.example/cb", "abc", "S256", "n", NOW, NOW)

    async def work(conn: Connection) -> tuple[Any, ...]:
        await oauth.save_code(conn, code, record)
        first = await oauth.use_code(conn, code, NOW)
        second = await oauth.use_code(conn, code, NOW)
        unknown = await oauth.use_code(conn, "never-issued", NOW)
        stored = await (await conn.execute("SELECT code_hash FROM oauth_codes")).fetchall()
        return first, second, unknown, [r[0] for r in stored]

    first, second, unknown, stored = run(database_url, work)
    assert first == (record, "ok")
    assert second == (None, "used")
    assert unknown == (None, "unknown")
    assert code not in stored and oauth.digest(code) in stored


def test_concurrent_redemptions_of_one_code_give_it_to_one(database_url: str) -> None:
    code = uuid.uuid4().hex
    record = oauth.Code(grant(), "https://app.example/cb", None, None, None, NOW, NOW)
    run(database_url, lambda conn: oauth.save_code(conn, code, record))

    async def race() -> list[str]:
        async def one() -> str:
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                _, state = await oauth.use_code(conn, code, NOW)
                await conn.commit()
                return state

        return list(await asyncio.gather(*(one() for _ in range(6))))

    states = asyncio.run(race())
    assert sorted(states) == ["ok"] + ["used"] * 5


def test_a_reused_refresh_token_revokes_its_chain(database_url: str) -> None:
    chain = uuid.uuid4()
    first, second = uuid.uuid4().hex, uuid.uuid4().hex

    async def work(conn: Connection) -> list[Any]:
        g = grant()
        await oauth.save_refresh(conn, first, oauth.Refresh(g, chain, NOW, NOW + timedelta(1)))
        rotated = await oauth.rotate_refresh(conn, first, NOW)
        await oauth.save_refresh(conn, second, oauth.Refresh(g, chain, NOW, NOW + timedelta(1)))
        live_before = await oauth.active_refresh(conn, second, NOW)
        reused = await oauth.rotate_refresh(conn, first, NOW)  # the old one, again
        live_after = await oauth.active_refresh(conn, second, NOW)
        second_use = await oauth.rotate_refresh(conn, second, NOW)
        return [rotated, live_before, reused, live_after, second_use]

    rotated, live_before, reused, live_after, second_use = run(database_url, work)
    assert rotated[1] == "ok" and rotated[0] is not None and rotated[0].chain == chain
    assert live_before is not None
    assert reused == (None, "reused")
    assert live_after is None  # the chain died with the reuse
    assert second_use == (None, "revoked")


def test_revocation_needs_the_owning_client(database_url: str) -> None:
    token = uuid.uuid4().hex

    async def work(conn: Connection) -> tuple[bool, bool, Any]:
        await oauth.save_refresh(conn, token, oauth.Refresh(grant(), uuid.uuid4(), NOW, None))
        by_other = await oauth.revoke_refresh(conn, token, "other-app", NOW)
        by_owner = await oauth.revoke_refresh(conn, token, "app", NOW)
        return by_other, by_owner, await oauth.active_refresh(conn, token, NOW)

    assert run(database_url, work) == (False, True, None)


def test_a_reused_code_revokes_only_the_chain_its_redemption_started(database_url: str) -> None:
    code = uuid.uuid4().hex
    g = grant()
    started, unrelated = uuid.uuid4().hex, uuid.uuid4().hex
    later = NOW + timedelta(seconds=30)

    async def work(conn: Connection) -> tuple[int, Any, Any]:
        record = oauth.Code(g, "https://app.example/cb", None, None, None, NOW, later)
        await oauth.save_code(conn, code, record)
        await oauth.use_code(conn, code, NOW)
        # the token endpoint issues the chain's first token at the moment it claimed the code
        await oauth.save_refresh(conn, started, oauth.Refresh(g, uuid.uuid4(), NOW, None))
        await oauth.save_refresh(conn, unrelated, oauth.Refresh(g, uuid.uuid4(), later, None))
        count = await oauth.revoke_redemption(conn, code, later)
        return (
            count,
            await oauth.active_refresh(conn, started, later),
            await oauth.active_refresh(conn, unrelated, later),
        )

    count, started_after, unrelated_after = run(database_url, work)
    assert count == 1 and started_after is None and unrelated_after is not None


def test_revoking_an_access_tokens_grants_touches_one_launch_context(database_url: str) -> None:
    subject = f"oidc:https://idp.example|{uuid.uuid4().hex}"
    mary, tom, no_patient = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex

    async def work(conn: Connection) -> list[bool]:
        for token, patient in ((mary, "mary"), (tom, "tom"), (no_patient, None)):
            g = grant(subject=subject, patient=patient)
            await oauth.save_refresh(conn, token, oauth.Refresh(g, uuid.uuid4(), NOW, None))
        await oauth.revoke_patient_grants(conn, subject, "app", "mary", NOW)
        await oauth.revoke_patient_grants(conn, subject, "other-app", "tom", NOW)
        return [
            await oauth.active_refresh(conn, token, NOW) is not None
            for token in (mary, tom, no_patient)
        ]

    assert run(database_url, work) == [False, True, True]


def test_a_launch_value_is_good_once_and_not_after_it_expires(database_url: str) -> None:
    fresh, stale = uuid.uuid4().hex, uuid.uuid4().hex

    async def work(conn: Connection) -> list[Any]:
        await oauth.save_launch(
            conn, fresh, oauth.Launch("ehr", None, "1", "E1", None, NOW + timedelta(minutes=5))
        )
        await oauth.save_launch(
            conn, stale, oauth.Launch("ehr", None, "1", None, None, NOW - timedelta(seconds=1))
        )
        use = {"client_id": "app", "fhir_user": "Practitioner/1"}
        return [
            await oauth.use_launch(conn, fresh, NOW, **use),
            await oauth.use_launch(conn, fresh, NOW, **use),
            await oauth.use_launch(conn, stale, NOW, **use),
        ]

    first, again, expired = run(database_url, work)
    assert first is not None and (first.patient, first.encounter) == ("1", "E1")
    assert again is None and expired is None


def test_a_launch_for_an_app_and_a_user_is_theirs_alone_and_not_used_up_by_others(
    database_url: str,
) -> None:
    value = uuid.uuid4().hex
    launch = oauth.Launch("ehr", "app", "1", None, "Practitioner/1", NOW + timedelta(minutes=5))

    async def work(conn: Connection) -> list[Any]:
        await oauth.save_launch(conn, value, launch)
        return [
            await oauth.use_launch(conn, value, NOW, client_id="app", fhir_user="Person/2"),
            await oauth.use_launch(conn, value, NOW, client_id="other", fhir_user="Practitioner/1"),
            await oauth.use_launch(conn, value, NOW, client_id="app", fhir_user="Practitioner/1"),
        ]

    other_user, other_app, theirs = run(database_url, work)
    assert other_user is None and other_app is None
    assert theirs is not None and theirs.fhir_user == "Practitioner/1"


def test_a_client_assertion_jti_is_accepted_once_per_client(database_url: str) -> None:
    jti = uuid.uuid4().hex
    later = NOW + timedelta(minutes=5)

    async def work(conn: Connection) -> list[bool]:
        return [
            await oauth.first_use_of_assertion(conn, "backend", jti, later),
            await oauth.first_use_of_assertion(conn, "backend", jti, later),
            await oauth.first_use_of_assertion(conn, "another", jti, later),
        ]

    assert run(database_url, work) == [True, False, True]


def test_approvals_are_remembered_per_account_client_and_patient_until_revoked(
    database_url: str,
) -> None:
    subject = f"local:{uuid.uuid4().hex}"
    token = uuid.uuid4().hex

    async def work(conn: Connection) -> list[Any]:
        await oauth.approve(conn, subject, "app", "1", "patient/*.rs", NOW)
        await oauth.approve(conn, subject, "app", None, "openid", NOW)
        await oauth.save_refresh(
            conn, token, oauth.Refresh(grant(subject=subject), uuid.uuid4(), NOW, None)
        )
        found = await oauth.approval(conn, subject, "app", "1")
        other_patient = await oauth.approval(conn, subject, "app", "2")
        listed = await oauth.approvals(conn, subject)
        revoked = await oauth.unapprove(conn, subject, "app", NOW)
        return [found, other_patient, len(listed), revoked, await oauth.approvals(conn, subject)]

    found, other_patient, listed, revoked, after = run(database_url, work)
    assert found is not None and found.scope == "patient/*.rs"
    assert other_patient is None
    assert listed == 2 and revoked == 2 and after == []
    assert run(database_url, lambda conn: oauth.active_refresh(conn, token, NOW)) is None


def test_clients_round_trip_and_a_taken_id_is_refused(database_url: str) -> None:
    client = oauth.Client(
        client_id=f"app-{uuid.uuid4().hex[:8]}",
        name="Growth chart",
        kind="public",
        redirect_uris=("https://app.example/cb",),
        scope="launch/patient patient/*.rs openid fhirUser",
        jwks={"keys": []},
    )

    async def work(conn: Connection) -> list[Any]:
        added = await oauth.add_client(conn, client, NOW)
        again = await oauth.add_client(conn, client, NOW)
        loaded = await oauth.get_client(conn, client.client_id)
        uris = await oauth.redirect_uris(conn)
        removed = await oauth.remove_client(conn, client.client_id)
        return [added, again, loaded, uris, removed, await oauth.get_client(conn, "nope")]

    added, again, loaded, uris, removed, missing = run(database_url, work)
    assert (added, again, removed, missing) == (True, False, True, None)
    assert loaded is not None and loaded.redirect_uris == client.redirect_uris
    assert loaded.jwks == {"keys": []} and loaded.kind == "public"
    assert "https://app.example/cb" in uris


@pytest.mark.parametrize("limit", [3])
def test_repeated_sign_in_failures_lock_the_account(database_url: str, limit: int) -> None:
    name = f"user-{uuid.uuid4().hex[:8]}"
    until = NOW + timedelta(minutes=15)

    async def work(conn: Connection) -> list[Any]:
        await oauth.put_user(conn, name, "hash", "Patient/1", NOW)
        locks = [await oauth.sign_in_failed(conn, name, limit, until) for _ in range(limit)]
        locked = await oauth.get_user(conn, name)
        await oauth.sign_in_succeeded(conn, name)
        return [locks, locked, await oauth.get_user(conn, name)]

    locks, locked, reset = run(database_url, work)
    assert locks[:-1] == [None] * (limit - 1) and locks[-1] == until
    assert locked.failed_attempts == limit and locked.locked_until == until
    assert reset.failed_attempts == 0 and reset.locked_until is None
