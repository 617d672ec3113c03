"""`POST /oauth/introspect` (RFC 7662) and `POST /oauth/revoke` (RFC 7009), on authlib's
endpoints behind the adapter of fhir_server/oauth/server.py (docs/smart-token.md).

Introspection is for resource servers: the caller authenticates as a registered confidential
client (`private_key_jwt`, `aud` = this endpoint's URL or the token endpoint's) or with a `System`
bearer token that the server verifies like any other. An access token is active when the
server's verifier (the path of every FHIR request) accepts it; a refresh token while it is
neither rotated, revoked nor expired. A token of a local account that has been removed since
is not active either. Anything else: `{"active": false}`.

Revocation is for the client a token was issued to (`none` for public clients, `private_key_jwt`
for confidential ones). A refresh token revokes its whole chain, whichever token of the chain it
is (one already rotated too); an access token revokes the refresh tokens of the same account,
client and patient (the chain it came from among them). Access tokens are short-lived JWTs that
are not stored: one revoked stays valid until its `exp`.
Unknown tokens: 200, as RFC 7009 asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from fastapi import FastAPI, Request, Response

from fhir_server.api.deps import runtime
from fhir_server.api.runtime import Runtime
from fhir_server.api.smart import endpoint_url
from fhir_server.auth.tokens import Principal
from fhir_server.errors import FhirError
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
from fhir_server.oauth.token import PATH as TOKEN_PATH
from fhir_server.storage import oauth as storage
from fhir_server.storage.sql import Connection

INTROSPECT_PATH = "/oauth/introspect"
REVOKE_PATH = "/oauth/revoke"


@dataclass(frozen=True, slots=True)
class Presented:
    """The token a request presents, as far as the server knows it."""

    access: Principal | None
    refresh: storage.Refresh | None

    def check_client(self, client: OAuthClient) -> bool:
        owner = self.access.client_id if self.access is not None else None
        if self.refresh is not None:
            owner = self.refresh.grant.client_id
        return owner == client.get_client_id()

    def is_expired(self) -> bool:
        return False  # introspection looks up live tokens only; revocation wants every one

    def is_revoked(self) -> bool:
        return False


async def _presented(
    rt: Runtime, conn: Connection, token: str, now: datetime, *, revoking: bool
) -> Presented | None:
    """The token as introspection sees it (a refresh token only while it is live) or as
    revocation does (any refresh token this server issued, rotated ones too: each names its
    chain, and revoking any token of a chain revokes the chain)."""
    access: Principal | None = None
    if revoking:
        refresh = await storage.any_refresh(conn, token)
    else:
        refresh = await storage.active_refresh(conn, token, now)
    if refresh is None and token.count(".") == 2:
        try:
            access = rt.verifier.verify(token)
        except FhirError:
            access = None
        # a token of a local account that was removed since is not active any more
        if (
            access is not None
            and not revoking
            and not await storage.account_exists(conn, access.subject)
        ):
            access = None
    if access is None and refresh is None:
        return None
    return Presented(access, refresh)


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ["private_key_jwt", "system_bearer"]

    def __init__(self, server: Server, presented: Presented | None, issuer: str) -> None:
        super().__init__(server)
        self.presented = presented
        self.issuer = issuer

    def query_token(self, token_string: str, token_type_hint: str | None) -> Presented | None:
        return self.presented

    def check_permission(self, token: Presented, client: OAuthClient, request: Any) -> bool:
        return True  # any authenticated resource server may ask (the module docstring)

    def introspect_token(self, token: Presented) -> dict[str, Any]:
        if token.access is not None:
            claims = token.access.claims
            found = {
                key: claims[key]
                for key in ("scope", "client_id", "exp", "iat", "sub", "iss", "aud", "patient")
                if key in claims
            }
            for key in ("fhirUser", "encounter"):
                if key in claims:
                    found[key] = claims[key]
            return {"active": True, **found, "token_type": "Bearer"}
        assert token.refresh is not None
        grant = token.refresh.grant
        payload: dict[str, Any] = {
            "active": True,
            "scope": grant.scope,
            "client_id": grant.client_id,
            "iat": int(token.refresh.issued_at.timestamp()),
            "sub": grant.subject,
            "iss": self.issuer,
            "aud": self.issuer,
            "token_type": "refresh_token",
        }
        if token.refresh.expires_at is not None:
            payload["exp"] = int(token.refresh.expires_at.timestamp())
        if grant.patient:
            payload["patient"] = grant.patient
        if grant.fhir_user:
            payload["fhirUser"] = grant.fhir_user
        return payload


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ["none", "private_key_jwt"]

    def __init__(
        self, server: Server, presented: Presented | None, conn: Connection, now: datetime
    ) -> None:
        super().__init__(server)
        self.presented = presented
        self.conn = conn
        self.now = now
        self.revoked: Presented | None = None

    def query_token(self, token_string: str, token_type_hint: str | None) -> Presented | None:
        return self.presented

    def revoke_token(self, token: Presented, request: StarletteRequest) -> None:
        conn, now, value = self.conn, self.now, request.form["token"]
        self.revoked = token

        async def write() -> Answer | None:
            if token.refresh is not None:
                await storage.revoke_refresh(conn, value, token.refresh.grant.client_id, now)
            elif token.access is not None and token.access.client_id is not None:
                await storage.revoke_patient_grants(
                    conn, token.access.subject, token.access.client_id, token.access.patient, now
                )
            return None

        self.server.prefetched.deferred.append(write)


def _system_caller(rt: Runtime, request: Request) -> str | None:
    """The client id of a verified `System` bearer token, if the request carries one."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        return None
    try:
        principal = rt.verifier.verify(header[7:].strip())
    except FhirError:
        return None
    if not principal.is_system:
        return None
    return principal.client_id or principal.subject


