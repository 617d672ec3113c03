"""The SMART authorization endpoint: `GET /oauth/authorize` and `POST /oauth/authorize`
(authorize-post), with the "whose record?" picker and the approval page
(docs/smart-authorize.md).

1. The request is checked before anything is shown. An unknown `client_id` or a `redirect_uri`
   that is not exactly one of the client's registered URIs gets an HTML error page, never a
   redirect. Every later problem is sent back to the app at its redirect URI as RFC 6749 4.1.2.1
   `error`, `error_description` and `state`.
2. Nobody signed in: the browser goes to `/signin?next=<this request>`.
3. An EHR launch (`launch`) takes the patient (and encounter) of its single-use launch value; a
   standalone `launch/patient` shows the picker: whose record, from `launch_choices.choices`,
   the same engine and facts as every request. Without a launch scope the token is the user's own.
4. The approval page shows the scopes narrowed to what the chosen relationship allows
   (`launch_choices.narrow_scopes`); an approval is remembered per account, client and patient,
   and a later request for no more than was approved skips the page.
5. The code: 256 random bits, stored as a digest with everything the token endpoint checks.

The forms of the picker and the approval page carry the CSRF token, and a signed "ticket" of the
checked request (bound to the signed-in account, valid for `TICKET_SECONDS`), so a single-use
launch is not needed twice and nothing the app sent can be changed on the way. The chosen patient
is checked again against a fresh list on every POST: a choice not on it is a 403.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import errors as rfc6749
from authlib.oauth2.rfc6749.util import scope_to_list
from fastapi import FastAPI, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import FormData, QueryParams
from starlette.responses import Response

from fhir_server.api.deps import request_context, runtime
from fhir_server.auth.scopes import Scope, ScopeError, covers, parse_scope
from fhir_server.errors import BadRequest, FhirError, Forbidden
from fhir_server.services.workflows import launch_choices, scope_words
from fhir_server.services.workflows.launch_choices import Choice
from fhir_server.settings import Settings
from fhir_server.storage import oauth as store
from fhir_server.storage.sql import Connection
from fhir_server.web.forms import read_form
from fhir_server.web.session import CSRF_FIELD, SignedIn, form_page, session_secret, sessions
from fhir_server.web.signin import error_page, redirect, signin_url

log = logging.getLogger(__name__)

PATH = "/oauth/authorize"
TICKET_FIELD = "request"
STEP_FIELD = "step"  # "pick" (the picker's form) or "approve" (the approval page's)
TICKET_SECONDS = 900
MAX_STATE = 2_048
MAX_NONCE = 512
# RFC 7636 4.1: 43 to 128 characters of the unreserved set.
_CHALLENGE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
# Parameters that must not appear twice (RFC 6749 3.1).
_SINGLE = (
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "launch",
    "nonce",
)


class PageError(BadRequest):
    """The request cannot be trusted to redirect anywhere: an HTML error page."""


class Refusal(Exception):
    """An error sent back to the app at its (checked) redirect URI."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class Ask:
    """An authorization request, checked: what the ticket of the forms carries."""

    client_id: str
    redirect_uri: str
    scope: str  # as asked, less what the client may not ask for
    state: str
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    launch: str | None = None  # an EHR launch value, until it is used
    patient: str | None = None  # "Patient/1": an EHR launch's patient, once used
    encounter: str | None = None
    subject: str = ""  # the signed-in account the ticket is for
    # whether the request gave `redirect_uri` (else the client's only one is used, and the token
    # request need not give it either: RFC 6749 4.1.3)
    redirect_uri_given: bool = True

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()


# --- checking the request ----------------------------------------------------------------------


