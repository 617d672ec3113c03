"""Every access decision becomes a FHIR AuditEvent (DESIGN.md 5.6).

Denials and emergency (break-glass) accesses are written before the response is sent, in a
transaction of their own (the request's own transaction is rolled back by the denial). Allowed
decisions are queued and written in batches with COPY at least every `FLUSH_SECONDS`, and on
shutdown. An AuditEvent names who acted (the token's user or client), for whom (the patients
whose compartment the decision concerned: they and their guardians can read it), what
(interaction, resource), the outcome, the rule and reason, and the purpose of use. It holds
references and codes only, never names or other demographics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fhir_server.services.access import Audited, Guard
from fhir_server.services.context import Context
from fhir_server.services.create import new_id
from fhir_server.services.resources import new_version
from fhir_server.storage import repository
from fhir_server.storage.database import Database
from fhir_server.storage.repository import NewVersion

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
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
}
_INTERACTIONS = {"history": "history-instance", "search": "search-type"}


def audit_event(
    guard: Guard, audited: Audited, recorded: datetime, endpoint: str
) -> dict[str, Any]:
    decision = audited.decision
    who: dict[str, Any]
    role = guard.account.split("/", 1)[0]
    if role in {"System", "Admin"}:
        who = {"identifier": {"system": f"urn:fhir-server:{role.lower()}", "value": guard.account}}
    else:
        who = {"reference": guard.account}
    patients = sorted(c for c in decision.compartments if c.startswith("Patient/"))
    entities: list[dict[str, Any]] = []
    if audited.resource is not None:
        entities.append({"what": {"reference": audited.resource}})
    for patient in patients[:MAX_PATIENTS]:
        if patient != audited.resource:
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
    rule = decision.rule
    reason = decision.reason.value if decision.reason else "allowed"
    description = f"{reason}: {decision.explanation}" if decision.explanation else reason
    if rule is not None:
        description += (
            f" (rule {rule.client_role} {rule.entity_name} {rule.operation} {rule.validator})"
        )
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
                "code": _INTERACTIONS.get(audited.operation, audited.operation),
            }
        ],
        "action": _ACTIONS.get(audited.operation, "E"),
        "recorded": recorded.isoformat(timespec="microseconds"),
        "outcome": "0" if decision.allowed else "4",
        "outcomeDesc": description[:1000],
        "agent": [{"who": who, "requestor": True}],
        "source": {"observer": {"display": endpoint}},
    }
    if guard.purpose_of_use or decision.emergency:
        event["purposeOfEvent"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": guard.purpose_of_use or "BTG",
                    }
                ],
                **({"text": guard.reason[:200]} if guard.reason else {}),
            }
        ]
    if decision.emergency:
        event["agent"][0]["purposeOfUse"] = event["purposeOfEvent"]
    if entities:
        event["entity"] = entities
    return event


def _final(audited: Iterable[Audited]) -> list[Audited]:
    """One record per resource (or per type for searches): the last decision made about it,
    which is the denial when there was one (a denial ends the request)."""
    last: dict[tuple[str, str | None, str | None], Audited] = {}
    for record in audited:
        last[(record.operation, record.resource_type, record.resource)] = record
    return list(last.values())


class AuditTrail:
    """The writer of AuditEvents for one server process."""

    def __init__(self, db: Database, server: Context, endpoint: str = "fhir-server") -> None:
        self.db = db
        self.server = server  # the context AuditEvents are stored with (System, unrestricted)
        self.endpoint = endpoint
        self._pending: list[NewVersion] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def record(self, guard: Guard) -> None:
        """The decisions a request made: urgent ones written now, the rest queued."""
        if not guard.audited:
            return
        now = self.server.clock()
        urgent: list[NewVersion] = []
        for audited in _final(guard.audited):
            version = self._version(audit_event(guard, audited, now, self.endpoint), now)
            if audited.decision.allowed and not audited.decision.emergency:
                self._pending.append(version)
            else:
                urgent.append(version)
            if audited.decision.emergency:
                log.warning("emergency access by %s to %s", guard.account, audited.resource)
        if urgent:
            await self._write(urgent)

    def _version(self, event: dict[str, Any], now: datetime) -> NewVersion:
        return new_version(
            self.server, event, id=new_id(), version_id=1, last_updated=now, method="POST"
        )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:  # a failed flush keeps its events for the next one
                log.exception("writing audit events failed; retrying")

    async def flush(self) -> None:
        async with self._lock:
            pending, self._pending = self._pending, []
            if not pending:
                return
            try:
                await self._write(pending)
            except Exception:
                self._pending[:0] = pending
                raise

    async def _write(self, versions: list[NewVersion]) -> None:
        async with self.db.transaction() as conn:
            await repository.insert_created(conn, versions)
