"""`GET/POST /account/dependents`: the signed-in person's dependents, adding one and removing one
(docs/account-dependents.md).

Everything goes through the family workflow the FHIR operations run (`$family`, `$add-dependent`
through `api.fhir.run_add_dependent`, `$remove-dependent`), acting as the signed-in person: the
same rules, the same transaction, the same audit. A rule's refusal comes back as the workflow's
error; the page says it in plain words on the form, with what was typed kept and the reason code
beside it, and the transaction has written nothing. Removing goes through a confirmation page that
lists the dependent's active insurance coverage, which the removal ends (the specification's
"confirmation required" step); only that page's form sends `confirm`.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.deps import Interaction, runtime
from fhir_server.api.errors import status_of
from fhir_server.api.fhir import run_add_dependent
from fhir_server.errors import AccessDenied, Conflict, FhirError, NotFound, Unprocessable
from fhir_server.services.access.guard import Guard
from fhir_server.services.workflows import family
from fhir_server.web.account.change import field, posted
from fhir_server.web.account.home import account_page
from fhir_server.web.acting import acting, sign_in_first
from fhir_server.web.session import SignedIn
from fhir_server.web.signin import error_page, redirect

PATH = "/account/dependents"
REMOVE_PATH = "/account/dependents/remove"
FIELDS = ("relationship", "national_id", "given", "family", "birth_date", "gender")
GENDERS = ("female", "male", "other", "unknown")
# The relationship as the form offers it (the workflow's codes), from the person's own side.
RELATIONSHIPS: tuple[tuple[str, str], ...] = (
    ("CHILD", "My child"),
    ("SPOUSE", "My spouse"),
    ("PARENT", "My parent"),
    ("SIBLING", "My brother or sister"),
    ("GUARDIAN", "Someone I am the legal guardian of"),
    ("OTHER", "Someone else I care for"),
)
# The same, as the list says it of a dependent.
LISTED: dict[str, str] = {
    "CHILD": "Your child",
    "SPOUSE": "Your spouse",
    "PARENT": "Your parent",
    "SIBLING": "Your brother or sister",
    "GUARDIAN": "Your ward (you are their legal guardian)",
    "OTHER": "Someone you care for",
}
# The workflow's rule codes (family.check_rules and its lookups, "child-younger: ..." in the
# message) and the page's own; account_dependents.html says each in plain words.
RULES = frozenset(
    {
        "no-self",
        "already-a-dependent",
        "spouse-age",
        "birth-dates",
        "child-younger",
        "parent-older",
        "no-cycle",
        "dependent-unknown",
        "details-needed",
        "relationship",
        "birth-date",
    }
)


def reason_of(exc: FhirError) -> str:
    """The code the page explains: the workflow's rule, the engine's reason, else the error's
    stable code (conflict, bad_gateway, ...)."""
    if isinstance(exc, Unprocessable):
        head = str(exc).split(":", 1)[0].strip()
        if head in RULES:
            return head
    if isinstance(exc, AccessDenied) and exc.reason:
        return exc.reason
    return exc.error_code


async def own_patient(interaction: Interaction, who: SignedIn) -> str | None:
    """The id of the Patient the signed-in person is (whose dependents these are): the session's
    own Patient, or the verified Patient link of its Person; None for anyone else."""
    if who.fhir_user.startswith("Patient/"):
        return who.fhir_user.split("/", 1)[1]
    async with interaction.db.connection() as conn, interaction.authorized(conn) as ctx:
        guard: Guard = ctx.guard
    found = next(
        (i.reference for i in guard.identities if i.role == "Patient" and i.verified), None
    )
    return found.split("/", 1)[1] if found is not None else None


async def _members(interaction: Interaction, primary: str) -> list[family.Member]:
    async with interaction.db.connection() as conn, interaction.authorized(conn) as ctx:
        return await family.family_members(ctx, conn, primary)


def _row(member: family.Member) -> dict[str, Any]:
    born = member.content.get("birthDate")
    return {
        "patient": member.patient,
        "name": family.display_name(member.content) or member.patient,
        "relationship": LISTED.get(member.relationship, member.relationship.lower()),
        "born": born if isinstance(born, str) else "",
        "minor": member.is_minor,
        "added": member.added or "",
        "clinical": member.access.allowed,
        "own": member.related_person is not None,
        "coverage": [scheme for _, scheme in member.coverage],
        # what a removal ends: the person's own schemes covering the dependent
        "ending": [scheme for id, scheme in member.coverage if id in member.ending],
    }


async def dependents_page(request: Request) -> Response:
    found = await acting(request)
    if found is None:
        return sign_in_first(request)
    who, interaction = found
    return await _page(request, who, interaction)


async def _page(
    request: Request,
    who: SignedIn,
    interaction: Interaction,
    *,
    values: dict[str, str] | None = None,
    problem: FhirError | None = None,
) -> Response:
    primary = await own_patient(interaction, who)
    members = await _members(interaction, primary) if primary is not None else []
    majority = runtime(request).settings.majority_age
    return account_page(
        request,
        "account_dependents.html",
        status_code=status_of(problem) if problem is not None else 200,
        primary=primary,
        members=[_row(m) for m in members],
        relationships=RELATIONSHIPS,
        genders=GENDERS,
        values=values or dict.fromkeys(FIELDS, ""),
        problem=str(problem) if problem is not None else None,
        reason=reason_of(problem) if problem is not None else None,
        majority=majority,
        added=request.query_params.get("added") == "1",
        removed=request.query_params.get("removed") == "1",
    )


def add_request(values: dict[str, str]) -> family.AddRequest:
    """The form as the workflow's `AddRequest` (what `$add-dependent`'s parameters become), or
    the page's own refusal (an Unprocessable with its rule) for a form it cannot send."""
    relationship = values["relationship"]
    if relationship not in family.ROLES:
        raise Unprocessable("relationship: choose a relationship")
    national_id = values["national_id"] or None
    given, family_name, born = values["given"], values["family"], values["birth_date"]
    demographics = None
    if given or family_name or born:
        if not (given and family_name and born):
            raise Unprocessable("details-needed: first name, last name and birth date")
        if not _is_date(born):
            raise Unprocessable("birth-date: a birth date is YYYY-MM-DD")
        demographics = {
            "resourceType": "Patient",
            "name": [{"family": family_name, "given": [given]}],
            "birthDate": born,
            **({"gender": values["gender"]} if values["gender"] in GENDERS else {}),
        }
    if national_id is None and demographics is None:
        raise Unprocessable("details-needed: a national id or the demographics")
    return family.AddRequest(relationship, national_id, demographics)


