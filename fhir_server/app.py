"""The ASGI application: create_app(settings, database_url)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

from fastapi import FastAPI

import fhir_server.tracing as tracing
import fhir_server.web as web
from capability.definitions import resource_types
from compartments.policy import Policy, PolicyError, Rule, default_policy, load_policy
from fhir_server.api import (
    errors,
    fhir,
    graphql,
    methods,
    ops,
    patient_service,
    relationships,
    smart,
)
from fhir_server.api.cors import Cors
from fhir_server.api.killswitch import WritesDisabled
from fhir_server.api.lastresort import LastResort
from fhir_server.api.observability import RequestObservation
from fhir_server.api.routing import ReadAfterHeader
from fhir_server.api.runtime import Runtime
from fhir_server.audit import spool
from fhir_server.audit.trail import AuditTrail
from fhir_server.auth import issuer
from fhir_server.auth.devkeys import DEV_AUDIENCE, DEV_ISSUER, ensure_dev_key
from fhir_server.auth.tokens import TokenSettings, TokenVerifier, Verifiers
from fhir_server.clients.registry import ClientRegistry, RegistrySettings
from fhir_server.oauth import authorize
from fhir_server.oauth import introspection as oauth_introspection
from fhir_server.oauth import launch as oauth_launch
from fhir_server.oauth import register as oauth_register
from fhir_server.oauth import token as oauth_token
from fhir_server.oauth.origins import ClientOrigins
from fhir_server.services.access.cache import FactsCache
from fhir_server.services.context import Context, server_guard, utc_now
from fhir_server.services.formats.limits import InputLimits
from fhir_server.services.workflows.audit_store import make_partitions
from fhir_server.settings import Settings
from fhir_server.storage import idempotency
from fhir_server.storage.database import Database, libpq_url, session_limits
from fhir_server.storage.replicas import ReplicaSet
from fhir_server.validation import ResourceValidator
from fhir_server.web import account, session, signin, upstream

log = logging.getLogger(__name__)


def token_settings(settings: Settings, *, warn: bool = True) -> TokenSettings:
    """The identity provider's keys, issuer and audience; without `FHIR_AUTH_JWKS`, the local
    development key of the data folder (`fhir-server dev-token`), with a warning unless `warn`
    is false (a check before the start, which warns itself)."""
    if settings.auth_jwks is None:
        if warn:
            log.warning(
                "FHIR_AUTH_JWKS is not set: trusting the development signing key in %s/auth "
                "(fhir-server dev-token); never in production",
                settings.data_dir,
            )
        return TokenSettings(
            issuer=DEV_ISSUER,
            audience=DEV_AUDIENCE,
            jwks=str(ensure_dev_key(settings.data_dir)),
            algorithms=("ES256",),
            leeway_seconds=settings.auth_leeway_seconds,
        )
    if not settings.auth_issuer or not settings.auth_audience:
        raise ValueError("`FHIR_AUTH_JWKS` needs `FHIR_AUTH_ISSUER` and `FHIR_AUTH_AUDIENCE` too")
    return TokenSettings(
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        jwks=settings.auth_jwks,
        algorithms=settings.auth_algorithms,
        leeway_seconds=settings.auth_leeway_seconds,
    )


def server_keys(settings: Settings) -> issuer.ServerKeys | None:
    """The authorization server's signing keys, made on first start (None when it is off)."""
    if not settings.oauth_enabled:
        return None
    return issuer.ServerKeys.load(issuer.keys_path(settings.data_dir, settings.oauth_keys))


def verifiers(settings: Settings, keys: issuer.ServerKeys | None) -> Verifiers:
    """The identity provider's (or the development key's) verifier, and this server's own:
    its tokens are checked by the same code as any other, against its published keys."""
    trusted = [TokenVerifier(token_settings(settings))]
    if keys is not None:
        jwks = keys.write_public(settings.data_dir / "auth" / issuer.PUBLIC_FILE)
        own = TokenSettings(
            issuer=settings.public_base,
            audience=settings.public_base,
            jwks=str(jwks),
            algorithms=(issuer.ALGORITHM,),
            leeway_seconds=settings.auth_leeway_seconds,
        )
        trusted.append(TokenVerifier(own))
    return Verifiers(trusted)


def load_policy_file(path: Path | None) -> tuple[Rule, ...]:
    """The policy of `FHIR_POLICY_FILE`, or the shipped default; a bad file stops the server
    with a message naming the rule and the field."""
    if path is None:
        return default_policy(resource_types())
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PolicyError(f"cannot read the policy file `{path}`: {exc}") from None
    try:
        return load_policy(document, resource_types())
    except PolicyError as exc:
        raise PolicyError(f"the policy file `{path}` is not valid: {exc}") from None


async def _purge_idempotency_keys(
    db: Database, clock: Callable[[], datetime], every_seconds: float = 600
) -> None:
    """Forget expired idempotency keys now and then (a reused expired key is replaced anyway)."""
    while True:
        try:
            async with db.connection() as conn:
                await idempotency.purge(conn, clock())
        except Exception:
            log.exception("purging expired idempotency keys failed")
        await asyncio.sleep(every_seconds)


