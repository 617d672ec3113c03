"""`fhir-server client`, `user` and `keys`: the real command, as a subprocess, on the test
database (docs/smart-admin.md)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fhir_server.auth.passwords import verify_password
from fhir_server.services.context import utc_now
from fhir_server.storage import oauth
from tests.support.pooler import app_database

EXE = str(Path(sys.executable).parent / "fhir-server")
APP = "https://app.example.org/callback"


def run(
    database_url: str, data_dir: Path, *args: str, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "POSTGRES_URL": database_url,
        "FHIR_DATA_DIR": str(data_dir),
        "FHIR_MIGRATE_ON_START": "false",
        "LOG_LEVEL": "warning",
        **env,
    }
    return subprocess.run(
        [EXE, *args], env=environment, input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Any:
    def call(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        return run(database_url, tmp_path, *args, stdin=stdin, **env)

    return call


def _clients(db: psycopg.Connection[Any], client_id: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT client_id, kind, redirect_uris, scope, launch_types, grant_types, jwks_uri,"
        " jwks FROM oauth_clients WHERE client_id = %s",
        (client_id,),
    ).fetchall()


def _public_jwks() -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": "k1", "alg": "ES384"}]}


# --- clients ---------------------------------------------------------------------------------


def _grant(database_url: str, client_id: str) -> None:
    """A refresh token and an approval of the client, as the authorization server keeps them."""

    async def go() -> None:
        pool = app_database(database_url, pool_size=1)
        await pool.open()
        now = utc_now()
        grant = oauth.Grant(client_id=client_id, scope="patient/*.rs", subject="local:x")
        try:
            async with pool.transaction() as conn:
                await oauth.save_refresh(
                    conn, uuid.uuid4().hex, oauth.Refresh(grant, uuid.uuid4(), now, None)
                )
                await oauth.approve(conn, "local:x", client_id, "1", "patient/*.rs", now)
        finally:
            await pool.close()

    asyncio.run(go())


def test_client_add_list_remove(cli: Any, db: psycopg.Connection[Any], database_url: str) -> None:
    client_id = f"app-{uuid.uuid4().hex[:8]}"
    added = cli(
        "client", "add", "--name", "Growth chart", "--redirect-uri", APP,
        "--redirect-uri", "http://127.0.0.1:9000/cb", "--scope", "launch/patient patient/*.rs",
        "--launch", "standalone", "--launch", "ehr", "--client-id", client_id,
        FHIR_MIGRATE_ON_START="true",  # the default path: migrate, then act
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == client_id
    [row] = _clients(db, client_id)
    assert row[1:7] == (
        "public",
        [APP, "http://127.0.0.1:9000/cb"],
        "launch/patient patient/*.rs",
        ["standalone", "ehr"],
        ["authorization_code", "refresh_token"],
        None,
    )

    listed = cli("client", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [mine] = [c for c in json.loads(listed.stdout) if c["client_id"] == client_id]
    assert mine["token_endpoint_auth_method"] == "none"
    assert mine["redirect_uris"] == [APP, "http://127.0.0.1:9000/cb"]
    table = cli("client", "list")
    assert table.stdout.splitlines()[0].split()[:3] == ["CLIENT", "ID", "NAME"]
    assert any(line.startswith(client_id) for line in table.stdout.splitlines())

    _grant(database_url, client_id)
    assert cli("client", "remove", client_id).returncode == 0
    assert _clients(db, client_id) == []
    # what the app held is revoked with it
    assert db.execute(
        "SELECT count(*) FROM oauth_refresh_tokens WHERE client_id = %s AND revoked_at IS NULL",
        (client_id,),
    ).fetchone() == (0,)
    assert db.execute(
        "SELECT count(*) FROM oauth_approvals WHERE client_id = %s AND revoked_at IS NULL",
        (client_id,),
    ).fetchone() == (0,)
    again = cli("client", "remove", client_id)
    assert again.returncode == 1
    assert f"no client `{client_id}`" in again.stderr


def test_client_id_is_generated_and_never_reused(cli: Any, db: psycopg.Connection[Any]) -> None:
    first = cli("client", "add", "--name", "A", "--redirect-uri", APP, "--scope", "openid")
    assert first.returncode == 0, first.stderr
    client_id = first.stdout.strip()
    assert uuid.UUID(client_id)
    taken = cli(
        "client", "add", "--name", "B", "--redirect-uri", "https://b.example.org/cb",
        "--scope", "openid", "--client-id", client_id,
    )  # fmt: skip
    assert taken.returncode == 1
    assert "is taken" in taken.stderr
    [row] = _clients(db, client_id)
    assert row[2] == [APP]  # the first registration stands


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("http://app.example.org/cb", "must use https"),
        ("https://app.example.org/cb#part", "fragment"),
        ("/relative/cb", "absolute https URL"),
        ("https://user@app.example.org/cb", "user information"),
        ("ftp://app.example.org/cb", "absolute https URL"),
    ],
)
def test_bad_redirect_uris_are_refused(
    cli: Any, db: psycopg.Connection[Any], uri: str, why: str
) -> None:
    client_id = f"bad-{uuid.uuid4().hex[:8]}"
    result = cli(
        "client", "add", "--name", "Bad", "--redirect-uri", uri, "--scope", "openid",
        "--client-id", client_id,
    )  # fmt: skip
    assert result.returncode == 1
    assert why in result.stderr
    assert _clients(db, client_id) == []


def test_confidential_client_needs_public_keys(
    cli: Any, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    client_id = f"backend-{uuid.uuid4().hex[:8]}"
    base = ["client", "add", "--name", "Nightly export", "--confidential"]
    base += ["--scope", "system/*.rs", "--client-id", client_id]
    missing = cli(*base)
    assert missing.returncode == 1
    assert "needs exactly one of `jwks_uri` and `jwks`" in missing.stderr

    private = tmp_path / "private.json"
    key = ec.generate_private_key(ec.SECP384R1())
    private.write_text(json.dumps({"keys": [json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))]}))
    leaked = cli(*base, "--jwks-file", str(private))
    assert leaked.returncode == 1
    assert "public keys only" in leaked.stderr
    assert _clients(db, client_id) == []

    public = tmp_path / "public.json"
    jwks = _public_jwks()
    public.write_text(json.dumps(jwks))
    added = cli(*base, "--jwks-file", str(public))
    assert added.returncode == 0, added.stderr
    [row] = _clients(db, client_id)
    assert row[1] == "confidential"
    assert row[4:6] == ([], ["client_credentials"])  # a backend service: no launch
    assert row[7] == jwks

    url_id = f"{client_id}-url"
    by_url = cli(
        "client", "add", "--name", "Other", "--confidential", "--scope", "system/*.rs",
        "--jwks-url", "https://keys.example.org/jwks.json", "--client-id", url_id,
    )  # fmt: skip
    assert by_url.returncode == 0, by_url.stderr
    assert _clients(db, url_id)[0][6] == "https://keys.example.org/jwks.json"


def test_public_client_cannot_hold_system_scopes(cli: Any, db: psycopg.Connection[Any]) -> None:
    client_id = f"pub-{uuid.uuid4().hex[:8]}"
    result = cli(
        "client", "add", "--name", "P", "--redirect-uri", APP, "--scope", "system/*.rs",
        "--client-id", client_id,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot hold `system/` scopes" in result.stderr
    bad_scope = cli(
        "client", "add", "--name", "P", "--redirect-uri", APP, "--scope", "patient/Obs.xyz",
        "--client-id", client_id,
    )  # fmt: skip
    assert bad_scope.returncode == 1
    assert _clients(db, client_id) == []


# --- accounts --------------------------------------------------------------------------------


@pytest.fixture
def patient_id(client: httpx.Client) -> str:
    created = client.post("/Patient", json={"resourceType": "Patient", "gender": "female"})
    assert created.status_code == 201
    pid: str = created.json()["id"]
    return pid


def _account(db: psycopg.Connection[Any], username: str) -> tuple[Any, ...] | None:
    return db.execute(
        "SELECT password_hash, fhir_user, failed_attempts, locked_until FROM oauth_users"
        " WHERE username = %s",
        (username,),
    ).fetchone()


def test_user_add_hashes_the_password_from_stdin(
    cli: Any, db: psycopg.Connection[Any], patient_id: str
) -> None:
    username = f"mary-{uuid.uuid4().hex[:6]}"
    password = "correct horse battery"
    added = cli(
        "user", "add", username, "--fhir-user", f"Patient/{patient_id}", "--password-stdin",
        stdin=password + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    row = _account(db, username)
    assert row is not None
    assert row[0].startswith("$argon2id$")
    assert verify_password(row[0], password)
    assert not verify_password(row[0], password + "x")
    assert row[1] == f"Patient/{patient_id}"

    listed = cli("user", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [mine] = [u for u in json.loads(listed.stdout) if u["username"] == username]
    assert mine == {
        "username": username,
        "fhir_user": f"Patient/{patient_id}",
        "failed_attempts": 0,
        "locked_until": None,
    }
    table = cli("user", "list")
    for output in (added, listed, table):
        assert password not in output.stdout + output.stderr
        assert "$argon2" not in output.stdout + output.stderr

    # an existing account is changed only when asked to
    again = cli(
        "user", "add", username, "--fhir-user", f"Patient/{patient_id}", "--password-stdin",
        stdin="another password\n",
    )  # fmt: skip
    assert again.returncode == 1
    assert "exists" in again.stderr
    after = _account(db, username)
    assert after is not None and verify_password(after[0], password)
    replaced = cli(
        "user", "add", username, "--fhir-user", f"Patient/{patient_id}", "--password-stdin",
        "--replace", stdin="another password\n",
    )  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr
    after = _account(db, username)
    assert after is not None and verify_password(after[0], "another password")

    assert cli("user", "remove", username).returncode == 0
    assert _account(db, username) is None
    assert cli("user", "remove", username).returncode == 1


def _account_grants(database_url: str, subject: str, fhir_user: str) -> None:
    """A session, an unredeemed code, a refresh token and an approval of the account."""

    async def go() -> None:
        pool = app_database(database_url, pool_size=1)
        await pool.open()
        now = utc_now()
        grant = oauth.Grant("app", "patient/*.rs", subject, fhir_user, "1")
        later = now + timedelta(minutes=1)
        try:
            async with pool.transaction() as conn:
                await oauth.start_session(conn, uuid.uuid4().hex, subject, fhir_user, now, later)
                code = oauth.Code(grant, APP, None, None, None, now, later)
                await oauth.save_code(conn, uuid.uuid4().hex, code)
                await oauth.save_refresh(
                    conn, uuid.uuid4().hex, oauth.Refresh(grant, uuid.uuid4(), now, None)
                )
                await oauth.approve(conn, subject, "app", "Patient/1", "patient/*.rs", now)
        finally:
            await pool.close()

    asyncio.run(go())


def _live(db: psycopg.Connection[Any], subject: str) -> tuple[Any, ...] | None:
    """The account's sessions, unredeemed codes, live refresh tokens and approvals."""
    return db.execute(
        "SELECT (SELECT count(*) FROM oauth_sessions WHERE subject = %(s)s),"
        " (SELECT count(*) FROM oauth_codes WHERE subject = %(s)s AND used_at IS NULL),"
        " (SELECT count(*) FROM oauth_refresh_tokens WHERE subject = %(s)s"
        " AND revoked_at IS NULL),"
        " (SELECT count(*) FROM oauth_approvals WHERE subject = %(s)s AND revoked_at IS NULL)",
        {"s": subject},
    ).fetchone()


