"""The SMART authorization server's records (migrations 0007_oauth, 0008_approval_last_used,
0011_code_redirect_uri_optional, 0012_oauth_sessions): sign-in sessions, clients, local accounts,
authorization codes, refresh tokens, approvals, EHR launch contexts and used client-assertion ids.

Secrets never reach the database: codes, refresh tokens and launch values are stored as SHA-256
digests (`digest`), passwords as argon2 hashes made by the caller. Single use is enforced by the
statements themselves (an UPDATE that claims a row only while it is unused), so two concurrent
redemptions of one code cannot both succeed.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from fhir_server.storage.sql import Connection, Statement, execute, fetch_all, fetch_one


def digest(secret: str) -> str:
    """What is stored of a code, refresh token or launch value."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# --- clients -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    kind: Literal["public", "confidential"]
    redirect_uris: tuple[str, ...]
    scope: str  # the scopes it may ask for, space-separated
    launch_types: tuple[str, ...] = ("standalone",)  # "ehr", "standalone"
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")
    jwks_uri: str | None = None
    jwks: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None


_CLIENT_COLUMNS = (
    "client_id, name, kind, redirect_uris, scope, launch_types, grant_types, jwks_uri,"
    " jwks::text, metadata::text, created_at"
)
_ADD_CLIENT = Statement(
    "INSERT INTO oauth_clients (client_id, name, kind, redirect_uris, scope, launch_types,"
    " grant_types, jwks_uri, jwks, metadata, created_at) VALUES (%(client_id)s, %(name)s,"
    " %(kind)s, %(redirect_uris)s, %(scope)s, %(launch_types)s, %(grant_types)s, %(jwks_uri)s,"
    " %(jwks)s::jsonb, %(metadata)s::jsonb, %(now)s) ON CONFLICT (client_id) DO NOTHING"
)
_GET_CLIENT = Statement(f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = %(id)s")  # noqa: S608 (constant columns)
_LIST_CLIENTS = Statement(f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients ORDER BY client_id")  # noqa: S608
_REMOVE_CLIENT = Statement("DELETE FROM oauth_clients WHERE client_id = %(id)s")
_REDIRECT_URIS = Statement("SELECT DISTINCT unnest(redirect_uris) FROM oauth_clients")


def _client(row: tuple[Any, ...]) -> Client:
    return Client(
        client_id=row[0],
        name=row[1],
        kind=row[2],
        redirect_uris=tuple(row[3]),
        scope=row[4],
        launch_types=tuple(row[5]),
        grant_types=tuple(row[6]),
        jwks_uri=row[7],
        jwks=orjson.loads(row[8]) if row[8] is not None else None,
        metadata=orjson.loads(row[9]),
        created_at=row[10],
    )


async def add_client(conn: Connection, client: Client, now: datetime) -> bool:
    """Store a new client; False when its id is taken."""
    return (
        await execute(
            conn,
            _ADD_CLIENT,
            {
                "client_id": client.client_id,
                "name": client.name,
                "kind": client.kind,
                "redirect_uris": list(client.redirect_uris),
                "scope": client.scope,
                "launch_types": list(client.launch_types),
                "grant_types": list(client.grant_types),
                "jwks_uri": client.jwks_uri,
                "jwks": _json(client.jwks) if client.jwks is not None else None,
                "metadata": _json(client.metadata),
                "now": now,
            },
        )
        == 1
    )


async def get_client(conn: Connection, client_id: str) -> Client | None:
    row = await fetch_one(conn, _GET_CLIENT, {"id": client_id})
    return _client(row) if row is not None else None


async def list_clients(conn: Connection) -> list[Client]:
    return [_client(row) for row in await fetch_all(conn, _LIST_CLIENTS)]


async def remove_client(conn: Connection, client_id: str) -> bool:
    return await execute(conn, _REMOVE_CLIENT, {"id": client_id}) == 1


_REVOKE_CLIENT_REFRESH = Statement(
    "UPDATE oauth_refresh_tokens SET revoked_at = %(now)s WHERE client_id = %(id)s"
    " AND revoked_at IS NULL"
)
_REVOKE_CLIENT_APPROVALS = Statement(
    "UPDATE oauth_approvals SET revoked_at = %(now)s WHERE client_id = %(id)s"
    " AND revoked_at IS NULL"
)


async def revoke_client(conn: Connection, client_id: str, now: datetime) -> int:
    """Revoke every refresh token and approval of a client (it is being removed): the refresh
    tokens revoked."""
    count = await execute(conn, _REVOKE_CLIENT_REFRESH, {"id": client_id, "now": now})
    await execute(conn, _REVOKE_CLIENT_APPROVALS, {"id": client_id, "now": now})
    return count


async def redirect_uris(conn: Connection) -> list[str]:
    """Every registered redirect URI (CORS admits their origins)."""
    return [row[0] for row in await fetch_all(conn, _REDIRECT_URIS)]


# --- local accounts ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: str
    fhir_user: str
    failed_attempts: int = 0
    locked_until: datetime | None = None


_ADD_USER = Statement(
    "INSERT INTO oauth_users (username, password_hash, fhir_user, created_at)"
    " VALUES (%(username)s, %(hash)s, %(fhir_user)s, %(now)s)"
    " ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash,"
    " fhir_user = excluded.fhir_user, failed_attempts = 0, locked_until = NULL"
)
_GET_USER = Statement(
    "SELECT username, password_hash, fhir_user, failed_attempts, locked_until FROM oauth_users"
    " WHERE username = %(username)s"
)
_FAILED = Statement(
    "UPDATE oauth_users SET failed_attempts = failed_attempts + 1,"
    " locked_until = CASE WHEN failed_attempts + 1 >= %(limit)s THEN %(until)s"
    " ELSE locked_until END WHERE username = %(username)s RETURNING failed_attempts, locked_until"
)
_SUCCEEDED = Statement(
    "UPDATE oauth_users SET failed_attempts = 0, locked_until = NULL WHERE username = %(username)s"
)
_SET_HASH = Statement(
    "UPDATE oauth_users SET password_hash = %(hash)s WHERE username = %(username)s"
)
_REMOVE_USER = Statement("DELETE FROM oauth_users WHERE username = %(username)s")
_LIST_USERS = Statement(
    "SELECT username, password_hash, fhir_user, failed_attempts, locked_until FROM oauth_users"
    " ORDER BY username"
)


def _user(row: tuple[Any, ...]) -> User:
    return User(row[0], row[1], row[2], row[3], row[4])


async def put_user(
    conn: Connection, username: str, password_hash: str, fhir_user: str, now: datetime
) -> None:
    """Create the account, or replace its password and FHIR user (and unlock it)."""
    await execute(
        conn,
        _ADD_USER,
        {"username": username, "hash": password_hash, "fhir_user": fhir_user, "now": now},
    )


async def get_user(conn: Connection, username: str) -> User | None:
    row = await fetch_one(conn, _GET_USER, {"username": username})
    return _user(row) if row is not None else None


async def list_users(conn: Connection) -> list[User]:
    return [_user(row) for row in await fetch_all(conn, _LIST_USERS)]


async def remove_user(conn: Connection, username: str) -> bool:
    return await execute(conn, _REMOVE_USER, {"username": username}) == 1


# A grant's or session's account is there: a local account ("local:<username>") while its row in
# oauth_users is; an account of the identity provider ("oidc:...") has no row here and is
# ended there.
# (the same condition is in _ACTIVE_REFRESH)
_ACCOUNT_EXISTS = Statement(
    "SELECT left(%(subject)s::text, 6) <> 'local:' OR EXISTS (SELECT 1 FROM oauth_users u"
    " WHERE u.username = substr(%(subject)s::text, 7))"
)


async def account_exists(conn: Connection, subject: str) -> bool:
    """Whether the account a grant, token or session names is still there."""
    row = await fetch_one(conn, _ACCOUNT_EXISTS, {"subject": subject})
    return bool(row and row[0])


def local_subject(username: str) -> str:
    """The subject of a local account's sessions, codes, refresh tokens and approvals."""
    return f"local:{username}"


_BURN_CODES = Statement(
    "UPDATE oauth_codes SET used_at = %(now)s WHERE subject = %(subject)s AND used_at IS NULL"
)
_REVOKE_ACCOUNT_REFRESH = Statement(
    "UPDATE oauth_refresh_tokens SET revoked_at = %(now)s WHERE subject = %(subject)s"
    " AND revoked_at IS NULL"
)
_REVOKE_ACCOUNT_APPROVALS = Statement(
    "UPDATE oauth_approvals SET revoked_at = %(now)s WHERE subject = %(subject)s"
    " AND revoked_at IS NULL"
)


async def revoke_account(conn: Connection, subject: str, now: datetime) -> int:
    """End everything issued to an account (removed, or given another FHIR user): its unredeemed
    codes, its refresh tokens and its approvals, of every client. The refresh tokens revoked.
    (Its access tokens are not stored and live until they expire.)"""
    params = {"subject": subject, "now": now}
    await execute(conn, _BURN_CODES, params)
    count = await execute(conn, _REVOKE_ACCOUNT_REFRESH, params)
    await execute(conn, _REVOKE_ACCOUNT_APPROVALS, params)
    return count


async def sign_in_failed(
    conn: Connection, username: str, limit: int, lock_until: datetime
) -> datetime | None:
    """Count a failed sign-in; the account is locked until `lock_until` at the `limit`-th
    failure in a row. When the account is locked, until when."""
    row = await fetch_one(
        conn, _FAILED, {"username": username, "limit": limit, "until": lock_until}
    )
    return row[1] if row is not None else None


async def sign_in_succeeded(conn: Connection, username: str) -> None:
    await execute(conn, _SUCCEEDED, {"username": username})


async def rehash_password(conn: Connection, username: str, password_hash: str) -> None:
    """Store a stronger hash of the same password (argon2's `check_needs_rehash`)."""
    await execute(conn, _SET_HASH, {"username": username, "hash": password_hash})


# --- sign-in sessions (0012_oauth_sessions) ------------------------------------------------------

_START_SESSION = Statement(
    "INSERT INTO oauth_sessions (session_hash, subject, fhir_user, created_at, expires_at)"
    " VALUES (%(hash)s, %(subject)s, %(fhir_user)s, %(now)s, %(expires_at)s)"
)
_PURGE_SESSIONS = Statement(
    "DELETE FROM oauth_sessions WHERE subject = %(subject)s AND expires_at <= %(now)s"
)
# Live: not ended, not expired, and (a local account) the account is there with the FHIR user
# the session was started as.
_SESSION_LIVE = Statement(
    "SELECT 1 FROM oauth_sessions s WHERE s.session_hash = %(hash)s AND s.subject = %(subject)s"
    " AND s.fhir_user = %(fhir_user)s AND s.expires_at > %(now)s"
    " AND (left(s.subject, 6) <> 'local:' OR EXISTS (SELECT 1 FROM oauth_users u"
    " WHERE u.username = substr(s.subject, 7) AND u.fhir_user = s.fhir_user))"
)
_END_SESSION = Statement("DELETE FROM oauth_sessions WHERE session_hash = %(hash)s")
_END_SESSIONS = Statement("DELETE FROM oauth_sessions WHERE subject = %(subject)s")


async def start_session(
    conn: Connection,
    session_id: str,
    subject: str,
    fhir_user: str,
    now: datetime,
    expires_at: datetime,
) -> None:
    """Record a new session (and forget the account's sessions that have expired)."""
    await execute(conn, _PURGE_SESSIONS, {"subject": subject, "now": now})
    await execute(
        conn,
        _START_SESSION,
        {
            "hash": digest(session_id),
            "subject": subject,
            "fhir_user": fhir_user,
            "now": now,
            "expires_at": expires_at,
        },
    )


async def session_live(
    conn: Connection, session_id: str, subject: str, fhir_user: str, now: datetime
) -> bool:
    """Whether the session is one this server started for this account and identity, and it has
    not ended (sign-out, account removed or changed) nor expired."""
    params = {"hash": digest(session_id), "subject": subject, "fhir_user": fhir_user, "now": now}
    return await fetch_one(conn, _SESSION_LIVE, params) is not None


async def end_session(conn: Connection, session_id: str) -> None:
    await execute(conn, _END_SESSION, {"hash": digest(session_id)})


async def end_sessions(conn: Connection, subject: str) -> int:
    """End every session of an account (every browser it is signed in on)."""
    return await execute(conn, _END_SESSIONS, {"subject": subject})


# --- authorization codes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """What a code or a refresh token stands for: who approved what, for which client."""

    client_id: str
    scope: str
    subject: str  # the signed-in account ("local:john", "oidc:<issuer>#<sub>")
    fhir_user: str | None = None
    patient: str | None = None  # a Patient id (launch context)
    encounter: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)  # extra token claims (access_basis)


@dataclass(frozen=True, slots=True)
class Code:
    grant: Grant
    redirect_uri: str | None  # as the authorization request gave it; None when it gave none
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    auth_time: datetime
    expires_at: datetime


_SAVE_CODE = Statement(
    "INSERT INTO oauth_codes (code_hash, client_id, redirect_uri, scope, subject, fhir_user,"
    " patient, encounter, code_challenge, code_challenge_method, nonce, claims, auth_time,"
    " expires_at) VALUES (%(hash)s, %(client_id)s, %(redirect_uri)s, %(scope)s, %(subject)s,"
    " %(fhir_user)s, %(patient)s, %(encounter)s, %(challenge)s, %(method)s, %(nonce)s,"
    " %(claims)s::jsonb, %(auth_time)s, %(expires_at)s)"
)
# Claims the code whatever follows: a code is good for one attempt only.
_USE_CODE = Statement(
    "UPDATE oauth_codes SET used_at = %(now)s WHERE code_hash = %(hash)s AND used_at IS NULL"
    " RETURNING client_id, redirect_uri, scope, subject, fhir_user, patient, encounter,"
    " code_challenge, code_challenge_method, nonce, claims::text, auth_time, expires_at"
)
_CODE_USED = Statement("SELECT used_at FROM oauth_codes WHERE code_hash = %(hash)s")
_PURGE_CODES = Statement("DELETE FROM oauth_codes WHERE expires_at < %(before)s")


async def save_code(conn: Connection, code: str, record: Code) -> None:
    g = record.grant
    await execute(
        conn,
        _SAVE_CODE,
        {
            "hash": digest(code),
            "client_id": g.client_id,
            "redirect_uri": record.redirect_uri,
            "scope": g.scope,
            "subject": g.subject,
            "fhir_user": g.fhir_user,
            "patient": g.patient,
            "encounter": g.encounter,
            "challenge": record.code_challenge,
            "method": record.code_challenge_method,
            "nonce": record.nonce,
            "claims": _json(g.claims),
            "auth_time": record.auth_time,
            "expires_at": record.expires_at,
        },
    )


async def use_code(
    conn: Connection, code: str, now: datetime
) -> tuple[Code | None, Literal["ok", "used", "unknown"]]:
    """Claim a code for this one redemption: the record when it was unused (expiry is the
    caller's check), else why not. A reused code is reported so that the caller can revoke what
    the first redemption issued (RFC 6749 4.1.2)."""
    row = await fetch_one(conn, _USE_CODE, {"hash": digest(code), "now": now})
    if row is None:
        used = await fetch_one(conn, _CODE_USED, {"hash": digest(code)})
        return None, ("used" if used is not None else "unknown")
    grant = Grant(
        client_id=row[0],
        scope=row[2],
        subject=row[3],
        fhir_user=row[4],
        patient=row[5],
        encounter=row[6],
        claims=orjson.loads(row[10]),
    )
    return Code(grant, row[1], row[7], row[8], row[9], row[11], row[12]), "ok"


async def purge_codes(conn: Connection, before: datetime) -> int:
    return await execute(conn, _PURGE_CODES, {"before": before})


# --- refresh tokens ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refresh:
    grant: Grant
    chain: uuid.UUID
    issued_at: datetime
    expires_at: datetime | None


_SAVE_REFRESH = Statement(
    "INSERT INTO oauth_refresh_tokens (token_hash, chain, client_id, subject, scope, fhir_user,"
    " patient, encounter, claims, issued_at, expires_at) VALUES (%(hash)s, %(chain)s,"
    " %(client_id)s, %(subject)s, %(scope)s, %(fhir_user)s, %(patient)s, %(encounter)s,"
    " %(claims)s::jsonb, %(issued_at)s, %(expires_at)s)"
)
# Rotation: the token is claimed (rotated) by one request only.
_ROTATE = Statement(
    "UPDATE oauth_refresh_tokens SET rotated_at = %(now)s, last_used_at = %(now)s"
    " WHERE token_hash = %(hash)s AND rotated_at IS NULL AND revoked_at IS NULL"
    " RETURNING chain, client_id, subject, scope, fhir_user, patient, encounter, claims::text,"
    " issued_at, expires_at"
)
_REFRESH_STATE = Statement(
    "SELECT chain, client_id, rotated_at, revoked_at, expires_at, subject"
    " FROM oauth_refresh_tokens WHERE token_hash = %(hash)s"
)
_REVOKE_CHAIN = Statement(
    "UPDATE oauth_refresh_tokens SET revoked_at = %(now)s WHERE chain = %(chain)s"
    " AND revoked_at IS NULL"
)
_REVOKE_GRANTS = Statement(
    "UPDATE oauth_refresh_tokens SET revoked_at = %(now)s WHERE subject = %(subject)s"
    " AND client_id = %(client_id)s AND revoked_at IS NULL"
)
_ACTIVE_REFRESH = Statement(
    "SELECT chain, client_id, subject, scope, fhir_user, patient, encounter, claims::text,"
    " issued_at, expires_at FROM oauth_refresh_tokens WHERE token_hash = %(hash)s"
    " AND rotated_at IS NULL AND revoked_at IS NULL"
    " AND (expires_at IS NULL OR expires_at > %(now)s)"
    " AND (left(subject, 6) <> 'local:' OR EXISTS (SELECT 1 FROM oauth_users u"
    " WHERE u.username = substr(subject, 7)))"  # the account is there (`account_exists`)
)

# Any refresh token, live or not (rotated, revoked, expired): revocation revokes its chain.
_ANY_REFRESH = Statement(
    "SELECT chain, client_id, subject, scope, fhir_user, patient, encounter, claims::text,"
    " issued_at, expires_at FROM oauth_refresh_tokens WHERE token_hash = %(hash)s"
)


def _refresh(row: tuple[Any, ...]) -> Refresh:
    grant = Grant(
        client_id=row[1],
        subject=row[2],
        scope=row[3],
        fhir_user=row[4],
        patient=row[5],
        encounter=row[6],
        claims=orjson.loads(row[7]),
    )
    return Refresh(grant, row[0], row[8], row[9])


async def save_refresh(conn: Connection, token: str, record: Refresh) -> None:
    g = record.grant
    await execute(
        conn,
        _SAVE_REFRESH,
        {
            "hash": digest(token),
            "chain": record.chain,
            "client_id": g.client_id,
            "subject": g.subject,
            "scope": g.scope,
            "fhir_user": g.fhir_user,
            "patient": g.patient,
            "encounter": g.encounter,
            "claims": _json(g.claims),
            "issued_at": record.issued_at,
            "expires_at": record.expires_at,
        },
    )


async def rotate_refresh(
    conn: Connection, token: str, now: datetime
) -> tuple[Refresh | None, Literal["ok", "reused", "revoked", "unknown"]]:
    """Claim a refresh token for one rotation. A token already rotated is a reuse: the whole
    chain is revoked here (the caller commits that even though it refuses the request)."""
    row = await fetch_one(conn, _ROTATE, {"hash": digest(token), "now": now})
    if row is not None:
        return _refresh(row), "ok"
    state = await fetch_one(conn, _REFRESH_STATE, {"hash": digest(token)})
    if state is None:
        return None, "unknown"
    if state[3] is not None:
        return None, "revoked"
    await execute(conn, _REVOKE_CHAIN, {"chain": state[0], "now": now})
    return None, "reused"


async def refresh_refused(
    conn: Connection, token: str, now: datetime
) -> Literal["reused", "revoked", "expired", "account_gone", "unknown"]:
    """Why a refresh token is not active (`active_refresh` found none). A rotated one presented
    again, or a live one whose account is gone, revokes its chain here (the caller commits that
    even though it refuses the request)."""
    state = await fetch_one(conn, _REFRESH_STATE, {"hash": digest(token)})
    if state is None:
        return "unknown"
    chain, _, rotated_at, revoked_at, expires_at, subject = state
    if revoked_at is not None:
        return "revoked"
    if rotated_at is not None:
        await execute(conn, _REVOKE_CHAIN, {"chain": chain, "now": now})
        return "reused"
    if expires_at is not None and expires_at <= now:
        return "expired"
    if not await account_exists(conn, subject):
        await execute(conn, _REVOKE_CHAIN, {"chain": chain, "now": now})
        return "account_gone"
    return "unknown"  # became active meanwhile: refused all the same, the client may retry


async def active_refresh(conn: Connection, token: str, now: datetime) -> Refresh | None:
    """The refresh token's record while it can still be used: not rotated, revoked or expired,
    and its account still there (the token endpoint, introspection)."""
    row = await fetch_one(conn, _ACTIVE_REFRESH, {"hash": digest(token), "now": now})
    return _refresh(row) if row is not None else None


async def any_refresh(conn: Connection, token: str) -> Refresh | None:
    """The refresh token's record whatever its state: one already rotated still names its chain,
    which revocation ends (RFC 7009 2.1: revoking a refresh token ends its grant)."""
    row = await fetch_one(conn, _ANY_REFRESH, {"hash": digest(token)})
    return _refresh(row) if row is not None else None


async def revoke_refresh(conn: Connection, token: str, client_id: str, now: datetime) -> bool:
    """Revoke the chain of a refresh token of this client (RFC 7009); False when it is not one."""
    state = await fetch_one(conn, _REFRESH_STATE, {"hash": digest(token)})
    if state is None or state[1] != client_id:
        return False
    await execute(conn, _REVOKE_CHAIN, {"chain": state[0], "now": now})
    return True


async def revoke_grants(conn: Connection, subject: str, client_id: str, now: datetime) -> int:
    """Revoke every refresh token of this account for this client (an app disconnected)."""
    return await execute(
        conn, _REVOKE_GRANTS, {"subject": subject, "client_id": client_id, "now": now}
    )


# The chain a code's redemption started: its first refresh token was issued to the same account
# and client at the very moment the code was claimed (the token endpoint uses one `now` for both).
_REVOKE_REDEMPTION = Statement(
    "UPDATE oauth_refresh_tokens SET revoked_at = %(now)s WHERE revoked_at IS NULL AND chain IN"
    " (SELECT r.chain FROM oauth_refresh_tokens r JOIN oauth_codes c"
    " ON r.client_id = c.client_id AND r.subject = c.subject AND r.issued_at = c.used_at"
    " WHERE c.code_hash = %(hash)s)"
)
_REVOKE_PATIENT_GRANTS = Statement(
    "UPDATE oauth_refresh_tokens SET revoked_at = %(now)s WHERE subject = %(subject)s"
    " AND client_id = %(client_id)s AND patient IS NOT DISTINCT FROM %(patient)s::text"
    " AND revoked_at IS NULL"
)


async def revoke_redemption(conn: Connection, code: str, now: datetime) -> int:
    """Revoke the refresh chain that the (first) redemption of a code started: a code presented
    again may have been stolen (RFC 6749 4.1.2). The number of tokens revoked."""
    return await execute(conn, _REVOKE_REDEMPTION, {"hash": digest(code), "now": now})


async def revoke_patient_grants(
    conn: Connection, subject: str, client_id: str, patient: str | None, now: datetime
) -> int:
    """Revoke the refresh tokens of this account and client for one launch context (an access
    token revoked: the chain it came from is among them)."""
    params = {"subject": subject, "client_id": client_id, "patient": patient, "now": now}
    return await execute(conn, _REVOKE_PATIENT_GRANTS, params)


# --- approvals -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Approval:
    subject: str
    client_id: str
    patient: str | None  # "Patient/1", or None for an approval without a patient context
    scope: str
    approved_at: datetime
    last_used_at: datetime | None = None  # the last token issued by it (0008_approval_last_used)


_APPROVE = Statement(
    "INSERT INTO oauth_approvals (subject, client_id, patient, scope, approved_at)"
    " VALUES (%(subject)s, %(client_id)s, %(patient)s, %(scope)s, %(now)s)"
    " ON CONFLICT (subject, client_id, patient) DO UPDATE SET scope = excluded.scope,"
    " approved_at = excluded.approved_at, revoked_at = NULL"
)
_APPROVAL = Statement(
    "SELECT scope, approved_at, last_used_at FROM oauth_approvals WHERE subject = %(subject)s"
    " AND client_id = %(client_id)s AND patient = %(patient)s AND revoked_at IS NULL"
)
_APPROVALS = Statement(
    "SELECT client_id, patient, scope, approved_at, last_used_at FROM oauth_approvals"
    " WHERE subject = %(subject)s AND revoked_at IS NULL ORDER BY approved_at DESC"
)
_UNAPPROVE = Statement(
    "UPDATE oauth_approvals SET revoked_at = %(now)s WHERE subject = %(subject)s"
    " AND client_id = %(client_id)s AND revoked_at IS NULL"
)
_UNAPPROVE_ONE = Statement(
    "UPDATE oauth_approvals SET revoked_at = %(now)s WHERE subject = %(subject)s"
    " AND client_id = %(client_id)s AND patient = %(patient)s AND revoked_at IS NULL"
)
_APPROVAL_USED = Statement(
    "UPDATE oauth_approvals SET last_used_at = %(now)s WHERE subject = %(subject)s"
    " AND client_id = %(client_id)s AND patient = %(patient)s AND revoked_at IS NULL"
)


async def approve(
    conn: Connection,
    subject: str,
    client_id: str,
    patient: str | None,
    scope: str,
    now: datetime,
) -> None:
    await execute(
        conn,
        _APPROVE,
        {
            "subject": subject,
            "client_id": client_id,
            "patient": patient or "",
            "scope": scope,
            "now": now,
        },
    )


async def approval(
    conn: Connection, subject: str, client_id: str, patient: str | None
) -> Approval | None:
    row = await fetch_one(
        conn, _APPROVAL, {"subject": subject, "client_id": client_id, "patient": patient or ""}
    )
    if row is None:
        return None
    return Approval(subject, client_id, patient, row[0], row[1], row[2])


async def approvals(conn: Connection, subject: str) -> list[Approval]:
    """The account's approvals in force, the latest first."""
    rows = await fetch_all(conn, _APPROVALS, {"subject": subject})
    return [Approval(subject, r[0], r[1] or None, r[2], r[3], r[4]) for r in rows]


async def unapprove(conn: Connection, subject: str, client_id: str, now: datetime) -> int:
    """Revoke the account's approvals of this client and every refresh token it holds."""
    count = await execute(
        conn, _UNAPPROVE, {"subject": subject, "client_id": client_id, "now": now}
    )
    await revoke_grants(conn, subject, client_id, now)
    return count


async def unapprove_patient(
    conn: Connection, subject: str, client_id: str, patient: str | None, now: datetime
) -> int | None:
    """Revoke one approval (the account's, of this client, for `patient`: "Patient/1" or None)
    and the refresh tokens issued for that launch context: the refresh tokens revoked, or None
    when there was no such approval in force."""
    params = {"subject": subject, "client_id": client_id, "patient": patient or "", "now": now}
    if await execute(conn, _UNAPPROVE_ONE, params) == 0:
        return None
    bare = patient.split("/", 1)[1] if patient is not None else None
    return await revoke_patient_grants(conn, subject, client_id, bare, now)


async def approval_used(
    conn: Connection, subject: str, client_id: str, patient: str | None, now: datetime
) -> None:
    """A token was issued by the approval of this account, client and `patient` ("Patient/1"
    or None): remember when (the account's "Connected apps" page shows it)."""
    params = {"subject": subject, "client_id": client_id, "patient": patient or "", "now": now}
    await execute(conn, _APPROVAL_USED, params)


# --- EHR launch contexts -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Launch:
    created_by: str
    client_id: str | None
    patient: str
    encounter: str | None
    fhir_user: str | None
    expires_at: datetime


_SAVE_LAUNCH = Statement(
    "INSERT INTO oauth_launches (launch_hash, created_by, client_id, patient, encounter,"
    " fhir_user, expires_at) VALUES (%(hash)s, %(created_by)s, %(client_id)s, %(patient)s,"
    " %(encounter)s, %(fhir_user)s, %(expires_at)s)"
)
# Claimed only by the app it was made for and the user it names (when it names them): anyone
# else is refused without using it up.
_USE_LAUNCH = Statement(
    "UPDATE oauth_launches SET used_at = %(now)s WHERE launch_hash = %(hash)s"
    " AND used_at IS NULL AND expires_at > %(now)s"
    " AND (client_id IS NULL OR client_id = %(client_id)s)"
    " AND (fhir_user IS NULL OR fhir_user = %(fhir_user)s)"
    " RETURNING created_by, client_id, patient, encounter, fhir_user, expires_at"
)


async def save_launch(conn: Connection, launch: str, record: Launch) -> None:
    await execute(
        conn,
        _SAVE_LAUNCH,
        {
            "hash": digest(launch),
            "created_by": record.created_by,
            "client_id": record.client_id,
            "patient": record.patient,
            "encounter": record.encounter,
            "fhir_user": record.fhir_user,
            "expires_at": record.expires_at,
        },
    )


async def use_launch(
    conn: Connection, launch: str, now: datetime, *, client_id: str, fhir_user: str
) -> Launch | None:
    """The launch context, once, for the app `client_id` and the signed-in `fhir_user`: None when
    unknown, used, expired, or made for another app or another user (and then it stays unused)."""
    params = {"hash": digest(launch), "now": now, "client_id": client_id, "fhir_user": fhir_user}
    row = await fetch_one(conn, _USE_LAUNCH, params)
    return Launch(*row) if row is not None else None


# --- client assertions (private_key_jwt) ---------------------------------------------------------

_REMEMBER_JTI = Statement(
    "INSERT INTO oauth_assertions (client_id, jti, expires_at)"
    " VALUES (%(client_id)s, %(jti)s, %(expires_at)s) ON CONFLICT DO NOTHING"
)
_PURGE_JTIS = Statement("DELETE FROM oauth_assertions WHERE expires_at < %(before)s")


async def first_use_of_assertion(
    conn: Connection, client_id: str, jti: str, expires_at: datetime
) -> bool:
    """Record a client assertion's `jti`; False when it was seen before (a replay)."""
    params = {"client_id": client_id, "jti": jti, "expires_at": expires_at}
    return await execute(conn, _REMEMBER_JTI, params) == 1


async def purge_assertions(conn: Connection, before: datetime) -> int:
    return await execute(conn, _PURGE_JTIS, {"before": before})
