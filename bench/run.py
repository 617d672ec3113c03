"""`make bench`: ingest, create and read throughput of `fhir-server serve` against a reference.

Starts a throw-away embedded PostgreSQL and the server on it (one process, as `fhir-server serve`
runs it; bench/harness.py), loads Patients through 1,000-entry transactions, drives creates and
random reads with wrk (or a Python fallback, bench/load.py), runs the identical read load against
bench/reference_app.py on the same database, and prints a table of figures, ratios and goals (also
written to bench/results/latest.md). Then the search benchmark (bench/search.py) loads a clinical
dataset into a fresh database and times searches; then the access epoch benchmark (bench/epoch.py)
runs concurrent fact-bearing writes on a third; then the replica benchmark (bench/replica.py)
compares reads through a streaming replica with the primary alone and times revocations through
it; --skip-rest, --skip-search, --skip-epoch and --skip-replica pick the parts.
Benchmarks report; they never fail a build.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import orjson
import psutil
import psycopg

from bench import epoch, harness, replica, search
from bench.harness import (
    FHIR_JSON,
    RESULTS,
    ROOT,
    Cpu,
    CpuMeter,
    Deployment,
    children_rss_mb,
    rss_mb,
    serve,
    servers,
    start_server,
    stop_on_signals,
)
from bench.load import Load, LoadResult, wrk_available, wrk_version
from bench.patients import transaction


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument(
        "--patients", type=int, default=100_000, help="Patients to load (default %(default)s)"
    )
    p.add_argument(
        "--batch", type=int, default=1000, help="entries per transaction (default %(default)s)"
    )
    p.add_argument(
        "--duration", type=float, default=10, help="seconds per load run (default %(default)s)"
    )
    p.add_argument("--warmup", type=float, default=2, help="seconds of warm-up before each run")
    p.add_argument(
        "--connections", type=int, default=16, help="concurrent connections (default %(default)s)"
    )
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default %(default)s)")
    p.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after measuring, record py-spy profiles of the server",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 5,000 patients, 3 s runs; search benchmark with 500 patients",
    )
    p.add_argument(
        "--search-patients",
        type=int,
        default=20_000,
        help="search benchmark: Patients to load, about 53 resources each (default %(default)s)",
    )
    p.add_argument(
        "--search-requests",
        type=int,
        default=200,
        help="search benchmark: measured requests per query (default %(default)s)",
    )
    p.add_argument("--skip-rest", action="store_true", help="skip ingest, create and read runs")
    p.add_argument("--skip-search", action="store_true", help="skip the search benchmark")
    p.add_argument("--skip-epoch", action="store_true", help="skip the access epoch benchmark")
    p.add_argument(
        "--epoch-writers",
        type=int,
        default=8,
        help="access epoch benchmark: concurrent writers (default %(default)s)",
    )
    p.add_argument(
        "--epoch-seconds",
        type=float,
        default=10,
        help="access epoch benchmark: seconds per run (default %(default)s)",
    )
    p.add_argument("--skip-replica", action="store_true", help="skip the replica benchmark")
    p.add_argument(
        "--replica-seconds",
        type=float,
        default=10,
        help="replica benchmark: seconds per read run (default %(default)s)",
    )
    p.add_argument(
        "--replica-connections",
        type=int,
        default=16,
        help="replica benchmark: concurrent readers (default %(default)s)",
    )
    p.add_argument(
        "--replica-revocations",
        type=int,
        default=50,
        help="replica benchmark: revocations timed under load (default %(default)s)",
    )
    p.add_argument(
        "--replica-max-lag-ms",
        type=int,
        default=100,
        help="replica benchmark: FHIR_REPLICA_MAX_LAG_MS of its server (default %(default)s)",
    )
    p.add_argument(
        "--replica-pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="replica benchmark: pin the primary's PostgreSQL to core 0, the replica's to core 1",
    )
    p.add_argument(
        "--replica-db-cpu",
        type=float,
        default=0.1,
        help="replica benchmark: run the throughput runs again with each PostgreSQL capped at"
        " this fraction of one core (a cgroup CPU quota; 0: not run) (default %(default)s)",
    )
    args = p.parse_args(argv)
    if args.skip_rest and args.skip_search and args.skip_epoch and args.skip_replica:
        p.error("--skip-rest, --skip-search, --skip-epoch and --skip-replica leave nothing to run")
    if args.quick:
        args.patients, args.duration, args.warmup = min(args.patients, 5000), 3, 1
        args.search_patients = min(args.search_patients, 500)
        args.epoch_seconds = min(args.epoch_seconds, 3)
        args.replica_seconds = min(args.replica_seconds, 3)
        args.replica_revocations = min(args.replica_revocations, 20)
    return args


@dataclass(frozen=True, slots=True)
class Ingest:
    resources: int
    seconds: list[float]  # one per transaction
    cpu: Cpu

    @property
    def rate(self) -> float:
        return self.resources / sum(self.seconds)


def ingest(base: str, patients: int, batch: int, meter: CpuMeter, token: str) -> Ingest:
    rng = random.Random(20240401)
    times: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=600, headers=headers) as client, meter:
        for start in range(0, patients, batch):
            body = orjson.dumps(transaction(rng, start, min(batch, patients - start)))
            t0 = time.perf_counter()
            r = client.post(
                "/fhir", content=body, headers={**FHIR_JSON, "Prefer": "return=minimal"}
            )
            times.append(time.perf_counter() - t0)
            if r.status_code != 200:
                sys.exit(f"transaction at {start} answered {r.status_code}: {r.text[:2000]}")
            done = start + batch
            if len(times) % 10 == 0 or done >= patients:
                print(
                    f"  loaded {min(done, patients):>7,} patients, last transaction {times[-1]:.2f}s",
                    flush=True,
                )
    return Ingest(patients, times, meter.result)


RELATED_PERSONS = 1000


def related_persons(deployment: Deployment, patients: Sequence[str], out: Path) -> Path:
    """A RelatedPerson (mother) for each of `RELATED_PERSONS` random Patients, and a file of
    `token patient-id` lines: each read is made by the patient's own relative."""
    chosen = random.Random(7).sample(list(patients), min(RELATED_PERSONS, len(patients)))
    entries = [
        {
            "resource": {
                "resourceType": "RelatedPerson",
                "active": True,
                "patient": {"reference": f"Patient/{id}"},
                "relationship": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                "code": "MTH",
                            }
                        ]
                    }
                ],
            },
            "request": {"method": "POST", "url": "RelatedPerson"},
        }
        for id in chosen
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    r = httpx.post(f"{deployment.base}/fhir", json=bundle, headers=deployment.auth(), timeout=600)
    if r.status_code != 200:
        sys.exit(f"creating the RelatedPersons answered {r.status_code}: {r.text[:2000]}")
    lines = []
    for id, entry in zip(chosen, r.json()["entry"], strict=True):
        related = "/".join(entry["response"]["location"].split("/")[:2])
        token = deployment.token(related, "user/*.rs")
        check = httpx.get(
            f"{deployment.base}/fhir/Patient/{id}", headers={"Authorization": f"Bearer {token}"}
        )
        if check.status_code != 200:
            sys.exit(f"{related} cannot read Patient/{id}: {check.status_code} {check.text[:500]}")
        lines.append(f"{token} {id}")
    out.write_text("\n".join(lines) + "\n")
    return out