def test_user_remove_and_replace_end_what_the_account_was_issued(
    cli: Any, db: psycopg.Connection[Any], database_url: str, client: httpx.Client, patient_id: str
) -> None:
    username = f"john-{uuid.uuid4().hex[:6]}"
    subject = f"local:{username}"
    me = f"Patient/{patient_id}"
    created = client.post("/Patient", json={"resourceType": "Patient", "gender": "male"})
    assert created.status_code == 201
    other = f"Patient/{created.json()['id']}"

    def add(*extra: str, fhir_user: str = me, password: str = "correct horse") -> None:  # noqa: S107
        done = cli(
            "user", "add", username, "--fhir-user", fhir_user, "--password-stdin", *extra,
            stdin=password + "\n",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    add()
    _account_grants(database_url, subject, me)
    assert _live(db, subject) == (1, 1, 1, 1)
    # a new password: the sessions end, the apps stay
    add("--replace", password="another password")
    assert _live(db, subject) == (0, 1, 1, 1)
    # another FHIR user: everything the old identity was issued ends too
    _account_grants(database_url, subject, me)
    add("--replace", fhir_user=other)
    assert _live(db, subject) == (0, 0, 0, 0)
    # removal: all of it, in the command's transaction
    _account_grants(database_url, subject, other)
    removed = cli("user", "remove", username)
    assert removed.returncode == 0, removed.stderr
    assert _live(db, subject) == (0, 0, 0, 0)
    assert _account(db, username) is None


def test_user_add_needs_an_existing_fhir_user(
    cli: Any, db: psycopg.Connection[Any], client: httpx.Client, patient_id: str
) -> None:
    username = f"ghost-{uuid.uuid4().hex[:6]}"
    for reference, why in (
        ("Patient/does-not-exist", "does not exist"),
        ("Observation/1", "must be a reference"),
        ("Patient", "must be a reference"),
    ):
        result = cli(
            "user", "add", username, "--fhir-user", reference, "--password-stdin",
            stdin="long enough password\n",
        )  # fmt: skip
        assert result.returncode == 1, reference
        assert why in result.stderr
    assert client.delete(f"/Patient/{patient_id}").status_code in (200, 204)
    deleted = cli(
        "user", "add", username, "--fhir-user", f"Patient/{patient_id}", "--password-stdin",
        stdin="long enough password\n",
    )  # fmt: skip
    assert deleted.returncode == 1
    assert "does not exist" in deleted.stderr
    assert _account(db, username) is None


def test_user_add_refuses_a_short_password(
    cli: Any, db: psycopg.Connection[Any], patient_id: str
) -> None:
    username = f"short-{uuid.uuid4().hex[:6]}"
    result = cli(
        "user", "add", username, "--fhir-user", f"Patient/{patient_id}", "--password-stdin",
        stdin="short\n",
    )  # fmt: skip
    assert result.returncode == 1
    assert "8 to 1024 characters" in result.stderr
    assert _account(db, username) is None


def test_user_add_has_no_password_option(cli: Any) -> None:
    result = cli("user", "add", "someone", "--fhir-user", "Patient/1", "--password", "secret")
    assert result.returncode == 2  # argparse: unrecognized argument
    assert "unrecognized arguments" in result.stderr


def test_user_unlock(cli: Any, db: psycopg.Connection[Any], patient_id: str) -> None:
    username = f"locked-{uuid.uuid4().hex[:6]}"
    added = cli(
        "user", "add", username, "--fhir-user", f"Patient/{patient_id}", "--password-stdin",
        stdin="long enough password\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    db.execute(
        "UPDATE oauth_users SET failed_attempts = 5, locked_until = now() + interval '1 hour'"
        " WHERE username = %s",
        (username,),
    )
    table = cli("user", "list")
    [line] = [line for line in table.stdout.splitlines() if line.startswith(username)]
    assert line.split()[2] == "5" and line.split()[3] != "-"
    assert cli("user", "unlock", username).returncode == 0
    row = _account(db, username)
    assert row is not None and row[2:] == (0, None)
    missing = cli("user", "unlock", f"{username}-nobody")
    assert missing.returncode == 1
    assert "no account" in missing.stderr


# --- keys ------------------------------------------------------------------------------------


def _kids(path: Path) -> list[str]:
    return [k["kid"] for k in json.loads(path.read_text())["keys"]]


def test_keys_rotate_show_retire(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "auth" / "oauth-keys.json"
    shown = cli("keys", "show")
    assert shown.returncode == 0, shown.stderr
    [first] = _kids(path)  # made on first use
    assert shown.stdout.split() == [first, "signing"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    rotated = cli("keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip()
    assert _kids(path) == [new, first]
    assert cli("keys", "show").stdout.split() == [new, "signing", first, "published"]

    retired = cli("keys", "retire")
    assert retired.returncode == 0, retired.stderr
    assert retired.stdout.split() == [first]
    assert _kids(path) == [new]
    for output in (shown, rotated, retired):
        assert '"d"' not in output.stdout + output.stderr  # never a private member


def test_keys_follow_fhir_oauth_keys(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "keys.json"
    rotated = cli("keys", "rotate", FHIR_OAUTH_KEYS=str(path))
    assert rotated.returncode == 0, rotated.stderr
    assert _kids(path)[0] == rotated.stdout.strip()
    assert len(_kids(path)) == 2
    assert not (tmp_path / "auth" / "oauth-keys.json").exists()
    path.write_text('{"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}')  # public only
    broken = cli("keys", "show", FHIR_OAUTH_KEYS=str(path))
    assert broken.returncode == 1
    assert "RSA private keys" in broken.stderr
