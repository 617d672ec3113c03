"""Every access decision becomes a FHIR AuditEvent (DESIGN.md 5.6), and none is ever lost.

Denials and emergency (break-glass) accesses are written before the response is sent, in a
transaction of their own (the request's own transaction is rolled back by the denial). Allowed
decisions are appended to the server process's spool file before the response leaves (one
`os.write`: audit/spool.py), which survives the process being killed; a writer process reads
the spool every `FLUSH_SECONDS` and stores it in batches with COPY, committed without waiting
for the WAL flush (durable within about a second), and a restarted server's writer stores what
a dead one left (docs/scaling.md, "The audit stream"). An AuditEvent names who acted (the token's user or client), for whom (the patients
whose compartment the decision concerned: they and their guardians can read it), what
(interaction, resource), the outcome, the rule and reason, and the purpose of use. It holds
references and codes only, never names or other demographics.

What the database could refuse never reaches it: each decision is bounded when it is recorded,
before it joins a batch (`bound`: no NUL, no lone surrogate, every value within the length its
column and index take), and an event that was bounded says so (`meta.tag` `bounded`, and an
extension naming the elements). Should the database still refuse a batch, the writer splits it
until the refused event stands alone, stores that one reduced to plain ASCII, and stores the
rest as they were (`store`). Every event has its id before it is first written, so a batch
retried after a lost connection, or taken over from a writer process that died, is stored
exactly once. Transient failures are retried without end, never dropped; while the writer is
behind by more than `MAX_BUFFERED` events, requests wait for it, and fail with 503 rather than
let the buffer grow without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import queue as queues
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import psycopg

from compartments.ids import is_id
from fhir_server.audit import spool
from fhir_server.errors import AuditUnavailable
from fhir_server.metrics import AUDIT_BOUNDED, AUDIT_BUFFERED, EMERGENCY_ACCESSES
from fhir_server.services.access.guard import Audited, Guard
from fhir_server.services.context import Context
from fhir_server.services.interactions.create import new_id
from fhir_server.services.interactions.versions import dump_json, format_instant
from fhir_server.storage import audit_events, database
from fhir_server.storage.audit_events import stamped_id
from fhir_server.storage.database import Database
from fhir_server.storage.sql import Connection

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
# Events recorded but not yet stored (queued, or handed to the writer and not yet committed)
# beyond which a request waits for the writer, at most `BACKPRESSURE_SECONDS`, then gets 503.
MAX_BUFFERED = 100_000
BACKPRESSURE_SECONDS = 10.0
# How long a stopping server waits for its writer process to store what it was handed.
SHUTDOWN_SECONDS = 60.0
# The writer process's `application_name`.
WRITER_NAME = "fhir-server audit writer"
# Pauses between tries of a write that failed for a transient reason (then 10 s each time).
RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0)
# Tries of an urgent (denial, break-glass) write in the request before it is queued instead.
URGENT_ATTEMPTS = 3
# Connections of the audit trail's own (denials and emergencies written before the response):
# a request holds one of the server's pool while its decisions are written, so writing them on
# that pool too could leave every request waiting for a connection another one holds.
AUDIT_CONNECTIONS = 2
# Patients named as entities of one event at most (a practitioner's filter can name hundreds).
MAX_PATIENTS = 10

# The bounds of what an AuditEvent takes from a request, in characters. A reference's type and
# id: the search index keeps them in varchar(64) columns (an id longer than 64 characters names
# nothing on an R4 server anyway). A System or Admin client's name (`client_id`, `sub`).
# Codes; the explanation and the rule, which together make `outcomeDesc` (at most 1,000); the
# break-glass reason; a write's diff (paths only, but a write can change many).
TYPE_MAX = 64
ID_MAX = 64
CLIENT_MAX = 256
CODE_MAX = 64
EXPLANATION_MAX = 600
RULE_MAX = 300
PURPOSE_TEXT_MAX = 200
DIFF_MAX = 65_536
# How a bounded event says so: a tag (searchable: `_tag=urn:fhir-server:audit|bounded`) and an
# extension naming the elements whose values were bounded.
BOUNDED_TAG = {
    "system": "urn:fhir-server:audit",
    "code": "bounded",
    "display": "a value was bounded to be stored",
}
BOUNDED_EXTENSION = "urn:fhir-server:audit-bounded"
# NUL, which PostgreSQL text and jsonb cannot hold; lone surrogates, which UTF-8 cannot; and
# whitespace other than space, tab, CR and LF, which an R4 string cannot
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]|[^\S \t\r\n]")
_ELLIPSIS = "\u2026"
_ACTIONS = {
    "create": "C",
    "read": "R",
    "search": "E",
    "history": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "restore": "U",
}
_INTERACTIONS = {"history": "history-instance", "search": "search-type"}
REST_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
# The authorization server's events (`AuditTrail.security_event`): DICOM's User Authentication,
# with the event (`sign-in`, `approve`, `token`, ...) as the subtype in a system of this server.
SECURITY_PREFIX = "oauth-"
SECURITY_TYPE = {
    "system": "http://dicom.nema.org/resources/ontology/DCM",
    "code": "110114",
    "display": "User Authentication",
}
SECURITY_SUBTYPES = "urn:fhir-server:oauth-event"
# An agent known by its account only (a patient refused while acting for someone else)
ACCOUNT_SYSTEM = "urn:fhir-server:account"


class Record(NamedTuple):
    """One decision as the audit trail keeps it until it is written: plain values, cheap to
    hand to the writer process, and bounded (`bound`) so that the database takes them."""

    recorded: datetime
    account: str
    operation: str
    resource: str | None
    allowed: bool
    reason: str | None
    explanation: str
    rule: str | None  # "RelatedPerson * read relatedperson_compartment"
    emergency: bool
    patients: tuple[str, ...]
    purpose_of_use: str | None
    purpose_text: str | None
    diff: str | None  # a write's value-less JSON Patch (services/formats/changes.py)
    # the AuditEvent's id, given when the decision is recorded: a retried write stores it once
    id: str = ""
    # the elements whose values `bound` shortened or cleaned ("agent", "entity", ...)
    bounded: tuple[str, ...] = ()
    # the token's `access_basis` (auth/tokens.py Principal.basis): the relationship and
    # Consents, or the patient itself, it acts on; `agent.policy` of the event
    basis: tuple[str, ...] = ()
    # the signed-in Patient when the agent is not it (`agent.altId`): a patient acting for
    # someone else acts through a RelatedPerson (the `account`, or "" when none decided)
    behalf: str | None = None


WRITES = frozenset({"create", "update", "patch", "delete", "restore"})


def record_of(guard: Guard, audited: Audited, recorded: datetime) -> Record:
    """The record of a decision. It names only the patients whose data the operation touched
    (`Audited.patients`: the resource's compartments, a search's results), never everyone the
    caller may see: the event is in those patients' compartments, and only they (and whoever
    sees their record) read it. A patient acting for someone else is the agent through the
    RelatedPerson it acted as (`agent_of`), so that the event is not in its own record either."""
    decision = audited.decision
    rule = decision.rule
    patients = tuple(sorted(p for p in audited.patients if p.startswith("Patient/")))[:MAX_PATIENTS]
    account, behalf = agent_of(guard, audited.resource, patients)
    return bound(
        Record(
            recorded=recorded,
            account=account,
            operation=audited.operation,
            resource=audited.resource,
            allowed=decision.allowed,
            reason=decision.reason.value if decision.reason else None,
            explanation=decision.explanation,
            rule=(
                f"{rule.client_role} {rule.entity_name} {rule.operation} {rule.validator}"
                if rule is not None
                else None
            ),
            emergency=decision.emergency,
            patients=patients,
            purpose_of_use=guard.purpose_of_use,
            purpose_text=guard.reason,
            diff=(
                guard.changes.get(audited.resource)
                if decision.allowed and audited.operation in WRITES and audited.resource
                else None
            ),
            id=stamped_id(recorded),
            basis=guard.principal.basis if guard.principal is not None else (),
            behalf=behalf,
        )
    )


def agent_of(guard: Guard, resource: str | None, patients: Sequence[str]) -> tuple[str, str | None]:
    """Who the event's agent is, and the signed-in patient when that is not the agent. A
    Patient agent puts an event in its own compartment (R4 `AuditEvent.patient` takes agents
    too): a patient reading their child's record would have the child's event in their own
    record, readable by whoever sees theirs. So when the event is not about the acting patient,
    the agent is the RelatedPerson it acted through (the first whose patient the event names),
    or none ("") when none of its relationships reaches them."""
    account = guard.account
    if (
        not account.startswith("Patient/")
        or not patients  # touching no one's data (a refusal, a sign-in): their own act
        or account in patients
        or resource == account
    ):
        return account, None
    for identity in guard.identities:
        link = guard.facts.related_persons.get(identity.reference)
        if identity.role == "RelatedPerson" and link is not None and link.patient in patients:
            return identity.reference, account
    return "", account


def _text(value: object, limit: int) -> tuple[str, bool]:
    """`value` as text the database takes: NUL and lone surrogates become U+FFFD, and a value
    longer than `limit` keeps its first `limit - 1` characters and an ellipsis. True when it
    had to change (a value of another type than text counts as changed)."""
    text = value if isinstance(value, str) else str(value)
    changed = text is not value
    if _UNSTORABLE.search(text) is not None:
        text, changed = _UNSTORABLE.sub("\ufffd", text), True
    if len(text) > limit:
        text, changed = text[: limit - 1] + _ELLIPSIS, True
    return text, changed


def _code(value: object) -> tuple[str | None, bool]:
    """A code (the purpose of use): bounded text whose whitespace runs are single spaces, none
    at either end (R4 `code`); none at all if nothing is left."""
    text, changed = _text(value, CODE_MAX)
    code = " ".join(text.split())
    return code or None, changed or code != text


def _reference(value: object, id_limit: int = ID_MAX) -> tuple[str, bool]:
    """`Type/id` with each part bounded; a bounded id ends in an ellipsis, which no R4 id
    holds, so a shortened reference can never name a real resource (nor put the event in its
    compartment)."""
    text = value if isinstance(value, str) else str(value)
    kind, slash, id = text.partition("/")
    kind, kind_changed = _text(kind, TYPE_MAX)
    id, id_changed = _text(id, id_limit)
    return f"{kind}{slash}{id}", kind_changed or id_changed or text is not value


def _plain(value: object, limit: int) -> bool:
    """Whether `value` needs no bounding at a glance: short printable ASCII (the usual case,
    checked in C; anything else takes the exact path)."""
    return value is None or (
        type(value) is str and len(value) <= limit and value.isascii() and value.isprintable()
    )


def bound(record: Record) -> Record:
    """The record with every value the database could refuse bounded, and the elements that
    were bounded named in `bounded`."""
    if (
        _plain(record.account, ID_MAX)  # a reference this short has both parts within bounds
        and _plain(record.operation, CODE_MAX)
        and _plain(record.resource, ID_MAX)
        and all(_plain(p, ID_MAX) for p in record.patients)
        and _plain(record.reason, CODE_MAX)
        and _plain(record.explanation, EXPLANATION_MAX)
        and _plain(record.rule, RULE_MAX)
        and _plain(record.purpose_of_use, CODE_MAX)
        and (record.purpose_of_use is None or " " not in record.purpose_of_use)
        and _plain(record.purpose_text, PURPOSE_TEXT_MAX)
        and _plain(record.diff, DIFF_MAX)
        and all(_plain(b, ID_MAX) for b in record.basis)
        and _plain(record.behalf, ID_MAX)
    ):
        return record
    changed: set[str] = set(record.bounded)
    role = record.account.partition("/")[0] if isinstance(record.account, str) else ""
    account, touched = _reference(
        record.account, CLIENT_MAX if role in {"System", "Admin"} else ID_MAX
    )
    if touched:
        changed.add("agent")
    operation, touched = _text(record.operation, CODE_MAX)
    if touched:
        changed.add("subtype")
    resource = None
    if record.resource is not None:
        resource, touched = _reference(record.resource)
        if touched:
            changed.add("entity")
    patients = []
    for patient in record.patients:
        patient, touched = _reference(patient)
        patients.append(patient)
        if touched:
            changed.add("entity")
    outcome = [
        _text(value, limit) if value is not None else (None, False)
        for value, limit in (
            (record.reason, CODE_MAX),
            (record.explanation, EXPLANATION_MAX),
            (record.rule, RULE_MAX),
        )
    ]
    if any(touched for _, touched in outcome):
        changed.add("outcomeDesc")
    purpose = [
        _code(record.purpose_of_use) if record.purpose_of_use is not None else (None, False),
        _text(record.purpose_text, PURPOSE_TEXT_MAX)
        if record.purpose_text is not None
        else (None, False),
    ]
    if any(touched for _, touched in purpose):
        changed.add("purposeOfEvent")
    diff = None
    if record.diff is not None:
        diff, touched = _text(record.diff, DIFF_MAX)
        if touched:
            changed.add("entity")
    basis = []
    for reference in record.basis:
        reference, touched = _reference(reference)
        basis.append(reference)
        if touched:
            changed.add("agent")
    behalf = None
    if record.behalf is not None:
        behalf, touched = _reference(record.behalf)
        if touched:
            changed.add("agent")
    if not changed:
        return record  # the usual case: nothing to bound
    return record._replace(
        account=account,
        operation=operation,
        resource=resource,
        reason=outcome[0][0],
        explanation=outcome[1][0] or "",
        rule=outcome[2][0],
        patients=tuple(patients),
        purpose_of_use=purpose[0][0],
        purpose_text=purpose[1][0],
        diff=diff,
        basis=tuple(basis),
        behalf=behalf,
        bounded=tuple(sorted(changed)),
    )


def reduced(record: Record) -> Record:
    """The last resort for an event the database refused although it was bounded: every value
    reduced to printable ASCII (escapes for the rest), short, and flagged as all bounded. A
    decision is never dropped; at worst it is stored in this form."""

    def ascii_text(value: object, limit: int = ID_MAX) -> str:
        # cut with a mark no R4 id holds (`.` is an id character, so not "..."): a reduced
        # reference never names a real resource either
        escaped = ascii(value if isinstance(value, str) else str(value))[1:-1]
        return escaped if len(escaped) <= limit else escaped[: limit - 5] + "[...]"

    role, slash, who = (
        record.account if isinstance(record.account, str) else str(record.account)
    ).partition("/")
    return record._replace(
        account=f"{ascii_text(role)}{slash}{ascii_text(who)}",
        operation=ascii_text(record.operation),
        resource=None if record.resource is None else ascii_text(record.resource, 2 * ID_MAX),
        reason=None if record.reason is None else ascii_text(record.reason),
        explanation="the database refused this event; its values were reduced to ascii",
        rule=None if record.rule is None else ascii_text(record.rule, RULE_MAX),
        patients=tuple(ascii_text(p, 2 * ID_MAX) for p in record.patients),
        purpose_of_use=(
            None if record.purpose_of_use is None else ascii_text(record.purpose_of_use)
        ),
        purpose_text=(
            None
            if record.purpose_text is None
            else ascii_text(record.purpose_text, PURPOSE_TEXT_MAX)
        ),
        diff=None,
        basis=tuple(ascii_text(b, 2 * ID_MAX) for b in record.basis),
        behalf=None if record.behalf is None else ascii_text(record.behalf, 2 * ID_MAX),
        bounded=("agent", "entity", "outcomeDesc", "purposeOfEvent", "subtype"),
    )


def audit_event(record: Record, endpoint: str) -> dict[str, Any]:
    """The AuditEvent of a decision."""
    who: dict[str, Any]
    role = record.account.split("/", 1)[0]
    if role in {"System", "Admin"}:
        who = {"identifier": {"system": f"urn:fhir-server:{role.lower()}", "value": record.account}}
    elif not record.account:
        who = {"identifier": {"system": ACCOUNT_SYSTEM, "value": record.behalf or "unknown"}}
    else:
        who = {"reference": record.account}
    entities: list[dict[str, Any]] = []
    if record.resource is not None:
        entity: dict[str, Any] = {"what": {"reference": record.resource}}
        if record.diff is not None:
            entity["detail"] = [{"type": "diff", "valueString": record.diff}]
        entities.append(entity)
    for patient in record.patients:
        if patient != record.resource:
            entities.append(
                {
                    "what": {"reference": patient},
                    "role": {
                        "system": "http://terminology.hl7.org/CodeSystem/object-role",
                        "code": "1",
                        "display": "Patient",
                    },
                }
            )
    reason = record.reason or "allowed"
    description = f"{reason}: {record.explanation}" if record.explanation else reason
    if record.rule is not None:
        description += f" (rule {record.rule})"
    event: dict[str, Any] = {"resourceType": "AuditEvent"}
    if record.bounded:
        event["meta"] = {"tag": [dict(BOUNDED_TAG)]}
        event["extension"] = [{"url": BOUNDED_EXTENSION, "valueString": " ".join(record.bounded)}]
    security = record.operation.startswith(SECURITY_PREFIX)
    event.update(
        {
            "type": SECURITY_TYPE if security else REST_TYPE,
            "subtype": [
                {"system": SECURITY_SUBTYPES, "code": record.operation[len(SECURITY_PREFIX) :]}
                if security
                else {
                    "system": "http://hl7.org/fhir/restful-interaction",
                    "code": _INTERACTIONS.get(record.operation, record.operation),
                }
            ],
            "action": _ACTIONS.get(record.operation, "E"),
            "recorded": record.recorded.isoformat(timespec="microseconds"),
            "outcome": "0" if record.allowed else "4",
            "outcomeDesc": description,
            "agent": [{"who": who, "requestor": True}],
            "source": {"observer": {"display": endpoint}},
        }
    )
    if record.purpose_of_use or record.emergency:
        event["purposeOfEvent"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": record.purpose_of_use or "BTG",
                    }
                ],
                **({"text": record.purpose_text} if record.purpose_text else {}),
            }
        ]
    if record.emergency:
        event["agent"][0]["purposeOfUse"] = event["purposeOfEvent"]
    if record.behalf:
        event["agent"][0]["altId"] = record.behalf
    if record.basis:
        # the relationship or Consent the token acts on (the `access_basis` claim)
        event["agent"][0]["policy"] = list(record.basis)
    if entities:
        event["entity"] = entities
    return event


def _local(reference: str) -> tuple[str, str] | None:
    """`(type, id)` of a relative reference to a resource this server could hold."""
    kind, slash, id = reference.partition("/")
    return (kind, id) if slash and kind and is_id(id) else None


def event_row(event: dict[str, Any], id: str, now: datetime) -> tuple[Any, ...]:
    """The `audit_events` row of an `audit_event`, built directly: what a client's `POST
    AuditEvent` of the same event would store (repository.insert_new; a test holds them equal),
    without its validation and generic indexing, as an AuditEvent per read must cost little. Its
    compartments: the patients (agent and entities that are Patients) and a Practitioner or Device
    agent. A reference whose id is not an R4 id (a bounded one) puts the event in no
    compartment."""
    content = {
        "resourceType": "AuditEvent",
        "id": id,
        "meta": {**(event.get("meta") or {}), "versionId": "1", "lastUpdated": format_instant(now)},
    }
    content.update((k, v) for k, v in event.items() if k not in {"resourceType", "meta"})
    agent = event["agent"][0]["who"].get("reference")
    references = [e["what"]["reference"] for e in event.get("entity", ())]
    if agent is not None:
        references.append(agent)
    compartments = {r for r in references if r.startswith("Patient/") and _local(r) is not None}
    if (
        agent is not None
        and agent.split("/", 1)[0] in {"Practitioner", "Device"}
        and _local(agent) is not None
    ):
        compartments.add(agent)
    return audit_events.row_of(content, dump_json(content), id, now, sorted(compartments))


def audit_row(record: Record, endpoint: str) -> tuple[Any, ...]:
    """The row of a record's AuditEvent, ready to store; the reduced form's if it cannot be
    built."""
    try:
        return event_row(audit_event(record, endpoint), record.id or new_id(), record.recorded)
    except Exception:
        log.exception("audit event %s could not be built; storing it reduced", record.id)
        record = reduced(record)
        return event_row(audit_event(record, endpoint), record.id or new_id(), record.recorded)


def _final(audited: Iterable[Audited]) -> list[Audited]:
    """One record per resource (or per type for searches): the last decision made about it,
    which is the denial when there was one (a denial ends the request)."""
    last: dict[tuple[str, str | None, str | None], Audited] = {}
    for record in audited:
        last[(record.operation, record.resource_type, record.resource)] = record
    return list(last.values())


# --- storing ---------------------------------------------------------------------------------


def transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed as it is when tried again (a lost connection, a
    server shutting down, a full disk), rather than the database refusing what it was given."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not isinstance(
        exc, psycopg.errors.ProgramLimitExceeded
    )


async def store(
    conn: Connection,
    records: Sequence[Record],
    endpoint: str,
    *,
    retried: bool = False,
) -> int:
    """Store the AuditEvents of `records` on `conn` (autocommit), each exactly once: one COPY
    for the batch; if the database refuses it, the batch is split in halves until the refused
    event stands alone, which is then stored reduced (`reduced`), and the rest as they are. An
    event already stored by an earlier try is not stored again. Transient failures raise: the
    caller tries again, and what was committed before is recognised then. How many events
    were refused and stored reduced. `retried`: some of them may be stored already (a try
    whose answer was lost, a batch taken over from a writer that died): those are left out
    first, in one query."""
    if retried and records:
        # only the partitions of the batch's times are read
        done = await audit_events.stored_ids(
            conn, [r.id for r in records], [r.recorded for r in records]
        )
        records = [r for r in records if r.id not in done]
    pairs = [(r, audit_row(r, endpoint)) for r in records]
    return await _store(conn, pairs, endpoint)


async def _store(
    conn: Connection, pairs: Sequence[tuple[Record, tuple[Any, ...]]], endpoint: str
) -> int:
    if not pairs:
        return 0
    try:
        await _insert(conn, [row for _, row in pairs])
        return 0
    except Exception as exc:
        if transient(exc) or conn.broken or conn.closed:
            raise
        refusal = exc
    if len(pairs) > 1:
        half = len(pairs) // 2
        return await _store(conn, pairs[:half], endpoint) + await _store(
            conn, pairs[half:], endpoint
        )
    record, row = pairs[0]
    if isinstance(refusal, psycopg.errors.UniqueViolation) and await _stored(
        conn, row[0], record.recorded
    ):
        return 0  # committed by an earlier try whose answer was lost
    log.error(
        "the database refused audit event %s (%s); storing it reduced",
        row[0],
        type(refusal).__name__,
    )
    fallback = reduced(record)
    await _insert(conn, [audit_row(fallback, endpoint)])
    return 1


async def _insert(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    async with conn.transaction():
        # The commit waits for its WAL flush, whatever the database's default: the spool's
        # offset moves past these events only after this returns, so a commit that a PostgreSQL
        # crash could still undo would leave them stored nowhere. One flush per batch of the
        # writer's, off the request path.
        await conn.execute("SET LOCAL synchronous_commit = on")
        # one COPY into the partitioned AuditEvent table (storage/audit_events.py): no history
        # row, no generic search-index rows
        await audit_events.copy_event_rows(conn, rows)


async def _stored(conn: Connection, id: str, recorded: datetime) -> bool:
    return bool(await audit_events.stored_ids(conn, [id], [recorded]))


async def store_until_stored(
    connect: Callable[[], Awaitable[Connection]],
    records: Sequence[Record],
    endpoint: str,
    *,
    conn: Connection | None = None,
    attempts: int | None = None,
    retried: bool = False,
) -> Connection | None:
    """`store`, tried again after transient failures (on a new connection, after a pause)
    until it succeeds, or `attempts` times when given (then the last failure raises). The
    connection it ends with, for the next batch."""
    attempt = 0
    while True:
        try:
            if conn is None or conn.closed or conn.broken:
                conn = await connect()
            await store(
                conn,
                records,
                endpoint,
                retried=retried or attempt > 0,
            )
            return conn
        except Exception:
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise
            log.exception(
                "storing %d audit events failed (try %d); trying again", len(records), attempt
            )
            if conn is not None and (conn.closed or conn.broken):
                conn = None
            await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS)) - 1])


class AuditTrail:
    """The writer of AuditEvents for one server process.

    With a database URL, each request's allowed decisions are appended to the process's spool
    (audit/spool.py) before its response leaves, and a writer process of its own reads the
    spool, builds and stores the AuditEvents (on the machine's other core, off the request path)
    and acknowledges how far it has stored; the server keeps the records until then, so if that
    process dies, the server stores what it had not acknowledged, and everything after, itself.
    If the server dies instead, the writer stores what is in the spool and exits; if both die,
    the next server's writer does (`spool.orphans`). Denials and emergencies are written here,
    before the response.
    """

    def __init__(
        self,
        db: Database,
        server: Context,
        database_url: str | None = None,
        endpoint: str = "fhir-server",
        spool_dir: Path | None = None,
    ) -> None:
        """`spool_dir`: the folder of this database's spools (`spool.directory`), where a
        restarted server finds what a killed one left; a temporary folder of its own if none
        (the spool then outlives the server process, not the machine's temporary files)."""
        self.db = db
        self.server = server  # the context AuditEvents are stored with (System, unrestricted)
        self.endpoint = endpoint
        self._url = database_url
        self._spool_dir = spool_dir
        self._own_dir: str | None = None  # the temporary spool folder made when none was given
        self._pending: list[Record] = []  # to store here (no writer process, or it is gone)
        # records in the spool the writer has not acknowledged yet, with where each write ended
        self._handed: collections.deque[tuple[spool.Position, list[Record]]] = collections.deque()
        self._spool: spool.Spool | None = None  # None: not spooling (no writer, or it is gone)
        self._spools: spool.Spool | None = None  # the spool files to remove once all is stored
        self._buffered = 0  # events in `_pending` and `_handed`
        self._task: asyncio.Task[None] | None = None
        self._queue: Any = None
        self._acks: Any = None
        self._process: Any = None
        self._orphaned_logged = False
        self._own: Database | None = None  # the trail's own connections (AUDIT_CONNECTIONS)
        self._own_opened = False
        self._opening = asyncio.Lock()

    @property
    def buffered(self) -> int:
        """Events recorded and not yet known to be stored."""
        return self._buffered

    @property
    def writer_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        if self._url is not None:
            self._own = Database(self._url, pool_size=AUDIT_CONNECTIONS, pooled=self.db.pooled)
            folder = self._spool_dir
            if folder is None:
                self._own_dir = tempfile.mkdtemp(prefix="fhir-audit-spool-")
                folder = Path(self._own_dir)
            self._spool = self._spools = spool.Spool(folder)
            self._spool.open()
            context = multiprocessing.get_context("spawn")
            self._queue = context.Queue()
            self._acks = context.Queue()
            self._process = context.Process(
                target=_writer_main,
                args=(
                    self._queue,
                    self._acks,
                    self._url,
                    self.endpoint,
                    os.getpid(),
                    self.db.pooled,
                    str(folder),
                    self._spool.prefix,
                ),
                name="fhir-audit-writer",
                daemon=True,
            )
            self._process.start()
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Write everything still pending, then stop the writer process."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
        if self._process is not None:
            if self._process.is_alive():
                self._queue.put(None)  # the spool ends here: the writer stores it all and exits
                await asyncio.to_thread(self._process.join, SHUTDOWN_SECONDS)
            if self._process.is_alive():
                log.error("the audit writer did not finish in %s s; stopping it", SHUTDOWN_SECONDS)
                self._process.terminate()
                await asyncio.to_thread(self._process.join, 10)
            elif self._process.exitcode != 0:
                log.error("the audit writer ended with %s", self._process.exitcode)
            self._take_acks()
            # what the writer did not acknowledge is stored here (once, whatever it committed)
            self._pending[:0] = [r for _, batch in self._handed for r in batch]
            self._handed.clear()
            self._spool = None
            self._queue.cancel_join_thread()
            self._queue.close()
            self._acks.close()
            self._process = None
        pending, self._pending = self._pending, []
        stored = False
        try:
            if pending:
                await self._store(pending, attempts=len(RETRY_SECONDS), retried=True)
            self._buffered = 0
            stored = True
        except Exception:
            log.exception(
                "%d audit events could not be stored before the stop; the spool keeps them for"
                " the next start",
                len(pending),
            )
        finally:
            if self._spools is not None:
                self._spools.close(delete=stored)
                if self._own_dir is not None and stored:
                    shutil.rmtree(self._own_dir, ignore_errors=True)
            if self._own is not None and self._own_opened:
                await self._own.close()

    async def record(self, guard: Guard) -> None:
        """The decisions a request made: urgent ones written now, the rest in the spool before
        this returns (so before the response leaves)."""
        if not guard.audited:
            return
        now = self.server.clock()
        urgent: list[Record] = []
        allowed: list[Record] = []
        for audited in _final(guard.audited):
            record = record_of(guard, audited, now)
            if record.bounded:
                AUDIT_BOUNDED.inc()
            if record.allowed and not record.emergency:
                allowed.append(record)
                continue
            urgent.append(record)
            if record.emergency:
                EMERGENCY_ACCESSES.inc()
                log.warning("emergency access by %s to %s", record.account, record.resource)
        if allowed:
            self._hand(allowed)
        if urgent:
            await self._write_urgent(urgent)
        if self._buffered > MAX_BUFFERED:
            await self._wait_for_writer()

    def _hand(self, records: list[Record]) -> None:
        """Into the spool for the writer process (or, without one, the queue stored here)."""
        self._buffered += len(records)
        if self._spool is not None:
            try:
                self._handed.append((self._spool.append([_flat(r) for r in records]), records))
                return
            except ValueError:
                log.exception("audit records that cannot be spooled; queued in memory")
            except Exception:
                # a full disk: what the spool holds is handled as before; from now on the
                # server keeps its events in memory only (and stores them if the writer dies)
                log.exception("the audit spool cannot be written; queueing in memory")
                self._spool = None
        self._pending.extend(records)

    async def security_event(
        self,
        *,
        account: str,
        event: str,
        allowed: bool,
        explanation: str,
        patients: Sequence[str] = (),
        reason: str | None = None,
    ) -> None:
        """An event of the authorization server (`sign-in`, `approve`, `token`, `refresh`,
        `revoke`, `launch`, `register`, ...): `account` is the user's FHIR reference, or
        `System/<client id>` for a client. Refusals are written before the response, like
        denials; the rest are spooled. `patients`: references (`Patient/1`) the event concerns,
        so that they and their guardians can read it."""
        recorded = self.server.clock()
        record = bound(
            Record(
                recorded=recorded,
                account=account,
                operation=f"{SECURITY_PREFIX}{event}",
                resource=None,
                allowed=allowed,
                reason=reason,
                explanation=explanation,
                rule=None,
                emergency=False,
                patients=tuple(patients)[:MAX_PATIENTS],
                purpose_of_use=None,
                purpose_text=None,
                diff=None,
                id=stamped_id(recorded),
            )
        )
        if allowed:
            self._hand([record])
        else:
            await self._write_urgent([record])

    async def _write_urgent(self, records: list[Record]) -> None:
        """Denials and break-glass accesses, before the response. If the database cannot take
        them now, they join the queue (retried until stored, never dropped): a denial is still
        answered 403, but an emergency access is not answered at all (503)."""
        try:
            await self._store(records, attempts=URGENT_ATTEMPTS)
        except asyncio.CancelledError:
            # the request was cancelled mid-store: queued (the queued store skips any committed)
            self._hand(records)
            raise
        except Exception:
            log.exception("urgent audit events could not be written now; queued")
            self._hand(records)
            if any(r.emergency for r in records):
                raise AuditUnavailable(
                    "the emergency access could not be audited now: try again shortly"
                ) from None

    async def _wait_for_writer(self) -> None:
        """Backpressure: too many events wait to be stored (a slow or unreachable database).
        The request waits for the writer; if it does not catch up, it gets 503 (its events
        stay queued)."""
        deadline = time.monotonic() + BACKPRESSURE_SECONDS
        while self._buffered > MAX_BUFFERED:
            self._take_acks()
            if time.monotonic() > deadline:
                raise AuditUnavailable("the audit trail is behind: try again shortly")
            await asyncio.sleep(0.05)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:  # a failed flush keeps its events for the next one
                log.exception("writing audit events failed; retrying")

    def _take_acks(self) -> None:
        if self._acks is None:
            return
        while True:
            try:
                stored: spool.Position = self._acks.get_nowait()
            except (queues.Empty, OSError, ValueError):
                return
            while self._handed and self._handed[0][0] <= stored:
                self._buffered -= len(self._handed.popleft()[1])
            if self._spools is not None:
                self._spools.release(stored)

    async def flush(self) -> None:
        self._take_acks()
        AUDIT_BUFFERED.set(self._buffered)
        alive = self._process is not None and self._process.is_alive()
        if alive and self._spool is not None:
            if self._pending:
                # urgent events that could not be written in their request: to the spool too
                pending, self._pending = self._pending, []
                self._buffered -= len(pending)
                self._hand(pending)
            return
        if self._process is not None and not alive and (self._handed or self._spool is not None):
            # the writer died: what it did not acknowledge is stored here (once, whatever it
            # committed before it died), and from now on everything (its spool files stay
            # until the stop, for a restart should this process be killed before it)
            if not self._orphaned_logged:
                log.error("the audit writer process is gone; writing audit events in the server")
                self._orphaned_logged = True
            self._spool = None
            self._pending[:0] = [r for _, batch in self._handed for r in batch]
            self._handed.clear()
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            await self._store(pending, attempts=1, retried=True)
        except BaseException:
            # a failure, or the flush cancelled by close() mid-store: keep them for the next
            # store, which skips any this one committed
            self._pending[:0] = pending
            raise
        self._buffered -= len(pending)

    async def _store(self, records: list[Record], *, attempts: int, retried: bool = False) -> None:
        """Store here, on the trail's own connections, trying `attempts` times (then the
        failure raises)."""
        for attempt in range(1, attempts + 1):
            try:
                db = await self._database()
                async with db.connection() as conn:
                    await store(conn, records, self.endpoint, retried=retried or attempt > 1)
                return
            except Exception:
                if attempt == attempts:
                    raise
                log.warning("storing %d audit events failed (try %d)", len(records), attempt)
                await asyncio.sleep(RETRY_SECONDS[attempt - 1])

    async def _database(self) -> Database:
        if self._own is None:
            return self.db  # no URL of its own (a test's trail): the server's pool
        if not self._own_opened:
            async with self._opening:
                if not self._own_opened:
                    await self._own.open()
                    self._own_opened = True
        return self._own


def _flat(record: Record) -> tuple[Any, ...]:
    """The record as the spool keeps it: plain values (`marshal` takes them, and fast). The
    spool holds the fields in `Record`'s order: changing them changes its format (a new
    `spool.MAGIC`, and a way to read what the previous version left)."""
    return (record.recorded.isoformat(), *record[1:])


def _unflat(values: Sequence[Any]) -> Record:
    return Record(datetime.fromisoformat(values[0]), *values[1:])


def _writer_main(
    queue: Any,
    acks: Any,
    url: str,
    endpoint: str,
    parent: int,
    pooled: bool,
    folder: str,
    prefix: str,
) -> None:
    """The writer process: the server's spool (`folder`, files `prefix-*`) read and stored,
    until the server says it stops (`None`), or is gone (killed with no chance to say so);
    then whatever the spool holds is stored before it exits."""
    # the server decides when it stops: a Ctrl-C, a systemd stop or a closed terminal signals
    # the whole group, and the server still hands over what it has pending when it stops
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_writer(queue, acks, url, endpoint, parent, pooled, Path(folder), prefix))


def _next_batch(queue: Any, parent: int, timeout: float) -> bool:
    """Wait up to `timeout` for the server's stop; True once it stopped or is gone (an orphan
    is adopted by another process)."""
    try:
        return queue.get(timeout=timeout) is None
    except queues.Empty:
        return os.getppid() != parent
    except (OSError, ValueError, EOFError):
        return True


async def _writer(
    queue: Any,
    acks: Any,
    url: str,
    endpoint: str,
    parent: int,
    pooled: bool,
    folder: Path,
    prefix: str,
) -> None:
    loop = asyncio.get_running_loop()
    conn: Connection | None = None

    async def connect() -> Connection:
        # named in pg_stat_activity, so that operators (and bench/replica.py) can tell its
        # backend, and its CPU, from the requests'
        return await database.connect(
            url, pooled=pooled, autocommit=True, application_name=WRITER_NAME
        )

    async def stored(records: list[Record], retried: bool, attempts: int | None = None) -> None:
        # tried until stored while the server runs: a batch is never given up (the server
        # waits at most SHUTDOWN_SECONDS for it when it stops)
        nonlocal conn
        conn = await store_until_stored(
            connect,
            records,
            endpoint,
            conn=conn,
            retried=retried,
            attempts=attempts,
        )

    # what dead servers left on this database: stored from where they had got (maybe again:
    # their writer may have died between a commit and marking it, hence `retried`)
    for orphan in spool.orphans(folder, prefix):
        try:
            while True:
                items, _ = orphan.read()
                if not items:
                    break
                await stored([_unflat(r) for item in items for r in item], retried=True)
                orphan.mark()
            if orphan.left():
                log.warning("%s ends with %d bytes of a torn write", orphan.path, orphan.left())
            log.warning("stored the audit spool %s left by a stopped server", orphan.path.name)
        finally:
            orphan.close(delete=True)

    number = 0
    reader = spool.Reader(folder / f"{prefix}-{number:06d}{spool.SUFFIX}")
    stopping = False  # the server wrote its last (seen before the read that follows)
    while True:
        rotated = (folder / f"{prefix}-{number + 1:06d}{spool.SUFFIX}").exists()
        items, more = reader.read()
        if items:
            try:
                # once the server is gone with the database unreachable, the writer does not
                # stay behind for ever: the spool keeps the rest for the next start
                await stored(
                    [_unflat(r) for item in items for r in item],
                    retried=False,
                    attempts=len(RETRY_SECONDS) if stopping else None,
                )
            except Exception:
                log.exception("the audit spool is left for the next start to store")
                reader.close()
                break
            reader.mark()
            acks.put((number, reader.position))
        if more:
            continue
        if rotated:  # the server had moved on before this read: this file is all stored
            reader.close(delete=True)
            number += 1
            reader = spool.Reader(folder / f"{prefix}-{number:06d}{spool.SUFFIX}")
            continue
        if stopping:
            if reader.left():
                log.warning("the audit spool ends with %d bytes of a torn write", reader.left())
            reader.close(delete=True)
            break
        stopping = await loop.run_in_executor(None, _next_batch, queue, parent, FLUSH_SECONDS)
    if os.getppid() != parent:
        acks.cancel_join_thread()  # no one reads them: do not wait at exit to send them
    if conn is not None:
        await conn.close()