def measure(
    load: Load,
    warmup: float,
    run: str,
    base: str,
    ids: Path,
    meter: CpuMeter,
    token: str | None = None,
) -> LoadResult:
    """One load run after a warm-up, with the CPU use of the server and PostgreSQL over the run.
    `run`: "reads" (of `ids`), "creates", or a path to GET over and over (`Load.fixed`)."""

    def once(lo: Load) -> LoadResult:
        if run == "reads":
            return lo.reads(base, ids, token)
        return lo.creates(base, token) if run == "creates" else lo.fixed(base, run)

    if warmup > 0:
        once(Load(load.threads, load.connections, warmup, load.use_wrk))
    psutil.cpu_percent()
    with meter:
        result = once(load)
    result = replace(result, cpu=meter.result)
    print(
        f"  {run} @ {base}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, errors {result.errors}; "
        f"CPU % of one core: server {meter.result.server:.0f}, PostgreSQL {meter.result.postgres:.0f}, whole machine {psutil.cpu_percent() * (os.cpu_count() or 1):.0f}",
        flush=True,
    )
    return result


def profile(meter: CpuMeter, load: Load, base: str, ids: Path, token: str, callers: Path) -> None:
    """Record py-spy during one more read and create run: samples of the thread holding the GIL
    (where the server spends CPU), as collapsed stacks that speedscope.app or flamegraph.pl open."""
    spy = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if spy is None:
        print("  --profile: py-spy is not installed (pip install py-spy); skipped")
        return
    # (name, run, ids, token): the RelatedPersons' reads carry their own tokens in `callers`
    runs = (
        ("reads", "reads", ids, token),
        ("related", "reads", callers, None),
        ("creates", "creates", ids, token),
    )
    for name, run, run_ids, run_token in runs:
        out = RESULTS / f"profile-{name}.txt"
        options = f"--pid {meter.server} --duration {load.duration:g} --rate 250 --gil --format raw --nonblocking"
        cmd = [spy, "record", *options.split(), "--output", str(out)]
        with subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ) as spy_proc:
            time.sleep(1)
            measure(load, 0, run, base, run_ids, meter, run_token)
            spy_proc.wait(60)
        print(f"  profile of the server during {name}: {out.relative_to(ROOT)}")


