"""The load generators' HTTP client, and its measurement against httpx (`python -m bench.clients`).

`Http` is a small keep-alive HTTP/1.1 client: requests are bytes built once by `request()`, and a
reply is its status, headers and body, not parsed further. The Python fallback of bench.run
(bench/load.py, when wrk is not installed) and the open-loop generator of bench.loadtest both
send through it, because a load generator shares the machine's cores with the server it measures:
every CPU millisecond it spends per request is one the server does not get.

`python -m bench.clients` checks that this still pays: one deployment (bench/harness.py), Patients
loaded, then the same closed-loop reads (`GET /fhir/Patient/{id}`, ids at random, a System token,
N keep-alive connections, D seconds) from this client and from `httpx.AsyncClient`, in turn,
each in its own process on the same event loop, for several rounds. It reports requests/s and
the client's CPU per request, and their ratios httpx / hand-written (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from importlib.metadata import version

import httpx
import orjson
import psycopg

from bench.harness import RESULTS, CpuMeter, machine, start_server, stop_on_signals
from bench.patients import transaction

# --- the hand-written client ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Http:
    """Keep-alive HTTP/1.1 connections to one server, at most `size` at once; a request waits for
    a free one. Cheaper per request than httpx (measured: `python -m bench.clients`), so the
    generator leaves the cores to the server."""

    # uvicorn closes a connection idle for 5 s (its timeout_keep_alive): one idle for longer than
    # this is not reused, lest the request cross the server's close.
    MAX_IDLE = 2.0

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port = host, port
        self.slots = asyncio.Semaphore(size)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.opened = 0

    @classmethod
    def to(cls, base: str, size: int) -> Http:
        """A client of `http://host:port`."""
        host, port = base.removeprefix("http://").split(":")
        return cls(host, int(port), size)

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.perf_counter() - since < self.MAX_IDLE and not reader.at_eof():
                return reader, writer
            writer.close()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    async def send(self, raw: bytes) -> Reply:
        async with self.slots:
            reader, writer = await self._connection()
            try:
                writer.write(raw)
                reply = await _read_reply(reader)
            except BaseException:
                writer.close()
                raise
            if reply.headers.get("connection", "").lower() == "close":
                writer.close()
            else:
                self.idle.append((reader, writer, time.perf_counter()))
            return reply

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        body = b"".join(parts)
    else:
        body = b""
    return Reply(status, headers, body)


def request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """One HTTP/1.1 request as bytes, for `Http.send`."""
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if body or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def event_loop_factory(uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop when it is installed and wanted, else asyncio's."""
    if uvloop:
        try:
            import uvloop as module

            return module.new_event_loop
        except ImportError:  # pragma: no cover
            pass
    return asyncio.new_event_loop


# --- the measurement: this client against httpx ------------------------------------------------

CLIENTS = ("hand-written", "httpx")


@dataclass(frozen=True, slots=True)
class Round:
    """One closed-loop run of one client, as measured in its own process."""

    client: str
    requests: int
    errors: int
    seconds: float
    cpu_seconds: float  # user + system of the generator process over the run
    p50_ms: float
    p99_ms: float
    server_ms: float = 0.0  # server CPU ms per request, filled in by the main process

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float:
        """The client's CPU milliseconds per request."""
        return 1000 * self.cpu_seconds / self.requests if self.requests else 0.0

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_seconds / self.seconds if self.seconds else 0.0


def drive(
    client: str,
    base: str,
    paths: Sequence[str],
    token: str,
    connections: int,
    duration: float,
    uvloop: bool,
) -> Round:
    """Closed-loop reads of random `paths` with `client` on `connections` keep-alive
    connections for `duration` seconds, in this (generator) process."""
    run = _hand_written if client == "hand-written" else _httpx
    with asyncio.Runner(loop_factory=event_loop_factory(uvloop)) as runner:
        return runner.run(run(base, paths, token, connections, duration))


async def closed_loop(
    client: str, one: Callable[[], Awaitable[int]], connections: int, duration: float
) -> Round:
    """`connections` workers, each sending a request as soon as its last one has answered."""
    latencies: list[float] = []
    errors = 0

    async def worker(deadline: float) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            status = await one()
            latencies.append(time.perf_counter() - sent)
            errors += not 200 <= status < 400

    cpu0, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(start + duration) for _ in range(connections)))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0
        )

    return Round(client, len(latencies), errors, seconds, cpu, pct(0.5), pct(0.99))


async def _hand_written(
    base: str, paths: Sequence[str], token: str, connections: int, duration: float
) -> Round:
    http = Http.to(base, connections)
    headers = {"Accept": "application/fhir+json", "Authorization": f"Bearer {token}"}
    requests = [request("GET", path, headers) for path in paths]

    async def one() -> int:
        return (await http.send(random.choice(requests))).status

    try:
        return await closed_loop("hand-written", one, connections, duration)
    finally:
        http.close()


async def _httpx(
    base: str, paths: Sequence[str], token: str, connections: int, duration: float
) -> Round:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Accept": "application/fhir+json", "Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=30
    ) as client:

        async def one() -> int:
            return (await client.get(random.choice(paths))).status_code

        return await closed_loop("httpx", one, connections, duration)


