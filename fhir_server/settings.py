"""Configuration, read once from the environment into an immutable value."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

_PG_TIME = re.compile(r"[0-9]+(?:us|ms|s|min|h|d)?")
_PG_MEMORY = re.compile(r"[0-9]+(?:kB|MB|GB|TB)?")
# A host name (punycode, as browsers send it in `Origin`) or an IPv4 address.
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")


def _pg_setting(
    name: str, get: Callable[[str], str | None], default: str, form: re.Pattern[str]
) -> str:
    """A PostgreSQL time or memory value (`60s`, `8MB`): it goes into each session's options."""
    value = get(name) or default
    if form.fullmatch(value) is None:
        raise ValueError(f"`{name}` must be a PostgreSQL value such as `{default}`, got `{value}`")
    return value


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean, got `{value}`")


def _api_keys(value: str) -> tuple[tuple[str, str], ...]:
    """`name:key,name2:key2` as (name, SHA-256 hex of the key): the keys themselves are not kept."""
    keys = []
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, key = item.strip().partition(":")
        if not sep or not name or not key:
            raise ValueError("`PATIENT_API_KEYS` is a comma-separated list of `name:key`")
        keys.append((name, hashlib.sha256(key.encode()).hexdigest()))
    return tuple(keys)


def _profile(value: str | None) -> str | None:
    if value not in (None, "phase1"):
        raise ValueError(f"`FHIR_PATIENT_PROFILE` may be `phase1` or unset, not `{value}`")
    return value


def _pooler(value: str | None) -> str:
    lowered = (value or "none").strip().lower()
    if lowered not in {"none", "transaction"}:
        raise ValueError(f"`FHIR_DB_POOLER` must be `none` or `transaction`, got `{value}`")
    return lowered


def _log_format(value: str | None) -> str | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered not in {"console", "json"}:
        raise ValueError(f"`LOG_FORMAT` must be `console` or `json` (or unset), got `{value}`")
    return lowered


