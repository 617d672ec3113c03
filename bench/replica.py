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
import contextlib
import os
import random
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.clients import Http, closed_loop, request
from bench.harness import conditions, serve, write_section
from fhir_server.audit.trail import WRITER_NAME
from fhir_server.auth.devkeys import dev_token
from fhir_server.storage.database import migrate
from tests.support.replica import Pair, Server, start_pair
from tests.support.resources import GRANTEE, LAB, consent, permit, related_person, years_ago

FAMILIES = 200


def _pin(pid: int, core: int) -> None:
    subprocess.run(["taskset", "-a", "-cp", str(core), str(pid)], check=True, capture_output=True)


def _postmaster(folder: Path) -> int:
    return int((folder / "data" / "postmaster.pid").read_text().split()[0])


PERIOD_US = 10_000  # a short period: throttled in slices of milliseconds, not of 100 ms


class CpuCap:
    """A cgroup whose processes share at most `fraction` of one core: the CFS quota of cgroup v1's
    `cpu` controller, or v2's `cpu.max`. A database in one is the bottleneck of its server the
    way a small database machine would be, whatever the API servers and the load generator use."""

    def __init__(self, name: str, fraction: float) -> None:
        quota = max(1000, int(fraction * PERIOD_US))
        v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.folder = v1 / name
            self.folder.mkdir(exist_ok=True)
            (self.folder / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.folder / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            if "cpu" not in (v2 / "cgroup.controllers").read_text().split():
                raise OSError("no cpu controller")
            (v2 / "cgroup.subtree_control").write_text("+cpu")
            self.folder = v2 / name
            self.folder.mkdir(exist_ok=True)
            (self.folder / "cpu.max").write_text(f"{quota} {PERIOD_US}")

    @classmethod
    def made(cls, name: str, fraction: float) -> CpuCap | None:
        """The cap, or None where cgroups cannot be written here (not root, read-only)."""
        try:
            return cls(name, fraction)
        except OSError as exc:
            print(f"  no CPU cap for {name}: {exc}", flush=True)
            return None

    def add(self, postmaster: int) -> None:
        """A PostgreSQL: its postmaster and every process it has started (later ones inherit)."""
        for proc in [psutil.Process(postmaster), *psutil.Process(postmaster).children(True)]:
            with contextlib.suppress(ProcessLookupError):  # a backend that just ended
                (self.folder / "cgroup.procs").write_text(str(proc.pid))

    def release(self) -> None:
        """Every process back where the machine's others are, and the cgroup removed."""
        parent = self.folder.parent / "cgroup.procs"
        for pid in (self.folder / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                parent.write_text(pid)
        self.folder.rmdir()


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


async def _each_once(base: str, requests: list[bytes], connections: int) -> None:
    """Every request once (each parent's facts and token then cached by the server)."""
    http = Http.to(base, connections)
    queue = list(requests)

    async def worker() -> None:
        while queue:
            await http.send(queue.pop())

    try:
        await asyncio.gather(*(worker() for _ in range(connections)))
    finally:
        http.close()


async def _reads(
    base: str, requests: list[bytes], seconds: float, connections: int
) -> tuple[int, float]:
    """The reads answered, and the seconds they took."""
    http = Http.to(base, connections)

    async def one() -> int:
        return (await http.send(random.choice(requests))).status

    try:
        r = await closed_loop("python", one, connections, seconds)
    finally:
        http.close()
    return r.requests, r.seconds


def _stored(base: str) -> float:
    """Wait until the server's AuditEvents are all stored: the seconds it took. A run's time
    includes it, so that throughput is sustained throughput (a database that falls behind on
    them has not kept up with the load, and the next run would pay for it)."""
    started = time.perf_counter()
    while _gauge(base, "audit_events_buffered") > 0 and time.perf_counter() < started + 300:
        time.sleep(0.02)
    return time.perf_counter() - started


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


def _gauge(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise LookupError(name)


def _metric(base: str, name: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.partition("} ")
            found[labels.split('"')[1]] = float(value)
    return found


def _cpu_seconds(server: Server) -> tuple[float, float]:
    """User + system seconds of a PostgreSQL's processes (those that ended included), and of
    those that store AuditEvents (the audit writers' backends) or replay WAL (a replica's
    startup process) among them."""
    writers = {
        int(pid)
        for pid in (
            server.execute(
                "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity"
                " WHERE application_name = %s",
                "fhir",
                (WRITER_NAME,),
            )
            or ""
        ).split()
    }
    postmaster = psutil.Process(_postmaster(server.folder))
    total = float(sum(postmaster.cpu_times()[:4]))
    apart = 0.0
    for child in postmaster.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # a backend that just ended
            seconds = float(sum(child.cpu_times()[:2]))
            total += seconds
            if child.pid in writers or "startup" in " ".join(child.cmdline()):
                apart += seconds
    return total, apart


@dataclass
class Runs:
    """What the runs against one server add up to."""

    reads: int = 0
    seconds: float = 0.0
    primary: float = 0.0  # CPU seconds of the primary's PostgreSQL
    audit: float = 0.0  # of its audit writers' backends
    replica: float = 0.0  # of the replica's, with its replay
    replay: float = 0.0

    @property
    def rate(self) -> float:
        return self.reads / self.seconds

    def ms(self, seconds: float) -> str:
        return f"{1000 * seconds / self.reads:.3f}"


@dataclass(frozen=True, slots=True)
class Throughput:
    alone: Runs
    routed: Runs
    share: float  # of the replica server's reads, those whose data the replica served
    fallbacks: dict[str, float]
    sharing: float  # epoch checks per statement on the primary

    def rows(self, label: str) -> list[str]:
        a, r = self.alone, self.routed
        return [
            f"| {label}: the primary alone (reference) | {a.rate:,.0f} | {a.ms(a.primary)}"
            f" ({a.ms(a.audit)}) | {a.ms(a.replica)} ({a.ms(a.replay)}) |",
            f"| {label}: primary + one replica | {r.rate:,.0f} | {r.ms(r.primary)}"
            f" ({r.ms(r.audit)}) | {r.ms(r.replica)} ({r.ms(r.replay)}) |",
            f"| {label}: ratio | {r.rate / a.rate:.2f} | | |",
        ]

    def served(self, label: str) -> str:
        return (
            f"{label}: the replica served {self.share:.0%} of the replica server's reads"
            f" (fallbacks: {dict(sorted(self.fallbacks.items())) or 'none'}); their"
            f" access-epoch checks shared statements on the primary, {self.sharing:.1f} to one."
        )


def _throughput(
    pair: Pair, alone: str, routed: str, load: list[bytes], seconds: float, connections: int
) -> Throughput:
    """Two runs against each server, interleaved, after each parent has read once from each;
    with the CPU each database spent on each run."""
    runs = {"alone": Runs(), "routed": Runs()}
    for base in (alone, routed):  # warm the caches (facts, tokens)
        asyncio.run(_each_once(base, load, connections))
        _stored(base)
    served_before = _metric(routed, "db_reads_routed_total")
    fallbacks_before = _metric(routed, "db_replica_fallbacks_total")
    checks_before = _metric(routed, "db_replica_epoch_checks")
    for _ in range(2):
        for label, base in (("alone", alone), ("routed", routed)):
            (p0, audit0), (r0, replay0) = _cpu_seconds(pair.primary), _cpu_seconds(pair.replica)
            reads, took = asyncio.run(_reads(base, load, seconds, connections))
            took += _stored(base)
            (p1, audit1), (r1, replay1) = _cpu_seconds(pair.primary), _cpu_seconds(pair.replica)
            run = runs[label]
            run.reads += reads
            run.seconds += took
            run.primary += p1 - p0
            run.audit += audit1 - audit0
            run.replica += r1 - r0
            run.replay += replay1 - replay0
            print(f"  {label}: {reads / took:,.0f} reads/s", flush=True)
    served = _delta(_metric(routed, "db_reads_routed_total"), served_before)
    on_replica = sum(v for k, v in served.items() if k != "primary")
    checks = _delta(_metric(routed, "db_replica_epoch_checks"), checks_before)
    return Throughput(
        runs["alone"],
        runs["routed"],
        on_replica / max(1.0, sum(served.values())),
        _delta(_metric(routed, "db_replica_fallbacks_total"), fallbacks_before),
        checks.get("checks", 0.0) / max(1.0, checks.get("statements", 0.0)),
    )


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}


def _ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f} ms"


def _capped(
    args: argparse.Namespace,
    pair: Pair,
    alone: str,
    routed: str,
    load: list[bytes],
    connections: int,
) -> Throughput | None:
    """The throughput runs again with each PostgreSQL held to `--replica-db-cpu` of one core
    (None with 0, or where this machine's cgroups cannot be written)."""
    if args.replica_db_cpu <= 0:
        return None
    caps: list[CpuCap] = []
    try:
        for name, server in (("primary", pair.primary), ("replica", pair.replica)):
            cap = CpuCap.made(f"fhir-bench-{name}-{os.getpid()}", args.replica_db_cpu)
            if cap is None:
                return None
            caps.append(cap)
            cap.add(_postmaster(server.folder))
        print(f"  each database capped at {args.replica_db_cpu:g} core:", flush=True)
        pair.caught_up(timeout=120)
        return _throughput(pair, alone, routed, load, args.replica_seconds, connections)
    finally:
        for cap in caps:
            cap.release()


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
    # the statistics a database at work has (autovacuum would gather them within a minute):
    # without them the planner's guesses make each facts statement ~30 times slower
    pair.primary.execute("ANALYZE", "fhir")
    pair.caught_up()
    load = _read_requests(data_dir, reads)
    seconds, connections = args.replica_seconds, args.replica_connections

    shared_cpu = _throughput(pair, alone, routed, load, seconds, connections)
    capped = _capped(args, pair, alone, routed, load, connections)
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
    lags = [r.lag for r in revocations]
    trips = [r.denied_round_trip for r in revocations]

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
            "| run | reads/s | primary's CPU per read (audit writers'), ms"
            " | replica's CPU per read (replay), ms |",
            "|---|---:|---:|---:|",
            *shared_cpu.rows("cores shared"),
            *(
                capped.rows(f"each database capped at {args.replica_db_cpu:g} core")
                if capped
                else ()
            ),
            "",
            shared_cpu.served("Cores shared"),
            *(
                (
                    "",
                    capped.served(f"Capped at {args.replica_db_cpu:g} core")
                    + " With the cap (a cgroup CPU quota on each PostgreSQL and every process"
                    " it starts), the database, not the API servers or the load generator,"
                    " bounds each run, as a small database machine would.",
                )
                if capped
                else ()
            ),
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