def _single(params: QueryParams | FormData, name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise Refusal(rfc6749.InvalidRequestError.error, f"`{name}` is given more than once")
    value = values[0] if values else None
    if value is not None and not isinstance(value, str):
        raise Refusal(rfc6749.InvalidRequestError.error, f"`{name}` must be text")
    return value or None


async def check_client(
    conn: Connection, params: QueryParams | FormData
) -> tuple[store.Client, str]:
    """The client and its redirect URI, or a PageError: nothing may be sent to a URI that is not
    exactly one the client registered."""
    try:
        client_id = _single(params, "client_id")
        redirect_uri = _single(params, "redirect_uri")
    except Refusal as exc:
        raise PageError(exc.description) from None
    if client_id is None:
        raise PageError("the request names no app (`client_id` is missing)")
    client = await store.get_client(conn, client_id)
    if client is None:
        raise PageError("the app that sent you here is not registered with this server")
    if redirect_uri is None:
        if len(client.redirect_uris) != 1:
            raise PageError("the request has no `redirect_uri`, and the app registered several")
        return client, client.redirect_uris[0]
    if redirect_uri not in client.redirect_uris:
        raise PageError("the app's `redirect_uri` is not one it registered")
    return client, redirect_uri


def _within(scope: Scope, allowed: list[Scope]) -> bool:
    """Whether a resource scope asks for no more than one of the client's registered scopes."""
    return any(a.context == scope.context and covers(a, scope) for a in allowed)


def check_scope(client: store.Client, asked: str | None, launch: str | None) -> str:
    """The requested scopes less those outside the client's registration (dropped, as RFC 6749
    3.3 allows); `invalid_scope` when nothing is left, or for a malformed scope."""
    requested = scope_to_list(asked) or []
    if not requested:
        raise Refusal(rfc6749.InvalidScopeError.error, "the request asks for no `scope`")
    registered = set(client.scope.split())
    allowed_resources = []
    for text in registered:
        try:
            parsed = parse_scope(text)
        except ScopeError:
            continue
        if parsed is not None:
            allowed_resources.append(parsed)
    kept: dict[str, None] = {}
    for text in requested:
        try:
            parsed = parse_scope(text)
        except ScopeError:
            raise Refusal(
                rfc6749.InvalidScopeError.error, f"`{text[:100]}` is not a valid SMART scope"
            ) from None
        if text in scope_words.LAUNCH_SCOPES:
            kept[text] = None  # governed by the client's launch types, below
        elif parsed is None:
            if text in registered:
                kept[text] = None
        elif parsed.context != "system" and _within(parsed, allowed_resources):
            kept[text] = None
    if not any(s not in scope_words.LAUNCH_SCOPES for s in kept):
        raise Refusal(
            rfc6749.InvalidScopeError.error,
            "none of the requested scopes is one this app may ask for",
        )
    if launch is not None:
        if "ehr" not in client.launch_types:
            raise Refusal(
                rfc6749.UnauthorizedClientError.error, "this app is not registered for EHR launch"
            )
        if "launch" not in kept:
            raise Refusal(rfc6749.InvalidScopeError.error, "an EHR launch needs the `launch` scope")
    elif "launch" in kept:
        raise Refusal(
            rfc6749.InvalidRequestError.error, "the `launch` scope needs the `launch` parameter"
        )
    if "launch/patient" in kept and launch is None and "standalone" not in client.launch_types:
        raise Refusal(
            rfc6749.UnauthorizedClientError.error,
            "this app is not registered for standalone launch",
        )
    if (
        launch is None
        and "launch/patient" not in kept
        and any(s.startswith("patient/") for s in kept)
    ):
        raise Refusal(
            rfc6749.InvalidScopeError.error,
            "`patient/` scopes need a patient: ask for `launch/patient` (or an EHR launch)",
        )
    return " ".join(kept)


def check_pkce(client: store.Client, challenge: str | None, method: str | None) -> None:
    """PKCE (RFC 7636) with S256 only: required of public clients, `plain` refused for all."""
    if method == "plain":
        raise Refusal(
            rfc6749.InvalidRequestError.error,
            "`code_challenge_method=plain` is not supported: use S256",
        )
    if challenge is None:
        if method is not None:
            raise Refusal(rfc6749.InvalidRequestError.error, "`code_challenge` is missing")
        if client.kind == "public":
            raise Refusal(
                rfc6749.InvalidRequestError.error,
                "a public app must use PKCE: `code_challenge` with `code_challenge_method=S256`",
            )
        return
    if method != "S256":
        raise Refusal(rfc6749.InvalidRequestError.error, "`code_challenge_method` must be S256")
    if not _CHALLENGE.match(challenge):
        raise Refusal(
            rfc6749.InvalidRequestError.error,
            "`code_challenge` must be 43 to 128 characters of [A-Za-z0-9._~-]",
        )


def check_request(settings: Settings, client: store.Client, redirect_uri: str, params: Any) -> Ask:
    """Everything after the client and its redirect URI (errors go back to the app)."""
    response_type = _single(params, "response_type")
    if response_type != "code":
        raise Refusal(
            rfc6749.UnsupportedResponseTypeError.error, "only `response_type=code` is supported"
        )
    aud = _single(params, "aud")
    if aud is None:
        raise Refusal(rfc6749.InvalidRequestError.error, "`aud` (this FHIR server) is missing")
    if aud.rstrip("/") != settings.public_base.rstrip("/"):
        raise Refusal(rfc6749.InvalidRequestError.error, "`aud` is not this server's FHIR base URL")
    challenge = _single(params, "code_challenge")
    method = _single(params, "code_challenge_method")
    check_pkce(client, challenge, method)
    launch = _single(params, "launch")
    scope = check_scope(client, _single(params, "scope"), launch)
    nonce = _single(params, "nonce")
    if nonce is not None and len(nonce) > MAX_NONCE:
        raise Refusal(rfc6749.InvalidRequestError.error, "`nonce` is too long")
    state = _state(params)
    if state is None:
        raise Refusal(rfc6749.InvalidRequestError.error, "`state` is required")
    return Ask(
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        scope=scope,
        state=state,
        code_challenge=challenge,
        code_challenge_method=method,
        nonce=nonce,
        launch=launch,
        redirect_uri_given=_single(params, "redirect_uri") is not None,
    )


def _state(params: Any) -> str | None:
    values = params.getlist("state")
    if len(values) != 1 or not isinstance(values[0], str) or not values[0]:
        return None
    state: str = values[0]
    return state if len(state) <= MAX_STATE else None


# --- answers -----------------------------------------------------------------------------------


def _account(who: SignedIn | None, client_id: str | None) -> str:
    if who is not None:
        return who.fhir_user
    return f"System/{client_id}" if client_id else "anonymous"


async def _refuse(
    request: Request,
    ask_uri: str,
    state: str | None,
    refusal: Refusal,
    account: str,
    patients: tuple[str, ...] = (),
) -> Response:
    await runtime(request).audit.security_event(
        account=account,
        event="authorize",
        allowed=False,
        explanation=f"authorization refused: {refusal.error}: {refusal.description}",
        patients=patients,
        reason=refusal.error,
    )
    params = [("error", refusal.error), ("error_description", refusal.description)]
    if state is not None:
        params.append(("state", state))
    return redirect(add_params_to_uri(ask_uri, params), (ask_uri,))


async def _page_refusal(
    request: Request, exc: FhirError, account: str, reason: str, patients: tuple[str, ...] = ()
) -> Response:
    await runtime(request).audit.security_event(
        account=account,
        event="authorize",
        allowed=False,
        explanation=f"authorization refused: {exc}",
        patients=patients,
        reason=reason,
    )
    return error_page(request, exc)


def _tickets(request: Request) -> URLSafeTimedSerializer:
    found: URLSafeTimedSerializer = request.app.state.authorize_tickets
    return found


def _with_csrf(request: Request, template: str, ask: Ask, **values: Any) -> Response:
    """A page of the flow, with its CSRF token (and the browser cookie it may set)."""
    return form_page(
        request,
        template,
        form_action=(ask.redirect_uri,),
        ticket=_tickets(request).dumps(asdict(ask)),
        action=PATH,
        **values,
    )


async def _choices(request: Request, who: SignedIn) -> list[Choice]:
    rt = runtime(request)
    async with rt.db.connection() as conn:
        return await launch_choices.choices(
            request_context(request, rt), conn, who.fhir_user, policy=rt.policy
        )


# --- the endpoint ------------------------------------------------------------------------------


async def authorize(request: Request) -> Response:
    if request.method == "POST":
        try:
            form = await read_form(request)
        except FhirError as exc:
            return error_page(request, exc)
        if form.get(STEP_FIELD) is not None:
            return await _step(request, form)
        return await _start(request, form)
    return await _start(request, request.query_params)


async def _start(request: Request, params: QueryParams | FormData) -> Response:
    rt = runtime(request)
    who = await sessions(request).current(request)
    raw_client = params.get("client_id")
    try:
        async with rt.db.connection() as conn:
            client, redirect_uri = await check_client(conn, params)
    except PageError as exc:
        account = _account(who, raw_client if isinstance(raw_client, str) else None)
        return await _page_refusal(request, exc, account, "invalid_client")
    try:
        ask = check_request(rt.settings, client, redirect_uri, params)
    except Refusal as refusal:
        return await _refuse(
            request, redirect_uri, _state(params), refusal, _account(who, client.client_id)
        )
    if who is None:
        query = urlencode([(k, v) for k, v in params.multi_items() if isinstance(v, str)])
        return redirect(signin_url(f"{PATH}?{query}"))
    ask = replace(ask, subject=who.subject)
    if ask.launch is not None:
        now = rt.clock()
        async with rt.db.transaction() as conn:
            launched = await store.use_launch(
                conn, ask.launch, now, client_id=client.client_id, fhir_user=who.fhir_user
            )
        if launched is None:
            return await _refuse(
                request,
                redirect_uri,
                ask.state,
                Refusal(
                    rfc6749.InvalidRequestError.error,
                    "the `launch` value is unknown, used or expired, or made for another app or"
                    " user",
                ),
                who.fhir_user,
            )
        patient = launched.patient
        ask = replace(
            ask,
            launch=None,
            patient=patient if patient.startswith("Patient/") else f"Patient/{patient}",
            encounter=launched.encounter,
        )
        return await _approval(request, client, ask, who, None)
    if "launch/patient" in ask.scopes:
        return await _picker(request, client, ask, who)
    return await _approval(request, client, ask, who, None)


async def _picker(request: Request, client: store.Client, ask: Ask, who: SignedIn) -> Response:
    options = [
        {
            "patient": choice.patient,
            "name": choice.name,
            "age": choice.age,
            "relationship": scope_words.you_are(choice.relationships, choice.via, choice.is_self),
            "description": choice.description,
            "id": f"choice-{index}",
        }
        for index, choice in enumerate(await _choices(request, who))
    ]
    return _with_csrf(
        request,
        "picker.html",
        ask,
        title="Whose record?",
        client_name=client.name,
        options=options,
        step="pick",
    )


def _narrowed(ask: Ask, choice: Choice | None) -> tuple[list[str], list[str]]:
    if choice is None:
        return ask.scopes, []
    granted, dropped = launch_choices.narrow_scopes(ask.scope, choice)
    return granted.split(), dropped


def _patient_of(ask: Ask, choice: Choice | None) -> str | None:
    return choice.patient if choice is not None else ask.patient


async def _approval(
    request: Request, client: store.Client, ask: Ask, who: SignedIn, choice: Choice | None
) -> Response:
    granted, dropped = _narrowed(ask, choice)
    patient = _patient_of(ask, choice)
    rt = runtime(request)
    async with rt.db.connection() as conn:
        before = await store.approval(conn, who.subject, client.client_id, patient)
    if before is not None and set(granted) <= set(before.scope.split()):
        return await _issue(request, client, ask, who, choice, granted, remembered=True)
    name = choice.name if choice is not None else None
    return _with_csrf(
        request,
        "approve.html",
        ask,
        title="Allow access?",
        client_name=client.name,
        person=name,
        relationship=(
            scope_words.you_are(choice.relationships, choice.via, choice.is_self)
            if choice is not None
            else None
        ),
        patient=patient or "",
        required=[
            {"scope": s, "words": scope_words.describe(s, name)}
            for s in granted
            if scope_words.required(s)
        ],
        optional=[
            {"scope": s, "words": scope_words.describe(s, name), "id": f"scope-{index}"}
            for index, s in enumerate(granted)
            if not scope_words.required(s)
        ],
        dropped=[{"scope": s, "words": scope_words.describe(s, name)} for s in dropped],
        step="approve",
    )


async def _issue(
    request: Request,
    client: store.Client,
    ask: Ask,
    who: SignedIn,
    choice: Choice | None,
    granted: list[str],
    *,
    remembered: bool,
) -> Response:
    rt = runtime(request)
    now = rt.clock()
    code = secrets.token_urlsafe(32)
    patient = _patient_of(ask, choice)
    grant = store.Grant(
        client_id=client.client_id,
        scope=" ".join(granted),
        subject=who.subject,
        fhir_user=(
            launch_choices.token_identity(who.fhir_user, choice)
            if choice is not None
            else who.fhir_user
        ),
        patient=patient.split("/", 1)[1] if patient is not None else None,
        encounter=_bare(ask.encounter, "Encounter"),
        claims={"access_basis": launch_choices.access_basis(choice)} if choice is not None else {},
    )
    record = store.Code(
        grant=grant,
        redirect_uri=ask.redirect_uri if ask.redirect_uri_given else None,
        code_challenge=ask.code_challenge,
        code_challenge_method=ask.code_challenge_method,
        nonce=ask.nonce,
        auth_time=datetime.fromtimestamp(who.auth_time, UTC),
        expires_at=now + timedelta(seconds=rt.settings.oauth_code_seconds),
    )
    async with rt.db.transaction() as conn:
        await store.save_code(conn, code, record)
    patients = (patient,) if patient is not None else ()
    how = "an approval given before" if remembered else "the approval just given"
    await rt.audit.security_event(
        account=who.fhir_user,
        event="authorize",
        allowed=True,
        explanation=f"authorization code issued to `{client.client_id}` by {how}",
        patients=patients,
    )
    target = add_params_to_uri(ask.redirect_uri, [("code", code), ("state", ask.state)])
    return redirect(target, (ask.redirect_uri,))


def _bare(reference: str | None, resource_type: str) -> str | None:
    if reference is None:
        return None
    prefix = f"{resource_type}/"
    return reference[len(prefix) :] if reference.startswith(prefix) else reference


# --- the forms of the picker and the approval page -------------------------------------------


async def _step(request: Request, form: FormData) -> Response:
    rt = runtime(request)
    manager = sessions(request)
    who = await manager.current(request)
    try:
        manager.check_csrf(request, form.get(CSRF_FIELD))
    except FhirError as refused:
        return await _page_refusal(request, refused, _account(who, None), "csrf")
    if who is None:
        problem: FhirError = Forbidden("you are not signed in any more: start again from the app")
        return await _page_refusal(request, problem, "anonymous", "session")
    ticket = form.get(TICKET_FIELD)
    try:
        values = _tickets(request).loads(str(ticket or ""), max_age=TICKET_SECONDS)
        ask = Ask(**values)
    except (BadSignature, TypeError):
        problem = PageError("this page has expired: start again from the app")
        return await _page_refusal(request, problem, who.fhir_user, "ticket")
    if ask.subject != who.subject:
        problem = Forbidden("this page was made for someone else: start again from the app")
        return await _page_refusal(request, problem, who.fhir_user, "ticket")
    async with rt.db.connection() as conn:
        client = await store.get_client(conn, ask.client_id)
    if client is None or ask.redirect_uri not in client.redirect_uris:
        problem = PageError("the app is no longer registered with this server")
        return await _page_refusal(request, problem, who.fhir_user, "invalid_client")
    choice: Choice | None = None
    if ask.patient is None and "launch/patient" in ask.scopes:
        chosen = form.get("patient")
        choices = await _choices(request, who)
        choice = next((c for c in choices if c.patient == chosen), None)
        if choice is None:
            problem = Forbidden("you may not choose that record")
            shown = (chosen[:100],) if isinstance(chosen, str) and chosen else ()
            return await _page_refusal(request, problem, who.fhir_user, "not_a_choice", shown)
    step = form.get(STEP_FIELD)
    if step == "pick":
        return await _approval(request, client, ask, who, choice)
    if step != "approve":
        return error_page(request, PageError("the form is not one of this server's"))
    patient = _patient_of(ask, choice)
    patients = (patient,) if patient is not None else ()
    if form.get("decision") != "approve":
        return await _refuse(
            request,
            ask.redirect_uri,
            ask.state,
            Refusal(rfc6749.AccessDeniedError.error, "the person did not allow access"),
            who.fhir_user,
            patients,
        )
    granted, _ = _narrowed(ask, choice)
    ticked = {v for v in form.getlist("scope") if isinstance(v, str)}
    approved = [s for s in granted if scope_words.required(s) or s in ticked]
    async with rt.db.transaction() as conn:
        await store.approve(
            conn, who.subject, client.client_id, patient, " ".join(approved), rt.clock()
        )
    await rt.audit.security_event(
        account=who.fhir_user,
        event="approve",
        allowed=True,
        explanation=f"approved `{client.client_id}`: {' '.join(approved)}"[:1000],
        patients=patients,
    )
    return await _issue(request, client, ask, who, choice, approved, remembered=False)


def install(app: FastAPI, settings: Settings) -> None:
    app.state.authorize_tickets = URLSafeTimedSerializer(
        session_secret(settings), salt="fhir-server authorize"
    )
    app.add_api_route(PATH, authorize, methods=["GET", "POST"], include_in_schema=False)
