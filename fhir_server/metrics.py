"""Prometheus metrics of this process, served at `/metrics`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()

RELATIONSHIP_VERIFICATIONS = Counter(
    "relationship_verifications",
    "Relationship verifications answered, by result (granted, partial, denied)",
    ["result"],
    registry=REGISTRY,
)
DELEGATION_REQUESTS = Counter(
    "delegation_requests",
    "Delegations requested, by the status of the Consent made (active, proposed) or refused",
    ["status"],
    registry=REGISTRY,
)
# The specification names it without `_total`, which the client library adds to every Counter:
# a Gauge that only goes up keeps the name.
RELATIONSHIP_CACHE_HITS = Gauge(
    "relationship_cache_hits",
    "Requests whose relationship facts came from the cache (the access epoch unchanged)",
    registry=REGISTRY,
)
VERIFICATION_TIME = Histogram(
    "verification_response_time_seconds",
    "Time to answer a relationship verification",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
EMERGENCY_ACCESSES = Counter(
    "emergency_accesses",
    "Break-glass (emergency bypass) accesses granted, each also audited as an AuditEvent",
    registry=REGISTRY,
)
AUDIT_BUFFERED = Gauge(
    "audit_events_buffered",
    "Audit events recorded and not yet known to be stored (above 100,000, requests wait)",
    registry=REGISTRY,
)
AUDIT_BOUNDED = Counter(
    "audit_events_bounded",
    "Audit events stored with a value bounded (too long, NUL, unpaired surrogate), and flagged",
    registry=REGISTRY,
)


REQUESTS = Counter(
    "http_requests",
    "HTTP requests, by method, route template and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency, by method and route template",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
DB_POOL = Gauge(
    "db_pool_connections",
    "Database pool figures at the last scrape (max, size, available, requests_waiting)",
    ["figure"],
    registry=REGISTRY,
)
READS_ROUTED = Counter(
    "db_reads_routed",
    "Reads, vreads, searches and history requests, by the server that served their data "
    "(`primary`, or a replica's host:port/database)",
    ["target"],
    registry=REGISTRY,
)
REPLICA_FALLBACKS = Counter(
    "db_replica_fallbacks",
    "Reads that could have used a replica and went to the primary, by reason (down: no replica "
    "answers; lagging: none has replayed what FHIR_REPLICA_MAX_LAG_MS asks; token: none has "
    "replayed the client's X-FHIR-Read-After; failed: the replica failed during the read; facts: "
    "the caller's access facts changed on the primary while the replica read, so the read was "
    "made again on the primary)",
    ["reason"],
    registry=REGISTRY,
)
REPLICA_LAG_BYTES = Gauge(
    "db_replica_lag_bytes",
    "Bytes of WAL a replica has yet to replay, at the last scrape (-1: down)",
    ["replica"],
    registry=REGISTRY,
)
EPOCH_CHECKS = Gauge(
    "db_replica_epoch_checks",
    "Access-epoch checks of replica reads made on the primary since start (`checks`), and the"
    " statements they shared (`statements`), at the last scrape",
    ["what"],
    registry=REGISTRY,
)
REPLICA_LAG_SECONDS = Gauge(
    "db_replica_lag_seconds",
    "Seconds since the primary was at the position a replica has replayed (-1: down)",
    ["replica"],
    registry=REGISTRY,
)


def exposition() -> bytes:
    """The metrics in the Prometheus text format."""
    return generate_latest(REGISTRY)
