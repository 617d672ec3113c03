"""batch and transaction Bundles posted to the base URL.

A transaction is all or nothing, processed in the order R4 prescribes (DELETE, POST, PUT/PATCH,
GET), with the full URLs of created resources (`urn:uuid:`, or a URL carrying the client's id)
resolved into real references before anything is validated or stored. A batch answers each entry
on its own, each in its own savepoint. Conditional entries (`ifNoneExist`, `PUT Type?criteria`,
`DELETE Type?criteria`) search only what the caller may see (services/interactions/conditional.py).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from capability.definitions import json_schema
from compartments.ids import ID_REGEX
from fhir_server.errors import (
    BadRequest,
    FhirError,
    InvalidResource,
    Issue,
    NotFound,
    NotSupported,
    PreconditionFailed,
)
from fhir_server.services.context import Context
from fhir_server.services.formats.bundles import raw
from fhir_server.services.formats.etags import etag
from fhir_server.services.formats.operation_outcome import operation_outcome
from fhir_server.services.interactions import (
    conditional,
    create,
    delete,
    history,
    patch,
    read,
    search,
    update,
)
from fhir_server.services.interactions.versions import validated
from fhir_server.services.offload import cpu
from fhir_server.services.result import Result
from fhir_server.storage import repository
from fhir_server.storage.repository import NewVersion
from fhir_server.storage.sql import Connection

_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class Entry:
    index: int
    method: str
    url: str
    resource_type: str | None
    id: str | None
    tail: list[str]
    query: str
    resource: Any
    full_url: str | None
    if_none_exist: str | None
    if_match: int | None
    response: dict[str, Any] = field(default_factory=dict)
    # a conditional update, patch or delete: `PUT Type?criteria`, `PATCH ...`, `DELETE ...`
    conditional: bool = False
    # a conditional PUT that matched nothing and is created with the POSTs, under a new id
    creates: bool = False


def _entry_error(index: int, error: FhirError) -> FhirError:
    """The same error, its locations moved under `Bundle.entry[index]`."""
    prefix = f"Bundle.entry[{index}]"
    issues = []
    for issue in error.issues:
        where = tuple(
            e
            if e.startswith(prefix)
            else f"{prefix}.resource.{e.split('.', 1)[1]}"
            if "." in e
            else f"{prefix}.resource.{e}"
            for e in issue.expression
        ) or (prefix,)
        issues.append(
            replace(issue, diagnostics=f"entry {index}: {issue.diagnostics}", expression=where)
        )
    moved = type(error)(issues=issues)
    moved.error_code = error.error_code
    return moved


def _parse_entry(ctx: Context, index: int, raw_entry: Any) -> Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw_entry, dict):
        raise BadRequest(f"entry {index} is not an object", expression=[where])
    request = raw_entry.get("request")
    if not isinstance(request, dict):
        raise BadRequest(f"entry {index} has no `request`", expression=[f"{where}.request"])
    method = request.get("method")
    url = request.get("url")
    if not isinstance(method, str) or method not in _ORDER or not isinstance(url, str) or not url:
        raise BadRequest(
            f"entry {index} needs `request.method` (GET, POST, PUT, PATCH, DELETE) and `request.url`",
            expression=[f"{where}.request"],
        )
    if url.startswith(ctx.base_url + "/"):
        url = url[len(ctx.base_url) + 1 :]
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    resource_type = segments[0] if segments and not segments[0].startswith("_") else None
    if_match = update.parse_if_match(request["ifMatch"]) if "ifMatch" in request else None
    id = segments[1] if len(segments) > 1 and resource_type else None
    return Entry(
        index=index,
        method=method,
        url=url,
        resource_type=resource_type,
        id=id,
        tail=segments[2:] if resource_type else segments,
        query=parts.query,
        resource=raw_entry.get("resource"),
        full_url=raw_entry.get("fullUrl") if isinstance(raw_entry.get("fullUrl"), str) else None,
        if_none_exist=request.get("ifNoneExist"),
        if_match=if_match,
        conditional=method in {"PUT", "PATCH", "DELETE"} and id is None and bool(parts.query),
    )


# A RESTful resource URL: `[base/]Type/id`, the base absent in a relative one.
_RESTFUL = re.compile(rf"(?:(?P<base>.+)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>{ID_REGEX})")


def _restful(url: str, server_base: str) -> tuple[str, str, str] | None:
    """(base, type, id) of a RESTful URL; a relative one is on the server's base."""
    found = _RESTFUL.fullmatch(url)
    if found is None or "/_history" in url:
        return None
    base = found["base"]
    if base is not None and "://" not in base:
        return None
    return (base or server_base).rstrip("/"), found["type"], found["id"]


