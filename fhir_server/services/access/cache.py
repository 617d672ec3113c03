"""The facts cache: a user's identities and facts, with the access epoch they were loaded at and
the decisions made from them, reused while they hold (services/access/guard.py's docstring)."""

from __future__ import annotations

import time
from datetime import date, datetime
from typing import Any

from compartments.engine import Decision, Facts, Identity
from compartments.facts import Epoch
from compartments.references import NO_BASES
from fhir_server.search.grants import Grant

# (epoch: the keys read through and their sum, identities, facts, the decisions made from them)
CacheEntry = tuple[
    Epoch, tuple[Identity, ...], Facts, dict[tuple[Any, ...], tuple[Decision, Grant | None]]
]


class FactsCache:
    """Facts by user and UTC day, with the access epoch they were loaded at (see the module's
    docstring). An entry expires at the first instant after its load at which one of its
    periods (RelatedPerson, Consent provisions, CareTeam and participants) starts or ends, so
    the decisions made from it, which depend on nothing else, stay right while it lives; and
    after `ttl_seconds` (`RELATIONSHIP_TTL`) whatever the epoch says. The facts were read under
    `local_bases` (the base URLs whose absolute references count as local): they are part of
    the key."""

    def __init__(self, size: int = 10_000, ttl_seconds: float = 2_592_000) -> None:
        self.size = size
        self.ttl_seconds = ttl_seconds
        self._entries: dict[
            tuple[str, date, frozenset[str]], tuple[float, datetime | None, CacheEntry]
        ] = {}

    def get(
        self, user: str, now: datetime, local_bases: frozenset[str] = NO_BASES
    ) -> CacheEntry | None:
        key = (user, now.date(), local_bases)
        found = self._entries.get(key)
        if found is None:
            return None
        loaded, changes_at, entry = found
        if time.monotonic() - loaded > self.ttl_seconds or (
            changes_at is not None and now >= changes_at
        ):
            del self._entries[key]
            return None
        return entry

    def put(
        self,
        user: str,
        now: datetime,
        entry: CacheEntry,
        changes_at: datetime | None = None,
        local_bases: frozenset[str] = NO_BASES,
    ) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[(user, now.date(), local_bases)] = (time.monotonic(), changes_at, entry)
