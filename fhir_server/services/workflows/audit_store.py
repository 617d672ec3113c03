"""Maintenance of the AuditEvent store (docs/scaling.md "The audit stream"): the monthly
partitions made ahead of time, and whole past months archived to files and dropped.

`fhir-server audit partitions` and `fhir-server audit archive` run these; the server makes the
partitions ahead when it starts. Nothing here is ever done unasked: without `--before` and without
`FHIR_AUDIT_RETENTION_MONTHS`, archive refuses to run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fhir_server.storage import audit_events
from fhir_server.storage.audit_events import Archived
from fhir_server.storage.database import Database


async def make_partitions(db: Database, now: datetime, months_ahead: int) -> list[str]:
    """The partitions of this month and the `months_ahead` after it, made where missing."""
    async with db.connection() as conn:
        return await audit_events.ensure_partitions(conn, now, months_ahead)


def retention_cutoff(now: datetime, keep_months: int) -> datetime:
    """The first month kept when `keep_months` months are kept, the current one included:
    archiving goes up to it."""
    start = audit_events.month_start(now)
    for _ in range(max(keep_months, 1) - 1):
        start = _previous_month(start)
    return start


def _previous_month(start: datetime) -> datetime:
    if start.month == 1:
        return start.replace(year=start.year - 1, month=12)
    return start.replace(month=start.month - 1)


@dataclass(frozen=True, slots=True)
class ArchivePlan:
    before: datetime
    months: list[tuple[str, datetime]]


async def plan_archive(db: Database, before: datetime) -> ArchivePlan:
    """The monthly partitions wholly before `before` (the first day of a month)."""
    async with db.connection() as conn:
        return ArchivePlan(before, await audit_events.months_before(conn, before))


async def archive(db: Database, plan: ArchivePlan, directory: Path) -> list[Archived]:
    """Each month of `plan`, oldest first: written, checked, then dropped. A failure stops at
    that month, whose partition is left as it was (the months before it are done)."""
    os.makedirs(directory, exist_ok=True)  # a command of its own: blocking is fine
    done = []
    for name, start in plan.months:
        async with db.connection() as conn:
            done.append(await audit_events.archive_month(conn, name, start, directory))
    return done
