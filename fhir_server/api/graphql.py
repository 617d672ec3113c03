"""`/graphql` for the patient portal (the family specification's `MyFamily` query and the
`addDependent` / `removeDependent` mutations), with strawberry.

Every resolver goes through the same services, engine and audit as the FHIR operations
(`fhir_server/services/workflows/family.py`): there is no second path around access control. The caller is
the token's `fhirUser` Patient. Queries are limited in depth, tokens and aliases, so that no
query costs more than a page of the portal.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import strawberry
from cross_web import AsyncHTTPRequestAdapter, HTTPException, StarletteRequestAdapter
from fastapi import FastAPI, Request
from graphql import GraphQLError
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.fastapi import GraphQLRouter
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData, process_result
from strawberry.types import ExecutionContext, ExecutionResult, Info

from fhir_server.api.deps import UTF8_NAMES, Interaction, interaction, parse_media_type
from fhir_server.api.errors import graphql_error
from fhir_server.api.fhir import run_add_dependent
from fhir_server.errors import BadRequest, Conflict, FhirError, Forbidden, Unavailable
from fhir_server.services.formats.limits import InputLimits, input_limits
from fhir_server.services.interactions.versions import parse_json
from fhir_server.services.workflows import family
from fhir_server.services.workflows.family import Member
from fhir_server.settings import Settings

log = logging.getLogger(__name__)

MAX_DEPTH = 6
MAX_TOKENS = 1_000
MAX_ALIASES = 10


@strawberry.type
class PatientInfo:
    id: strawberry.ID
    name: str | None
    birth_date: str | None
    gender: str | None


@strawberry.type
class Coverage:
    scheme: str
    member_number: str
    status: str


@strawberry.type
class Dependent:
    id: strawberry.ID  # the caller's RelatedPerson for the member (or the member's Patient id)
    patient: PatientInfo
    relationship: str
    is_minor: bool | None  # null when the caller may not read the member's birth date
    can_view_clinical_data: bool
    why: str
    added_date: str | None
    insurance_coverage: list[Coverage]


@strawberry.input
class DependentInput:
    relationship: str
    national_id: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    birth_date: str | None = None
    gender: str | None = None


@strawberry.type
class RemoveResult:
    success: bool
    message: str


def _fhir(info: Info[Any, Any]) -> Interaction:
    fhir: Interaction = info.context["fhir"]
    return fhir


def _writable(fhir: Interaction) -> None:
    if fhir.ctx.settings.writes_disabled:
        raise Unavailable("writes are switched off for maintenance; reads go on")


def _me(fhir: Interaction) -> str:
    user = fhir.principal.fhir_user
    if user is None or not user.startswith("Patient/"):
        raise Forbidden("the portal's `me` is the token's Patient (`fhirUser`)")
    return user.split("/", 1)[1]


def _patient(reference: str, content: dict[str, Any]) -> PatientInfo:
    return PatientInfo(
        id=strawberry.ID(reference.split("/", 1)[1]),
        name=family.display_name(content) or None,
        birth_date=content.get("birthDate"),
        gender=content.get("gender"),
    )


def _dependent(m: Member) -> Dependent:
    return Dependent(
        id=strawberry.ID((m.related_person or m.patient).split("/", 1)[1]),
        patient=_patient(m.patient, m.content),
        relationship=m.relationship,
        is_minor=m.is_minor,
        can_view_clinical_data=m.access.allowed,
        why=m.access.explanation or m.access.message,
        added_date=m.added,
        insurance_coverage=[
            Coverage(scheme=c["scheme"], member_number=c["memberNumber"], status=c["status"])
            for _, c in m.coverage
        ],
    )


@strawberry.type
class Me:
    id: strawberry.ID
    name: str | None

    @strawberry.field
    async def dependents(self, info: Info[Any, Any]) -> list[Dependent]:
        fhir = _fhir(info)
        async with fhir.db.connection() as conn, fhir.authorized(conn) as ctx:
            members = await family.family_members(ctx, conn, str(self.id))
        return [_dependent(m) for m in members]


@strawberry.type
class Query:
    @strawberry.field
    async def me(self, info: Info[Any, Any]) -> Me:
        fhir = _fhir(info)
        me = _me(fhir)
        async with fhir.db.connection() as conn, fhir.authorized(conn) as ctx:
            family.require_viewer(ctx.guard, f"Patient/{me}")
            # the caller's own name, as a read of its own Patient would give it
            content = await family.readable_patient(ctx, conn, f"Patient/{me}") or {}
        return Me(id=strawberry.ID(me), name=family.display_name(content) or None)


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def add_dependent(self, info: Info[Any, Any], input: DependentInput) -> Dependent:
        fhir = _fhir(info)
        _writable(fhir)
        me = _me(fhir)
        demographics = None
        if input.family_name or input.given_name or input.birth_date:
            demographics = {
                "resourceType": "Patient",
                "name": [
                    {
                        **({"family": input.family_name} if input.family_name else {}),
                        **({"given": [input.given_name]} if input.given_name else {}),
                    }
                ],
                **({"birthDate": input.birth_date} if input.birth_date else {}),
                **({"gender": input.gender} if input.gender else {}),
            }
        request = family.AddRequest(input.relationship, input.national_id, demographics)
        if request.relationship not in family.ROLES:
            raise BadRequest(f"`relationship` must be one of {', '.join(family.ROLES)}")
        answer = await run_add_dependent(fhir, me, request)
        dependent = next(
            p["valueReference"]["reference"]
            for p in answer["parameter"]
            if p["name"] == "dependent"
        )
        async with fhir.db.connection() as conn, fhir.authorized(conn) as ctx:
            members = await family.family_members(ctx, conn, me)
        return next(_dependent(m) for m in members if m.patient == dependent)

    @strawberry.mutation
    async def remove_dependent(
        self, info: Info[Any, Any], dependent_id: strawberry.ID, confirm: bool = False
    ) -> RemoveResult:
        fhir = _fhir(info)
        _writable(fhir)
        me = _me(fhir)
        body = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "dependent", "valueReference": {"reference": f"Patient/{dependent_id}"}},
                {"name": "confirm", "valueBoolean": confirm},
            ],
        }
        try:
            async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
                await family.remove_dependent(ctx, conn, me, body)
        except Conflict as exc:
            return RemoveResult(success=False, message=str(exc))
        return RemoveResult(success=True, message=f"Patient/{dependent_id} removed")


class _Schema(strawberry.Schema):
    """strawberry's schema, minus its error log: strawberry logs every error of a response at
    ERROR with the message, whose syntax and validation errors quote the query text (which may
    hold a name or a national id). The caller's mistakes are answered in `errors` and not logged;
    an unexpected exception in a resolver is logged as on the FHIR routes, by type and place."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        for error in errors:
            original = error.original_error
            if original is None or isinstance(original, FhirError | GraphQLError):
                continue
            log.error(
                "unhandled error in a GraphQL operation: %s",
                type(original).__name__,
                exc_info=(type(original), original, original.__traceback__),
            )


