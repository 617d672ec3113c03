"""Request dependencies, as Annotated aliases. No permission logic lives in route handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from starlette.datastructures import Headers

from capability.definitions import resource_types
from fhir_server.api.observability import ACTOR
from fhir_server.api.routing import read_after, routed
from fhir_server.api.runtime import Runtime
from fhir_server.auth.tokens import Principal, bearer
from fhir_server.errors import (
    FhirError,
    NotAcceptable,
    NotSupported,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from fhir_server.services.access.guard import Guard, load_guard
from fhir_server.services.context import Context, nobody
from fhir_server.services.interactions.versions import parse_json
from fhir_server.services.offload import HEAVY, HEAVY_BYTES, in_thread
from fhir_server.storage.database import Database
from fhir_server.storage.sql import Connection

JSON_TYPES = frozenset({"application/fhir+json", "application/json"})
PATCH_TYPES = frozenset({"application/json-patch+json"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded"})
# UTF-8, the only charset of FHIR bodies, by its name and its common alias (any case)
UTF8_NAMES = frozenset({"utf-8", "utf8"})
# The values of the `fhirVersion` media type parameter that mean R4 (http.html#version-parameter).
FHIR_VERSIONS = frozenset({"4.0", "4.0.1"})
_PLAIN_ACCEPTS = frozenset({"application/fhir+json", "application/json", "*/*"})
_FORMAT_ALIASES = {"json": "application/fhir+json", "application/json": "application/fhir+json"}
_XML_HINTS = ("xml", "turtle", "ttl")


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Interaction:
    """What a FHIR handler works with: the database, the request's context, `Prefer: return`,
    and the verified caller, whose guard `authorized(conn)` loads."""

    db: Database
    ctx: Context
    prefer: str
    lenient: bool  # `Prefer: handling=lenient`: unknown search parameters are ignored
    runtime: Runtime
    principal: Principal
    purpose_of_use: str | None = None
    reason: str | None = None
    # the client's read-your-writes token (`X-FHIR-Read-After`; read only with replicas)
    read_after: int | None = None

    def authorized(self, conn: Connection, *, optimistic: bool = False) -> Authorized:
        """`async with fhir.authorized(conn) as ctx`: the context with the caller's guard
        (identities and facts loaded on `conn`); every decision made under it is audited when
        the block ends, denials before the response. `optimistic` (read only): cached facts
        come unverified, and the read verifies them in its own statement (services/interactions/read.py)."""
        return Authorized(self, conn, optimistic)

    def routed(
        self,
        conn: Connection,
        ctx: Context,
        work: Callable[[Connection], Awaitable[T]],
        *,
        verifies: bool = False,
    ) -> Awaitable[T]:
        """`work` (a read's data statements) on a replica when one may serve it, else on
        `conn` (api/routing.py `routed`)."""
        return routed(self.runtime, conn, ctx, self.read_after, work, verifies=verifies)


class Authorized:
    """The block of `Interaction.authorized` (a class: cheaper per request than a generator
    context manager)."""

    __slots__ = ("conn", "fhir", "guard", "optimistic")

    def __init__(self, fhir: Interaction, conn: Connection, optimistic: bool) -> None:
        self.fhir = fhir
        self.conn = conn
        self.optimistic = optimistic
        self.guard: Guard | None = None

    async def __aenter__(self) -> Context:
        fhir = self.fhir
        settings = fhir.ctx.settings
        self.guard = await load_guard(
            self.conn,
            fhir.principal,
            fhir.runtime.policy,
            now=fhir.ctx.clock(),
            majority_age=settings.majority_age,
            emergency_bypass=settings.emergency_bypass,
            admin_role=settings.auth_admin_role,
            purpose_of_use=fhir.purpose_of_use,
            reason=fhir.reason,
            cache=fhir.runtime.facts,
            optimistic=self.optimistic,
            local_bases=fhir.ctx.reference_bases,
        )
        return replace(fhir.ctx, guard=self.guard)

    async def __aexit__(self, *exc: object) -> None:
        if self.guard is not None:
            await self.fhir.runtime.audit.record(self.guard)


def interaction(request: Request) -> Interaction:
    """What every FHIR route starts from: its one dependency (each dependency costs FastAPI time
    per request), or called directly by the hottest routes.

    It answers 406 to a format other than JSON, and 404 to a `{type}` in the path that is not an
    R4 resource type, so handlers can take `type` as it comes.
    """
    negotiate(request)
    type = request.path_params.get("type")
    if type is not None and type not in resource_types():
        raise NotSupported(f"resource type `{type}` is not supported", code="not-supported")
    rt = runtime(request)
    headers = request.headers
    principal = rt.verifier.verify(bearer(headers.get("authorization")))
    ACTOR.set(principal.fhir_user or f"System/{principal.client_id or principal.subject}")
    ctx = request_context(request, rt)
    prefer = prefer_of(headers)
    return Interaction(
        rt.db,
        ctx,
        prefer_return(prefer),
        _prefers(prefer, "handling", "lenient"),
        rt,
        principal,
        purpose_of_use=headers.get("x-purpose-of-use"),
        reason=headers.get("x-break-glass-reason"),
        read_after=read_after(request) if rt.replicas is not None else None,
    )


async def _interaction_dependency(request: Request) -> Interaction:
    return interaction(request)


FhirInteraction = Annotated[Interaction, Depends(_interaction_dependency)]


def request_context(request: Request, rt: Runtime) -> Context:
    """A request's context before its caller's guard is loaded (`Interaction.authorized`)."""
    return Context(
        settings=rt.settings,
        validator=rt.validator,
        base_url=base_url(request, rt),
        clock=rt.clock,
        guard=nobody(),
    )


def base_url(request: Request, rt: Runtime) -> str:
    """The FHIR base as the client addressed it (FHIR_BASE_URL overrides)."""
    if rt.settings.base_url:
        return rt.settings.base_url
    # What starlette's request.base_url gives, without building a URL object per request.
    scope = request.scope
    host = request.headers.get("host")
    if host is None:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    return f"{scope['scheme']}://{host}{scope.get('root_path', '').rstrip('/')}/fhir"


def negotiate(request: Request) -> None:
    """Only JSON of FHIR R4 is produced: XML, another format or another FHIR version asked for
    gets 406 with a clear message."""
    wanted = request.query_params.get("_format")
    if wanted is not None:
        # A `+` written unencoded in the URL arrives as a space (`application/fhir json`).
        media_type, semicolon, parameters = wanted.partition(";")
        media_type = media_type.strip().replace(" ", "+")
        media, params = parse_media_type(
            _FORMAT_ALIASES.get(media_type, media_type) + semicolon + parameters
        )
        if media not in JSON_TYPES:
            raise NotAcceptable(
                f"`_format={wanted}` is not supported: this server speaks JSON only",
                expression=("http._format",),
            )
        _check_version(params, f"`_format={wanted}`", NotAcceptable, "http._format")
        return
    accept = request.headers.get("accept")
    if not accept or accept in _PLAIN_ACCEPTS:  # most requests, without parsing (a read's path)
        return
    acceptable = False
    for part in accept.split(","):
        media, params = parse_media_type(part)
        if media in JSON_TYPES or media in {"*/*", "application/*"}:
            version = params.get("fhirversion")
            if version is None or version in FHIR_VERSIONS or media not in JSON_TYPES:
                acceptable = True
    if acceptable:
        return
    versions = [
        params["fhirversion"]
        for media, params in map(parse_media_type, accept.split(","))
        if media in JSON_TYPES and "fhirversion" in params
    ]
    if versions:
        raise NotAcceptable(
            f"`Accept: {accept}` cannot be served: this server speaks FHIR 4.0 only "
            f"(`fhirVersion={versions[0]}` asked for)",
            expression=("http.Accept",),
        )
    raise NotAcceptable(
        f"`Accept: {accept}` cannot be served: this server speaks JSON only "
        "(`application/fhir+json`)",
        expression=("http.Accept",),
    )


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """A `Content-Type` or one `Accept` entry: its media type (lower case) and its parameters
    (names in lower case, values unquoted)."""
    media, *rest = value.split(";")
    params: dict[str, str] = {}
    for part in rest:
        name, _, given = part.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        given = given.strip()
        if len(given) >= 2 and given[0] == given[-1] == '"':
            given = given[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[name] = given
    return media.strip().lower(), params


def _check_version(
    params: dict[str, str], where: str, error: type[FhirError], expression: str
) -> None:
    version = params.get("fhirversion")
    if version is not None and version not in FHIR_VERSIONS:
        raise error(
            f"{where} names `fhirVersion={version}`: this server speaks FHIR 4.0 (4.0.1) only",
            expression=(expression,),
        )


def body_media_type(request: Request, accepted: Collection[str], hint: str) -> str | None:
    """The media type of the request body, one of `accepted` (or None when the request names
    none), else 415. Every body is UTF-8 (FHIR R4 http.html): a `charset` other than UTF-8
    is 415 too, as is a `fhirVersion` other than R4's. Other parameters are ignored."""
    value = request.headers.get("content-type")
    if value is None:
        return None
    media, params = parse_media_type(value)
    if media not in accepted:
        if any(h in media for h in _XML_HINTS):
            message = f"`Content-Type: {media}` is not supported: send {hint}"
        else:
            message = f"`Content-Type: {media}` is not supported here: send {hint}"
        raise UnsupportedMediaType(message, expression=("http.Content-Type",))
    charset = params.get("charset")
    if charset is not None and charset.lower() not in UTF8_NAMES:
        raise UnsupportedMediaType(
            f"`Content-Type: {value}` is not supported: the body must be UTF-8 "
            "(`charset=utf-8`, or no charset)",
            expression=("http.Content-Type",),
        )
    _check_version(params, f"`Content-Type: {value}`", UnsupportedMediaType, "http.Content-Type")
    return media


def prefer_of(headers: Headers) -> str | None:
    """Every `Prefer` field line of a request, joined into the one list they are (RFC 7240 2,
    RFC 9110 5.3). `getlist` is also the cheaper look-up when the header is absent, as on most
    reads (no KeyError raised and caught)."""
    values = headers.getlist("prefer")
    return ", ".join(values) if values else None


def prefer_return(prefer: str | None) -> str:
    """`Prefer: return=minimal|representation|OperationOutcome`; representation by default."""
    for value in ("minimal", "OperationOutcome"):
        if _prefers(prefer, "return", value):
            return value
    return "representation"


def _prefers(prefer: str | None, name: str, value: str) -> bool:
    """Whether `prefer` (the `Prefer` fields, joined) holds the preference `name=value`. Names
    are compared without regard to case, values exactly (RFC 7240 2): `HANDLING=lenient` is
    lenient, `handling=LENIENT` is an unknown value, ignored as RFC 7240 asks."""
    if prefer is None:
        return False
    for part in prefer.replace(",", ";").split(";"):
        key, _, given = part.strip().partition("=")
        if key.strip().lower() == name and given.strip().strip('"') == value:
            return True
    return False


async def read_body(request: Request) -> bytes:
    """The request body, refusing more than the configured limit before reading it all. A
    large body marks the request heavy: its CPU work leaves the event loop (services/offload.py)."""
    limit = runtime(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    if size >= HEAVY_BYTES:
        HEAVY.set(True)
    return b"".join(chunks)


async def json_body(request: Request) -> Any:
    """A client's JSON body, parsed and held to the input limits (docs/limits.md)."""
    return await client_json(request, await read_body(request))


async def client_json(request: Request, raw: bytes) -> Any:
    """`raw`, a client's JSON, parsed and held to the input limits; off the event loop when large."""
    limits = runtime(request).limits
    if len(raw) >= HEAVY_BYTES:
        return await in_thread(parse_json, raw, limits)
    return parse_json(raw, limits)


async def resource_body(request: Request) -> Any:
    """A JSON resource body: `application/fhir+json` or `application/json` (or no type at all)."""
    body_media_type(request, JSON_TYPES, "`application/fhir+json`")
    return await json_body(request)


ResourceBody = Annotated[Any, Depends(resource_body)]


async def patch_body(request: Request) -> Any:
    media = body_media_type(request, PATCH_TYPES, "`application/json-patch+json`")
    if media is None:
        raise UnsupportedMediaType(
            "a patch needs `Content-Type: application/json-patch+json`",
            expression=("http.Content-Type",),
        )
    return await json_body(request)


PatchBody = Annotated[Any, Depends(patch_body)]
