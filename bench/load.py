"""Load generators: `wrk` (preferred) and a keep-alive asyncio fallback when wrk is not installed
(bench/clients.py's hand-written client, closed loop)."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.clients import Http, closed_loop, request
from bench.harness import Cpu

WRK_DIR = Path(__file__).resolve().parent / "wrk"
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True, slots=True)
class LoadResult:
    generator: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx/3xx responses plus socket errors
    raw: str
    cpu: Cpu | None = None  # filled in by the caller that measured it

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True, slots=True)
class Load:
    """How hard to push: `wrk -t{threads} -c{connections} -d{duration}s --latency`."""

    threads: int
    connections: int
    duration: float
    use_wrk: bool

    @property
    def name(self) -> str:
        if self.use_wrk:
            return f"wrk -t{self.threads} -c{self.connections} -d{self.duration:g}s --latency"
        return f"python asyncio keep-alive, {self.connections} connections, {self.duration:g}s"

    def reads(self, base: str, ids_file: Path, token: str | None = None) -> LoadResult:
        """Random reads of the ids in `ids_file`: lines of `id`, sent with `token` if given, or
        of `token id`, each sent with its own token."""
        if self.use_wrk:
            return self._wrk(base, "read.lua", str(ids_file), *([token] if token else []))
        requests = []
        for line in ids_file.read_text().splitlines():
            own, _, id = line.rpartition(" ")
            requests.append(_request("GET", f"/fhir/Patient/{id}", token=own or token))
        return self._python(base, lambda: random.choice(requests))

    def creates(self, base: str, token: str | None = None) -> LoadResult:
        if self.use_wrk:
            return self._wrk(base, "create.lua", *([token] if token else []))
        counter = iter(range(1 << 62))

        def create() -> bytes:
            body = (
                '{"resourceType":"Patient","identifier":[{"system":"http://bench.example.org/id",'
                f'"value":"py-{next(counter)}"}}],"name":[{{"family":"Bench","given":["Py"]}}],'
                '"gender":"female","birthDate":"1990-04-01"}'
            ).encode()
            return _request("POST", "/fhir/Patient", body, token=token)

        return self._python(base, create)

    def fixed(self, base: str, path: str) -> LoadResult:
        """The same GET of `path` over and over, without a token (the floor of a server's
        per-request cost: a constant answer through its whole middleware stack)."""
        if self.use_wrk:
            return self._wrk(base + path, None)
        request = _request("GET", path)
        return self._python(base, lambda: request)

    def _wrk(self, base: str, script: str | None, *args: str) -> LoadResult:
        cmd = ["wrk", f"-t{self.threads}", f"-c{self.connections}", f"-d{self.duration:g}s"]
        cmd += ["--latency", *(["-s", str(WRK_DIR / script)] if script else []), base]
        cmd += ["--", *args] if args else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return parse_wrk(out)

    def _python(self, base: str, make: Callable[[], bytes]) -> LoadResult:
        return asyncio.run(_python_load(base, make, self.duration, self.connections))


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0]


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", value).groups()  # type: ignore[union-attr]
    return float(number) * UNITS_MS[unit]


def parse_wrk(out: str) -> LoadResult:
    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, out, re.MULTILINE)

    done = find(r"^\s*(\d+) requests in ([\d.]+)(\w+),")
    p50, p99 = find(r"^\s*50%\s+(\S+)"), find(r"^\s*99%\s+(\S+)")
    if done is None or p50 is None or p99 is None:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    non2xx = find(r"Non-2xx or 3xx responses: (\d+)")
    sock = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in sock.groups()) if sock else 0
    )
    seconds = _ms(done.group(2) + done.group(3)) / 1000
    return LoadResult("wrk", int(done.group(1)), seconds, _ms(p50[1]), _ms(p99[1]), errors, out)


def _request(method: str, path: str, body: bytes = b"", *, token: str | None = None) -> bytes:
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body:
        headers["Content-Type"] = "application/fhir+json"
    return request(method, path, headers, body)


async def _python_load(
    base: str, make: Callable[[], bytes], duration: float, connections: int
) -> LoadResult:
    """`connections` workers, each on its own keep-alive connection, sending a request as soon as
    its last one has answered, for `duration` seconds."""
    http = Http.to(base, connections)

    async def one() -> int:
        return (await http.send(make())).status

    try:
        r = await closed_loop("python", one, connections, duration)
    finally:
        http.close()
    raw = f"{r.requests} requests in {r.seconds:.2f}s, {r.errors} errors"
    return LoadResult("python", r.requests, r.seconds, r.p50_ms, r.p99_ms, r.errors, raw)
