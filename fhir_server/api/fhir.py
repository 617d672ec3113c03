"""The FHIR REST API under /fhir. Handlers translate HTTP to a service call and back, nothing more."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Header, Request, Response
from fastapi.routing import APIRoute
from psycopg.pq import TransactionStatus
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from capability.definitions import resource_types
from capability.statement import capability_statement
from compartments.ids import ID_REGEX
from fhir_server.api import smart
from fhir_server.api.deps import (
    FORM_TYPES,
    FhirInteraction,
    Interaction,
    PatchBody,
    ResourceBody,
    base_url,
    body_media_type,
    interaction,
    negotiate,
    read_body,
    runtime,
)
from fhir_server.api.errors import status_of
from fhir_server.api.idempotency import Idempotent
from fhir_server.api.responses import fhir_response, read_response, write_response
from fhir_server.errors import (
    BadRequest,
    MethodNotAllowed,
    NotSupported,
    UnsupportedMediaType,
)
from fhir_server.search.query import capabilities as search_capabilities
from fhir_server.services.formats.etags import etag
from fhir_server.services.formats.operation_outcome import information
from fhir_server.services.interactions import (
    batch,
    conditional,
    create,
    delete,
    history,
    patch,
    read,
    search,
    update,
)
from fhir_server.services.interactions.update import parse_if_match
from fhir_server.services.interactions.versions import json_bytes
from fhir_server.services.workflows import explain_access as explaining
from fhir_server.services.workflows import family
from fhir_server.storage.sql import Connection

T = TypeVar("T")

COMPARTMENTS = frozenset({"Patient", "Encounter", "RelatedPerson", "Practitioner", "Device"})

IfMatch = Annotated[str | None, Header(alias="If-Match")]
IfNoneExist = Annotated[str | None, Header(alias="If-None-Exist")]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


async def metadata(request: Request) -> Response:
    """The CapabilityStatement: public, as SMART clients read it before they have a token."""
    negotiate(request)
    rt = runtime(request)
    settings = rt.settings
    statement = capability_statement(
        base_url=base_url(request, rt),
        update_create=settings.update_create,
        date=rt.clock().date().isoformat(),
        search=search_capabilities,
        oauth=smart.oauth_uris(settings),
    )
    return fhir_response(orjson.dumps(statement))


async def batch_or_transaction(
    fhir: FhirInteraction, body: ResourceBody, idempotency_key: IdempotencyKey = None
) -> Response:
    async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
        key = Idempotent(
            ctx, conn, "POST /fhir", idempotency_key, _fingerprinted(idempotency_key, body)
        )
        if (replay := await key.replay()) is not None:
            return replay
        result = await batch.process(ctx, conn, body, prefer=fhir.prefer, status_of=status_of)
        return await key.keep(fhir_response(result))


def _fingerprinted(key: str | None, body: Any) -> bytes:
    """What an `Idempotency-Key` on a FHIR POST must find again: the body as parsed, so that
    formatting alone does not make it another body."""
    return json_bytes(body) if key else b""


async def explain_access(fhir: FhirInteraction, body: ResourceBody) -> Response:
    """`POST [base]/$explain-access`: the engine's decision, explained, nothing done."""
    async with fhir.db.connection() as conn, fhir.authorized(conn) as ctx:
        answer = await explaining.explain(ctx, conn, body)
    return fhir_response(json_bytes(answer))


async def add_dependent(fhir: FhirInteraction, id: str, body: ResourceBody) -> Response:
    """`POST Patient/{id}/$add-dependent` (docs/family.md)."""
    answer = await run_add_dependent(fhir, id, family.add_request(body))
    return fhir_response(json_bytes(answer), 201)


async def run_add_dependent(
    fhir: Interaction, primary_id: str, request: family.AddRequest
) -> dict[str, Any]:
    """Add a dependent (FHIR operation and GraphQL mutation alike). The Client Registry is asked
    before the transaction opens, so no transaction waits on the network, and only for the
    primary."""
    registered = None
    if fhir.runtime.registry is not None and request.national_id is not None:
        async with fhir.db.connection() as conn, fhir.authorized(conn) as ctx:
            family.require_manager(ctx.guard, f"Patient/{primary_id}")
            registered = await family.registered_dependent(
                ctx, conn, request, fhir.runtime.registry
            )
    async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
        return await family.add_dependent(ctx, conn, primary_id, request, registered=registered)


