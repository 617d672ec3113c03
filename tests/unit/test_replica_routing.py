"""The replica set's routing decision (storage/replicas.py), on sampled positions set by hand: a
replica serves only when it has replayed the primary's position of `max_lag` ago and the
client's token; the reason of each fallback."""

from __future__ import annotations

import asyncio
import time

import pytest

from fhir_server.storage.replicas import ReplicaSet, format_lsn, parse_lsn


def test_lsns_parse_and_format_as_postgresql_writes_them() -> None:
    assert parse_lsn("0/16B3748") == 0x16B3748
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848") or 0) == "16/B374D848"
    for bad in ("", "yesterday", "0/", "/1", "1/2/3", "123456789/0", "0x1/2", "-1/2"):
        assert parse_lsn(bad) is None, bad


def _set(max_lag_ms: int = 100) -> ReplicaSet:
    async def make() -> ReplicaSet:
        return ReplicaSet(
            "postgresql://u@127.0.0.1:1/p",
            ["postgresql://u:secret@127.0.0.1:2/r", "postgresql://u@127.0.0.1:3/r"],
            max_lag_ms=max_lag_ms,
        )

    return asyncio.run(make())


def _history(replicas: ReplicaSet, samples: list[tuple[float, int]]) -> None:
    now = time.monotonic()
    for ago, lsn in samples:
        replicas._times.append(now - ago)
        replicas._lsns.append(lsn)


def test_no_sample_of_the_primary_means_the_primary() -> None:
    replicas = _set()
    replicas.replicas[0].replay = 10**9
    assert replicas.route().replica is None
    assert replicas.route().reason == "lagging"


def test_a_replica_serves_when_it_has_replayed_the_primary_of_max_lag_ago() -> None:
    replicas = _set(max_lag_ms=100)
    # the primary was at 100 half a second ago, 200 at 90 ms ago, 300 now
    _history(replicas, [(0.5, 100), (0.09, 200), (0.0, 300)])
    first, second = replicas.replicas
    first.replay, second.replay = 199, None  # second is down
    # 199 < 200, the first sample within the last 100 ms: a commit before that may be missing
    assert replicas.route().replica is None
    assert replicas.route().reason == "lagging"
    first.replay = 200
    assert replicas.route().replica is first
    assert replicas.route().target == "127.0.0.1:2/r"  # no credentials in the name


def test_the_clients_token_must_be_replayed_too() -> None:
    replicas = _set()
    _history(replicas, [(0.5, 100), (0.05, 200), (0.0, 300)])
    first, second = replicas.replicas
    first.replay, second.replay = 250, 260  # both past 200, the position of max_lag ago
    assert replicas.route(255).replica is second
    route = replicas.route(300)
    assert route.replica is None and route.reason == "token"
    assert replicas.route(None).replica in (first, second)


def test_every_replica_down_is_down() -> None:
    replicas = _set()
    _history(replicas, [(0.0, 300)])
    assert replicas.route().reason == "down"


def test_a_stalled_sampler_sends_reads_to_the_primary() -> None:
    replicas = _set(max_lag_ms=100)
    _history(replicas, [(5.0, 100), (0.2, 100)])  # nothing sampled in the last 100 ms
    replicas.replicas[0].replay = 10**6
    assert replicas.route().replica is None


@pytest.mark.parametrize(("replay", "behind"), [(300, 0), (150, 150), (50, 250)])
def test_lag_in_bytes_and_seconds(replay: int, behind: int) -> None:
    replicas = _set()
    _history(replicas, [(2.0, 100), (1.0, 200), (0.0, 300)])
    replica = replicas.replicas[0]
    replica.replay = replay
    lag = replicas.lag(replica)
    assert lag is not None
    assert lag[0] == behind
    if behind == 0:
        assert lag[1] == 0.0
    else:
        # 150: the primary was last at or below it 2 s ago (at 100); 50: before the history
        assert 1.9 <= lag[1] <= 2.5


def test_the_settings_read_the_replica_list_and_the_max_lag() -> None:
    from fhir_server.settings import Settings

    settings = Settings.from_env(
        {
            "POSTGRES_REPLICA_URLS": "postgresql://a@r1:5432/fhir, postgresql://a@r2/fhir,",
            "FHIR_REPLICA_MAX_LAG_MS": "250",
        }
    )
    assert settings.replica_urls == ("postgresql://a@r1:5432/fhir", "postgresql://a@r2/fhir")
    assert settings.replica_max_lag_ms == 250
    assert Settings.from_env({}).replica_urls == ()
    assert Settings.from_env({}).replica_max_lag_ms == 100
    with pytest.raises(ValueError, match="POSTGRES_REPLICA_URLS"):
        Settings.from_env({"POSTGRES_REPLICA_URLS": "mysql://x/y"})
    with pytest.raises(ValueError, match="FHIR_REPLICA_MAX_LAG_MS"):
        Settings.from_env({"FHIR_REPLICA_MAX_LAG_MS": "0"})