class References:
    """What the links of a transaction become (R4 http.html#trules, bundle.html resolving
    references in Bundles). Every link to an entry's full URL is replaced by the resource that
    entry became, whatever id the client had given it, wherever R4 says links are: a
    `Reference.reference` (also a relative `Type/id` that the referring entry's base, its own
    full URL's or else the server's, turns into such a URL), an element of type `uri`, `url`,
    `oid` or `uuid` that is exactly the full URL (`Attachment.url` naming a Binary of the same
    transaction), and an `href` or `src` attribute of the narrative whose value is exactly it.
    Nothing else changes: no other text, no part of a value."""

    def __init__(self, server_base: str) -> None:
        self.server_base = server_base
        self.exact: dict[str, str] = {}
        self.restful: dict[tuple[str, str, str], str] = {}
        # the Reference objects whose `reference` is conditional, with the entry's index
        self.conditional: list[tuple[int, dict[str, Any]]] = []

    def add(self, full_url: str, target: str, *, replace: bool = True) -> None:
        if replace or full_url not in self.exact:
            self.exact[full_url] = target
        where = _restful(full_url, self.server_base)
        if where is not None and (replace or where not in self.restful):
            self.restful[where] = target

    def rewrite(self, entry: Entry) -> None:
        """Rewrite the entry's links, and note its conditional references, in one walk."""
        base = self.server_base
        if entry.full_url is not None and (own := _restful(entry.full_url, base)) is not None:
            base = own[0]
        resource = entry.resource
        if isinstance(resource, dict):
            self._rewrite(resource, resource.get("resourceType"), base, entry.index)

    def _rewrite(self, value: dict[str, Any], type: Any, base: str, index: int) -> None:
        """One walk of `value`, an element of `type`, guided by the R4 schema (`_links`)."""
        links = _links().get(type) if isinstance(type, str) else None
        if links is None:
            return
        exact = self.exact
        for key, item in value.items():
            link = links.get(key)
            if link is None:
                continue
            if link is _URI:
                if isinstance(item, str):
                    if (target := exact.get(item)) is not None:
                        value[key] = target
                elif isinstance(item, list):
                    for n, each in enumerate(item):
                        if isinstance(each, str) and (target := exact.get(each)) is not None:
                            item[n] = target
            elif link is _REFERENCE:
                if isinstance(item, str):
                    self._reference(value, item, base, index)
            elif link is _NARRATIVE:
                if isinstance(item, str) and exact and ("href" in item or "src" in item):
                    value[key] = _TAG.sub(self._tag, item)
            elif isinstance(item, dict):
                self._rewrite(
                    item, item.get("resourceType") if link is _RESOURCE else link, base, index
                )
            elif isinstance(item, list):
                for each in item:
                    if isinstance(each, dict):
                        child = each.get("resourceType") if link is _RESOURCE else link
                        self._rewrite(each, child, base, index)

    def _reference(self, holder: dict[str, Any], reference: str, base: str, index: int) -> None:
        target = self.exact.get(reference)
        if target is None and self.restful:
            where = _restful(reference, base)
            target = None if where is None else self.restful.get(where)
        if target is not None:
            holder["reference"] = target
        elif "?" in reference and _CONDITIONAL_REFERENCE.fullmatch(reference):
            self.conditional.append((index, holder))

    def _tag(self, found: re.Match[str]) -> str:
        tag = found[0]
        if "href" not in tag and "src" not in tag:
            return tag
        return _LINK_ATTRIBUTE.sub(self._attribute, tag)

    def _attribute(self, found: re.Match[str]) -> str:
        target = self.exact.get(found["value"])
        if target is None:
            return found[0]
        return f"{found['name']}{found['quote']}{target}{found['quote']}"