async def remove_dependent(fhir: FhirInteraction, id: str, body: ResourceBody) -> Response:
    """`POST Patient/{id}/$remove-dependent` (docs/family.md)."""
    async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
        answer = await family.remove_dependent(ctx, conn, id, body)
    return fhir_response(json_bytes(answer))


async def family_of(fhir: FhirInteraction, id: str) -> Response:
    """`GET Patient/{id}/$family` (docs/family.md)."""
    async with fhir.db.connection() as conn, fhir.authorized(conn) as ctx:
        answer = await family.family(ctx, conn, id)
    return fhir_response(json_bytes(answer))


async def emergency_contacts(fhir: FhirInteraction, id: str) -> Response:
    """`GET Patient/{id}/$emergency-contacts` (docs/family.md)."""
    async with fhir.db.connection() as conn, fhir.authorized(conn) as ctx:
        answer = await family.emergency_contacts(ctx, conn, id)
    return fhir_response(json_bytes(answer))


async def system_history(fhir: FhirInteraction, request: Request) -> Response:
    return await type_history(fhir, None, request)


async def type_history(fhir: FhirInteraction, type: str | None, request: Request) -> Response:
    return await _history(fhir, request, type)


async def _history(
    fhir: FhirInteraction, request: Request, type: str | None, id: str | None = None
) -> Response:
    """The server's, a type's (`type`) or an instance's (`id` too) history."""
    async with (
        fhir.db.transaction() as conn,
        fhir.authorized(conn, optimistic=_routes(fhir)) as ctx,
    ):
        body = await fhir.routed(
            conn,
            ctx,
            _snapshot(
                lambda data: history.history(
                    ctx, data, request.query_params, resource_type=type, id=id
                )
            ),
        )
    return fhir_response(body, emergency=ctx.guard.emergency)


def _routes(fhir: Interaction) -> bool:
    """Whether a read may go to a replica: its guard's facts are then verified on the primary
    after the data is read (api/routing.py), so they may come from the cache unverified."""
    return fhir.runtime.replicas is not None


def _snapshot(work: Callable[[Connection], Awaitable[T]]) -> Callable[[Connection], Awaitable[T]]:
    """`work` in one transaction, so that its statements (history's page and total) see one
    snapshot on a replica as on the primary (where the caller's transaction already is one)."""

    async def run(conn: Connection) -> T:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            return await work(conn)  # the primary's, in the caller's transaction
        async with conn.transaction():
            return await work(conn)

    return run


