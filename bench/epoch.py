"""The access epoch under concurrent fact-bearing writes (`make bench`, `--skip-epoch` skips it).

N writers (one connection each) update the Consent of their own family, each write a transaction
made of the server's own write statement (storage/repository.py `write_version`: the current row,
history, search index and the per-key access epochs) and one more `UPDATE` of a counter row. In
the measured run that row is the writer's own; in the reference run, in the same process on the
same database, it is one row shared by all writers, as the single `access_epoch` row was before
migration 0009. Both runs make the same statements; only the sharing differs. A sampler reads
`pg_stat_activity` every few milliseconds and counts the writers waiting on a lock.

Reported: writes/s of each run, their ratio, and the share of samples in which a writer waited
on a lock. Figures, never assertions: benchmarks report (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg

from bench.harness import conditions, start_database, write_section
from fhir_server.search.index import index_rows
from fhir_server.storage import repository
from fhir_server.storage.repository import NewVersion

SAMPLE_SECONDS = 0.005


@dataclass(frozen=True, slots=True)
class Run:
    label: str
    writes: int
    seconds: float
    samples: int
    waiting: int  # writer-samples waiting on a lock (wait_event_type = 'Lock')

    @property
    def rate(self) -> float:
        return self.writes / self.seconds

    @property
    def waiting_share(self) -> float:
        return self.waiting / self.samples if self.samples else 0.0


def _version(resource: dict[str, Any], version_id: int, method: str) -> NewVersion:
    return NewVersion(
        resource_type=resource["resourceType"],
        id=resource["id"],
        version_id=version_id,
        last_updated=datetime.now(UTC),
        content=orjson.dumps(resource).decode(),
        compartments=(),
        method=method,
        index=index_rows(resource),
    )


def _family(n: int) -> list[dict[str, Any]]:
    patient = {"resourceType": "Patient", "id": f"epoch-p{n}", "birthDate": "1990-01-01"}
    spouse = {
        "resourceType": "RelatedPerson",
        "id": f"epoch-rp{n}",
        "patient": {"reference": f"Patient/epoch-p{n}"},
    }
    consent = {
        "resourceType": "Consent",
        "id": f"epoch-c{n}",
        "status": "active",
        "patient": {"reference": f"Patient/epoch-p{n}"},
        "provision": {
            "type": "permit",
            "actor": [{"reference": {"reference": f"RelatedPerson/epoch-rp{n}"}}],
        },
    }
    return [patient, spouse, consent]


async def _setup(url: str, writers: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for n in range(writers):
            for resource in _family(n):
                await repository.insert_new(conn, _version(resource, 1, "PUT"))
        await conn.execute(
            "CREATE TABLE bench_counters (id int PRIMARY KEY, value bigint NOT NULL)"
        )
        await conn.execute(
            "INSERT INTO bench_counters SELECT g, 0 FROM generate_series(0, %s) g", (writers,)
        )


async def _writer(url: str, n: int, shared: bool, until: float, start: int) -> int:
    consent = _family(n)[2]
    counter = 0 if shared else n + 1
    writes = 0
    async with await psycopg.AsyncConnection.connect(url) as conn:
        while time.monotonic() < until:
            consent["status"] = "inactive" if writes % 2 else "active"
            async with conn.transaction():
                await repository.write_version(conn, _version(consent, start + writes, "PUT"))
                await conn.execute(
                    "UPDATE bench_counters SET value = value + 1 WHERE id = %s", (counter,)
                )
            writes += 1
    return writes


async def _sampler(url: str, until: float) -> tuple[int, int]:
    samples = waiting = 0
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while time.monotonic() < until:
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'), count(*)"
                " FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND datname = current_database() AND pid <> pg_backend_pid()"
            )
            row = await cur.fetchone()
            assert row is not None
            waiting += int(row[0])
            samples += int(row[1])
            await asyncio.sleep(SAMPLE_SECONDS)
    return samples, waiting


async def _run(url: str, label: str, writers: int, shared: bool, seconds: float, start: int) -> Run:
    began = time.monotonic()
    until = began + seconds
    sampler = asyncio.create_task(_sampler(url, until))
    counts = await asyncio.gather(*(_writer(url, n, shared, until, start) for n in range(writers)))
    elapsed = time.monotonic() - began
    samples, waiting = await sampler
    return Run(label, sum(counts), elapsed, samples, waiting)


def measure(url: str, writers: int, seconds: float) -> list[Run]:
    """The reference (shared row) and the per-family run, twice each, interleaved."""

    async def all_runs() -> list[Run]:
        await _setup(url, writers)
        runs = []
        start = 2
        for _ in range(2):
            for label, shared in (("one shared row", True), ("per-family epochs", False)):
                run = await _run(url, label, writers, shared, seconds, start)
                start += run.writes + 1  # version ids only grow (no writer reuses one)
                print(
                    f"  {label}: {run.rate:,.0f} writes/s, writers waiting on a lock in "
                    f"{run.waiting_share:.0%} of samples",
                    flush=True,
                )
                runs.append(run)
        return runs

    return asyncio.run(all_runs())


def report(runs: list[Run], writers: int, seconds: float) -> str:
    def total(label: str) -> tuple[float, float]:
        mine = [r for r in runs if r.label == label]
        rate = sum(r.writes for r in mine) / sum(r.seconds for r in mine)
        waiting = sum(r.waiting for r in mine) / max(1, sum(r.samples for r in mine))
        return rate, waiting

    shared_rate, shared_wait = total("one shared row")
    family_rate, family_wait = total("per-family epochs")
    return "\n".join(
        [
            f"{writers} writers, each updating its own family's Consent for {seconds:g} s per run,"
            " two runs of each kind interleaved:",
            "",
            "| run | writes/s | writer samples waiting on a lock |",
            "|---|---:|---:|",
            f"| reference: one row shared by all writes | {shared_rate:,.0f} | {shared_wait:.0%} |",
            f"| per-family epochs (this server) | {family_rate:,.0f} | {family_wait:.0%} |",
            f"| ratio per-family / reference | {family_rate / shared_rate:.2f} | |",
        ]
    )


def run(args: argparse.Namespace, stack: ExitStack, *, append: bool) -> None:
    """The epoch benchmark on a fresh database; its section goes to bench/results/latest.md."""
    load_before = os.getloadavg()[0]
    print("access epoch benchmark: a new embedded PostgreSQL", flush=True)
    _, url, _ = start_database(stack)
    runs = measure(url, args.epoch_writers, args.epoch_seconds)
    out = report(runs, args.epoch_writers, args.epoch_seconds)
    conds = "\n".join(f"- **{k}**: {v}" for k, v in conditions(url, load_before))
    write_section("Access epoch benchmark", out, conds, append)