# What a property of an R4 type holds, for the walk of `References`: one of these, or the name
# of the complex type it holds.
_URI = "(uri)"  # a `uri`, `url`, `oid` or `uuid`
_REFERENCE = "(Reference.reference)"
_NARRATIVE = "(Narrative.div)"
_RESOURCE = "(Resource)"  # a resource, of the type its `resourceType` names
_URI_TYPES = frozenset({"uri", "url", "oid", "uuid"})
_URI_SUFFIXES = ("Uri", "Url", "Oid", "Uuid")  # a choice's primitive, inlined in the schema
# A start tag of XHTML (one whose attribute values hold no `<` or `>`: others are left as sent),
# and in it an `href` or `src` attribute with its whole value.
_TAG = re.compile(r"<[A-Za-z][^<>]*>")
_LINK_ATTRIBUTE = re.compile(
    r"""(?P<name>\s(?:href|src)\s*=\s*)(?P<quote>["'])(?P<value>[^"'<>]*)(?P=quote)"""
)


@cache
def _links() -> dict[str, dict[str, str]]:
    """For every type of the R4 JSON schema, its properties that may hold a link to a
    transaction's entry: what each holds. Read once from the schema, so that the walk of a
    transaction's resources looks at those properties only."""
    definitions: dict[str, Any] = json_schema()["definitions"]
    links: dict[str, dict[str, str]] = {}
    for name, spec in definitions.items():
        found: dict[str, str] = {}
        for prop, prop_spec in (spec.get("properties") or {}).items():
            held = prop_spec.get("items", prop_spec)
            ref = str(held.get("$ref", "")).rpartition("/")[2]
            if name == "Reference" and prop == "reference":
                found[prop] = _REFERENCE
            elif name == "Narrative" and prop == "div":
                found[prop] = _NARRATIVE
            elif ref in _URI_TYPES or (
                not ref and prop.endswith(_URI_SUFFIXES) and held.get("type") == "string"
            ):
                found[prop] = _URI
            elif ref == "ResourceList":
                found[prop] = _RESOURCE
            elif ref and definitions.get(ref, {}).get("properties"):
                found[prop] = ref
        links[name] = found
    return links


# A conditional reference (R4 http.html#trules): `Type?criteria` in place of `Type/id`.
_CONDITIONAL_REFERENCE = re.compile(r"(?P<type>[A-Z][A-Za-z]+)\?(?P<criteria>.+)")


async def _resolve_conditional_references(
    ctx: Context, conn: Connection, references: References
) -> None:
    """Replace each conditional reference by the one resource it matches among those the caller
    may see; no match or several fail the transaction (412): R4 lets a server refuse them, never
    store them as they are. Each distinct reference is searched once."""
    resolved: dict[str, str] = {}
    for index, holder in references.conditional:
        reference = holder["reference"]
        if reference not in resolved:
            parts = _CONDITIONAL_REFERENCE.fullmatch(reference)
            assert parts is not None
            try:
                _check_type(parts["type"])
                match = await conditional.single_match(
                    ctx, conn, parts["type"], parts["criteria"], interaction="reference"
                )
                if match is None:
                    raise PreconditionFailed(
                        f"the conditional reference `{reference}` matches no `{parts['type']}`",
                        code="not-found",
                    )
            except FhirError as exc:
                raise _entry_error(index, exc) from None
            resolved[reference] = f"{parts['type']}/{match}"
        holder["reference"] = resolved[reference]


def check_full_urls(raw_entries: list[Any]) -> None:
    """bdl-7: a full URL names one resource (version) of a Bundle; bdl-8: never a version."""
    seen: dict[tuple[str, Any], int] = {}
    for index, raw_entry in enumerate(raw_entries):
        if not isinstance(raw_entry, dict) or not isinstance(raw_entry.get("fullUrl"), str):
            continue
        full_url = raw_entry["fullUrl"]
        where = f"Bundle.entry[{index}].fullUrl"
        if "/_history/" in full_url:
            raise BadRequest(
                f"entry {index}: the fullUrl `{full_url}` names a version; it must not (bdl-8)",
                expression=[where],
            )
        resource = raw_entry.get("resource")
        meta = resource.get("meta") if isinstance(resource, dict) else None
        version = meta.get("versionId") if isinstance(meta, dict) else None
        key = (full_url, version if isinstance(version, str) else None)
        if key in seen:
            raise BadRequest(
                f"entries {seen[key]} and {index} have the same fullUrl `{full_url}`; full URLs "
                "must be unique in a Bundle (bdl-7)",
                expression=[where],
            )
        seen[key] = index


