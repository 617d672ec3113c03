"""Send generated requests to a running server, judge each one, shrink and report the failures.

The verdict for every request: no 5xx (in the answer or in the server's request log), no dropped
connection, no answer later than 10 s, and no error logged by the server. A failure's signature
is (what went wrong, method, route template, exception type from the server's log), so one bug
hit a hundred times is one line of the report, with the smallest request that still shows it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import psutil
from hypothesis import HealthCheck, Phase, given, seed, settings

from fhir_server.auth.devkeys import dev_token
from fuzz.case import Body, Case, reproducer
from fuzz.strategies import World, cases

SLOW_SECONDS = 10.0
# How long the client waits at most: past SLOW_SECONDS the request has failed already.
CLIENT_TIMEOUT = 30.0
CHUNK = 20
# How long a server that stopped answering gets to recover before the run ends.
RECOVERY = 60.0


@dataclass(frozen=True)
class Signature:
    problem: str  # "5xx", "dropped", "slow", "error-log"
    method: str
    route: str
    exception: str
    status: int | None = None

    def __str__(self) -> str:
        status = f" {self.status}" if self.status is not None else ""
        return f"{self.problem}{status} {self.method} {self.route} {self.exception}".rstrip()


@dataclass
class Outcome:
    status: int | None
    elapsed: float
    error: str | None = None  # the client's exception type when the connection failed
    route: str | None = None
    logged_status: int | None = None
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    raw: bool = False


@dataclass
class Finding:
    signature: Signature
    case: Case
    index: int
    count: int = 1


@dataclass
class Report:
    requests: int
    seconds: float
    seed: int
    findings: dict[Signature, Finding]
    statuses: dict[int, int]
    peak_rss_mb: float | None = None
    base: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.findings)

    def text(self) -> str:
        lines = [
            f"fuzz: {self.requests} requests in {self.seconds:.0f} s, seed {self.seed}; "
            f"statuses {dict(sorted(self.statuses.items()))}"
            + (f"; server peak RSS {self.peak_rss_mb:.0f} MB" if self.peak_rss_mb else "")
        ]
        if not self.findings:
            lines.append("verdict: clean (no 5xx, no dropped connection, no request over 10 s)")
            return "\n".join(lines)
        lines.append(f"verdict: {len(self.findings)} distinct failure signature(s)")
        for n, finding in enumerate(
            sorted(self.findings.values(), key=lambda f: str(f.signature)), 1
        ):
            lines.append("")
            lines.append(
                f"[{n}] {finding.signature}  (x{finding.count}, first at request {finding.index})"
            )
            for line in reproducer(finding.case, self.base).splitlines():
                lines.append(f"    {line}")
        return "\n".join(lines)


class ServerLog:
    """The server's JSON log, read incrementally: what it wrote while one request ran."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def skip(self) -> None:
        self.offset = self.path.stat().st_size

    def read(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        records = []
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records


_FRAME = re.compile(
    r'File "[^"]*/((?:fhir_server|compartments|capability)/[^"]+)", line \d+, in (\S+)'
)


def exception_type(traceback: str) -> str:
    """`psycopg.errors.ProgramLimitExceeded at fhir_server/storage/x.py:insert` from a formatted
    traceback: the type on its last line, and the last frame in the project's own code (no line
    number, so that a signature survives unrelated edits)."""
    lines = traceback.strip().splitlines()
    frames_at = [n for n, line in enumerate(lines) if line.startswith("  File ")]
    # the exception line is the first one at column 0 after the last frame (a database error's
    # message goes on with DETAIL and CONTEXT lines after it)
    after = lines[frames_at[-1] + 1 :] if frames_at else lines
    first = next((line for line in after if line and not line[0].isspace()), "")
    name = first.split(":", 1)[0].strip() or "unknown"
    frames = _FRAME.findall(traceback)
    if frames:
        path, function = frames[-1]
        name += f" at {path}:{function}"
    return name


def tokens(keys_dir: Path, world: World) -> dict[str, str | None]:
    """The Authorization header of every caller the strategies name."""

    def signed(fhir_user: str | None, scope: str, **kw: Any) -> str:
        token = dev_token(
            keys_dir, fhir_user=fhir_user, scope=scope, lifetime_seconds=6 * 3600, **kw
        )
        return f"Bearer {token}"

    patient = f"Patient/{world.adult}"
    mother = f"RelatedPerson/{world.mother}"
    return {
        "System": signed(None, "system/*.cruds"),
        "Patient": signed(patient, "patient/*.cruds", patient=world.adult),
        "RelatedPerson": signed(mother, "user/*.cruds"),
        "Anonymous": None,
        "Garbage": "Bearer abc.def.ghi",
        "Expired": f"Bearer {dev_token(keys_dir, fhir_user=None, scope='system/*.cruds', lifetime_seconds=-3600)}",
        "ScopeNumber": signed(None, "system/*.cruds", extra={"scope": 42}),
        "ScopeList": signed(
            patient, "x", patient=world.adult, extra={"scope": ["patient/*.cruds"]}
        ),
        "FhirUserNumber": signed(None, "user/*.cruds", extra={"fhirUser": 5}),
        "FhirUserObject": signed(None, "user/*.cruds", extra={"fhirUser": {"reference": patient}}),
        "PatientList": signed(patient, "patient/*.cruds", extra={"patient": [world.adult]}),
        "ExpNotNumber": signed(None, "system/*.cruds", extra={"exp": "tomorrow"}),
        "AudNumber": signed(None, "system/*.cruds", extra={"aud": 5}),
        "HugeClaim": signed(None, "system/*.cruds", extra={"x": "a" * 6_000}),
    }


def make_world(client: httpx.Client, system: str) -> World:
    """A child, an adult, the child's mother and a few Observations, made by the System caller."""
    headers = {"Authorization": system, "Content-Type": "application/fhir+json"}

    def create(resource: dict[str, Any]) -> str:
        response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=headers)
        response.raise_for_status()
        created: str = response.json()["id"]
        return created

    child = create(
        {
            "resourceType": "Patient",
            "name": [{"family": "Fuzz", "given": ["Child"]}],
            "birthDate": "2018-04-01",
        }
    )
    adult = create(
        {
            "resourceType": "Patient",
            "name": [{"family": "Fuzz", "given": ["Adult"]}],
            "birthDate": "1980-01-01",
        }
    )
    mother = create(
        {
            "resourceType": "RelatedPerson",
            "patient": {"reference": f"Patient/{child}"},
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
        }
    )
    observations = tuple(
        create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                "subject": {"reference": f"Patient/{who}"},
                "valueQuantity": {"value": 100 + n, "unit": "cm"},
            }
        )
        for n, who in enumerate((child, child, adult))
    )

    def next_query(path: str) -> tuple[tuple[str, str], ...]:
        bundle = client.get(path, params={"_count": "1"}, headers=headers).json()
        for link in bundle.get("link", ()):
            if link.get("relation") == "next":
                return tuple(parse_qsl(urlsplit(link["url"]).query, keep_blank_values=True))
        return ()

    return World(
        child=child,
        adult=adult,
        mother=mother,
        observations=observations,
        search_next=next_query("/fhir/Observation"),
        history_next=next_query("/fhir/Observation/_history"),
    )