async def create_resource(
    fhir: FhirInteraction,
    type: str,
    body: ResourceBody,
    request: Request,
    if_none_exist: IfNoneExist = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    conditional.refuse_criteria_in_create(
        request.query_params, "for a conditional create send `If-None-Exist`", "http"
    )
    # A plain create is one statement, atomic on its own; a conditional one searches first, and
    # one with an Idempotency-Key claims the key in the same transaction.
    unit = fhir.db.transaction() if if_none_exist or idempotency_key else fhir.db.connection()
    async with unit as conn, fhir.authorized(conn) as ctx:
        key = Idempotent(
            ctx, conn, f"POST /fhir/{type}", idempotency_key, _fingerprinted(idempotency_key, body)
        )
        if (replay := await key.replay()) is not None:
            return replay
        result = await create.create(ctx, conn, type, body, if_none_exist=if_none_exist)
        return await key.keep(write_response(fhir.ctx.base_url, result, fhir.prefer))


async def read_resource(request: Request) -> Response:
    path = request.path_params
    fhir = interaction(request)
    async with fhir.db.connection() as conn, fhir.authorized(conn, optimistic=True) as ctx:
        if fhir.runtime.replicas is None:  # the hottest path, as it was
            found = await read.read(ctx, conn, path["type"], path["id"])
        else:
            found = await fhir.routed(
                conn,
                ctx,
                lambda data: read.read(ctx, data, path["type"], path["id"]),
                verifies=True,
            )
    return read_response(found, emergency=ctx.guard.emergency)


async def update_resource(
    fhir: FhirInteraction,
    type: str,
    id: str,
    body: ResourceBody,
    if_match: IfMatch = None,
) -> Response:
    async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
        result = await update.update(ctx, conn, type, id, body, if_match=parse_if_match(if_match))
    return write_response(fhir.ctx.base_url, result, fhir.prefer)


async def conditional_update(
    fhir: FhirInteraction,
    type: str,
    body: ResourceBody,
    request: Request,
    if_match: IfMatch = None,
) -> Response:
    """`PUT [base]/{type}?criteria` (R4 conditional update)."""
    async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
        result = await update.conditional_update(
            ctx, conn, type, request.url.query, body, if_match=parse_if_match(if_match)
        )
    return write_response(fhir.ctx.base_url, result, fhir.prefer)


async def patch_resource(
    fhir: FhirInteraction,
    type: str,
    id: str,
    body: PatchBody,
    if_match: IfMatch = None,
) -> Response:
    async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
        result = await patch.patch(ctx, conn, type, id, body, if_match=parse_if_match(if_match))
    return write_response(fhir.ctx.base_url, result, fhir.prefer)


async def delete_resource(
    fhir: FhirInteraction, type: str, id: str, if_match: IfMatch = None
) -> Response:
    async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
        version = await delete.delete(ctx, conn, type, id, if_match=parse_if_match(if_match))
    headers = {"ETag": etag(version)} if version is not None else {}
    if fhir.prefer == "OperationOutcome":
        return fhir_response(information(f"`{type}/{id}` deleted"), 200, headers)
    return Response(status_code=204, headers=headers)


async def conditional_patch(
    fhir: FhirInteraction,
    type: str,
    body: PatchBody,
    request: Request,
    if_match: IfMatch = None,
) -> Response:
    """`PATCH [base]/{type}?criteria` (R4 conditional patch)."""
    async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
        result = await patch.conditional_patch(
            ctx, conn, type, request.url.query, body, if_match=parse_if_match(if_match)
        )
    return write_response(fhir.ctx.base_url, result, fhir.prefer)


async def conditional_delete(
    fhir: FhirInteraction, type: str, request: Request, if_match: IfMatch = None
) -> Response:
    """`DELETE [base]/{type}?criteria` (R4 conditional delete): no match is a success too."""
    async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
        id, version = await delete.conditional_delete(
            ctx, conn, type, request.url.query, if_match=parse_if_match(if_match)
        )
    headers = {"ETag": etag(version)} if version is not None else {}
    if fhir.prefer == "OperationOutcome":
        said = f"`{type}/{id}` deleted" if id else f"no `{type}` matched; nothing was deleted"
        return fhir_response(information(said), 200, headers)
    return Response(status_code=204, headers=headers)


async def instance_history(fhir: FhirInteraction, type: str, id: str, request: Request) -> Response:
    return await _history(fhir, request, type, id)


async def vread_resource(request: Request) -> Response:
    path = request.path_params
    fhir = interaction(request)
    async with fhir.db.connection() as conn, fhir.authorized(conn, optimistic=_routes(fhir)) as ctx:
        found = await fhir.routed(
            conn,
            ctx,
            lambda data: read.vread(ctx, data, path["type"], path["id"], path["vid"]),
        )
    return read_response(found, emergency=ctx.guard.emergency)


async def search_type(fhir: FhirInteraction, type: str, request: Request) -> Response:
    params = request.query_params.multi_items()
    async with fhir.db.connection() as conn, fhir.authorized(conn, optimistic=_routes(fhir)) as ctx:
        body = await fhir.routed(
            conn,
            ctx,
            lambda data: search.search(ctx, data, type, params, strict=not fhir.lenient),
        )
    return fhir_response(body)


async def search_type_post(fhir: FhirInteraction, type: str, request: Request) -> Response:
    """`POST [base]/{type}/_search` with `application/x-www-form-urlencoded` parameters."""
    hint = "`application/x-www-form-urlencoded`"
    if body_media_type(request, FORM_TYPES, hint) is None:
        raise UnsupportedMediaType(
            f"_search needs `Content-Type: {hint[1:-1]}`", expression=("http.Content-Type",)
        )
    try:
        text = (await read_body(request)).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the form body is not UTF-8", expression=("http.body",)) from None
    form = parse_qsl(text, keep_blank_values=True)
    params = [*request.query_params.multi_items(), *form]
    async with fhir.db.connection() as conn, fhir.authorized(conn, optimistic=_routes(fhir)) as ctx:
        body = await fhir.routed(
            conn,
            ctx,
            lambda data: search.search(ctx, data, type, params, strict=not fhir.lenient),
        )
    return fhir_response(body)


async def read_invalid_id(type: str, id: str) -> Response:
    """`GET [base]/{type}/{id}` whose id is no FHIR id (over 64 characters, or characters an id
    cannot hold): no resource can have it. A `_name` or `$name` segment is an endpoint that takes
    another method (`_search`) or an operation this server does not have."""
    if names_endpoint(id):
        raise MethodNotAllowed(f"`GET {type}/{id}` is not supported")
    raise BadRequest(f"`{id[:80]}` is not a valid resource id", code="value")


async def search_compartment(
    fhir: FhirInteraction, compartment: str, id: str, member: str, request: Request
) -> Response:
    """`GET [base]/Patient/{id}/{type}` and `.../*`: a search inside one compartment."""
    if compartment not in COMPARTMENTS:
        raise NotSupported(f"`{compartment}` is not a compartment", code="not-supported")
    if member != "*" and member not in resource_types():
        raise NotSupported(f"resource type `{member}` is not supported", code="not-supported")
    params = request.query_params.multi_items()
    async with fhir.db.connection() as conn, fhir.authorized(conn, optimistic=_routes(fhir)) as ctx:
        body = await fhir.routed(
            conn,
            ctx,
            lambda data: search.search(
                ctx,
                data,
                None if member == "*" else member,
                params,
                compartment=(compartment, id),
                strict=not fhir.lenient,
            ),
        )
    return fhir_response(body)


class FhirId(Convertor[str]):
    """A path segment that is a FHIR id (R4 `id`: 1-64 of A-Z a-z 0-9 - .), so that `_history`,
    `_search` or `$operation` never match where an id is expected."""

    regex = ID_REGEX

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fhir_id", FhirId())


class FhirType(Convertor[str]):
    """A path segment that may be a resource type (capitalised), so that the writes at
    `[base]/{type}` and `[base]/{type}/{id}` leave `POST`, `PUT`, `PATCH` or `DELETE
    [base]/metadata` (or `_history`, `.well-known/...`) a 405."""

    regex = r"[A-Z][A-Za-z]{0,63}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fhir_type", FhirType())