def _written(ctx: Context, result: Result, prefer: str) -> dict[str, Any]:
    version = result.version
    ref = f"{version.resource_type}/{version.id}"
    entry: dict[str, Any] = {"fullUrl": f"{ctx.base_url}/{ref}"}
    if prefer == "representation" and version.content is not None:
        entry["resource"] = raw(version.content)
    entry["response"] = {
        "status": _STATUS_TEXT[result.status],
        "location": f"{ref}/_history/{version.version_id}",
        "etag": etag(version.version_id),
        "lastModified": version.last_updated.isoformat(timespec="microseconds"),
    }
    return entry


def _patch_operations(entry: Entry) -> Any:
    """R4 carries a JSON Patch in a transaction as a Binary resource."""
    binary = entry.resource
    if not (
        isinstance(binary, dict)
        and binary.get("resourceType") == "Binary"
        and binary.get("contentType") == "application/json-patch+json"
        and isinstance(binary.get("data"), str)
    ):
        raise BadRequest(
            "a PATCH entry carries its JSON Patch as a Binary with contentType "
            "`application/json-patch+json`"
        )
    try:
        return orjson.loads(base64.b64decode(binary["data"], validate=True))
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        raise BadRequest("the PATCH entry's Binary.data is not base64-encoded JSON") from None


def _need_instance(entry: Entry) -> tuple[str, str]:
    if entry.resource_type is None or entry.id is None or entry.query:
        raise BadRequest(
            f"`{entry.method} {entry.url}`: name the resource as `Type/id`, or (PUT, PATCH and "
            "DELETE) give search criteria as `Type?criteria`",
            code="not-supported",
        )
    return entry.resource_type, entry.id


def _need_create(entry: Entry) -> str:
    """The type a POST entry creates: its URL is `Type`, with no criteria (a conditional create
    gives them in `request.ifNoneExist`)."""
    if entry.resource_type is None or entry.id is not None or entry.tail:
        raise BadRequest(f"`POST {entry.url}`: a create names only the resource type")
    conditional.refuse_criteria_in_create(
        (name for name, _ in parse_qsl(entry.query, keep_blank_values=True)),
        "for a conditional create give `request.ifNoneExist`",
        f"Bundle.entry[{entry.index}].request.url",
    )
    return entry.resource_type


def _need_type(entry: Entry) -> str:
    if entry.resource_type is None or entry.tail:
        raise BadRequest(
            f"`{entry.method} {entry.url}`: a conditional {entry.method} is `Type?criteria`"
        )
    return entry.resource_type


async def _get(ctx: Context, conn: Connection, entry: Entry) -> dict[str, Any]:
    params = dict(parse_qsl(entry.query, keep_blank_values=True))
    rtype, id, tail = entry.resource_type, entry.id, entry.tail
    if tail == ["_history"] or (rtype is None and tail == ["_history"]) or id == "_history":
        body = await history.history(
            ctx, conn, params, resource_type=rtype, id=id if id != "_history" else None
        )
        return {"resource": orjson.Fragment(body), "response": {"status": "200 OK"}}
    if rtype is not None and id is not None and not tail:
        found = await read.read(ctx, conn, rtype, id)
    elif rtype is not None and id is not None and len(tail) == 2 and tail[0] == "_history":
        found = await read.vread(ctx, conn, rtype, id, tail[1])
    elif rtype is not None and id is None and not tail:
        pairs = parse_qsl(entry.query, keep_blank_values=True)
        body = await search.search(ctx, conn, rtype, pairs)
        return {"resource": orjson.Fragment(body), "response": {"status": "200 OK"}}
    else:
        raise NotSupported(
            f"`GET {entry.url}` is not supported in Bundles yet", code="not-supported"
        )
    assert found.content is not None
    return {
        "fullUrl": f"{ctx.base_url}/{rtype}/{id}",
        "resource": raw(found.content),
        "response": {
            "status": "200 OK",
            "etag": etag(found.version_id),
            "lastModified": found.last_updated.isoformat(timespec="microseconds"),
        },
    }


