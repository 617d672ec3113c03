"""Every access decision becomes a FHIR AuditEvent (DESIGN.md 5.6).

Denials and emergency (break-glass) accesses are written before the response is sent, in a
transaction of their own (the request's own transaction is rolled back by the denial). Allowed
decisions are queued and handed every `FLUSH_SECONDS` to a writer process that stores them in
batches with COPY, committed without waiting for the WAL flush (durable within about a second);
the server hands over and waits for the rest when it shuts down. An AuditEvent names who acted (the token's user or client), for whom (the patients
whose compartment the decision concerned: they and their guardians can read it), what
(interaction, resource), the outcome, the rule and reason, and the purpose of use. It holds
references and codes only, never names or other demographics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Iterable
from datetime import datetime
from queue import Empty
from typing import Any, NamedTuple

import psycopg
from psycopg import AsyncConnection

from fhir_server.metrics import EMERGENCY_ACCESSES
from fhir_server.search.index import IndexRows, date_range, normalize_string
from fhir_server.services.access import Audited, Guard
from fhir_server.services.context import Context
from fhir_server.services.create import new_id
from fhir_server.services.resources import dump_json, format_instant
from fhir_server.storage import repository
from fhir_server.storage.database import Database
from fhir_server.storage.repository import NewVersion

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
# How often the writer process tries to store a batch (waiting 1, 2, 4, 8 s between tries).
WRITER_ATTEMPTS = 5
# Patients named as entities of one event at most (a practitioner's filter can name hundreds).
MAX_PATIENTS = 10
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


class Record(NamedTuple):
    """One decision as the audit trail keeps it until it is written: plain values, cheap to
    hand to the writer process."""

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
    diff: str | None  # a write's value-less JSON Patch (services/changes.py)


WRITES = frozenset({"create", "update", "patch", "delete", "restore"})


def record_of(guard: Guard, audited: Audited, recorded: datetime) -> Record:
    decision = audited.decision
    rule = decision.rule
    return Record(
        recorded=recorded,
        account=guard.account,
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
        patients=tuple(sorted(c for c in decision.compartments if c.startswith("Patient/")))[
            :MAX_PATIENTS
        ],
        purpose_of_use=guard.purpose_of_use,
        purpose_text=guard.reason,
        diff=(
            guard.changes.get(audited.resource)
            if decision.allowed and audited.operation in WRITES and audited.resource
            else None
        ),
    )


def audit_event(record: Record, endpoint: str) -> dict[str, Any]:
    """The AuditEvent of a decision."""
    who: dict[str, Any]
    role = record.account.split("/", 1)[0]
    if role in {"System", "Admin"}:
        who = {"identifier": {"system": f"urn:fhir-server:{role.lower()}", "value": record.account}}
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
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [
            {
                "system": "http://hl7.org/fhir/restful-interaction",
                "code": _INTERACTIONS.get(record.operation, record.operation),
            }
        ],
        "action": _ACTIONS.get(record.operation, "E"),
        "recorded": record.recorded.isoformat(timespec="microseconds"),
        "outcome": "0" if record.allowed else "4",
        "outcomeDesc": description[:1000],
        "agent": [{"who": who, "requestor": True}],
        "source": {"observer": {"display": endpoint}},
    }
    if record.purpose_of_use or record.emergency:
        event["purposeOfEvent"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": record.purpose_of_use or "BTG",
                    }
                ],
                **({"text": record.purpose_text[:200]} if record.purpose_text else {}),
            }
        ]
    if record.emergency:
        event["agent"][0]["purposeOfUse"] = event["purposeOfEvent"]
    if entities:
        event["entity"] = entities
    return event


def stored_event(event: dict[str, Any], id: str, now: datetime) -> NewVersion:
    """What `resources.new_version` would make of an `audit_event` (a test holds them equal),
    built directly: an AuditEvent per read must cost little. Its compartments: the patients
    (`patient`: agent and entities that are Patients) and a Practitioner or Device agent."""
    content = {
        "resourceType": "AuditEvent",
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": format_instant(now)},
    }
    content.update((k, v) for k, v in event.items() if k != "resourceType")
    who = event["agent"][0]["who"]
    agent = who.get("reference")
    entities = [e["what"]["reference"] for e in event.get("entity", ())]
    patients = list(
        dict.fromkeys(r for r in ([agent] if agent else []) + entities if r.startswith("Patient/"))
    )
    compartments = set(patients)
    if agent is not None and agent.split("/", 1)[0] in {"Practitioner", "Device"}:
        compartments.add(agent)

    def reference(code: str, ref: str) -> tuple[Any, ...]:
        kind, _, target = ref.partition("/")
        return (code, kind, target, None, None, None)

    references = [
        reference("agent", agent)
        if agent is not None
        else ("agent", None, None, None, who["identifier"]["system"], who["identifier"]["value"]),
        *(reference("entity", r) for r in dict.fromkeys(entities)),
        *(reference("patient", r) for r in patients),
    ]
    kind = event["type"]
    subtype = event["subtype"][0]
    tokens: list[tuple[Any, ...]] = [("action", None, event["action"], None)]
    roles = {
        (e["role"]["system"], e["role"]["code"], normalize_string(e["role"]["display"]))
        for e in event.get("entity", ())
        if "role" in e
    }
    tokens += [("entity-role", *role) for role in sorted(roles)]
    tokens += [
        ("outcome", None, event["outcome"], None),
        ("subtype", subtype["system"], subtype["code"], None),
        ("type", kind["system"], kind["code"], normalize_string(kind["display"])),
    ]
    recorded = date_range(event["recorded"])
    assert recorded is not None
    index = IndexRows(
        string=[],
        token=tokens,
        date=[("date", *recorded)],
        reference=references,
        number=[],
        quantity=[],
        uri=[],
    )
    return NewVersion(
        resource_type="AuditEvent",
        id=id,
        version_id=1,
        last_updated=now,
        content=dump_json(content),
        compartments=sorted(compartments),
        method="POST",
        # no account created it (the unverified-link rule has nothing to find), and an empty
        # creator keeps the many AuditEvents out of the creator index
        created_by=None,
        index=index,
    )


def stored_record(record: Record, endpoint: str) -> NewVersion:
    """The AuditEvent of a record, ready to store."""
    return stored_event(audit_event(record, endpoint), new_id(), record.recorded)


def _final(audited: Iterable[Audited]) -> list[Audited]:
    """One record per resource (or per type for searches): the last decision made about it,
    which is the denial when there was one (a denial ends the request)."""
    last: dict[tuple[str, str | None, str | None], Audited] = {}
    for record in audited:
        last[(record.operation, record.resource_type, record.resource)] = record
    return list(last.values())


class AuditTrail:
    """The writer of AuditEvents for one server process.

    With a database URL, batches of allowed decisions go to a writer process of their own (it
    builds and stores the AuditEvents on the machine's other core, off the request path); if that
    process is gone, this one writes them itself. Denials and emergencies are always written
    here, before the response.
    """

    def __init__(
        self,
        db: Database,
        server: Context,
        database_url: str | None = None,
        endpoint: str = "fhir-server",
    ) -> None:
        self.db = db
        self.server = server  # the context AuditEvents are stored with (System, unrestricted)
        self.endpoint = endpoint
        self._url = database_url
        self._pending: list[Record] = []
        self._task: asyncio.Task[None] | None = None
        self._queue: Any = None
        self._process: Any = None

    def start(self) -> None:
        if self._url is not None:
            context = multiprocessing.get_context("spawn")
            self._queue = context.Queue()
            self._process = context.Process(
                target=_writer_main,
                args=(self._queue, self._url, self.endpoint, os.getpid()),
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
        await self.flush()
        if self._process is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._process.join, 60)
            if self._process.exitcode != 0:
                log.error("the audit writer ended with %s", self._process.exitcode)
            self._queue.close()

    async def record(self, guard: Guard) -> None:
        """The decisions a request made: urgent ones written now, the rest queued."""
        if not guard.audited:
            return
        now = self.server.clock()
        urgent: list[NewVersion] = []
        for audited in _final(guard.audited):
            record = record_of(guard, audited, now)
            if record.allowed and not record.emergency:
                self._pending.append(record)
                continue
            urgent.append(self._version(record))
            if record.emergency:
                EMERGENCY_ACCESSES.inc()
                log.warning("emergency access by %s to %s", record.account, record.resource)
        if urgent:
            await self._write(urgent)

    def _version(self, record: Record) -> NewVersion:
        return stored_record(record, self.endpoint)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:  # a failed flush keeps its events for the next one
                log.exception("writing audit events failed; retrying")

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        if self._process is not None and self._process.is_alive():
            self._queue.put(pending)
            return
        if self._process is not None:
            log.error("the audit writer process is gone; writing audit events in the server")
        try:
            await self._write([self._version(r) for r in pending])
        except Exception:
            self._pending[:0] = pending
            raise

    async def _write(self, versions: list[NewVersion]) -> None:
        async with self.db.transaction() as conn:
            await repository.insert_created(conn, versions)


def _writer_main(queue: Any, url: str, endpoint: str, parent: int) -> None:
    """The writer process: batches of records in, AuditEvents stored, until `None` comes, or
    until the server that started it is gone (killed with no chance to say so)."""
    # the server decides when it stops: a Ctrl-C, a systemd stop or a closed terminal signals
    # the whole group, and the server still hands over what it has pending when it stops
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_writer(queue, url, endpoint, parent))


def _next_batch(queue: Any, parent: int) -> Any:
    """The next batch, or None once the parent is gone (an orphan is adopted by another)."""
    while True:
        try:
            return queue.get(timeout=1.0)
        except Empty:
            if os.getppid() != parent:
                return None


async def _writer(queue: Any, url: str, endpoint: str, parent: int) -> None:
    loop = asyncio.get_running_loop()
    conn: AsyncConnection[Any] | None = None
    while True:
        batch = await loop.run_in_executor(None, _next_batch, queue, parent)
        if batch is None:
            break
        versions = [stored_record(r, endpoint) for r in batch]
        for attempt in range(WRITER_ATTEMPTS):
            try:
                if conn is None or conn.closed:
                    conn = await AsyncConnection.connect(
                        url, autocommit=True, options=Database.OPTIONS
                    )
                async with conn.transaction():
                    # allowed-read events are durable within a second by design (a crash can lose
                    # the last ones): the writer does not wait for each commit's WAL flush
                    await conn.execute("SET LOCAL synchronous_commit = off")
                    await repository.insert_created(conn, versions)
                break
            except psycopg.Error:
                log.exception("the audit writer could not store %d events", len(versions))
                conn = None
                await asyncio.sleep(min(2**attempt, 10))
        else:
            log.error(
                "the audit writer gave up on %d events after %d attempts",
                len(versions),
                WRITER_ATTEMPTS,
            )
    if conn is not None:
        await conn.close()
