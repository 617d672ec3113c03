"""EHR launch contexts: `POST /oauth/launch` (SMART App Launch, EHR launch).

The EHR (a System client, with a bearer token of `system/` scopes) says which patient, and
optionally which encounter, app and user, an app is about to be launched for. It gets an opaque
`launch` value to put in the app's launch URL (`?iss=<FHIR base>&launch=<value>`); the app passes
it to the authorization endpoint, which takes the context from it once (single use, expiring
after `FHIR_OAUTH_LAUNCH_SECONDS`). Only its SHA-256 digest is stored.

The patient, encounter and user are read with the EHR's own access (its token's scopes and the
policy), as any of its requests would: a launch can name only what the EHR may see itself. An
encounter must be the patient's; an app named by `client_id` must be registered for EHR launch.

Body: JSON or a urlencoded form with `patient` (an id, or `Patient/<id>`), optional `encounter`,
`client_id` and `fhir_user` (`Practitioner/1`). Answer 200:
`{"launch": "...", "expires_in": 300, "patient": "<id>", "encounter": "<id>"}`.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from compartments.ids import is_id
from fhir_server.api.deps import Interaction, base_url, runtime
from fhir_server.auth.tokens import IDENTITY_TYPES, Principal
from fhir_server.errors import Forbidden, Gone, NotFound
from fhir_server.oauth.system_token import (
    NO_STORE,
    Caller,
    Refusal,
    account_of,
    read_json_or_form,
    system_caller,
)
from fhir_server.services.context import Context, nobody
from fhir_server.services.interactions.read import read
from fhir_server.storage import oauth
from fhir_server.storage.sql import Connection

PATH = "/oauth/launch"
FIELDS = ("patient", "encounter", "client_id", "fhir_user")


def _id(value: Any, type: str, name: str) -> str:
    """An id, or `<type>/<id>`."""
    if not isinstance(value, str):
        raise Refusal(400, "invalid_request", f"`{name}` must be a string")
    given = value.removeprefix(f"{type}/")
    if not is_id(given):
        raise Refusal(400, "invalid_request", f"`{name}` must be a {type} id, got `{value[:80]}`")
    return given


async def _read(ctx: Context, conn: Connection, type: str, id: str, name: str) -> Any:
    """The resource as the EHR may read it; `Refusal` when it may not or it is not there."""
    try:
        found = await read(ctx, conn, type, id)
    except (NotFound, Gone):
        raise Refusal(
            400, "invalid_request", f"`{name}` names `{type}/{id}`, which does not exist"
        ) from None
    except Forbidden:
        raise Refusal(
            403, "access_denied", f"the EHR may not read `{type}/{id}` named by `{name}`"
        ) from None
    return orjson.loads(found.content or "{}")


def _refers_to(reference: Any, patient: str) -> bool:
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return False
    text: str = reference["reference"]
    return text == f"Patient/{patient}" or text.endswith(f"/Patient/{patient}")


async def create_launch(request: Request, principal: Principal) -> dict[str, Any]:
    rt = runtime(request)
    fields = await read_json_or_form(request, form=True)
    for name in FIELDS:
        if name in fields and not isinstance(fields[name], str):
            raise Refusal(400, "invalid_request", f"`{name}` must be a string")
    if fields.get("patient") in (None, ""):
        raise Refusal(400, "invalid_request", "`patient` is required")
    patient = _id(fields["patient"], "Patient", "patient")
    encounter = (
        _id(fields["encounter"], "Encounter", "encounter")
        if fields.get("encounter") not in (None, "")
        else None
    )
    fhir_user = fields.get("fhir_user") or None
    if fhir_user is not None:
        type, _, id = str(fhir_user).partition("/")
        if type not in IDENTITY_TYPES or not is_id(id):
            raise Refusal(
                400,
                "invalid_request",
                "`fhir_user` must be a reference such as `Practitioner/1`",
            )
    client_id = fields.get("client_id") or None
    if client_id is not None and not isinstance(client_id, str):
        raise Refusal(400, "invalid_request", "`client_id` must be a string")
    interaction = Interaction(
        rt.db,
        Context(
            settings=rt.settings,
            validator=rt.validator,
            base_url=base_url(request, rt),
            clock=rt.clock,
            guard=nobody(),
        ),
        "representation",
        False,
        rt,
        principal,
    )
    now = rt.clock()
    launch = secrets.token_urlsafe(32)
    async with rt.db.transaction() as conn:
        async with interaction.authorized(conn) as ctx:
            await _read(ctx, conn, "Patient", patient, "patient")
            if encounter is not None:
                found = await _read(ctx, conn, "Encounter", encounter, "encounter")
                if not _refers_to(found.get("subject"), patient):
                    raise Refusal(
                        400,
                        "invalid_request",
                        f"`Encounter/{encounter}` is not an encounter of `Patient/{patient}`",
                    )
            if fhir_user is not None:
                type, _, id = fhir_user.partition("/")
                await _read(ctx, conn, type, id, "fhir_user")
        if client_id is not None:
            app = await oauth.get_client(conn, client_id)
            if app is None or "ehr" not in app.launch_types:
                raise Refusal(
                    400,
                    "invalid_request",
                    f"`client_id` `{client_id[:128]}` is not an app registered for EHR launch",
                )
        await oauth.save_launch(
            conn,
            launch,
            oauth.Launch(
                created_by=account_of(principal),
                client_id=client_id,
                patient=patient,
                encounter=encounter,
                fhir_user=fhir_user,
                expires_at=now + timedelta(seconds=rt.settings.oauth_launch_seconds),
            ),
        )
    answer: dict[str, Any] = {
        "launch": launch,
        "expires_in": rt.settings.oauth_launch_seconds,
        "patient": patient,
    }
    if encounter is not None:
        answer["encounter"] = encounter
    return answer


async def launch_route(request: Request) -> Response:
    rt = runtime(request)
    principal = None
    try:
        principal = system_caller(request)
        answer = await create_launch(request, principal)
    except Refusal as refusal:
        if isinstance(refusal, Caller):
            principal = refusal.principal
        await rt.audit.security_event(
            account=account_of(principal),
            event="launch",
            allowed=False,
            explanation=f"EHR launch refused: {refusal.error}: {refusal.description}",
            reason=refusal.error,
        )
        return refusal.response()
    await rt.audit.security_event(
        account=account_of(principal),
        event="launch",
        allowed=True,
        explanation="EHR launch context created"
        + (f" for encounter `Encounter/{answer['encounter']}`" if "encounter" in answer else ""),
        patients=[f"Patient/{answer['patient']}"],
    )
    return Response(orjson.dumps(answer), media_type="application/json", headers=NO_STORE)


def install(app: FastAPI) -> None:
    app.add_api_route(PATH, launch_route, methods=["POST"])
