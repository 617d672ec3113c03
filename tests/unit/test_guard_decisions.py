"""The decisions a guard remembers are shared by every request whose facts come from the same
cache entry: what a caller sends (a break-glass reason, a purpose of use) must not grow them
without bound."""

from __future__ import annotations

from fhir_server.services.access.guard import MAX_DECISIONS
from fhir_server.services.context import server_guard


def test_varying_the_break_glass_reason_does_not_grow_the_remembered_decisions() -> None:
    guard = server_guard()
    for n in range(3 * MAX_DECISIONS):
        guard.reason = f"reason {n} " + "x" * 100
        guard.purpose_of_use = "BTG"
        assert guard.type_decision("read", "Observation").allowed
        assert len(guard._decisions) <= MAX_DECISIONS
    # what it remembers still answers: the same question gives the same decision object
    first = guard.type_decision("read", "Observation")
    assert guard.type_decision("read", "Observation") is first
