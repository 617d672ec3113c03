"""`make fuzz`: a seeded, bounded fuzz run against a real `fhir-server serve` (docs/fuzz.md).

Starts a throw-away embedded PostgreSQL and the server on it (or uses `--base` with `--log`),
sends `--requests` generated requests within `--seconds`, shrinks every failure, prints the
deduplicated signatures with a reproducer each, writes the report to build/fuzz/report.txt and
exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

from fuzz.runner import Config, Fuzzer, run

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = Config()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    p.add_argument(
        "--seed",
        type=int,
        default=int(os.environ.get("FUZZ_SEED", DEFAULT.seed)),
        help="the run's seed (env FUZZ_SEED; default %(default)s)",
    )
    p.add_argument(
        "--requests",
        type=int,
        default=int(os.environ.get("FUZZ_REQUESTS", DEFAULT.requests)),
        help="requests to send at most (env FUZZ_REQUESTS; default %(default)s)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("FUZZ_SECONDS", DEFAULT.seconds)),
        help="wall-clock budget for sending, shrinking adds at most a quarter "
        "(env FUZZ_SECONDS; default %(default)s)",
    )
    p.add_argument("--base", help="a running server's origin (e.g. http://127.0.0.1:8080)")
    p.add_argument(
        "--log", type=Path, help="with --base: that server's JSON log file (LOG_LEVEL=info)"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="with --base: the server's FHIR_DATA_DIR, whose development key signs the tokens",
    )
    p.add_argument("--report", type=Path, default=ROOT / "build" / "fuzz" / "report.txt")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # a SIGTERM unwinds like Ctrl-C, so the server and its database are stopped and removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    config = Config(seed=args.seed, requests=args.requests, seconds=args.seconds)
    with ExitStack() as stack:
        if args.base:
            if args.log is None or args.data_dir is None:
                sys.exit("--base needs --log and --data-dir")
            base, log, keys, pid = args.base, args.log, args.data_dir, None
        else:
            from bench.harness import start_server

            # its JSON log at INFO, so every request's route and status are there
            deployment = start_server(stack, log_level="info")
            base, log, keys, pid = (
                deployment.base,
                deployment.log,
                deployment.data_dir,
                deployment.server.pid,
            )
        print(
            f"fuzz: seed {config.seed}, at most {config.requests} requests in {config.seconds:g} s against {base}",
            flush=True,
        )
        fuzzer = Fuzzer(base, log, keys, server_pid=pid, echo=lambda line: print(line, flush=True))
        stack.callback(fuzzer.close)
        report = run(fuzzer, config)
    text = report.text()
    print(text)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text + "\n")
    print(f"report written to {args.report}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