def serves(path_params: Mapping[str, Any]) -> bool:
    """Whether a FHIR route serves its path values: a `{type}` that is an R4 resource type, a
    `{compartment}` that is a compartment, a `{member}` that is a type or `*`. The handlers
    answer anything else 404 (`interaction`, `search_compartment`), whatever the method, so a
    405's `Allow` leaves such a route out (api/methods.py): `DELETE /fhir/metadata` is answered
    `Allow: GET, HEAD`, not the `POST` of `/fhir/{type}`."""
    type = path_params.get("type")
    if type is not None and type not in resource_types():
        return False
    compartment = path_params.get("compartment")
    if compartment is not None and compartment not in COMPARTMENTS:
        return False
    member = path_params.get("member")
    return member is None or member == "*" or member in resource_types()


class FhirRoute(APIRoute):
    """A FHIR route: FastAPI's, knowing which path values it serves."""

    def serves(self, path_params: Mapping[str, Any]) -> bool:
        return serves(path_params)


def names_endpoint(segment: str) -> bool:
    """Whether a segment where an id could be names an endpoint (`_search`, `$everything`)."""
    return segment[:1] in ("_", "$")


class InvalidIdRoute(FhirRoute):
    """The route of `read_invalid_id`: it refuses `GET` of an endpoint's name (405), so that is
    not a path it serves."""

    def serves(self, path_params: Mapping[str, Any]) -> bool:
        return serves(path_params) and not names_endpoint(path_params["id"])