class Fuzzer:
    def __init__(
        self,
        base: str,
        log_path: Path,
        keys_dir: Path,
        *,
        server_pid: int | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.base = base.rstrip("/")
        self.log = ServerLog(log_path)
        self.keys_dir = keys_dir
        self.client = httpx.Client(
            base_url=self.base,
            timeout=httpx.Timeout(CLIENT_TIMEOUT, connect=10),
            # shorter than the server's keep-alive, so the server never closes an idle connection
            # under a request (which would look like a dropped connection)
            limits=httpx.Limits(keepalive_expiry=2),
        )
        self.echo = echo or (lambda _: None)
        self.process: Any = None
        self.peak_rss = 0
        self.counter = itertools.count(1)
        if server_pid is not None:
            self.process = psutil.Process(server_pid)
        self.world = make_world(
            self.client, tokens(keys_dir, World("x", "x", "x", ()))["System"] or ""
        )
        self.auth = tokens(keys_dir, self.world)
        self.log.skip()

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------ sending

    def headers(self, case: Case, request_id: str | None = None) -> dict[str, str]:
        headers = dict(case.headers)
        if request_id is not None and not any(k.lower() == "x-request-id" for k in headers):
            headers["X-Request-ID"] = request_id
        auth = self.auth.get(case.role)
        if auth is not None:
            headers.setdefault("Authorization", auth)
        return headers

    def send(self, case: Case) -> Outcome:
        """Send `case`; the outcome carries what the server logged about it, found by the
        request id the fuzzer gives every request (the request's log line comes after its answer)."""
        started = time.monotonic()
        request_id = f"fuzz-{next(self.counter)}"
        if case.transport is not None:
            outcome = self._send_raw(case, request_id)
        else:
            try:
                response = self.client.request(
                    case.method,
                    self.base + case.target(),
                    headers=self.headers(case, request_id),
                    content=case.body_bytes(),
                )
                outcome = Outcome(response.status_code, time.monotonic() - started)
            except httpx.TimeoutException as exc:
                outcome = Outcome(None, time.monotonic() - started, error=type(exc).__name__)
            except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeError, ValueError):
                # httpx will not write it (a URL too long, a header it refuses): at the socket
                outcome = self._send_raw(replace(case, transport="plain"), request_id)
            except httpx.TransportError as exc:
                outcome = Outcome(None, time.monotonic() - started, error=type(exc).__name__)
        own = not any(k.lower() == "x-request-id" for k, _ in case.headers)
        self._attach_log(outcome, request_id if own else None, 0.5 if outcome.raw else 2.0)
        if outcome.status is None or outcome.status >= 500:
            # an unhandled error may be logged once more after the request line
            time.sleep(0.3)
            self._attach_log(outcome, None, 0.0)
        if self.process is not None:
            with contextlib.suppress(psutil.Error):  # gone: the next request says so
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
        return outcome

    def _attach_log(self, outcome: Outcome, request_id: str | None, wait: float) -> None:
        """Read the log up to the request line of `request_id` (or for `wait` seconds, or
        once when there is no id to wait for)."""
        deadline = time.monotonic() + wait
        while True:
            if self._read_log(outcome, request_id) or request_id is None:
                return
            if time.monotonic() >= deadline:
                return
            time.sleep(0.02)

    def _read_log(self, outcome: Outcome, request_id: str | None) -> bool:
        found = False
        for record in self.log.read():
            if request_id is not None and record.get("request_id") == request_id:
                found = True
            if record.get("logger") == "fhir_server.requests" and "status" in record:
                outcome.route = record.get("route")
                outcome.logged_status = record.get("status")
            if "exception" in record:
                outcome.exceptions.append(exception_type(str(record["exception"])))
            if (
                record.get("level") in ("error", "critical")
                and record.get("logger") != "fhir_server.requests"
            ):
                message = str(record.get("message")).strip().splitlines() or [""]
                outcome.log_errors.append(f"{record.get('logger')}: {message[0][:80]}")
        return found

    def _send_raw(self, case: Case, request_id: str) -> Outcome:
        """Hostile HTTP below the client library: truncated or slow bodies, a client that goes
        away mid-body, bytes that are not HTTP, a flood of headers."""
        url = urlsplit(self.base)
        body = case.body_bytes() or b""
        head = [f"{case.method} {case.target()} HTTP/1.1", f"Host: {url.netloc}"]
        head += [f"{k}: {v}" for k, v in self.headers(case, request_id).items()]
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        with socket.create_connection((url.hostname, url.port), timeout=CLIENT_TIMEOUT) as sock:
            try:
                if case.transport == "garbage":
                    sock.sendall(
                        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
                        + bytes(range(256))
                        + b"\r\n\r\n"
                    )
                elif case.transport == "header-flood":
                    flood = [f"X-Flood-{n}: {'y' * 100}" for n in range(2_000)]
                    sock.sendall(("\r\n".join([*head, *flood]) + "\r\n\r\n").encode())
                else:
                    declared = len(body) * (
                        2 if case.transport in ("truncate", "disconnect") else 1
                    )
                    sock.sendall(
                        ("\r\n".join([*head, f"Content-Length: {declared}"]) + "\r\n\r\n").encode(
                            "latin-1", "replace"
                        )
                    )
                    if case.transport == "slow":
                        step = max(1, len(body) // 10)
                        for n in range(0, len(body), step):
                            sock.sendall(body[n : n + step])
                            time.sleep(0.2)
                        started = time.monotonic()
                    elif case.transport == "disconnect":
                        sock.sendall(body[: len(body) // 2])
                        return Outcome(0, 0.0, raw=True)  # closes here; only the log may speak
                    else:
                        sock.sendall(body)
                        if case.transport == "truncate":
                            sock.shutdown(socket.SHUT_WR)
                status = _read_status(sock)
                if status is None and case.transport in ("slow", "plain"):
                    error = "closed without an answer"
            except OSError as exc:
                if case.transport in ("slow", "plain"):
                    error = type(exc).__name__
        # a truncated body, garbage or a header flood may be answered by closing the connection
        if status is None and error is None and case.transport == "plain":
            error = "closed without an answer"
        answered = status if status is not None else (0 if error is None else None)
        return Outcome(answered, time.monotonic() - started, error=error, raw=True)

    # ------------------------------------------------------------ judging

    def signature(self, case: Case, outcome: Outcome) -> Signature | None:
        route = outcome.route or _template(case.path)
        exception = ",".join(sorted(set(outcome.exceptions))) or "-"
        if outcome.status is not None and outcome.status >= 500:
            return Signature("5xx", case.method, route, exception, outcome.status)
        if outcome.logged_status is not None and outcome.logged_status >= 500:
            return Signature("5xx", case.method, route, exception, outcome.logged_status)
        if outcome.status is None and outcome.error in (
            "ReadTimeout",
            "WriteTimeout",
            "PoolTimeout",
        ):
            return Signature("slow", case.method, route, f"no answer in {CLIENT_TIMEOUT:g} s")
        if outcome.status is None:
            return Signature("dropped", case.method, route, f"{outcome.error} {exception}".strip())
        if outcome.elapsed > SLOW_SECONDS:
            return Signature("slow", case.method, route, exception)
        if outcome.exceptions or outcome.log_errors:
            detail = exception if outcome.exceptions else outcome.log_errors[0]
            return Signature("error-log", case.method, route, detail)
        return None

    def alive(self, patience: float = 0.0) -> bool:
        """Whether the server answers its health check, waiting up to `patience` seconds for a
        server that is still busy with an earlier request."""
        deadline = time.monotonic() + patience
        while True:
            try:
                if self.client.get("/healthz", timeout=10).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(2)

    # ------------------------------------------------------------ shrinking

    def reproduces(self, case: Case, signature: Signature) -> bool:
        return self.signature(case, self.send(case)) == signature

    def shrink(self, case: Case, signature: Signature, attempts: int, deadline: float) -> Case:
        """The smallest variant of `case` that still fails with `signature`, greedily."""
        if case.transport is not None:
            return case
        tried = 0
        improved = True
        while improved and tried < attempts and time.monotonic() < deadline:
            improved = False
            for candidate in _smaller(case):
                if tried >= attempts or time.monotonic() >= deadline:
                    break
                tried += 1
                if self.reproduces(candidate, signature):
                    case, improved = candidate, True
                    break
        return case


_ID_SEGMENT = re.compile(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _template(path: str) -> str:
    """A path as a route-like label, for requests the server did not log: ids folded."""
    return _ID_SEGMENT.sub("/{id}", path.split("?")[0])[:80]


def _read_status(sock: socket.socket) -> int | None:
    data = b""
    while b"\r\n" not in data:
        try:
            chunk = sock.recv(4096)
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    parts = data.split(b"\r\n", 1)[0].split()
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return None


def _smaller(case: Case) -> Iterator[Case]:
    """Candidates one step smaller than `case`: fewer parameters, headers, elements, shorter
    strings, a plainer caller."""
    half = len(case.query) // 2
    if half:
        yield replace(case, query=case.query[:half])
        yield replace(case, query=case.query[half:])
    for n in range(len(case.query)):
        yield replace(case, query=case.query[:n] + case.query[n + 1 :])
    for n in range(len(case.headers)):
        yield replace(case, headers=case.headers[:n] + case.headers[n + 1 :])
    if case.role != "System":
        yield replace(case, role="System")
    body = case.body
    if body is None or body.opaque is not None:
        return
    for doc in _smaller_docs(body.doc):
        yield replace(case, body=replace(body, doc=doc))
    if body.encoding != "ascii":
        yield replace(case, body=replace(body, encoding="ascii"))


def _smaller_docs(doc: Any) -> Iterator[Any]:
    if isinstance(doc, dict):
        for key in doc:
            if key != "resourceType":
                yield {k: v for k, v in doc.items() if k != key}
        for key, value in doc.items():
            for smaller in _smaller_docs(value):
                yield {**doc, key: smaller}
    elif isinstance(doc, list):
        if len(doc) > 1:
            yield doc[: len(doc) // 2]
            yield doc[:1]
            for n in range(min(len(doc), 8)):
                yield doc[:n] + doc[n + 1 :]
        for n, value in enumerate(doc[:8]):
            for smaller in _smaller_docs(value):
                yield [*doc[:n], smaller, *doc[n + 1 :]]
    elif isinstance(doc, str) and len(doc) > 16 and not doc.startswith("\x00raw:"):
        yield doc[: len(doc) // 2]


# ------------------------------------------------------------------ the run


@dataclass(frozen=True)
class Config:
    seed: int = 20261103
    requests: int = 2_000
    seconds: float = 240.0
    # Requests and seconds spent shrinking each new signature's example, right when it is found
    # (a server that a later request brings down can no longer help).
    shrink_attempts: int = 60
    shrink_seconds: float = 20.0


def run(fuzzer: Fuzzer, config: Config) -> Report:
    started = time.monotonic()
    deadline = started + config.seconds
    findings: dict[Signature, Finding] = {}
    statuses: dict[int, int] = {}
    sent = 0
    stopped: list[int] = []
    broken: list[Exception] = []
    strategy = cases(fuzzer.world)

    def one(case: Case) -> None:
        nonlocal sent
        if stopped or sent >= config.requests or time.monotonic() >= deadline:
            return
        sent += 1
        outcome = fuzzer.send(case)
        if outcome.status is not None:
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
        signature = fuzzer.signature(case, outcome)
        if signature is None:
            return
        if signature in findings:
            finding = findings[signature]
            finding.count += 1
            if _size(case) < _size(finding.case):
                finding.case = case
        else:
            fuzzer.echo(f"  request {sent}: {signature}")
            if signature.problem != "slow":  # a slow example would stall every attempt
                limit = time.monotonic() + config.shrink_seconds
                case = fuzzer.shrink(case, signature, config.shrink_attempts, limit)
            findings[signature] = Finding(signature, case, sent)
        if signature.problem in ("dropped", "slow") and not fuzzer.alive(patience=RECOVERY):
            down = Signature("server-down", case.method, signature.route, signature.exception)
            findings[down] = Finding(down, case, sent)
            stopped.append(sent)

    chunk_index = 0
    while not stopped and sent < config.requests and time.monotonic() < deadline:

        @settings(
            max_examples=CHUNK,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            derandomize=False,
            print_blob=False,
        )
        @seed(config.seed * 100_003 + chunk_index)
        @given(strategy)
        def chunk(case: Case) -> None:
            try:
                one(case)
            except Exception as exc:  # a bug of the fuzzer itself: stop, say where
                broken.append(exc)
                stopped.append(sent)

        chunk()
        chunk_index += 1
        if chunk_index % 10 == 0:
            fuzzer.echo(
                f"  {sent} requests, {time.monotonic() - started:.0f} s, {len(findings)} signatures"
            )
    if broken:
        raise broken[0]
    if stopped:
        fuzzer.echo("  the server stopped answering: run ended early")
    generation_ended = time.monotonic()
    peak = fuzzer.peak_rss / 2**20 if fuzzer.peak_rss else None
    return Report(
        sent, generation_ended - started, config.seed, findings, statuses, peak, fuzzer.base
    )


def _size(case: Case) -> int:
    data = case.body_bytes() or b""
    return len(data) + len(case.target()) + sum(len(k) + len(v) for k, v in case.headers)


__all__ = ["Body", "Config", "Fuzzer", "Report", "Signature", "run"]