schema = _Schema(
    query=Query,
    mutation=Mutation,
    extensions=[
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
    ],
)


async def _context(request: Request) -> dict[str, Any]:
    # the token is verified before any query runs: no token, no GraphQL
    return {"fhir": interaction(request)}


class _RequestAdapter(StarletteRequestAdapter):
    """A request as strawberry reads it, `HEAD` as the `GET` it is without its body (RFC 9110
    9.3.2; the route takes both, api/methods.py): strawberry knows only GET and POST."""

    @property
    def method(self) -> Any:
        method = super().method
        return "GET" if method == "HEAD" else method


class _Router(GraphQLRouter[dict[str, Any], None]):
    """strawberry's router, answering 400 where strawberry fails with a server error (a body
    that is not UTF-8, JSON that is neither an object nor a batch) or takes a malformed request
    (an `operationName` that is not a string), and 415 to a POST that is not `application/json`
    in UTF-8 (strawberry answers 400, and takes any type with `application/json` in it). Its
    errors carry the domain error's stable code (`api.errors.graphql_error`)."""

    limits = InputLimits()
    request_adapter_class = _RequestAdapter

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        # errors as `api.errors` renders them: a domain error's stable code in `extensions.code`
        answer = process_result(result)
        if result.errors:
            answer["errors"] = [graphql_error(error) for error in result.errors]
        return answer

    def parse_json(self, data: str | bytes) -> Any:
        # the server's own parser: the input limits (docs/limits.md) hold for GraphQL too
        try:
            return parse_json(data, self.limits)
        except BadRequest as exc:
            raise HTTPException(400, str(exc)) from None

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        if request.method == "POST":
            media, params = parse_media_type(request.content_type or "")
            if media != "application/json":
                raise HTTPException(
                    415, f"`Content-Type: {media}` is not supported: send `application/json`"
                )
            charset = params.get("charset")
            if charset is not None and charset.lower() not in UTF8_NAMES:
                raise HTTPException(
                    415, f"`charset={charset}` is not supported: the body must be UTF-8"
                )
            body = self.parse_json(await request.get_body())
            if not isinstance(body, dict | list):
                raise HTTPException(400, "the body must be a JSON object")
            if isinstance(body, dict) and not isinstance(body.get("operationName"), str | None):
                raise HTTPException(400, "`operationName` must be a string or null")
        return await super().parse_http_body(request)


def install(app: FastAPI, settings: Settings) -> None:
    router = _Router(schema, path="/graphql", context_getter=_context, graphql_ide=None)
    # a NUL in a query or variable is a GraphQL error like any other (a 200 with `errors`)
    router.limits = replace(input_limits(settings), refuse_nul=False)
    # its routes on the application itself, not an included router: FastAPI names only its own
    # top-level routes in the scope, and the request metrics and logs label by that name
    app.router.routes.extend(router.routes)