class NamedRoute(Route):
    """A plain Starlette route that puts itself in the scope, as FastAPI does only for its own
    routes: request metrics, logs and spans label it by its template, not as `unmatched`."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        await super().handle(scope, receive, send)

    def serves(self, path_params: Mapping[str, Any]) -> bool:
        return serves(path_params)


def install(app: FastAPI) -> None:
    """Put the FHIR routes on the application itself, most requested first.

    Not an included APIRouter: in FastAPI an included router costs a second route match on every
    request, a measurable part of a read. Which methods each path takes is this table's to say:
    `HEAD` is added wherever `GET` is, and a 405's `Allow` read from it (api/methods.py)."""

    def add(
        path: str,
        endpoint: Callable[..., Any],
        *,
        methods: list[str],
        route: type[FhirRoute] = FhirRoute,
    ) -> None:
        app.router.add_api_route(path, endpoint, methods=methods, route_class_override=route)

    # read and vread as plain Starlette routes: FastAPI's parameter and dependency machinery,
    # which they do not use, costs a measurable part of a read (docs/performance.md)
    app.router.routes.append(
        NamedRoute("/fhir/{type}/{id:fhir_id}", read_resource, methods=["GET"])
    )
    add("/fhir/$explain-access", explain_access, methods=["POST"])
    add("/fhir/Patient/{id:fhir_id}/$add-dependent", add_dependent, methods=["POST"])
    add("/fhir/Patient/{id:fhir_id}/$remove-dependent", remove_dependent, methods=["POST"])
    add("/fhir/Patient/{id:fhir_id}/$family", family_of, methods=["GET", "POST"])
    add("/fhir/Patient/{id:fhir_id}/$emergency-contacts", emergency_contacts, methods=["GET"])
    # writes only where a resource type may be (`fhir_type`): a write to `metadata`, `_history`
    # or `.well-known/...` is a 405 naming the methods there, not the 404 of an unknown type
    add("/fhir/{type:fhir_type}", create_resource, methods=["POST"])
    add("/fhir/{type:fhir_type}", conditional_update, methods=["PUT"])
    add("/fhir/{type:fhir_type}", conditional_patch, methods=["PATCH"])
    add("/fhir/{type:fhir_type}", conditional_delete, methods=["DELETE"])
    add("/fhir/{type:fhir_type}/{id}", update_resource, methods=["PUT"])
    add("/fhir/{type:fhir_type}/{id}", patch_resource, methods=["PATCH"])
    add("/fhir/{type:fhir_type}/{id}", delete_resource, methods=["DELETE"])
    app.router.routes.append(
        NamedRoute("/fhir/{type}/{id:fhir_id}/_history/{vid}", vread_resource, methods=["GET"])
    )
    add("/fhir/metadata", metadata, methods=["GET"])
    add("/fhir", batch_or_transaction, methods=["POST"])
    add("/fhir/", batch_or_transaction, methods=["POST"])
    add("/fhir/_history", system_history, methods=["GET"])
    add("/fhir/{type}/_history", type_history, methods=["GET"])
    add("/fhir/{type}/{id:fhir_id}/_history", instance_history, methods=["GET"])
    add("/fhir/{type}", search_type, methods=["GET"])
    add("/fhir/{type}/_search", search_type_post, methods=["POST"])
    add("/fhir/{compartment}/{id:fhir_id}/{member}", search_compartment, methods=["GET"])
    # after every valid GET
    add("/fhir/{type}/{id}", read_invalid_id, methods=["GET"], route=InvalidIdRoute)