def cors_origins(settings: Settings, app: FastAPI) -> Callable[[], frozenset[str]]:
    """The origins browser apps may call from (docs/security.md#browser-apps-cors), asked per
    request with an `Origin`: `FHIR_CORS_ORIGINS`, plus the origins of registered OAuth clients'
    redirect URIs (`oauth/origins.py`, kept in memory: this is called per request)."""
    configured = frozenset(settings.cors_origins)
    registered: ClientOrigins = app.state.client_origins

    def origins() -> frozenset[str]:
        return configured | registered.current

    return origins


def create_app(
    settings: Settings, database_url: str, *, clock: Callable[[], datetime] = utc_now
) -> FastAPI:
    """The application; `clock` is its one clock (every request's `Context.clock`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.configure()  # before the pool: its connections trace their statements
        keys = server_keys(settings)
        verifier = verifiers(settings, keys)
        policy = Policy(load_policy_file(settings.policy_file))
        limits = session_limits(
            settings.db_statement_timeout,
            settings.db_work_mem,
            settings.db_idle_in_transaction_timeout,
        )
        db = Database(
            database_url,
            pool_size=settings.db_pool_size,
            limits=limits,
            pooled=settings.pooled,
        )
        await db.open()
        replicas = None
        if settings.replica_urls:
            replicas = ReplicaSet(
                database_url,
                settings.replica_urls,
                max_lag_ms=settings.replica_max_lag_ms,
                pool_size=settings.db_pool_size,
                limits=limits,
                pooled=settings.pooled,
            )
            await replicas.open()
        try:
            # this month's and the next ones' AuditEvent partitions (until they exist, events
            # wait in the DEFAULT partition: nothing is refused)
            await make_partitions(db, clock(), settings.audit_partitions_ahead)
        except Exception:
            log.exception("the AuditEvent partitions ahead could not be made")
        validator = ResourceValidator()
        server = Context(
            settings=settings, validator=validator, base_url="", clock=clock, guard=server_guard()
        )
        audit = AuditTrail(
            db,
            server,
            database_url=libpq_url(database_url),
            spool_dir=spool.directory(settings.data_dir, libpq_url(database_url)),
        )
        registry = (
            ClientRegistry(
                RegistrySettings(
                    url=settings.client_registry_url,
                    token=settings.client_registry_token,
                    timeout_seconds=settings.client_registry_timeout_seconds,
                )
            )
            if settings.client_registry_url
            else None
        )
        app.state.runtime = Runtime(
            settings,
            db,
            validator,
            verifier,
            policy,
            audit,
            FactsCache(ttl_seconds=settings.relationship_ttl_seconds),
            registry,
            InputLimits.of(settings),
            clock,
            keys,
            replicas,
        )
        audit.start()
        purger = asyncio.create_task(_purge_idempotency_keys(db, clock))
        origins: ClientOrigins = app.state.client_origins
        refresher = None
        if settings.oauth_enabled:
            refresher = asyncio.create_task(origins.keep_fresh(db))
        # What is loaded by now (R4 schema, search parameters, policy) lives as long as the
        # process: keep it out of the cyclic garbage collector, whose full passes over it
        # otherwise stall requests for tens of milliseconds.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            purger.cancel()
            if refresher is not None:
                refresher.cancel()
            await audit.close()
            if registry is not None:
                await registry.close()
            if replicas is not None:
                await replicas.close()
            await db.close()
            tracing.shutdown()

    app = FastAPI(
        title="FHIR R4 server",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # FastAPI's own OpenTelemetry spans record `url.path` and `url.query`, and a FHIR
        # search's query is PHI (`Patient?family=...&birthdate=...`): the server's spans are
        # fhir_server/tracing.py's, which carry the route template only.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.client_origins = ClientOrigins()
    errors.install(app)
    fhir.install(app)
    ops.install(app)
    smart.install(app)
    if settings.oauth_enabled:
        oauth_token.install(app)
        oauth_introspection.install(app)
        oauth_register.install(app)
        oauth_launch.install(app)
    session.install(app, settings)
    upstream.install(app, settings, clock)
    signin.install(app)
    if settings.oauth_enabled:
        authorize.install(app, settings)
    relationships.install(app)
    graphql.install(app, settings)
    web.install(app)
    account.install(app)
    # innermost: it answers what escaped every handler, so the outer ones see a status
    app.add_middleware(
        LastResort,
        max_body_bytes=settings.max_body_bytes,
        max_parameters=settings.max_search_parameters,
    )
    if settings.replica_urls:
        # outside LastResort: the write's response is final when it passes by
        app.add_middleware(ReadAfterHeader)
    if settings.writes_disabled:
        app.add_middleware(WritesDisabled)
    # Outside the kill-switch (a browser app must be able to read its 503) and inside the
    # observation (preflights are counted and logged like any request).
    app.add_middleware(Cors, origins=cors_origins(settings, app))
    if settings.request_observation:
        app.add_middleware(RequestObservation)  # outermost: it also sees the kill-switch's answers
    patient_service.install(app)
    # the last route is in: every GET route takes HEAD too (RFC 9110 9.3.2; a 405's `Allow` is
    # read from the same table, api/methods.py)
    methods.head_where_get(app.router.routes)
    return app
