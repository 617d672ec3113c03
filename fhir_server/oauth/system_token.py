"""The callers of the authorization server's administrative endpoints (`POST /oauth/register`,
`POST /oauth/launch`): a System client, proved by a bearer token with `system/` scopes and no
user, verified as every FHIR request's token is (the identity provider's or this server's own).

Answers are OAuth JSON, `{error, error_description}`: RFC 6750 3.1 for the token
(`invalid_token` 401 with `WWW-Authenticate`, `insufficient_scope` 403), RFC 7591 and RFC 6749
codes for the rest. Every refusal is a security event in the audit trail, written before the
answer; no token, code or launch value ever goes into one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import Request, Response

from fhir_server.api.deps import runtime
from fhir_server.auth.tokens import Principal, bearer
from fhir_server.errors import Unauthorized

# Bodies of these endpoints are small JSON documents or forms.
MAX_BODY = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
UNAUTHENTICATED = "System/unauthenticated"


class Refusal(Exception):
    """An answer other than success: status, OAuth error code, words for the developer."""

    def __init__(
        self, status: int, error: str, description: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.headers = headers or {}

    def response(self) -> Response:
        body = orjson.dumps({"error": self.error, "error_description": self.description})
        return Response(
            body,
            status_code=self.status,
            media_type="application/json",
            headers={**NO_STORE, **self.headers},
        )


def account_of(principal: Principal | None) -> str:
    """Who the audit trail names: the user, or `System/<client id>`; a caller without a valid
    token is `System/unauthenticated` (an identifier, as the trail writes System callers)."""
    if principal is None:
        return UNAUTHENTICATED
    return principal.fhir_user or f"System/{principal.client_id or principal.subject}"


def system_caller(request: Request) -> Principal:
    """The verified System client of this request; `Refusal` otherwise."""
    try:
        principal = runtime(request).verifier.verify(bearer(request.headers.get("authorization")))
    except Unauthorized as exc:
        description = exc.issues[0].diagnostics if exc.issues else "the bearer token is not valid"
        quoted = description.replace("\\", "").replace('"', "'")
        raise Refusal(
            401,
            "invalid_token",
            description,
            {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{quoted}"'},
        ) from None
    if not principal.is_system:
        raise Caller(principal)
    return principal


class Caller(Refusal):
    """A valid token that is not a System client's: 403, and the audit trail names who."""

    def __init__(self, principal: Principal) -> None:
        super().__init__(
            403,
            "insufficient_scope",
            "only a System client (a token with `system/` scopes and no user) may do this",
            {"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="system/*.cruds"'},
        )
        self.principal = principal


async def read_json_or_form(request: Request, *, form: bool) -> dict[str, Any]:
    """The body as a JSON object (or, with `form`, also as a urlencoded form); `Refusal` 400."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise Refusal(413, "invalid_request", f"the body may hold at most {MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise Refusal(413, "invalid_request", f"the body may hold at most {MAX_BODY} bytes")
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if form and media == "application/x-www-form-urlencoded":
        try:
            fields = parse_qs(raw.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise Refusal(400, "invalid_request", "the form is not UTF-8") from None
        repeated = sorted(name for name, values in fields.items() if len(values) > 1)
        if repeated:
            raise Refusal(400, "invalid_request", f"`{repeated[0]}` is given more than once")
        return {name: values[0] for name, values in fields.items()}
    if media not in ("application/json", ""):
        wanted = "`application/json` or a form" if form else "`application/json`"
        raise Refusal(400, "invalid_request", f"send {wanted}, not `{media}`")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Refusal(400, "invalid_request", "the body is not JSON") from None
    if not isinstance(document, dict):
        raise Refusal(400, "invalid_request", "the body must be a JSON object")
    return document
