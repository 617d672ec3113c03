"""authlib's OAuth 2.0 server pieces behind a thin Starlette adapter of our own (authlib has no
FastAPI integration).

authlib's grants and endpoints are synchronous: they call `query_client`, `query_authorization_code`,
`authenticate_refresh_token`, `save_token`, ... and expect answers at once. The database is async.
So one request goes in three steps, and this module holds the pieces of each:

1. **Prefetch** (async, by the route): everything authlib will ask for is loaded first: the form
   (`read_form`), the client named by `client_id` or by the client assertion's `sub`
   (`claimed_client_id`) and its JWKS (`client_keys`, fetched from `jwks_uri` or taken from the
   row), the code (claimed at once by `storage.use_code`: a code is good for one attempt only), the
   refresh token's record. They go into a `Prefetched`.
2. **authlib** (sync): a `Server` made for this one request (cheap: a few objects) answers from
   the `Prefetched` only, never from the database; what it wants written (a refresh token and
   the rotation of the old one, a revocation) it puts in `Prefetched.deferred`, the client
   assertion's `jti` in `Prefetched.assertion`.
3. **Deferred writes** (async, same transaction): `run_deferred` records the `jti`, then runs
   the writes in order, after a successful answer only; one of them may still refuse (a replayed `jti`, a refresh token rotated by
   a concurrent request), and then its refusal replaces authlib's answer and the later writes are
   skipped. Nothing secret was written by then: access tokens are not stored at all.

Answers are `Answer(status, body, headers)`; `to_response` renders them (no-store, no-cache).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jwt
import orjson
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    InvalidClientError,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.storage.database import Database
from fhir_server.storage.oauth import Client, get_client

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART Backend Services' two (what discovery announces). Never symmetric (HS*) nor `none`: the
# verifier is given only these, whatever the assertion's header says.
ASSERTION_ALGORITHMS: tuple[str, ...] = ("RS384", "ES384")
# How far ahead of now a client assertion's `exp` may be (SMART: at most five minutes).
ASSERTION_MAX_SECONDS = 300
ASSERTION_LEEWAY_SECONDS = 60
JWKS_MAX_BYTES = 64 * 1024
MAX_FIELDS = 50
JWKS_TIMEOUT_SECONDS = 5.0
# For authlib's errors raised without a description.
DESCRIPTIONS = {
    "invalid_grant": "the code or refresh token is not valid for this client",
    "invalid_scope": "the scope asked for is not allowed",
    "invalid_client": "the client could not be authenticated",
    "invalid_request": "the request is missing a parameter or repeats one",
    "unauthorized_client": "the client may not use this grant type",
    "unsupported_grant_type": "the grant type is not supported",
    "unsupported_token_type": "the token type is not supported",
}
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        value = self.body.get("error") if self.status >= 400 else None
        return str(value) if value is not None else None


def oauth_error(error: str, description: str, status: int = 400) -> Answer:
    """An RFC 6749 error answer. `invalid_client` is 401 with a `WWW-Authenticate` challenge."""
    headers: dict[str, str] = {}
    if error == "invalid_client":
        status = 401
        headers["WWW-Authenticate"] = (
            f'Bearer error="invalid_client", error_description="{_quote(description)}"'
        )
    return Answer(status, {"error": error, "error_description": description}, headers)


def _quote(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")


def to_response(answer: Answer) -> Response:
    """The one renderer of OAuth answers (tokens, introspection, revocation, their errors)."""
    if answer.error == "invalid_client" and answer.status != 401:
        answer = oauth_error("invalid_client", str(answer.body.get("error_description", "")))
    headers = {**answer.headers, **NO_STORE}
    headers.pop("Content-Type", None)
    headers.pop("content-type", None)
    return Response(
        orjson.dumps(answer.body),
        status_code=answer.status,
        headers=headers,
        media_type="application/json",
    )


# --- the request --------------------------------------------------------------------------------


async def read_form(request: Request) -> FormData:
    """The form of an OAuth POST (`application/x-www-form-urlencoded`; anything else is empty)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return FormData()
    # parsed here: Starlette's form parser needs python-multipart, for this one simple format
    try:
        pairs: list[tuple[str, str | UploadFile]] = parse_qsl(  # type: ignore[assignment]
            (await request.body()).decode(), keep_blank_values=True, max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        return FormData()
    return FormData(pairs)


def malformed(form: FormData) -> str | None:
    """What is wrong with the form as a whole: a repeated parameter, a NUL character (which no
    client sends and PostgreSQL text cannot hold)."""
    if (param := repeated(form)) is not None:
        return f"`{param}` is repeated"
    if any("\x00" in key or "\x00" in str(value) for key, value in form.multi_items()):
        return "the form holds a NUL character"
    return None


def repeated(form: FormData) -> str | None:
    """The first parameter given more than once (RFC 6749 3.2: parameters MUST NOT repeat)."""
    seen: set[str] = set()
    for key, _ in form.multi_items():
        if key in seen:
            return key
        seen.add(key)
    return None


class StarletteRequest(OAuth2Request):  # type: ignore[misc]
    """authlib's view of a Starlette request whose form was read already."""

    def __init__(self, request: Request, form: FormData, uri: str) -> None:
        super().__init__(request.method, uri, headers=dict(request.headers))
        values = {key: str(value) for key, value in form.items()}
        self._form = values
        self.payload = BasicOAuth2Payload(values)
        self._args = dict(request.query_params)

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return self._args


def claimed_client_id(form: FormData) -> str | None:
    """The client a token request says it is: the assertion's `sub` (unverified: it only picks
    the keys to verify it with), else `client_id`."""
    assertion = form.get("client_assertion")
    if form.get("client_assertion_type") == ASSERTION_TYPE and isinstance(assertion, str):
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return None
        sub = claims.get("sub")
        return sub if isinstance(sub, str) else None
    client_id = form.get("client_id")
    return client_id if isinstance(client_id, str) and client_id else None


def conflicting_client_id(form: FormData) -> str | None:
    """What is wrong when a client assertion and a `client_id` parameter name different clients
    (RFC 7521 4.2: the `client_id`, when given, MUST identify the same client as the assertion;
    `invalid_client`). None when they agree or only one is given."""
    assertion = form.get("client_assertion")
    given = form.get("client_id")
    if form.get("client_assertion_type") != ASSERTION_TYPE or not isinstance(assertion, str):
        return None
    if given is None or given == "":
        return None
    claimed = claimed_client_id(form)
    if claimed is None or given != claimed:
        return "`client_id` names another client than the client assertion's `sub`"
    return None


async def client_keys(client: Client) -> dict[str, Any] | None:
    """The public JWKS of a confidential client: its registered set, else fetched from its
    `jwks_uri` (each time: backend services ask for tokens rarely, and rotation then just works).
    None when it cannot be had."""
    if client.jwks is not None:
        return client.jwks
    if not client.jwks_uri:
        return None
    try:
        async with httpx.AsyncClient(timeout=JWKS_TIMEOUT_SECONDS) as http:
            answer = await http.get(client.jwks_uri, headers={"Accept": "application/json"})
    except httpx.HTTPError:
        return None
    if answer.status_code != 200 or len(answer.content) > JWKS_MAX_BYTES:
        return None
    try:
        document = orjson.loads(answer.content)
    except orjson.JSONDecodeError:
        return None
    return (
        document if isinstance(document, dict) and isinstance(document.get("keys"), list) else None
    )


async def prefetch_client(db: Database, form: FormData) -> Prefetched:
    """The client the request names, with its keys when it is confidential."""
    prefetched = Prefetched()
    claimed = claimed_client_id(form)
    if claimed is None:
        return prefetched
    async with db.connection() as conn:
        record = await get_client(conn, claimed)
    if record is not None:
        jwks = await client_keys(record) if record.kind == "confidential" else None
        prefetched.client = OAuthClient(record, jwks)
    return prefetched


# --- the client, as authlib sees it ---------------------------------------------------------------


class OAuthClient(ClientMixin):  # type: ignore[misc]
    """A registered client: public clients authenticate with `none` (their `client_id`, and PKCE
    for codes), confidential ones with `private_key_jwt` only (no client secrets here)."""

    def __init__(self, record: Client, jwks: dict[str, Any] | None) -> None:
        self.record = record
        self.jwks = jwks

    def get_client_id(self) -> str:
        return self.record.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.record.redirect_uris[0] if len(self.record.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = set(self.record.scope.split())
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.record.redirect_uris  # exact match only

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.record.kind == "public":
            return method == "none"
        return method in ("private_key_jwt", "system_bearer")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.record.grant_types


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 client authentication, as SMART Backend Services asks: an asymmetric signature
    by a key of the client's JWKS, `aud` = the endpoint's URL, `exp` at most five minutes ahead,
    `jti` once (recorded by a deferred write: `Prefetched.remember_jti`)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, audiences: list[str], prefetched: Prefetched) -> None:
        super().__init__(validate_jti=True, leeway=ASSERTION_LEEWAY_SECONDS)
        self.audiences = audiences
        self.prefetched = prefetched

    def get_audiences(self) -> list[str]:
        return self.audiences

    def resolve_client_public_key(self, client: OAuthClient) -> KeySet:
        if not client.jwks:
            raise InvalidClientError(description="the client's keys cannot be loaded")
        try:
            return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError):
            raise InvalidClientError(description="the client's keys are not a valid JWKS") from None

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            token = jose_jwt.decode(assertion, resolve_key, algorithms=list(ASSERTION_ALGORITHMS))
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(
                description="the client assertion's signature is not valid"
            ) from exc
        claims: dict[str, Any] = dict(token.claims)
        self.verify_claims(claims)
        return claims

    def verify_claims(self, claims: Any) -> None:
        super().verify_claims(claims)
        exp = claims.get("exp")
        if (
            not isinstance(exp, int | float)
            or exp > time.time() + ASSERTION_MAX_SECONDS + ASSERTION_LEEWAY_SECONDS
        ):
            raise InvalidClientError(
                description="the client assertion's `exp` is more than 5 minutes ahead"
            )

    def validate_jti(self, claims: Any, jti: Any) -> bool:
        if not isinstance(jti, str) or not jti:
            return False
        self.prefetched.assertion = (str(claims["sub"]), jti, float(claims["exp"]))
        return True