async def _run_one(ctx: Context, conn: Connection, entry: Entry, prefer: str) -> dict[str, Any]:
    """One entry of a batch (or a transaction entry that could not be grouped)."""
    if entry.method == "POST":
        result = await create.create(
            ctx, conn, _need_create(entry), entry.resource, if_none_exist=entry.if_none_exist
        )
        return _written(ctx, result, prefer)
    if entry.method == "PUT" and entry.conditional:
        result = await update.conditional_update(
            ctx, conn, _need_type(entry), entry.query, entry.resource, if_match=entry.if_match
        )
        return _written(ctx, result, prefer)
    if entry.method == "PUT":
        rtype, id = _need_instance(entry)
        result = await update.update(ctx, conn, rtype, id, entry.resource, if_match=entry.if_match)
        return _written(ctx, result, prefer)
    if entry.method == "PATCH" and entry.conditional:
        result = await patch.conditional_patch(
            ctx,
            conn,
            _need_type(entry),
            entry.query,
            _patch_operations(entry),
            if_match=entry.if_match,
        )
        return _written(ctx, result, prefer)
    if entry.method == "PATCH":
        rtype, id = _need_instance(entry)
        result = await patch.patch(
            ctx, conn, rtype, id, _patch_operations(entry), if_match=entry.if_match
        )
        return _written(ctx, result, prefer)
    if entry.method == "DELETE" and entry.conditional:
        await delete.conditional_delete(
            ctx, conn, _need_type(entry), entry.query, if_match=entry.if_match
        )
        return {"response": {"status": "204 No Content"}}
    if entry.method == "DELETE":
        rtype, id = _need_instance(entry)
        await delete.delete(ctx, conn, rtype, id, if_match=entry.if_match)
        return {"response": {"status": "204 No Content"}}
    return await _get(ctx, conn, entry)


def _check_types(entry: Entry) -> None:
    if entry.resource_type is not None:
        _check_type(entry.resource_type)


def _check_type(resource_type: str) -> None:
    from capability.definitions import resource_types

    if resource_type not in resource_types():
        raise NotSupported(f"resource type `{resource_type}` is not supported")


class Identities:
    """R4 transaction rule: the resources that the DELETE, POST and PUT/PATCH entries write
    (conditional ones as resolved) must not overlap; a resource written twice is a 400."""

    def __init__(self) -> None:
        self.writers: dict[tuple[str, str], int] = {}

    def claim(self, entry: Entry, resource_type: str, id: str) -> None:
        first = self.writers.setdefault((resource_type, id), entry.index)
        if first != entry.index:
            raise BadRequest(
                f"entries {first} and {entry.index} both write `{resource_type}/{id}`; a "
                "transaction writes each resource at most once",
                code="business-rule",
            )