async def _endpoint(request: Request, name: str) -> Response:
    rt = runtime(request)
    form_data = await read_form(request)
    now = rt.clock()
    path = INTROSPECT_PATH if name == "introspection" else REVOKE_PATH
    claimed = claimed_client_id(form_data)
    prefetched = Prefetched()
    answer: Answer | None = None
    if (problem := malformed(form_data)) is not None:
        answer = oauth_error("invalid_request", problem)
    elif (problem := conflicting_client_id(form_data)) is not None:
        answer = oauth_error("invalid_client", problem)
    else:
        prefetched = await prefetch_client(rt.db, form_data)
        if name == "introspection":
            prefetched.system_caller = _system_caller(rt, request)
    audiences = [endpoint_url(rt.settings, path), endpoint_url(rt.settings, TOKEN_PATH)]
    revoked: Presented | None = None
    if answer is None:
        async with rt.db.transaction() as conn:
            token = str(form_data.get("token") or "")
            presented = (
                await _presented(rt, conn, token, now, revoking=name == "revocation")
                if token
                else None
            )
            server = Server(prefetched, audiences)
            if name == "introspection":
                server.register_endpoint(Introspection(server, presented, rt.settings.public_base))
            else:
                revocation = Revocation(server, presented, conn, now)
                server.register_endpoint(revocation)
            oauth_request = StarletteRequest(request, form_data, endpoint_url(rt.settings, path))
            answer = server.create_endpoint_response(name, oauth_request)
            assert answer is not None
            answer = await run_deferred(
                prefetched,
                answer,
                lambda client_id, jti, exp: storage.first_use_of_assertion(
                    conn, client_id, jti, datetime.fromtimestamp(exp, now.tzinfo)
                ),
            )
            if name == "revocation":
                revoked = revocation.revoked
    caller = prefetched.system_caller or claimed or "unknown"
    event = "introspect" if name == "introspection" else "revoke"
    if answer.status == 200:
        explanation = f"{event} by client `{caller}`"
        patients: list[str] = []
        if revoked is not None:
            kind = "refresh token chain" if revoked.refresh is not None else "access token's grants"
            explanation = f"client `{caller}` revoked a {kind}"
            patient = (
                revoked.refresh.grant.patient
                if revoked.refresh is not None
                else revoked.access.patient
                if revoked.access is not None
                else None
            )
            patients = [f"Patient/{patient}"] if patient else []
        elif name == "introspection":
            explanation += f": {'active' if answer.body.get('active') else 'inactive'} token"
        account = f"System/{caller}"
        if revoked is not None:
            owner = (
                revoked.refresh.grant.fhir_user
                if revoked.refresh is not None
                else revoked.access.fhir_user
                if revoked.access is not None
                else None
            )
            account = owner or account
        await rt.audit.security_event(
            account=account,
            event=event,
            allowed=True,
            explanation=explanation,
            patients=patients,
        )
    else:
        await rt.audit.security_event(
            account=f"System/{caller}",
            event=event,
            allowed=False,
            explanation=f"{event} refused for client `{caller}`:"
            f" {answer.body.get('error_description') or answer.error}",
            reason=answer.error,
        )
    return to_response(answer)


async def introspect(request: Request) -> Response:
    return await _endpoint(request, "introspection")


async def revoke(request: Request) -> Response:
    return await _endpoint(request, "revocation")


def install(app: FastAPI) -> None:
    app.add_api_route(INTROSPECT_PATH, introspect, methods=["POST"], include_in_schema=False)
    app.add_api_route(REVOKE_PATH, revoke, methods=["POST"], include_in_schema=False)
