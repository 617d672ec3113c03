"""The search benchmark: ingest of a clinical dataset, then single-client search latencies.

Run by `python -m bench.run` after the REST benchmark (`--skip-rest` runs only this part). It
starts its own throw-away embedded PostgreSQL and `fhir-server serve`, loads the dataset of
bench/search_data.py as transaction Bundles (`Prefer: return=minimal`, one at a time), takes the
server's ids from `entry.response.location`, runs VACUUM ANALYZE, and then times eight searches
from one keep-alive client, one request at a time. A non-200 answer, or one that is not a searchset
Bundle, counts as an error and is reported; it does not stop the run.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import quote

import httpx
import orjson
import psycopg

from bench.harness import (
    FHIR_JSON,
    RESULTS,
    ROOT,
    Cpu,
    CpuMeter,
    Deployment,
    conditions,
    rss_mb,
    servers,
    start_server,
    write_section,
)
from bench.search_data import (
    MRN_SYSTEM,
    OBSERVATION_CODES,
    PATIENTS_PER_BUNDLE,
    PRACTITIONERS,
    SEED,
    Dataset,
    PatientFacts,
)
from compartments.engine import CONSENT_SCOPE_SYSTEM

WARMUP = 20  # requests per query before measuring
COUNT = 20  # _count of every query
GOAL_P95_MS = 20.0
GOAL_INGEST = 1500.0


@dataclass(slots=True)
class Loaded:
    """The outcome of the load: per-Bundle seconds (HTTP request only) and what went in."""

    patients: list[PatientFacts]
    counts: Counter[str]
    seconds: list[float]
    entries: list[int]  # per Bundle
    cpu: Cpu  # % of one core while a transaction was in flight

    @property
    def resources(self) -> int:
        return sum(self.counts.values())

    @property
    def rate(self) -> float:
        return self.resources / sum(self.seconds)


@dataclass(slots=True)
class Timed:
    """The measured requests of one query."""

    label: str
    latencies_ms: list[float] = field(default_factory=list)
    entries: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # "404: diagnostics" -> how many
    cpu_ms: Cpu = field(default_factory=lambda: Cpu(0.0, 0.0))  # CPU ms per request

    def pct(self, p: float) -> float:
        """The nearest-rank percentile of the successful requests, in ms (nan if none)."""
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


# Each query: its label for the table, and how to make one request path from the loaded data.
Maker = Callable[[random.Random, Sequence[PatientFacts]], str]


def _q(value: str) -> str:
    return quote(value, safe="/:")


def _some_day(rng: random.Random, p: PatientFacts) -> str:
    return (
        p.first_day + timedelta(days=rng.randint(0, (p.last_day - p.first_day).days))
    ).isoformat()


def _by_mrn(rng: random.Random, ps: Sequence[PatientFacts]) -> str:
    return f"/fhir/Patient?identifier={_q(MRN_SYSTEM + '|' + rng.choice(ps).mrn)}"


def _by_name(rng: random.Random, ps: Sequence[PatientFacts]) -> str:
    return f"/fhir/Patient?name={_q(rng.choice(ps).family[: rng.choice((3, 4))])}"


def _by_birthdate(rng: random.Random, ps: Sequence[PatientFacts]) -> str:
    return f"/fhir/Patient?birthdate=ge{rng.choice(ps).birth_date}"


def _observations_by_code(rng: random.Random, ps: Sequence[PatientFacts]) -> str:
    p = rng.choice(ps)
    code = OBSERVATION_CODES[rng.choice(p.codes)].code  # one the patient has
    return f"/fhir/Observation?patient=Patient/{p.id}&code={_q('http://loinc.org|' + code)}"


def _observations_since(rng: random.Random, ps: Sequence[PatientFacts]) -> str:
    p = rng.choice(ps)
    return f"/fhir/Observation?patient=Patient/{p.id}&date=ge{_some_day(rng, p)}&_sort=-date"


def _appointments(rng: random.Random, ps: Sequence[PatientFacts]) -> str:
    return f"/fhir/Appointment?actor=Patient/{rng.choice(ps).id}"


def _compartment(rng: random.Random, ps: Sequence[PatientFacts]) -> str:
    return f"/fhir/Patient/{rng.choice(ps).id}/*"


def _observations_with_encounters(rng: random.Random, ps: Sequence[PatientFacts]) -> str:
    p = rng.choice(ps)
    return f"/fhir/Observation?patient=Patient/{p.id}&_include=Observation:encounter"


QUERIES: tuple[tuple[str, Maker], ...] = (
    ("Patient?identifier={mrn system}|{mrn}", _by_mrn),
    ("Patient?name={3-4 letter family prefix}", _by_name),
    ("Patient?birthdate=ge{date}", _by_birthdate),
    ("Observation?patient=Patient/{id}&code=http://loinc.org|{code}", _observations_by_code),
    ("Observation?patient=Patient/{id}&date=ge{date}&_sort=-date", _observations_since),
    ("Appointment?actor=Patient/{id}", _appointments),
    ("Patient/{id}/* (compartment)", _compartment),
    (
        "Observation?patient=Patient/{id}&_include=Observation:encounter",
        _observations_with_encounters,
    ),
)


RELATIVES = 200
RELATED_QUERIES: tuple[tuple[str, Maker], ...] = tuple(
    (f"{label}, as the patient's RelatedPerson", make)
    for label, make in QUERIES
    if label.startswith("Observation?patient")
)


def relatives(
    deployment: Deployment, patients: Sequence[PatientFacts]
) -> tuple[list[PatientFacts], Callable[[str], dict[str, str]]]:
    """For `RELATIVES` random patients, a RelatedPerson and the Consent (LAB_RESULTS) that lets
    it see the patient's Observations; the patients, and each path's caller's token header."""
    chosen = random.Random(SEED + 2).sample(list(patients), min(RELATIVES, len(patients)))
    entries: list[dict[str, object]] = []
    for n, p in enumerate(chosen):
        related = f"urn:uuid:00000000-0000-4000-8000-{n:012d}"
        entries.append(
            {
                "fullUrl": related,
                "resource": {
                    "resourceType": "RelatedPerson",
                    "patient": {"reference": f"Patient/{p.id}"},
                    "relationship": [{"coding": [{"code": "SPS"}]}],
                },
                "request": {"method": "POST", "url": "RelatedPerson"},
            }
        )
        entries.append(
            {
                "resource": {
                    "resourceType": "Consent",
                    "status": "active",
                    "scope": {"coding": [{"code": "patient-privacy"}]},
                    "category": [{"coding": [{"code": "INFA"}]}],
                    "patient": {"reference": f"Patient/{p.id}"},
                    "provision": {
                        "type": "permit",
                        "actor": [
                            {
                                "role": {
                                    "coding": [
                                        {
                                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                            "code": "IRCP",
                                        }
                                    ]
                                },
                                "reference": {"reference": related},
                            }
                        ],
                        "code": [
                            {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": "LAB_RESULTS"}]}
                        ],
                    },
                },
                "request": {"method": "POST", "url": "Consent"},
            }
        )
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    r = httpx.post(f"{deployment.base}/fhir", json=bundle, headers=deployment.auth(), timeout=600)
    if r.status_code != 200:
        sys.exit(f"creating the RelatedPersons answered {r.status_code}: {r.text[:2000]}")
    answered = r.json()["entry"]
    tokens = {}
    for n, p in enumerate(chosen):
        related = "/".join(answered[2 * n]["response"]["location"].split("/")[:2])
        tokens[p.id] = {"Authorization": f"Bearer {deployment.token(related, 'user/*.rs')}"}

    def caller(path: str) -> dict[str, str]:
        match = re.search(r"Patient/([^/&?]+)", path)
        assert match is not None, path
        return tokens[match.group(1)]

    return chosen, caller


def ingest(base: str, patients: int, meter: CpuMeter, auth: dict[str, str]) -> Loaded:
    """Load the Practitioners, then the Patients' Bundles; exit if a transaction fails."""
    data = Dataset(SEED)
    headers = {**FHIR_JSON, "Prefer": "return=minimal", **auth}
    seconds: list[float] = []
    entries: list[int] = []
    counts: Counter[str] = Counter()
    facts: list[PatientFacts] = []

    def post(client: httpx.Client, bundle: dict[str, object], what: str) -> list[str]:
        """POST one transaction; return the `Type/id` of each entry, in order."""
        body = orjson.dumps(bundle)
        t0 = time.perf_counter()
        r = client.post("/fhir", content=body, headers=headers)
        seconds.append(time.perf_counter() - t0)
        if r.status_code != 200:
            sys.exit(f"the transaction of {what} answered {r.status_code}: {r.text[:2000]}")
        answered = orjson.loads(r.content)["entry"]
        entries.append(len(answered))
        # "Patient/{id}/_history/1" -> "Patient/{id}"
        return ["/".join(e["response"]["location"].split("/")[:2]) for e in answered]

    wall = time.perf_counter()
    with httpx.Client(base_url=base, timeout=600) as client, meter:
        practitioners = post(client, data.practitioners(PRACTITIONERS), "the Practitioners")
        counts["Practitioner"] += len(practitioners)
        for n, chunk in enumerate(data.bundles(patients, practitioners), start=1):
            refs = post(client, chunk.bundle, f"Bundle {n}")
            for index, p in chunk.patients:
                p.id = refs[index].split("/")[1]
                facts.append(p)
            counts.update(chunk.counts)
            if n % 50 == 0 or len(facts) == patients:
                print(
                    f"  loaded {len(facts):>7,} patients, {sum(counts.values()):>9,} resources, "
                    f"{sum(counts.values()) / sum(seconds):,.0f} resources/s, last transaction {seconds[-1]:.2f}s",
                    flush=True,
                )
    wall = time.perf_counter() - wall
    # The server is idle while the next Bundle is built: CPU % while a transaction is in flight.
    busy = wall / sum(seconds)
    cpu = Cpu(meter.result.server * busy, meter.result.postgres * busy)
    return Loaded(facts, counts, seconds, entries, cpu)


def check_counts(url: str, loaded: Loaded) -> Counter[str]:
    """The resources in the database per type; warns when they differ from what was sent."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT resource_type, count(*) FROM resources WHERE NOT deleted GROUP BY 1"
        ).fetchall()
    stored = Counter({t: int(n) for t, n in rows})
    if stored != loaded.counts:
        print(f"  warning: sent {dict(loaded.counts)} but the database holds {dict(stored)}")
    return stored


def analyze(url: str) -> float:
    """VACUUM ANALYZE, as autovacuum would do soon after a bulk load; returns seconds."""
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
    return time.perf_counter() - t0


def _error(r: httpx.Response) -> str:
    """A short description of a failed answer: status and the first diagnostics."""
    text = r.text
    try:
        body = orjson.loads(r.content)
        issues = body.get("issue") or []
        if issues:
            text = str(issues[0].get("diagnostics") or issues[0].get("code"))
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return f"{r.status_code}: {' '.join(text.split())[:160]}"


def time_query(
    client: httpx.Client,
    label: str,
    make: Maker,
    patients: Sequence[PatientFacts],
    rng: random.Random,
    requests: int,
    meter: CpuMeter,
    caller: Callable[[str], dict[str, str]] | None = None,
) -> Timed:
    """`caller`, if given, names the Authorization header of each request from its path (a
    RelatedPerson's token for the patient the path names); else the client's own is sent."""
    result = Timed(label)

    def one(record: bool) -> None:
        path = make(rng, patients)
        sep = "&" if "?" in path else "?"
        headers = caller(path) if caller else None
        t0 = time.perf_counter()
        try:
            r = client.get(f"{path}{sep}_count={COUNT}", headers=headers)
        except httpx.HTTPError as exc:
            if record:
                result.errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
            return
        elapsed = (time.perf_counter() - t0) * 1000
        if not record:
            return
        bundle = None
        if r.status_code == 200:
            try:
                bundle = orjson.loads(r.content)
            except orjson.JSONDecodeError:
                bundle = None
        if not (
            isinstance(bundle, dict)
            and bundle.get("resourceType") == "Bundle"
            and bundle.get("type") == "searchset"
        ):
            what = _error(r) if r.status_code != 200 else "200 without a searchset Bundle"
            result.errors[what] += 1
            return
        result.latencies_ms.append(elapsed)
        result.entries.append(len(bundle.get("entry") or ()))

    for _ in range(WARMUP):
        one(False)
    t0 = time.perf_counter()
    with meter:
        for _ in range(requests):
            one(True)
    wall = time.perf_counter() - t0
    per = 10 * wall / requests  # % of one core -> ms per request
    result.cpu_ms = Cpu(meter.result.server * per, meter.result.postgres * per)
    return result


def run_queries(
    base: str,
    patients: Sequence[PatientFacts],
    requests: int,
    meter: CpuMeter,
    auth: dict[str, str],
    queries: Sequence[tuple[str, Maker]] = QUERIES,
    caller: Callable[[str], dict[str, str]] | None = None,
) -> list[Timed]:
    rng = random.Random(SEED + 1)
    results = []
    headers = {"Accept": "application/fhir+json", **auth}
    with httpx.Client(base_url=base, timeout=60, headers=headers) as c:
        for label, make in queries:
            t = time_query(c, label, make, patients, rng, requests, meter, caller)
            errors = sum(t.errors.values())
            print(
                f"  {label}: p50 {_ms(t.pct(0.5)) or '-'} ms, p95 {_ms(t.pct(0.95)) or '-'} ms, "
                f"entries {_mean(t.entries) or '-'}, errors {errors}"
                + (f" ({t.errors.most_common(1)[0][0]})" if errors else ""),
                flush=True,
            )
            results.append(t)
    return results


def _mean(values: Sequence[int]) -> str:
    return f"{statistics.fmean(values):.1f}" if values else ""


def _ms(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _met(ok: bool, errors: int = 0) -> str:
    if errors:
        return f"invalid: {errors} errors"
    return "yes" if ok else "**no**"


def report(loaded: Loaded, results: Sequence[Timed], mem: float, peak: float) -> str:
    median = statistics.median(loaded.seconds[1:] or loaded.seconds)  # not the Practitioners'
    per_bundle = statistics.fmean(loaded.entries[1:] or loaded.entries)
    # fmt: off
    ingest = _table(("figure", "value", "goal", "met?"), [
        ("transaction ingest, resources/s", f"{loaded.rate:,.0f}", ">= 1,500/s", _met(loaded.rate >= GOAL_INGEST)),
        (f"one transaction ({PATIENTS_PER_BUNDLE} patients, {per_bundle:,.0f} entries on average), median s", f"{median:.3f}", "", ""),
        ("ingest: CPU % of one core while a transaction runs, server / PostgreSQL", f"{loaded.cpu.server:.0f} / {loaded.cpu.postgres:.0f}", "", ""),
        ("server memory after the searches (RSS), MB", f"{mem:.0f}", "< 250 MB", _met(mem < 250)),
        ("server peak memory during load and searches (RSS, sampled 2/s), MB", f"{peak:.0f}", "", ""),
    ])
    queries = _table(
        ("query (each with _count=20)", "p50 ms", "p95 ms", "entries", "CPU ms per request, server / PostgreSQL", "goal", "met?"),
        [
            (f"`{t.label}`", _ms(t.pct(0.5)), _ms(t.pct(0.95)), _mean(t.entries),
             f"{t.cpu_ms.server:.2f} / {t.cpu_ms.postgres:.2f}", "p95 < 20 ms",
             _met(t.pct(0.95) < GOAL_P95_MS, sum(t.errors.values())))
            for t in results
        ],
    )
    # fmt: on
    errors = [f"- `{t.label}`: {n} x {what}" for t in results for what, n in t.errors.most_common()]
    out = f"{ingest}\n\n{queries}"
    if errors:
        out += "\n\nErrors (answers that were not a 200 searchset Bundle):\n\n" + "\n".join(errors)
    return out


def search_conditions(
    url: str, args: argparse.Namespace, loaded: Loaded, stored: Counter[str], vacuum: float
) -> list[tuple[str, str]]:
    common = [*conditions(url, args.load_before), ("servers", servers())]
    types = ", ".join(f"{t} {n:,}" for t, n in stored.most_common())
    return [
        *common,
        (
            "dataset",
            f"{sum(stored.values()):,} resources (seed {SEED}, bench/search_data.py): {types}",
        ),
        (
            "ingest",
            f"{len(loaded.seconds):,} transaction Bundles posted one at a time with Prefer: return=minimal, "
            f"the {PRACTITIONERS} Practitioners first, then {PATIENTS_PER_BUNDLE} Patients and their resources per Bundle "
            "(urn:uuid: references inside a Bundle); only the HTTP request is timed",
        ),
        (
            "searches",
            f"VACUUM ANALYZE after the load ({vacuum:.1f}s), then one httpx client, one keep-alive connection, "
            f"one request at a time; per query {WARMUP} warm-up and {args.search_requests} measured requests with "
            "parameter values drawn at random from the loaded data; latency from sending the request to "
            "having read the body; entries = matches plus included resources on the first page",
        ),
    ]


def run(args: argparse.Namespace, stack: ExitStack, *, append: bool) -> None:
    """The search benchmark on a fresh database; its section goes to bench/results/latest.md,
    appended to the REST benchmark's when `append`."""
    load_before = os.getloadavg()[0]
    print("search benchmark: a new embedded PostgreSQL and server", flush=True)
    deployment = start_server(stack)
    url, postmaster = deployment.url, deployment.postmaster
    server, base, sampler = deployment.server, deployment.base, deployment.sampler
    meter = CpuMeter(server.pid, postmaster)
    print(
        f"fhir-server serve is ready at {base} (pid {server.pid}); ingest: {args.search_patients:,} "
        f"Patients with their resources, {PATIENTS_PER_BUNDLE} per transaction",
        flush=True,
    )
    system = deployment.auth()
    loaded = ingest(base, args.search_patients, meter, system)
    stored = check_counts(url, loaded)
    print(
        f"  {loaded.resources:,} resources in {sum(loaded.seconds):.1f}s of requests: "
        f"{loaded.rate:,.0f} resources/s; VACUUM ANALYZE ...",
        flush=True,
    )
    vacuum = analyze(url)
    print(f"searches: {args.search_requests} requests per query, one client", flush=True)
    results = run_queries(base, loaded.patients, args.search_requests, meter, system)
    print("the same patient searches as RelatedPersons with a LAB_RESULTS Consent", flush=True)
    related, caller = relatives(deployment, loaded.patients)
    results += run_queries(
        base, related, args.search_requests, meter, system, RELATED_QUERIES, caller
    )
    mem = rss_mb(server.pid)
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / "search-server.log"  # its warnings and tracebacks, to explain errors
    shutil.copyfile(deployment.log, log)

    out = report(loaded, results, mem, sampler.peak_mb)
    ns = argparse.Namespace(**{**vars(args), "load_before": load_before})
    conds = "\n".join(
        f"- **{k}**: {v}" for k, v in search_conditions(url, ns, loaded, stored, vacuum)
    )
    if any(t.errors for t in results):
        out += f"\n\nThe server's log of this run: `{log.relative_to(ROOT)}`."
    write_section("Search benchmark", out, conds, append)