def _ready() -> int:
    return os.getpid()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=2000, help="Patients to load (%(default)s)")
    p.add_argument(
        "--connections", type=int, default=16, help="keep-alive connections (%(default)s)"
    )
    p.add_argument("--duration", type=float, default=5, help="seconds per run (%(default)s)")
    p.add_argument("--warmup", type=float, default=1, help="seconds before each run (%(default)s)")
    p.add_argument(
        "--rounds", type=int, default=3, help="runs of each client, in turn (%(default)s)"
    )
    p.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of both clients, as in bench.loadtest's generator (%(default)s)",
    )
    return p.parse_args(argv)


def report(rounds: Sequence[Round], args: argparse.Namespace, conditions: str) -> str:
    def median(client: str, figure: Callable[[Round], float]) -> float:
        return statistics.median(figure(r) for r in rounds if r.client == client)

    lines = [
        "| client | req/s | client CPU % of one core | client CPU ms per request "
        "| server CPU ms per request | p50 / p99 ms | errors |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.client} | {r.rps:,.0f} | {r.cpu_percent:.0f} | {r.cpu_ms:.3f} "
            f"| {r.server_ms:.2f} | {r.p50_ms:.2f} / {r.p99_ms:.2f} | {r.errors} |"
        )
    hand, other = CLIENTS
    rps = median(other, lambda r: r.rps) / median(hand, lambda r: r.rps)
    cpu = median(other, lambda r: r.cpu_ms) / median(hand, lambda r: r.cpu_ms)
    worst_hand = max(r.cpu_ms for r in rounds if r.client == hand)
    best_other = min(r.cpu_ms for r in rounds if r.client == other)
    cheaper = worst_hand < best_other
    verdict = (
        "the hand-written client is measurably cheaper (its worst round below httpx's best): keep it"
        if cheaper
        else "the hand-written client is not measurably cheaper: replace it with httpx"
    )
    summary = (
        f"Medians of {args.rounds} rounds, httpx / hand-written: requests/s **{rps:.2f}**, "
        f"client CPU per request **{cpu:.2f}**. Verdict: {verdict}."
    )
    return "\n".join(lines) + f"\n\n{summary}\n\n## Conditions\n\n{conditions}\n"


def run(args: argparse.Namespace, stack: ExitStack) -> None:
    load_before = os.getloadavg()[0]
    print(f"1-minute load average {load_before:.2f}; starting a deployment", flush=True)
    d = start_server(stack)
    rng = random.Random(20240401)
    for start in range(0, args.patients, 1000):
        bundle = transaction(rng, start, min(1000, args.patients - start))
        answer = httpx.post(
            f"{d.base}/fhir",
            content=orjson.dumps(bundle),
            headers={"Content-Type": "application/fhir+json", **d.auth()},
            timeout=600,
        )
        if answer.status_code != 200:
            sys.exit(f"loading Patients answered {answer.status_code}: {answer.text[:2000]}")
    with psycopg.connect(d.url) as conn:
        rows = conn.execute("SELECT id FROM resources WHERE resource_type = 'Patient'").fetchall()
    paths = [f"/fhir/Patient/{row[0]}" for row in rows]
    token = d.token()

    executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    stack.callback(executor.shutdown, cancel_futures=True)
    executor.submit(_ready).result()  # the generator process is up before any clock starts
    uvloop = args.loop == "uvloop"
    rounds: list[Round] = []
    meter = CpuMeter(d.server.pid, d.postmaster)
    for n in range(args.rounds):
        # alternate which client goes first, so a drift in the machine's load hits both alike
        for client in CLIENTS if n % 2 == 0 else CLIENTS[::-1]:
            job = (client, d.base, paths, token, args.connections)
            if args.warmup > 0:
                executor.submit(drive, *job, args.warmup, uvloop).result()
            with meter:
                r = executor.submit(drive, *job, args.duration, uvloop).result()
            server_ms = 10 * meter.result.server / r.rps if r.rps else 0.0
            r = replace(r, server_ms=server_ms)
            rounds.append(r)
            print(
                f"  round {n + 1}, {client}: {r.rps:,.0f} req/s, client CPU {r.cpu_ms:.3f} ms per "
                f"request ({r.cpu_percent:.0f} % of a core), server CPU {server_ms:.2f} ms per "
                f"request, errors {r.errors}",
                flush=True,
            )
    facts = [
        ("machine", f"{machine()}; server, PostgreSQL and client all on it"),
        (
            "machine load",
            f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
            "(other processes share the cores)",
        ),
        ("Python", f"{platform.python_version()}, httpx {version('httpx')}"),
        (
            "load",
            f"GET /fhir/Patient/{{id}} of {len(paths):,} Patients at random, System token, "
            f"closed loop, {args.connections} keep-alive connections, {args.warmup:g} s warm-up "
            f"and {args.duration:g} s measured per run, {args.rounds} rounds of each client in "
            f"turn, each client in its own process on {args.loop}; `fhir-server serve` "
            "(one process, log level warning) on an embedded PostgreSQL",
        ),
    ]
    conditions = "\n".join(f"- **{k}**: {v}" for k, v in facts)
    text = report(rounds, args, conditions)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "clients-latest.md"
    out.write_text(f"# Load generator client: hand-written against httpx\n\n{text}")
    print(f"\n{text}\nwritten to {out}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    try:
        with ExitStack() as stack:
            run(args, stack)
    except KeyboardInterrupt:
        print("\ninterrupted: server stopped, temporary database removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    # Through the imported module, so the generator process (spawned) unpickles `bench.clients`
    # names rather than `__main__` ones.
    from bench import clients

    sys.exit(clients.main())