def web_origin(value: str) -> str | None:
    """The origin (`scheme://host[:port]`, lowercase, default port left out) of an http(s) URL,
    as a browser sends it in `Origin`; None for any other URL (a native app's custom scheme)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in {"http", "https"} or parts.username is not None:
        return None
    if ":" in host:
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            return None
    elif _HOST.fullmatch(host) is None:
        return None
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def _cors_origins(value: str) -> tuple[str, ...]:
    """`FHIR_CORS_ORIGINS`: bare origins only. `*` (and `null`) are refused: the allowed origins
    are a list someone decided on (docs/security.md#browser-apps-cors)."""
    origins = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        origin = web_origin(item)
        if origin is None or urlsplit(item).path not in ("", "/") or "?" in item or "#" in item:
            raise ValueError(
                "`FHIR_CORS_ORIGINS` is a comma-separated list of origins without a path, "
                f"such as `https://app.example.org`, got `{item}`"
            )
        origins.append(origin)
    return tuple(dict.fromkeys(origins))


def _replica_urls(value: str) -> tuple[str, ...]:
    """`POSTGRES_REPLICA_URLS`: comma-separated postgresql:// URLs of streaming replicas."""
    urls = tuple(u.strip() for u in value.split(",") if u.strip())
    for url in urls:
        if not url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ValueError(
                "`POSTGRES_REPLICA_URLS` is a comma-separated list of postgresql:// URLs, "
                f"got an entry starting `{url[:12]}`"
            )
    return urls


def _max_lag(value: int) -> int:
    if not 1 <= value <= 10_000:
        raise ValueError(f"`FHIR_REPLICA_MAX_LAG_MS` must be 1 to 10000, got `{value}`")
    return value


def _approval(value: str) -> str:
    if value not in {"auto", "manual"}:
        raise ValueError(f"`DELEGATION_APPROVAL` must be `auto` or `manual`, got `{value}`")
    return value


def _assurance(value: str) -> str:
    if value not in {"level1", "level2", "level3", "level4"}:
        raise ValueError(
            f"`FAMILY_EXISTING_LINK_ASSURANCE` must be level1 to level4, got `{value}`"
        )
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the server. See docs/configuration.md."""

    postgres_url: str | None = None
    data_dir: Path = Path(".fhir-data")
    host: str = "127.0.0.1"
    port: int = 8080
    # The public base URL of the FHIR API; derived from each request when unset.
    base_url: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    update_create: bool = True
    # Run the migrations when `serve` starts; off where a separate job migrates (docker-compose).
    migrate_on_start: bool = True
    default_count: int = 20
    max_count: int = 1000
    max_bundle_entries: int = 10_000
    # Input limits (docs/limits.md): every JSON body is refused with 400 beyond them.
    max_json_depth: int = 100
    max_string_length: int = 4 * 1024 * 1024
    max_array_length: int = 10_000
    max_search_parameters: int = 100
    max_patch_operations: int = 1_000
    # A patched resource may not grow beyond this (estimated while the operations apply).
    max_patch_result_bytes: int = 16 * 1024 * 1024
    db_pool_size: int = 10
    # Streaming replicas that reads, searches and history may use (docs/scaling.md#read-replicas),
    # and how stale (in milliseconds of the primary's WAL) what they serve may be at most.
    replica_urls: tuple[str, ...] = field(default_factory=tuple)
    replica_max_lag_ms: int = 100
    # `transaction`: POSTGRES_URL is a pooler in transaction mode (PgBouncer): no session state
    # (storage/database.py Database; docs/scaling.md#a-connection-pooler). `none`: a server.
    db_pooler: str = "none"
    # What one PostgreSQL session of the server may take (docs/configuration.md#database-limits):
    # a statement's run time, the memory of each sort or hash, an idle open transaction's life.
    db_statement_timeout: str = "60s"
    db_work_mem: str = "8MB"
    db_idle_in_transaction_timeout: str = "60s"
    # The resources one search page holds at most, in bytes of JSON (at least one resource).
    max_search_bytes: int = 64 * 1024 * 1024
    log_level: str = "info"
    # `console`: one readable line per record; `json`: one JSON object per line; unset: console
    # when stderr is a terminal, JSON otherwise (docs/configuration.md#logs-and-metrics).
    log_format: str | None = None
    # Access control (docs/security.md): the policy file (the shipped default when unset), the
    # age of majority, break-glass for practitioners, and the token role that makes an Admin.
    policy_file: Path | None = None
    majority_age: int = 18
    emergency_bypass: bool = False
    # The AuditEvent store (docs/scaling.md "The audit stream"): monthly partitions made ahead of
    # the current month at start, and the months `fhir-server audit archive` keeps when it is run
    # without `--before` (None: keep every month; nothing is ever archived unasked).
    audit_partitions_ahead: int = 2
    audit_retention_months: int | None = None
    auth_admin_role: str = "fhir-admin"
    # The family workflow (docs/family.md): the identifier system of national ids, the Client
    # Registry looked up by national id, and the assurance of a link to a person already on record.
    national_id_system: str = "http://nationalid.gov.ke"
    client_registry_url: str | None = None
    client_registry_token: str | None = None
    client_registry_timeout_seconds: float = 5.0
    family_existing_link_assurance: str = "level2"
    # Relationship service (docs/relationships.md): how long cached relationship facts may live
    # at most (the access epoch ends them sooner), and whether delegations wait for approval.
    relationship_ttl_seconds: int = 2_592_000
    # How long an `Idempotency-Key` replays its first response.
    idempotency_ttl_seconds: int = 86_400
    # The write kill-switch: every write answers 503 while reads go on (docs/configuration.md).
    writes_disabled: bool = False
    # Per-request metrics and JSON request logs (docs/configuration.md#logs-and-metrics).
    request_observation: bool = True
    # `phase1`: FHIR Patient writes follow the Patient Service's validation rules too.
    patient_profile: str | None = None
    # The Patient Service API's keys (`PATIENT_API_KEYS=name:key,...`), kept as SHA-256 digests.
    patient_api_keys: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    delegation_approval: str = "auto"
    # Extra base URLs under which references count as local (e.g. behind a proxy).
    local_bases: tuple[str, ...] = field(default_factory=tuple)
    # Bearer tokens (docs/configuration.md). Without a JWKS, the development key in the data
    # folder is trusted (`fhir-server dev-token`).
    auth_jwks: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_algorithms: tuple[str, ...] = ("RS256", "ES256")
    auth_leeway_seconds: int = 30
    # The identity provider's OAuth2 endpoints, announced by SMART discovery
    # (`/fhir/.well-known/smart-configuration`) and the CapabilityStatement.
    auth_authorize_url: str | None = None
    auth_token_url: str | None = None
    auth_revocation_url: str | None = None
    auth_introspection_url: str | None = None
    auth_management_url: str | None = None
    # Browser apps (docs/security.md#browser-apps-cors): origins allowed to call the FHIR API and
    # the token endpoints cross-origin, beside those of registered OAuth clients' redirect URIs.
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    # The server's own SMART authorization server (docs/smart.md): on unless `FHIR_OAUTH=off`.
    # Its signing keys: a JWKS file of private keys (the first signs, all are published), or a
    # key made once in the data folder. Lifetimes in seconds; a sign-in is locked for
    # `oauth_lockout_seconds` after `oauth_lockout_attempts` failures in a row.
    oauth_enabled: bool = True
    oauth_keys: Path | None = None
    oauth_access_token_seconds: int = 900
    oauth_refresh_token_seconds: int = 30 * 86_400
    oauth_code_seconds: int = 60
    oauth_launch_seconds: int = 300
    oauth_session_seconds: int = 8 * 3_600
    oauth_lockout_attempts: int = 5
    oauth_lockout_seconds: int = 900
    # The key that signs session cookies and CSRF tokens; made once in the data folder when unset.
    session_secret: str | None = None
    # Sign-in delegated to an upstream OpenID Connect provider: its subject is mapped to a Person
    # by an identifier of `login_oidc_identifier_system` (the issuer when unset).
    login_oidc_issuer: str | None = None
    login_oidc_client_id: str | None = None
    login_oidc_client_secret: str | None = None
    login_oidc_identifier_system: str | None = None

    @property
    def pooled(self) -> bool:
        """Whether the database is reached through a transaction pooler."""
        return self.db_pooler == "transaction"

    @property
    def public_base(self) -> str:
        """The FHIR base URL that tokens are issued by and for (`iss` and `aud`)."""
        return self.base_url or f"http://{self.host}:{self.port}/fhir"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        def num(name: str, default: int) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"`{name}` must be a whole number, got `{raw}`") from None

        base = get("FHIR_BASE_URL")
        return cls(
            postgres_url=get("POSTGRES_URL"),
            data_dir=Path(get("FHIR_DATA_DIR") or defaults.data_dir),
            host=get("HOST") or defaults.host,
            port=num("PORT", defaults.port),
            base_url=base.rstrip("/") if base else None,
            max_body_bytes=num("FHIR_MAX_BODY_BYTES", defaults.max_body_bytes),
            update_create=_bool(get("FHIR_UPDATE_CREATE") or "true"),
            migrate_on_start=_bool(get("FHIR_MIGRATE_ON_START") or "true"),
            default_count=num("FHIR_DEFAULT_COUNT", defaults.default_count),
            max_count=num("FHIR_MAX_COUNT", defaults.max_count),
            max_bundle_entries=num("FHIR_MAX_BUNDLE_ENTRIES", defaults.max_bundle_entries),
            max_json_depth=num("FHIR_MAX_JSON_DEPTH", defaults.max_json_depth),
            max_string_length=num("FHIR_MAX_STRING_LENGTH", defaults.max_string_length),
            max_array_length=num("FHIR_MAX_ARRAY_LENGTH", defaults.max_array_length),
            max_search_parameters=num("FHIR_MAX_SEARCH_PARAMETERS", defaults.max_search_parameters),
            max_patch_operations=num("FHIR_MAX_PATCH_OPERATIONS", defaults.max_patch_operations),
            max_patch_result_bytes=num(
                "FHIR_MAX_PATCH_RESULT_BYTES", defaults.max_patch_result_bytes
            ),
            db_pool_size=num("FHIR_DB_POOL_SIZE", defaults.db_pool_size),
            replica_urls=_replica_urls(get("POSTGRES_REPLICA_URLS") or ""),
            replica_max_lag_ms=_max_lag(
                num("FHIR_REPLICA_MAX_LAG_MS", defaults.replica_max_lag_ms)
            ),
            db_pooler=_pooler(get("FHIR_DB_POOLER")),
            db_statement_timeout=_pg_setting(
                "FHIR_DB_STATEMENT_TIMEOUT", get, defaults.db_statement_timeout, _PG_TIME
            ),
            db_work_mem=_pg_setting("FHIR_DB_WORK_MEM", get, defaults.db_work_mem, _PG_MEMORY),
            db_idle_in_transaction_timeout=_pg_setting(
                "FHIR_DB_IDLE_IN_TRANSACTION_TIMEOUT",
                get,
                defaults.db_idle_in_transaction_timeout,
                _PG_TIME,
            ),
            max_search_bytes=num("FHIR_MAX_SEARCH_BYTES", defaults.max_search_bytes),
            log_level=(get("LOG_LEVEL") or defaults.log_level).lower(),
            log_format=_log_format(get("LOG_FORMAT")),
            policy_file=Path(policy) if (policy := get("FHIR_POLICY_FILE")) else None,
            majority_age=num("MAJORITY_AGE", defaults.majority_age),
            emergency_bypass=_bool(get("EMERGENCY_BYPASS") or "false"),
            audit_partitions_ahead=num(
                "FHIR_AUDIT_PARTITIONS_AHEAD", defaults.audit_partitions_ahead
            ),
            audit_retention_months=(
                num("FHIR_AUDIT_RETENTION_MONTHS", 0)
                if get("FHIR_AUDIT_RETENTION_MONTHS")
                else None
            ),
            auth_admin_role=get("FHIR_AUTH_ADMIN_ROLE") or defaults.auth_admin_role,
            national_id_system=get("NATIONAL_ID_SYSTEM") or defaults.national_id_system,
            client_registry_url=get("CLIENT_REGISTRY_URL"),
            client_registry_token=get("CLIENT_REGISTRY_TOKEN"),
            client_registry_timeout_seconds=float(
                get("CLIENT_REGISTRY_TIMEOUT_SECONDS") or defaults.client_registry_timeout_seconds
            ),
            relationship_ttl_seconds=num("RELATIONSHIP_TTL", defaults.relationship_ttl_seconds),
            writes_disabled=_bool(get("FHIR_WRITES_DISABLED") or "false"),
            request_observation=_bool(get("FHIR_REQUEST_OBSERVATION") or "true"),
            patient_profile=_profile(get("FHIR_PATIENT_PROFILE")),
            idempotency_ttl_seconds=num(
                "IDEMPOTENCY_TTL_SECONDS", defaults.idempotency_ttl_seconds
            ),
            patient_api_keys=_api_keys(get("PATIENT_API_KEYS") or ""),
            delegation_approval=_approval(
                get("DELEGATION_APPROVAL") or defaults.delegation_approval
            ),
            family_existing_link_assurance=_assurance(
                get("FAMILY_EXISTING_LINK_ASSURANCE") or defaults.family_existing_link_assurance
            ),
            local_bases=tuple(
                b.strip().rstrip("/")
                for b in (get("FHIR_LOCAL_BASES") or "").split(",")
                if b.strip()
            ),
            auth_jwks=get("FHIR_AUTH_JWKS"),
            auth_issuer=get("FHIR_AUTH_ISSUER"),
            auth_audience=get("FHIR_AUTH_AUDIENCE"),
            auth_algorithms=tuple(
                a.strip()
                for a in (get("FHIR_AUTH_ALGORITHMS") or ",".join(defaults.auth_algorithms)).split(
                    ","
                )
                if a.strip()
            ),
            auth_leeway_seconds=num("FHIR_AUTH_LEEWAY_SECONDS", defaults.auth_leeway_seconds),
            auth_authorize_url=get("FHIR_AUTH_AUTHORIZE_URL"),
            auth_token_url=get("FHIR_AUTH_TOKEN_URL"),
            auth_revocation_url=get("FHIR_AUTH_REVOCATION_URL"),
            auth_introspection_url=get("FHIR_AUTH_INTROSPECTION_URL"),
            auth_management_url=get("FHIR_AUTH_MANAGEMENT_URL"),
            cors_origins=_cors_origins(get("FHIR_CORS_ORIGINS") or ""),
            oauth_enabled=_bool(get("FHIR_OAUTH") or "on"),
            oauth_keys=Path(keys) if (keys := get("FHIR_OAUTH_KEYS")) else None,
            oauth_access_token_seconds=num(
                "FHIR_OAUTH_ACCESS_TOKEN_SECONDS", defaults.oauth_access_token_seconds
            ),
            oauth_refresh_token_seconds=num(
                "FHIR_OAUTH_REFRESH_TOKEN_SECONDS", defaults.oauth_refresh_token_seconds
            ),
            oauth_code_seconds=num("FHIR_OAUTH_CODE_SECONDS", defaults.oauth_code_seconds),
            oauth_launch_seconds=num("FHIR_OAUTH_LAUNCH_SECONDS", defaults.oauth_launch_seconds),
            oauth_session_seconds=num("FHIR_OAUTH_SESSION_SECONDS", defaults.oauth_session_seconds),
            oauth_lockout_attempts=num(
                "FHIR_OAUTH_LOCKOUT_ATTEMPTS", defaults.oauth_lockout_attempts
            ),
            oauth_lockout_seconds=num("FHIR_OAUTH_LOCKOUT_SECONDS", defaults.oauth_lockout_seconds),
            session_secret=get("FHIR_SESSION_SECRET"),
            login_oidc_issuer=get("FHIR_LOGIN_OIDC_ISSUER"),
            login_oidc_client_id=get("FHIR_LOGIN_OIDC_CLIENT_ID"),
            login_oidc_client_secret=get("FHIR_LOGIN_OIDC_CLIENT_SECRET"),
            login_oidc_identifier_system=get("FHIR_LOGIN_OIDC_IDENTIFIER_SYSTEM"),
        )
