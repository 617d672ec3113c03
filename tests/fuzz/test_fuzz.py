"""The short fuzz run of `make test` (the full one is `make fuzz`, docs/fuzz.md).

A real `fhir-server serve` process on a fresh database of the test PostgreSQL, its JSON log at
INFO in a file; a few hundred generated requests (resources from the R4 JSON Schema, valid and
mutated; searches over the R4 SearchParameters; JSON Patches; Bundles; hostile HTTP; the other
APIs) as System, Patient, RelatedPerson and hostile callers. The verdict: no 5xx, no dropped
connection, no request over 10 s, no error in the server's log; a failure prints every distinct
signature with a shrunk reproducer.
"""

from __future__ import annotations

import os
from pathlib import Path

from fhir_server.storage.database import migrate
from fuzz.runner import Config, Fuzzer, run
from tests.support.servers import server_processes
from tests.support.tokens import KEYS_DIR

# Tens of seconds: the run stops at whichever bound it reaches first.
SHORT = Config(
    seed=int(os.environ.get("FUZZ_SEED", Config.seed)),
    requests=300,
    seconds=40,
    shrink_attempts=20,
    shrink_seconds=5,
)


def test_a_short_fuzz_run_finds_no_server_error(empty_database: str, tmp_path: Path) -> None:
    migrate(empty_database)
    with server_processes(empty_database, tmp_path, env={"LOG_LEVEL": "info"}) as [base]:
        fuzzer = Fuzzer(base, tmp_path / "server-0.log", KEYS_DIR)
        try:
            report = run(fuzzer, SHORT)
        finally:
            fuzzer.close()
    assert report.requests > 0
    assert not report.failed, report.text()
