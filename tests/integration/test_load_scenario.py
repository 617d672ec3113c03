"""`make load` keeps working: its quick mode runs the whole scenario (seed, baseline, one step of
the rate search) against a real server and reports every route. No latency is asserted here:
benchmarks report (docs/load.md); this checks that the scenario runs and answers correctly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROUTES = (
    "GET /api/v1/patients/{patient_id}",
    "GET /api/v1/patients?family_name=",
    "POST /api/v1/patients",
    "PUT /api/v1/patients/{patient_id}",
    "GET /fhir/Patient/{id}",
    "GET /fhir/Patient?family=",
    "POST /fhir/Patient",
    "PUT /fhir/Patient/{id}",
)


def test_the_quick_load_scenario_runs_every_route_without_errors(tmp_path: Path) -> None:
    report = tmp_path / "load.md"
    run = subprocess.run(
        [sys.executable, "-m", "bench.loadtest", "--quick", "--output", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    text = report.read_text()
    assert "Phase 1: baseline" in text and "Phase 2: the highest sustained rate" in text
    # Whether a rate met the latency targets depends on the machine's load: the report states it
    # either way, and this test asserts only that it does.
    assert "highest rate meeting the targets" in text or "no rate tried met the targets" in text
    baseline = text.split("Phase 1: baseline", 1)[1].split("Phase 2", 1)[0]
    for route in ROUTES:
        rows = [line for line in baseline.splitlines() if line.startswith(f"| `{route}` |")]
        assert rows, route
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert int(cells[1]) > 0, (route, "no request sent")
        assert cells[2] == "0", (route, "errors", rows[0])