def conditions(url: str, load: Load, args: argparse.Namespace) -> list[tuple[str, str]]:
    return [
        *harness.conditions(url, args.load_before),
        (
            "load generator",
            (f"{wrk_version()}: " if load.use_wrk else "")
            + load.name
            + f", {args.warmup:g}s warm-up before each run",
        ),
        ("servers", servers()),
        (
            "data",
            f"{args.patients:,} Patients loaded in transactions of {args.batch:,}; reads pick ids at random from them",
        ),
    ]


def table(rows: list[tuple[str, ...]]) -> str:
    head = ("figure", "value", "reference", "ratio", "goal", "met?")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def met(ok: bool, result: LoadResult | None = None) -> str:
    if result is not None and result.errors:
        return f"invalid: {result.errors} errors"
    return "yes" if ok else "**no**"


def per_request(r: LoadResult) -> float:
    """Server CPU milliseconds per request."""
    return 10 * r.cpu.server / r.rps if r.cpu and r.rps else 0.0


def writer_per_request(r: LoadResult) -> float:
    """Of `per_request`, the CPU milliseconds of the server's children (its audit writer)."""
    return 10 * r.cpu.children / r.rps if r.cpu and r.rps else 0.0


def server_cpu(r: LoadResult) -> str:
    return f"{per_request(r):.2f} ({writer_per_request(r):.3f})"


def db_per_request(r: LoadResult) -> float:
    """PostgreSQL CPU milliseconds per request (all of its processes, the audit writer's too)."""
    return 10 * r.cpu.postgres / r.rps if r.cpu and r.rps else 0.0


def cpu(c: Cpu | None) -> str:
    return f"{c.server:.0f} / {c.postgres:.0f}" if c else ""