# --- the per-request server ----------------------------------------------------------------------

Deferred = Callable[[], Awaitable[Answer | None]]


@dataclass(slots=True)
class Prefetched:
    """What authlib may ask for in one request, loaded before it runs, and what it asked to
    write, run after it (`deferred`, in order)."""

    client: OAuthClient | None = None
    # a `System/` bearer token's client id (introspection by a resource server)
    system_caller: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    assertion: tuple[str, str, float] | None = None  # (client id, jti, exp) to record once
    deferred: list[Deferred] = field(default_factory=list)


class Server(AuthorizationServer):  # type: ignore[misc]
    """An authlib `AuthorizationServer` for one request, answering from `prefetched`."""

    def __init__(self, prefetched: Prefetched, audiences: list[str]) -> None:
        super().__init__(scopes_supported=None)
        self.prefetched = prefetched
        self.register_client_auth_method("private_key_jwt", PrivateKeyJWT(audiences, prefetched))
        self.register_client_auth_method("system_bearer", self._system_bearer)

    def query_client(self, client_id: str) -> OAuthClient | None:
        client = self.prefetched.client
        return client if client is not None and client.get_client_id() == client_id else None

    def _system_bearer(self, query_client: Any, request: OAuth2Request) -> OAuthClient | None:
        """A caller with a verified `System` bearer token (a resource server): a client of the
        identity provider's or ours, registered here or not."""
        caller = self.prefetched.system_caller
        if caller is None:
            return None
        record = Client(caller, "system caller", "confidential", (), "", (), ())
        return OAuthClient(record, None)

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> Answer:
        values = dict(body or {})
        if status >= 400 and not values.get("error_description"):
            values["error_description"] = DESCRIPTIONS.get(str(values.get("error")), "refused")
        return Answer(status, values, dict(headers or []))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        return None  # access tokens are JWTs, never stored; refresh tokens are deferred writes


async def run_deferred(
    prefetched: Prefetched,
    answer: Answer,
    first_use: Callable[[str, str, float], Awaitable[bool]],
) -> Answer:
    """The writes authlib asked for, after a successful answer; the first refusal wins. The
    client assertion's `jti` goes first (`first_use(client_id, jti, exp)`): a replay is refused
    before anything else is written."""
    if answer.status != 200:
        return answer
    if prefetched.assertion is not None and not await first_use(*prefetched.assertion):
        return oauth_error("invalid_client", "the client assertion's `jti` was used before")
    for write in prefetched.deferred:
        refusal = await write()
        if refusal is not None:
            return refusal
    return answer