def _is_date(text: str) -> bool:
    """A full date as a date input sends it (YYYY-MM-DD) and the calendar has it."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) is None:
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


async def add(request: Request) -> Response:
    checked = await posted(request)
    if isinstance(checked, Response):
        return checked
    who, interaction, form = checked
    values = {name: field(form, name, 100) for name in FIELDS}
    primary = await own_patient(interaction, who)
    try:
        if primary is None:
            raise AccessDenied("invalid_role", "only a patient manages their dependents")
        await run_add_dependent(interaction, primary, add_request(values))
    except FhirError as problem:
        return await _page(request, who, interaction, values=values, problem=problem)
    return redirect(f"{PATH}?added=1")


def _removal(dependent: str, confirm: bool) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "dependent", "valueReference": {"reference": dependent}},
            {"name": "confirm", "valueBoolean": confirm},
        ],
    }


async def confirm_removal(request: Request) -> Response:
    """The confirmation page: whom, and the coverage that ends with the relationship."""
    found = await acting(request)
    if found is None:
        return sign_in_first(request)
    who, interaction = found
    dependent = request.query_params.get("dependent", "")[:200]
    return await _confirmation(request, who, interaction, dependent)


async def _confirmation(
    request: Request, who: SignedIn, interaction: Interaction, dependent: str
) -> Response:
    primary = await own_patient(interaction, who)
    members = await _members(interaction, primary) if primary is not None else []
    member = next((m for m in members if m.patient == dependent and m.related_person), None)
    if member is None:
        return error_page(request, NotFound("this person is not one of your dependents"))
    return account_page(request, "account_dependents_remove.html", member=_row(member))


async def remove(request: Request) -> Response:
    checked = await posted(request)
    if isinstance(checked, Response):
        return checked
    who, interaction, form = checked
    dependent = field(form, "dependent")
    confirm = _confirmed(form)
    primary = await own_patient(interaction, who)
    if primary is None:
        return error_page(request, AccessDenied("invalid_role", "only a patient has dependents"))
    try:
        async with interaction.db.transaction() as conn, interaction.authorized(conn) as ctx:
            await family.remove_dependent(ctx, conn, primary, _removal(dependent, confirm))
    except Conflict:
        # coverage appeared since the confirmation page was shown: show it again
        return await _confirmation(request, who, interaction, dependent)
    except FhirError as problem:
        return error_page(request, problem)
    return redirect(f"{PATH}?removed=1")


def _confirmed(form: FormData) -> bool:
    return field(form, "confirm") == "yes"


def install(app: FastAPI) -> None:
    app.add_api_route(PATH, dependents_page, methods=["GET"], include_in_schema=False)
    app.add_api_route(PATH, add, methods=["POST"], include_in_schema=False)
    app.add_api_route(REMOVE_PATH, confirm_removal, methods=["GET"], include_in_schema=False)
    app.add_api_route(REMOVE_PATH, remove, methods=["POST"], include_in_schema=False)