def report(
    batch: int,
    ing: Ingest,
    creates: LoadResult,
    reads: LoadResult,
    related: LoadResult,
    ref: LoadResult,
    floors: tuple[LoadResult, LoadResult],
    mem: float,
    writer: float,
    peak: float,
) -> str:
    ratio = reads.rps / ref.rps if ref.rps else 0.0
    related_ratio = related.rps / ref.rps if ref.rps else 0.0
    cpu_ratio = per_request(reads) / per_request(ref) if per_request(ref) else 0.0
    median = statistics.median(ing.seconds)
    floor, ref_floor = floors
    floor_ratio = floor.rps / ref_floor.rps if ref_floor.rps else 0.0
    # fmt: off
    return table([
        ("reads: GET /fhir/Patient/{id}, req/s", f"{reads.rps:,.0f}", f"{ref.rps:,.0f}", f"{ratio:.2f}", ">= 0.7 of reference", met(ratio >= 0.7, reads)),
        ("reads: latency p50 / p99, ms", f"{reads.p50_ms:.2f} / {reads.p99_ms:.2f}", f"{ref.p50_ms:.2f} / {ref.p99_ms:.2f}", "", "", ""),
        ("reads: CPU % of one core, server / PostgreSQL", cpu(reads.cpu), cpu(ref.cpu), "", "", ""),
        ("reads: server CPU per request (of it the audit writer's), ms", server_cpu(reads), f"{per_request(ref):.2f}", f"{cpu_ratio:.2f}", "", ""),
        ("reads: database CPU per request (with the audit writer's), ms", f"{db_per_request(reads):.3f}", f"{db_per_request(ref):.3f}", "", "", ""),
        (f"reads as a RelatedPerson ({RELATED_PERSONS:,} callers, own signed tokens), req/s", f"{related.rps:,.0f}", f"{ref.rps:,.0f}", f"{related_ratio:.2f}", ">= 0.8 of reference", met(related_ratio >= 0.8, related)),
        ("reads as a RelatedPerson: latency p50 / p99, ms", f"{related.p50_ms:.2f} / {related.p99_ms:.2f}", f"{ref.p50_ms:.2f} / {ref.p99_ms:.2f}", "", "", ""),
        ("reads as a RelatedPerson: CPU % of one core, server / PostgreSQL", cpu(related.cpu), cpu(ref.cpu), "", "", ""),
        ("reads as a RelatedPerson: server CPU per request (of it the audit writer's), ms", server_cpu(related), f"{per_request(ref):.2f}", "", "", ""),
        ("reads as a RelatedPerson: database CPU per request (with the audit writer's), ms", f"{db_per_request(related):.3f}", f"{db_per_request(ref):.3f}", "", "", ""),
        ("the floor: GET /healthz (reference: /readyz), constant answer, no token, req/s", f"{floor.rps:,.0f}", f"{ref_floor.rps:,.0f}", f"{floor_ratio:.2f}", "", ""),
        ("creates: POST /fhir/Patient, req/s", f"{creates.rps:,.0f}", "", "", ">= 500/s", met(creates.rps >= 500, creates)),
        ("creates: latency p50 / p99, ms", f"{creates.p50_ms:.2f} / {creates.p99_ms:.2f}", "", "", "", ""),
        ("creates: CPU % of one core, server / PostgreSQL", cpu(creates.cpu), "", "", "", ""),
        ("creates: server CPU per request (of it the audit writer's), ms", server_cpu(creates), "", "", "", ""),
        ("transaction ingest, resources/s", f"{ing.rate:,.0f}", "", "", ">= 1,500/s", met(ing.rate >= 1500)),
        (f"one {batch:,}-entry transaction, median s", f"{median:.3f}", "", "", "", ""),
        ("ingest: CPU % of one core, server / PostgreSQL", cpu(ing.cpu), "", "", "", ""),
        ("server memory after the runs (RSS), MB", f"{mem:.0f}", "", "", "< 250 MB", met(mem < 250)),
        ("its audit writer process (RSS), MB", f"{writer:.0f}", "", "", "", ""),
        ("server peak memory (RSS, sampled 2/s), MB", f"{peak:.0f}", "", "", "", ""),
    ])
    # fmt: on


