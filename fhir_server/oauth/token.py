"""`POST /oauth/token` (docs/smart-token.md): authorization_code (+ PKCE S256), refresh_token
(rotated), client_credentials (SMART Backend Services), on authlib's grants.

The route prefetches, runs authlib, runs the deferred writes (fhir_server/oauth/server.py), audits
and answers. Everything it writes before authlib runs is meant to stay even when the request is
refused: a code is claimed by its first redemption whatever follows; a reused code revokes the
refresh chain its first redemption started; a reused rotated refresh token revokes its chain.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749 import InvalidScopeError, grants
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge
from fastapi import FastAPI, Request, Response

from fhir_server.api.deps import runtime
from fhir_server.api.runtime import Runtime
from fhir_server.api.smart import endpoint_url
from fhir_server.auth import issuer
from fhir_server.oauth.server import (
    Answer,
    OAuthClient,
    Prefetched,
    Server,
    StarletteRequest,
    claimed_client_id,
    conflicting_client_id,
    malformed,
    oauth_error,
    prefetch_client,
    read_form,
    run_deferred,
    to_response,
)
from fhir_server.storage import oauth as storage
from fhir_server.storage.sql import Connection

PATH = "/oauth/token"
REFRESH_SCOPES = frozenset({"offline_access", "online_access"})


# --- what authlib works on -------------------------------------------------------------------------


class CodeItem:
    """A claimed code, as authlib's grant and PKCE extension read it."""

    def __init__(self, record: storage.Code) -> None:
        self.record = record
        self.code_challenge = record.code_challenge
        self.code_challenge_method = record.code_challenge_method

    def get_redirect_uri(self) -> str | None:
        """The authorization request's `redirect_uri`; None when it gave none (the token request
        then need not either, RFC 6749 4.1.3)."""
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return self.record.grant.scope


class RefreshItem:
    def __init__(self, record: storage.Refresh) -> None:
        self.record = record

    def check_client(self, client: OAuthClient) -> bool:
        return self.record.grant.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.record.grant.scope


class S256Only(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 only (SMART 2.0): `plain` is never a way to redeem a code."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {
        "S256": lambda verifier, challenge: create_s256_code_challenge(verifier) == challenge
    }


class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["none", "private_key_jwt"]
    server: TokenServer

    def query_authorization_code(self, code: str, client: OAuthClient) -> CodeItem | None:
        record = self.server.issue.code
        if record is None or record.grant.client_id != client.get_client_id():
            return None
        if record.expires_at <= self.server.issue.now:
            return None
        if record.code_challenge_method not in (None, "S256"):
            return None
        given = self.request.payload.redirect_uri
        if record.redirect_uri is None and given and given not in client.record.redirect_uris:
            return None  # none was needed, but one that is not the client's is still wrong
        return CodeItem(record)

    def delete_authorization_code(self, authorization_code: CodeItem) -> None:
        return None  # claimed already, before authlib ran (storage.use_code)

    def authenticate_user(self, authorization_code: CodeItem) -> storage.Grant:
        return authorization_code.record.grant

    def save_authorization_code(self, code: str, request: Any) -> None:
        raise NotImplementedError("codes are made by the authorization endpoint")


class RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["none", "private_key_jwt"]
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: TokenServer

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshItem | None:
        record = self.server.issue.refresh
        return RefreshItem(record) if record is not None else None

    def authenticate_user(self, refresh_token: RefreshItem) -> storage.Grant:
        return refresh_token.record.grant

    def revoke_old_credential(self, refresh_token: RefreshItem) -> None:
        return None  # the rotation is the deferred write queued with the new token (`mint`)


class BackendGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    """SMART Backend Services: a confidential client with `private_key_jwt`, `system/` scopes
    only, no refresh token."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]
    server: TokenServer

    def validate_requested_scope(self) -> None:
        client: OAuthClient = self.request.client
        requested = (self.request.payload.scope or "").split()
        registered = client.record.scope.split()
        if not requested:
            requested = [s for s in registered if s.startswith("system/")]
        others = [s for s in requested if not s.startswith("system/")]
        if others:
            raise InvalidScopeError(f"only `system/` scopes are issued here, not `{others[0]}`")
        unregistered = [s for s in requested if s not in registered]
        if unregistered:
            raise InvalidScopeError(f"the client may not ask for `{unregistered[0]}`")
        if not requested:
            raise InvalidScopeError("the client has no `system/` scope")
        self.server.issue.backend_scope = " ".join(requested)


# --- minting -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Issue:
    """One token request: what was prefetched for the grant, and what was issued."""

    now: datetime
    code: storage.Code | None = None
    refresh: storage.Refresh | None = None
    backend_scope: str | None = None
    presented_refresh: str = ""  # the refresh token the request presents (rotated once issued)
    issued: dict[str, Any] = field(default_factory=dict)  # for the audit: grant, scope

    @property
    def grant(self) -> storage.Grant | None:
        """The person's grant the request redeems (a code or a refresh token), if any."""
        if self.code is not None:
            return self.code.grant
        return self.refresh.grant if self.refresh is not None else None


