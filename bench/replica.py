"""Read replicas (`make bench`; `--skip-replica` skips it): what one streaming replica adds to the
read capacity, and how long a revoked Consent goes on being honoured through a replica under load.

A primary and a `pg_basebackup -R` replica of it, from the embedded PostgreSQL's binaries
(tests/support/replica.py), and two `fhir-server serve` processes on the primary: one without
replicas (the reference: the primary alone) and one with `POSTGRES_REPLICA_URLS` set to the
replica. With `--replica-pin` (the default where there are at least two cores), the primary's
PostgreSQL runs on core 0 and the replica's on core 1 (taskset): the reference's database has one
core, the replica run's two. The API servers and the load generator are not pinned and share the
machine's cores with both databases: on a small machine they, not the database, may bound both runs.

(a) Throughput: RelatedPersons (each a parent with its own signed token) read their child's
Patient at random, closed loop, the same load against each server, two interleaved runs each.

(b) Revocation lag: while readers load the replica server, the spouse a Consent shares lab results
with reads the shared Observation without pause, and the Consent is revoked (a PUT of status
inactive through the same server). The primary keeps commit timestamps
(`track_commit_timestamp`), so the lag is measured from the revocation's commit itself to the
answer of the first denied read, and with it the reads sent after the commit that were still
allowed (a revocation ignored after it committed: there should be none, whatever the replica's
lag, because the facts' epoch is checked on the primary).

Figures, never assertions (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.clients import Http, closed_loop, request
from bench.harness import conditions, serve, write_section
from fhir_server.auth.devkeys import dev_token
from fhir_server.storage.database import migrate
from tests.support.replica import Pair, Server, start_pair
from tests.support.resources import GRANTEE, LAB, consent, permit, related_person, years_ago

FAMILIES = 200


def _pin(pid: int, core: int) -> None:
    subprocess.run(["taskset", "-a", "-cp", str(core), str(pid)], check=True, capture_output=True)


def _postmaster(folder: Path) -> int:
    return int((folder / "data" / "postmaster.pid").read_text().split()[0])


def _setup(base: str, token: str) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """Families: (parent's token, child's id) for the read load, and adult patients whose spouse
    has a Consent on her lab results (for the revocation prober)."""
    reads: list[tuple[str, str]] = []
    shared: list[dict[str, str]] = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"{base}/fhir", headers=headers, timeout=60) as system:

        def create(body: dict[str, Any]) -> str:
            response = system.post(f"/{body['resourceType']}", json=body)
            response.raise_for_status()
            return f"{body['resourceType']}/{response.json()['id']}"

        for _ in range(FAMILIES):
            child = create({"resourceType": "Patient", "birthDate": years_ago(8)})
            parent = create(related_person(child, "MTH"))
            reads.append((parent, child.split("/")[1]))
        for _ in range(4):
            adult = create({"resourceType": "Patient", "birthDate": years_ago(40)})
            spouse = create(related_person(adult, "SPS"))
            grant = create(
                consent(
                    adult,
                    permit(spouse, "LAB_RESULTS", role=GRANTEE),
                    scope={"coding": [{"code": "patient-privacy"}]},
                    category={"coding": [{"code": "INFA"}]},
                )
            )
            lab = create(
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [LAB],
                    "code": {"text": "bench"},
                    "subject": {"reference": adult},
                }
            )
            shared.append({"spouse": spouse, "consent": grant, "lab": lab})
    return reads, shared


async def _reads(base: str, requests: list[bytes], seconds: float, connections: int) -> float:
    http = Http.to(base, connections)

    async def one() -> int:
        return (await http.send(random.choice(requests))).status

    try:
        r = await closed_loop("python", one, connections, seconds)
    finally:
        http.close()
    return r.requests / r.seconds


def _read_requests(data_dir: Path, reads: list[tuple[str, str]]) -> list[bytes]:
    out = []
    for parent, child in reads:
        token = dev_token(data_dir, fhir_user=parent, scope="user/*.rs", lifetime_seconds=86400)
        headers = {"Accept": "application/fhir+json", "Authorization": f"Bearer {token}"}
        out.append(request("GET", f"/fhir/Patient/{child}", headers))
    return out


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation (times in seconds of `time.time()`): when it committed, when the first
    denied read was answered, and how many reads sent after the commit were still allowed."""

    committed: float
    denied_at: float
    allowed_after: int
    # the first denied read's own round trip (sent to answered): the part of the lag that is
    # request latency under the load
    denied_round_trip: float

    @property
    def lag(self) -> float:
        return self.denied_at - self.committed