async def _transaction(
    ctx: Context, conn: Connection, entries: list[Entry], prefer: str
) -> list[dict[str, Any]]:
    for entry in entries:
        try:
            _check_types(entry)
        except FhirError as exc:
            raise _entry_error(entry.index, exc) from None
    ordered = sorted(entries, key=lambda e: _ORDER[e.method])
    written = Identities()

    async def guarded(entry: Entry, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except FhirError as exc:
            raise _entry_error(entry.index, exc) from None

    for entry in (e for e in ordered if e.method == "DELETE"):

        async def do_delete(entry: Entry = entry) -> None:
            if entry.conditional:
                rtype = _need_type(entry)
                id, _ = await delete.conditional_delete(
                    ctx, conn, rtype, entry.query, if_match=entry.if_match
                )
            else:
                rtype, id = _need_instance(entry)
                await delete.delete(ctx, conn, rtype, id, if_match=entry.if_match)
            if id is not None:
                written.claim(entry, rtype, id)
            entry.response = {"response": {"status": "204 No Content"}}

        await guarded(entry, do_delete)

    # Give every created resource its id first, so references between entries resolve.
    references = References(ctx.base_url)
    creates: list[Entry] = []
    for entry in (e for e in ordered if e.method == "POST"):

        async def plan_create(entry: Entry = entry) -> None:
            rtype = _need_create(entry)
            existing = None
            if entry.if_none_exist:
                existing = await create.find_existing(ctx, conn, rtype, entry.if_none_exist)
            if existing is not None:
                entry.response = _written(ctx, existing, prefer)
                entry.id = existing.version.id
            else:
                # the client's id, if any, is ignored (R4 http.html#create)
                entry.id = create.new_id()
                creates.append(entry)
            if entry.full_url:
                references.add(entry.full_url, f"{rtype}/{entry.id}")

        await guarded(entry, plan_create)
    for entry in (e for e in ordered if e.method == "PUT" and e.conditional):

        async def plan_conditional_update(entry: Entry = entry) -> None:
            rtype = _need_type(entry)
            resource = validated(ctx, entry.resource, resource_type=rtype)
            match = await conditional.single_match(
                ctx, conn, rtype, entry.query, interaction="conditional update"
            )
            target = update.conditional_target(rtype, match, resource, entry.if_match)
            if target is None:
                entry.id, entry.creates = create.new_id(), True
                creates.append(entry)
            else:  # from here on, the plain `PUT Type/target` it resolved to
                entry.id, entry.query, entry.conditional = target, "", False
                entry.resource = {**resource, "id": target}
            if entry.full_url:
                references.add(entry.full_url, f"{rtype}/{entry.id}")

        await guarded(entry, plan_conditional_update)
    for entry in (e for e in ordered if e.method == "PATCH" and e.conditional):

        async def plan_conditional_patch(entry: Entry = entry) -> None:
            rtype = _need_type(entry)
            match = await conditional.single_match(
                ctx, conn, rtype, entry.query, interaction="conditional patch"
            )
            if match is None:
                raise NotFound(
                    f"no `{rtype}` matches the conditional patch criteria `{entry.query}`"
                )
            # from here on, the plain `PATCH Type/match` it resolved to
            entry.id, entry.query, entry.conditional = match, "", False

        await guarded(entry, plan_conditional_patch)
    for entry in (e for e in ordered if e.method in {"PUT", "PATCH"}):
        if entry.full_url and entry.resource_type and entry.id:
            references.add(entry.full_url, f"{entry.resource_type}/{entry.id}", replace=False)
        if entry.resource_type and entry.id and not entry.creates:
            try:
                written.claim(entry, entry.resource_type, entry.id)
            except FhirError as exc:
                raise _entry_error(entry.index, exc) from None
    for entry in entries:
        if entry.resource is not None and entry.method in {"POST", "PUT"}:
            references.rewrite(entry)
    await _resolve_conditional_references(ctx, conn, references)

    versions = await cpu(_created, ctx, creates, prefer, ctx.clock())
    await repository.insert_created(conn, versions)

    for entry in (e for e in ordered if e.method in {"PUT", "PATCH", "GET", "HEAD"}):
        if entry.creates:
            continue

        async def run(entry: Entry = entry) -> None:
            entry.response = await _run_one(ctx, conn, entry, prefer)

        await guarded(entry, run)
    return [e.response for e in entries]


def _created(ctx: Context, creates: list[Entry], prefer: str, now: datetime) -> list[NewVersion]:
    """The versions a transaction's creates store: validation and indexing, CPU work only."""
    versions = []
    for entry in creates:
        assert entry.resource_type is not None and entry.id is not None
        try:
            body = entry.resource if entry.creates else create.ignoring_id(entry.resource)
            resource = validated(ctx, body, resource_type=entry.resource_type)
            version = create.creation(
                ctx,
                resource,
                entry.id,
                method="PUT" if entry.creates else "POST",
                last_updated=now,
            )
        except FhirError as exc:
            raise _entry_error(entry.index, exc) from None
        versions.append(version)
        entry.response = _written(ctx, Result.written(201, version), prefer)
    return versions


async def _batch(
    ctx: Context,
    conn: Connection,
    entries: list[Entry],
    prefer: str,
    status_of: Callable[[FhirError], int],
) -> list[dict[str, Any]]:
    responses = []
    for entry in entries:
        try:
            async with conn.transaction():  # a savepoint: one entry fails alone
                _check_types(entry)
                responses.append(await _run_one(ctx, conn, entry, prefer))
        except FhirError as exc:
            status = status_of(exc)
            responses.append(
                {
                    "response": {
                        "status": f"{status} {_REASONS.get(status, 'Error')}",
                        "outcome": operation_outcome(exc.issues),
                    }
                }
            )
    return responses


_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    412: "Precondition Failed",
    422: "Unprocessable Entity",
}