def run(args: argparse.Namespace, stack: ExitStack) -> None:
    args.load_before = os.getloadavg()[0]
    if args.load_before > 0.5:
        print(
            f"warning: the 1-minute load average is {args.load_before:.2f}: other processes compete for the cores"
        )
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and wrk_available())
    load = Load(args.threads, args.connections, args.duration, use_wrk)
    if use_wrk:
        print(f"load generator: {wrk_version()} ({load.name})")
    else:
        print(f"load generator: {load.name} (wrk is not on PATH: the Python generator competes")
        print("for the same cores, so its figures are lower bounds; apt-get install wrk)")

    print("starting an embedded PostgreSQL in a temporary folder and migrating it", flush=True)
    deployment = start_server(stack)
    tmp, url, postmaster = deployment.tmp, deployment.url, deployment.postmaster
    server, base, sampler = deployment.server, deployment.base, deployment.sampler
    print(f"fhir-server serve is ready at {base} (pid {server.pid})")

    print(f"ingest: {args.patients:,} Patients in transactions of {args.batch:,}", flush=True)
    meter = CpuMeter(server.pid, postmaster)
    system = deployment.token()
    ing = ingest(base, args.patients, args.batch, meter, system)
    ids = tmp / "ids.txt"
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id FROM resources WHERE resource_type = 'Patient'").fetchall()
    if len(rows) != args.patients:
        sys.exit(f"expected {args.patients} Patients in the database, found {len(rows)}")
    ids.write_text("\n".join(r[0] for r in rows) + "\n")

    print("creates and reads against the server", flush=True)
    creates = measure(load, args.warmup, "creates", base, ids, meter, system)
    reads = measure(load, args.warmup, "reads", base, ids, meter, system)
    print(
        f"reads as {RELATED_PERSONS:,} RelatedPersons, each with its own signed token", flush=True
    )
    callers = related_persons(deployment, [r[0] for r in rows], tmp / "related.txt")
    related_reads = measure(load, args.warmup, "reads", base, callers, meter)
    mem, writer = rss_mb(server.pid), children_rss_mb(server.pid)

    ref_cmd = [sys.executable, "-m", "bench.reference_app"]
    ref, ref_base = serve(stack, ref_cmd, {"REFERENCE_POSTGRES_URL": url}, tmp)
    sample = ids.read_text().split()[0]
    for b in (base, ref_base):
        r = httpx.get(f"{b}/fhir/Patient/{sample}", headers=deployment.auth())
        if r.status_code != 200 or r.json()["id"] != sample:
            sys.exit(f"{b} does not read Patient/{sample}: {r.status_code} {r.text[:500]}")
    print("the same reads against the reference app", flush=True)
    ref_meter = CpuMeter(ref.pid, postmaster)
    ref_reads = measure(load, args.warmup, "reads", ref_base, ids, ref_meter)
    print("the floor: a constant answer through each app's middleware, no token", flush=True)
    floor = measure(load, args.warmup, "/healthz", base, ids, meter)
    ref_floor = measure(load, args.warmup, "/readyz", ref_base, ids, ref_meter)

    RESULTS.mkdir(exist_ok=True)
    if args.profile:
        profile(meter, load, base, ids, system, callers)

    out = report(
        args.batch,
        ing,
        creates,
        reads,
        related_reads,
        ref_reads,
        (floor, ref_floor),
        mem,
        writer,
        sampler.peak_mb,
    )
    conds = "\n".join(f"- **{k}**: {v}" for k, v in conditions(url, load, args))
    raw = "\n\n".join(
        f"{name}:\n\n```\n{r.raw.strip()}\n```"
        for name, r in (
            ("creates", creates),
            ("reads (server, System token)", reads),
            ("reads (server, RelatedPerson tokens)", related_reads),
            ("reads (reference)", ref_reads),
            ("the floor (server)", floor),
            ("the floor (reference)", ref_floor),
        )
    )
    (RESULTS / "latest.md").write_text(
        f"# Benchmark results\n\n{out}\n\n## Conditions\n\n{conds}\n\n## Raw load generator output\n\n{raw}\n"
    )
    print(f"\n{out}\n\n{conds}\n\nwritten to {(RESULTS / 'latest.md').relative_to(ROOT)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    try:
        if not args.skip_rest:
            with ExitStack() as stack:
                run(args, stack)
        if not args.skip_search:
            with ExitStack() as stack:
                search.run(args, stack, append=not args.skip_rest)
        if not args.skip_epoch:
            with ExitStack() as stack:
                epoch.run(args, stack, append=not (args.skip_rest and args.skip_search))
        if not args.skip_replica:
            with ExitStack() as stack:
                ran_before = not (args.skip_rest and args.skip_search and args.skip_epoch)
                replica.run(args, stack, append=ran_before)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, temporary database removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