def _committed(primary: Server, reference: str) -> float:
    """When the transaction that wrote `reference`'s current version committed (epoch seconds)."""
    kind, _, id = reference.partition("/")
    value = primary.execute(
        "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 FROM resources"
        " WHERE resource_type = %s AND id = %s",
        "fhir",
        (kind, id),
    )
    assert value is not None, f"no commit timestamp for {reference}"
    return float(value)


async def _revocations(
    primary: Server,
    base: str,
    data_dir: Path,
    shared: list[dict[str, str]],
    system_token: str,
    rounds: int,
    load: list[bytes],
    connections: int,
) -> list[Revocation]:
    """`rounds` revocations under a read load, the spouse reading without pause meanwhile."""
    found: list[Revocation] = []
    stop = asyncio.Event()
    http = Http.to(base, connections)

    async def reader() -> None:
        while not stop.is_set():
            await http.send(random.choice(load))

    readers = [asyncio.create_task(reader()) for _ in range(connections)]
    system = httpx.AsyncClient(
        base_url=f"{base}/fhir", headers={"Authorization": f"Bearer {system_token}"}, timeout=30
    )
    try:
        for n in range(rounds):
            family = shared[n % len(shared)]
            token = dev_token(data_dir, fhir_user=family["spouse"], scope="user/*.rs")
            async with httpx.AsyncClient(
                base_url=f"{base}/fhir", headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as spouse:
                content = (await system.get(f"/{family['consent']}")).json()
                content["status"] = "active"
                (await system.put(f"/{family['consent']}", json=content)).raise_for_status()
                # the grant counts at once (the epoch moved); a few reads cache the facts
                for _ in range(3):
                    granted = await spouse.get(f"/{family['lab']}")
                    assert granted.status_code == 200, granted.text
                reads: list[tuple[float, float, int]] = []
                denied = asyncio.Event()

                async def prober(
                    spouse: httpx.AsyncClient = spouse,
                    reads: list[tuple[float, float, int]] = reads,
                    denied: asyncio.Event = denied,
                    lab: str = family["lab"],
                ) -> None:
                    while not denied.is_set():
                        sent = time.time()
                        status = (await spouse.get(f"/{lab}")).status_code
                        reads.append((sent, time.time(), status))
                        if status == 403:
                            denied.set()

                probing = asyncio.create_task(prober())
                await asyncio.sleep(0.01)
                content["status"] = "inactive"
                (await system.put(f"/{family['consent']}", json=content)).raise_for_status()
                await probing
                committed = _committed(primary, family["consent"])
                first = min((r for r in reads if r[2] == 403), key=lambda r: r[1])
                denied_sent, denied_at = first[0], first[1]
                allowed_after = sum(
                    1 for sent, _, status in reads if sent > committed and status == 200
                )
                found.append(
                    Revocation(committed, denied_at, allowed_after, denied_at - denied_sent)
                )
    finally:
        stop.set()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await system.aclose()
        http.close()
    return found


def _metric(base: str, name: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.partition("} ")
            found[labels.split('"')[1]] = float(value)
    return found


def _ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f} ms"


def run(args: argparse.Namespace, stack: ExitStack, *, append: bool) -> None:
    load_before = os.getloadavg()[0]
    print("replica benchmark: a primary and a streaming replica (pg_basebackup -R)", flush=True)
    pair: Pair = start_pair()
    stack.callback(pair.stop)
    primary_url = pair.primary.url("fhir")
    migrate(primary_url)
    pin = args.replica_pin and (os.cpu_count() or 1) >= 2
    if pin:
        _pin(_postmaster(pair.primary.folder), 0)
        _pin(_postmaster(pair.replica.folder), 1)
    exe = str(Path(sys.executable).parent / "fhir-server")
    data_dir = pair.primary.folder.parent / f"{pair.primary.folder.name}-server"
    data_dir.mkdir()
    stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
    env = {
        "POSTGRES_URL": primary_url,
        "FHIR_MIGRATE_ON_START": "false",
        "FHIR_DATA_DIR": str(data_dir),
        "FHIR_DB_POOL_SIZE": "10",
    }
    _, alone = serve(stack, [exe, "serve"], env, data_dir)
    replica_env = {
        **env,
        "POSTGRES_REPLICA_URLS": pair.replica.url("fhir"),
        "FHIR_REPLICA_MAX_LAG_MS": str(args.replica_max_lag_ms),
    }
    _, routed = serve(stack, [exe, "serve"], replica_env, data_dir)
    system_token = dev_token(
        data_dir, fhir_user=None, scope="system/*.cruds", lifetime_seconds=86400
    )
    reads, shared = _setup(alone, system_token)
    pair.caught_up()
    load = _read_requests(data_dir, reads)
    seconds, connections = args.replica_seconds, args.replica_connections

    rates: dict[str, list[float]] = {"alone": [], "routed": []}
    for base in (alone, routed):  # warm the caches (facts, tokens)
        asyncio.run(_reads(base, load, 1, connections))
    for _ in range(2):
        for label, base in (("alone", alone), ("routed", routed)):
            rate = asyncio.run(_reads(base, load, seconds, connections))
            rates[label].append(rate)
            print(f"  {label}: {rate:,.0f} reads/s", flush=True)
    served = _metric(routed, "db_reads_routed_total")
    revocations = asyncio.run(
        _revocations(
            pair.primary,
            routed,
            data_dir,
            shared,
            system_token,
            args.replica_revocations,
            load,
            connections,
        )
    )
    fallbacks = _metric(routed, "db_replica_fallbacks_total")
    lags = [r.lag for r in revocations]
    trips = [r.denied_round_trip for r in revocations]

    alone_rate = statistics.mean(rates["alone"])
    routed_rate = statistics.mean(rates["routed"])
    on_replica = sum(v for k, v in served.items() if k != "primary")
    share = on_replica / max(1.0, sum(served.values()))
    out = "\n".join(
        [
            f"{FAMILIES} parents reading their child's Patient (own tokens), {connections}"
            f" connections, {seconds:g} s per run, two runs of each interleaved; PostgreSQL"
            + (
                " pinned: primary on core 0, replica on core 1"
                if pin
                else " not pinned (--no-replica-pin or one core)"
            )
            + "; the API servers and the load generator share all cores with them.",
            "",
            "| run | reads/s |",
            "|---|---:|",
            f"| reference: the primary alone | {alone_rate:,.0f} |",
            f"| primary + one replica | {routed_rate:,.0f} |",
            f"| ratio | {routed_rate / alone_rate:.2f} |",
            "",
            f"Share of the replica server's reads whose data the replica served: {share:.0%}"
            f" (fallbacks: {dict(sorted(fallbacks.items())) or 'none'}).",
            "",
            f"Revocation lag through the replica server under that read load"
            f" (FHIR_REPLICA_MAX_LAG_MS={args.replica_max_lag_ms}), {len(revocations)}"
            " revocations, the spouse reading without pause; lag from the revocation's commit"
            " (its commit timestamp on the primary) to the answer of the first 403:",
            "",
            "| | lag | the first denied read's own round trip |",
            "|---|---:|---:|",
            f"| p50 | {_ms(lags, 0.5)} | {_ms(trips, 0.5)} |",
            f"| p99 | {_ms(lags, 0.99)} | {_ms(trips, 0.99)} |",
            f"| max | {_ms(lags, 1)} | {_ms(trips, 1)} |",
            "",
            "Reads sent after the commit and still allowed:"
            f" {sum(r.allowed_after for r in revocations)}.",
        ]
    )
    conds = "\n".join(f"- **{k}**: {v}" for k, v in conditions(primary_url, load_before))
    write_section("Replica benchmark", out, conds, append)