def _lock_slots(entries: list[Entry]) -> list[int]:
    """The advisory-lock slots of every conditional write of a Bundle, all taken before the
    first entry runs (services/interactions/conditional.py). Criteria that do not parse lock nothing: their
    entry fails on its own."""
    slots = []
    for entry in entries:
        criteria = entry.query if entry.conditional else entry.if_none_exist
        if entry.resource_type is None or not isinstance(criteria, str) or not criteria:
            continue
        try:
            slots.append(conditional.lock_slot(entry.resource_type, criteria))
        except FhirError:
            continue
    return slots


# What stands in for an entry's resource while the Bundle around it is validated: the smallest
# valid resource. Each entry's own resource is validated when the entry runs, its problems then
# located under the entry (`_entry_error`).
_ANY_RESOURCE = {"resourceType": "Parameters"}
_ENTRY = re.compile(r"Bundle\.entry\[(\d+)\]")


def _envelope_problems(
    ctx: Context, body: dict[str, Any], raw_entries: list[Any], kind: str
) -> dict[int, list[Issue]]:
    """The R4 schema's problems of the Bundle itself, its entries and their requests (an unknown
    or misspelt element, `request.ifNoneExists`, is refused, never ignored: docs/validation.md),
    by the index of the entry they are in. A problem outside any entry is a 400 at once."""
    envelope = {
        **body,
        "entry": [
            {**e, "resource": _ANY_RESOURCE} if isinstance(e, dict) and "resource" in e else e
            for e in raw_entries
        ],
    }
    if not raw_entries:
        del envelope["entry"]  # `"entry": []` is taken for no entries
    by_entry: dict[int, list[Issue]] = {}
    outside: list[Issue] = []
    for issue in ctx.validator.issues(envelope, expected_type="Bundle"):
        found = _ENTRY.match(issue.expression[0]) if issue.expression else None
        if found is None:
            outside.append(issue)
        else:
            by_entry.setdefault(int(found[1]), []).append(issue)
    if outside:
        raise InvalidResource(issues=outside)
    return by_entry


async def process(
    ctx: Context,
    conn: Connection,
    body: Any,
    *,
    prefer: str,
    status_of: Callable[[FhirError], int],
) -> bytes:
    """Run a batch or transaction Bundle; return the response Bundle. `status_of`: the HTTP
    status of a domain error, which a batch entry's `response.status` carries (the API's)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise BadRequest("the base URL accepts only a Bundle of type `batch` or `transaction`")
    kind = body.get("type")
    if not isinstance(kind, str) or kind not in {"batch", "transaction"}:
        raise BadRequest(
            f"a Bundle posted to the base URL must be a `batch` or `transaction`, not `{kind}`",
            expression=["Bundle.type"],
        )
    raw_entries = body.get("entry", [])
    if not isinstance(raw_entries, list):
        raise BadRequest("`Bundle.entry` must be an array", expression=["Bundle.entry"])
    if len(raw_entries) > ctx.settings.max_bundle_entries:
        raise BadRequest(
            f"the Bundle has {len(raw_entries)} entries; at most "
            f"{ctx.settings.max_bundle_entries} are accepted",
            code="too-costly",
        )
    check_full_urls(raw_entries)
    refused = _envelope_problems(ctx, body, raw_entries, kind)
    if kind == "transaction":
        if refused:
            raise InvalidResource(issues=[i for issues in refused.values() for i in issues])
        entries = [_parse_entry(ctx, i, e) for i, e in enumerate(raw_entries)]
        await conditional.serialize(conn, _lock_slots(entries))
        responses = await _transaction(ctx, conn, entries, prefer)
    else:
        responses = []
        entries = []
        for i, e in enumerate(raw_entries):
            try:
                if i in refused:
                    raise InvalidResource(issues=refused[i])
                entries.append(_parse_entry(ctx, i, e))
            except FhirError as exc:
                entries.append(Entry(i, "INVALID", "", None, None, [], "", None, None, None, None))
                status = status_of(exc)
                entries[-1].response = {
                    "response": {
                        "status": f"{status} {_REASONS.get(status, 'Error')}",
                        "outcome": operation_outcome(exc.issues),
                    }
                }
        valid = [e for e in entries if e.method != "INVALID"]
        await conditional.serialize(conn, _lock_slots(valid))
        answered = iter(await _batch(ctx, conn, valid, prefer, status_of))
        responses = [e.response if e.method == "INVALID" else next(answered) for e in entries]
    result = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": f"{kind}-response",
        "entry": responses,
    }
    return orjson.dumps(result)