class TokenServer(Server):
    def __init__(self, rt: Runtime, conn: Connection, prefetched: Prefetched, issue: Issue) -> None:
        settings = rt.settings
        super().__init__(prefetched, [endpoint_url(settings, PATH)])
        self.rt = rt
        self.conn = conn
        self.issue = issue
        self.register_grant(CodeGrant, [S256Only(required=True)])
        self.register_grant(RefreshGrant)
        self.register_grant(BackendGrant)
        self.register_token_generator("default", self.mint)

    def mint(
        self,
        grant_type: str,
        client: OAuthClient,
        user: storage.Grant | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        settings = self.rt.settings
        keys = self.rt.keys
        assert keys is not None  # the routes exist only with the authorization server on
        now = self.issue.now
        lifetime = settings.oauth_access_token_seconds
        client_id = client.get_client_id()
        if user is None:  # client_credentials
            granted = self.issue.backend_scope or ""
            claims = issuer.access_token_claims(
                issuer=settings.public_base,
                audience=settings.public_base,
                subject=client_id,
                client_id=client_id,
                scope=granted,
                lifetime_seconds=lifetime,
                now=now.timestamp(),
            )
            self.issue.issued = {"scope": granted, "account": f"System/{client_id}"}
            return {
                "access_token": keys.sign(claims),
                "token_type": "Bearer",
                "expires_in": lifetime,
                "scope": granted,
            }
        granted = scope or user.scope
        claims = issuer.access_token_claims(
            issuer=settings.public_base,
            audience=settings.public_base,
            subject=user.subject,
            client_id=client_id,
            scope=granted,
            lifetime_seconds=lifetime,
            fhir_user=user.fhir_user,
            patient=user.patient,
            encounter=user.encounter,
            extra=user.claims,
            now=now.timestamp(),
        )
        token: dict[str, Any] = {
            "access_token": keys.sign(claims),
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": granted,
        }
        if user.patient:
            token["patient"] = user.patient
        if user.encounter:
            token["encounter"] = user.encounter
        code = self.issue.code
        if code is not None and "openid" in granted.split():
            token["id_token"] = keys.sign(
                issuer.id_token_claims(
                    issuer=settings.public_base,
                    client_id=client_id,
                    subject=user.subject,
                    lifetime_seconds=lifetime,
                    auth_time=code.auth_time.timestamp(),
                    fhir_user=user.fhir_user,
                    nonce=code.nonce,
                    now=now.timestamp(),
                )
            )
        if include_refresh_token and REFRESH_SCOPES & set(user.scope.split()):
            token["refresh_token"] = self._refresh(user)
        self.issue.issued = {
            "scope": granted,
            "account": user.fhir_user or user.subject,
            "patient": user.patient,
            "refresh": "refresh_token" in token,
        }
        return token

    def _refresh(self, grant: storage.Grant) -> str:
        """A new refresh token for `grant`, written after authlib answers: the rotation of the
        old one first (a refresh), then the new one in the same chain."""
        settings = self.rt.settings
        now = self.issue.now
        old = self.issue.refresh
        offline = "offline_access" in grant.scope.split()
        if offline:
            expires: datetime | None = now + timedelta(seconds=settings.oauth_refresh_token_seconds)
        elif old is not None:
            expires = old.expires_at  # online access ends with the sign-in it came from
        else:
            started = self.issue.code.auth_time if self.issue.code is not None else now
            expires = started + timedelta(seconds=settings.oauth_session_seconds)
        value = secrets.token_urlsafe(32)
        record = storage.Refresh(grant, old.chain if old else uuid.uuid4(), now, expires)
        conn = self.conn
        presented = self.issue.presented_refresh

        async def write() -> Answer | None:
            if old is not None:
                rotated, state = await storage.rotate_refresh(conn, presented, now)
                if state != "ok" or rotated is None:
                    return oauth_error("invalid_grant", "the refresh token was used concurrently")
            await storage.save_refresh(conn, value, record)
            return None

        self.prefetched.deferred.append(write)
        return value


# --- the route -----------------------------------------------------------------------------------


async def _prefetch_grant(
    conn: Connection, form: dict[str, str], issue: Issue
) -> tuple[Answer | None, str | None]:
    """Claim the code or look up the refresh token the request presents. A refusal found
    here (and its reason for the audit), or None to let authlib decide."""
    grant_type = form.get("grant_type")
    if grant_type == "authorization_code" and (code := form.get("code")):
        record, state = await storage.use_code(conn, code, issue.now)
        if state == "used":
            await storage.revoke_redemption(conn, code, issue.now)
            return oauth_error("invalid_grant", "the code was used before"), "code_reused"
        if record is not None and record.expires_at <= issue.now:
            return oauth_error("invalid_grant", "the code has expired"), "code_expired"
        if record is not None and not await storage.account_exists(conn, record.grant.subject):
            return oauth_error("invalid_grant", "the account no longer exists"), "account_gone"
        issue.code = record
    elif grant_type == "refresh_token" and (token := form.get("refresh_token")):
        active = await storage.active_refresh(conn, token, issue.now)
        if active is None:
            # Why not: a rotated token presented again, or one whose account is gone, revokes
            # its chain here.
            why = await storage.refresh_refused(conn, token, issue.now)
            return oauth_error("invalid_grant", "the refresh token is not valid"), f"refresh_{why}"
        issue.refresh = active
    return None, None


async def token_endpoint(request: Request) -> Response:
    rt = runtime(request)
    form_data = await read_form(request)
    form = {key: str(value) for key, value in form_data.items()}
    now = rt.clock()
    issue = Issue(now=now, presented_refresh=form.get("refresh_token", ""))
    claimed = claimed_client_id(form_data)
    answer: Answer | None = None
    reason: str | None = None
    if (problem := malformed(form_data)) is not None:
        answer, reason = oauth_error("invalid_request", problem), "malformed"
    elif (problem := conflicting_client_id(form_data)) is not None:
        answer, reason = oauth_error("invalid_client", problem), "invalid_client"
    prefetched = await prefetch_client(rt.db, form_data) if answer is None else Prefetched()
    if answer is None:
        async with rt.db.transaction() as conn:
            answer, reason = await _prefetch_grant(conn, form, issue)
            if answer is None:
                server = TokenServer(rt, conn, prefetched, issue)
                oauth_request = StarletteRequest(
                    request, form_data, endpoint_url(rt.settings, PATH)
                )
                answer = server.create_token_response(oauth_request)
                answer = await run_deferred(
                    prefetched,
                    answer,
                    lambda client_id, jti, exp: storage.first_use_of_assertion(
                        conn, client_id, jti, datetime.fromtimestamp(exp, now.tzinfo)
                    ),
                )
                if answer.status == 200 and (used := issue.grant) is not None:
                    # the account's "Connected apps" page says when the app last used it
                    patient = f"Patient/{used.patient}" if used.patient else None
                    await storage.approval_used(conn, used.subject, used.client_id, patient, now)
    await _audit(rt, form, claimed, issue, answer, reason)
    return to_response(answer)


async def _audit(
    rt: Runtime,
    form: dict[str, str],
    claimed: str | None,
    issue: Issue,
    answer: Answer,
    reason: str | None,
) -> None:
    grant_type = form.get("grant_type", "")
    event = "refresh" if grant_type == "refresh_token" else "token"
    grant = issue.grant
    patients = [f"Patient/{grant.patient}"] if grant is not None and grant.patient else []
    client = claimed or "unknown"
    if answer.status == 200:
        account = str(issue.issued.get("account") or f"System/{client}")
        if grant is not None and grant.fhir_user:
            account = grant.fhir_user
        await rt.audit.security_event(
            account=account,
            event=event,
            allowed=True,
            explanation=(
                f"{grant_type} for client `{client}`: scope `{issue.issued.get('scope', '')}`"
                + (", with a refresh token" if issue.issued.get("refresh") else "")
            ),
            patients=patients,
        )
        return
    account = grant.fhir_user if grant is not None and grant.fhir_user else f"System/{client}"
    await rt.audit.security_event(
        account=account,
        event=event,
        allowed=False,
        explanation=(
            f"{grant_type or 'no grant type'} refused for client `{client}`:"
            f" {answer.body.get('error_description') or answer.error}"
        ),
        patients=patients,
        reason=reason or answer.error,
    )


def install(app: FastAPI) -> None:
    app.add_api_route(PATH, token_endpoint, methods=["POST"], include_in_schema=False)
