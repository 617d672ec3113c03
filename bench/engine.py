"""The compartment engine's decide() alone: microseconds per call (`python -m bench.engine`).

Measured against a reference in the same run: a call of a function that only builds an empty
Decision, so the ratio shows what the rules cost beyond Python's call and allocation overhead.
"""

from __future__ import annotations

import timeit
from datetime import UTC, date, datetime

from capability.definitions import resource_types
from compartments import engine
from compartments.policy import Policy, default_policy


def family_facts() -> engine.Facts:
    """A mother (RelatedPerson/9) of a child (Patient/c), and a spouse (RelatedPerson/8) of an
    adult (Patient/a) with a LAB_RESULTS Consent: the callers of the engine and search benchmarks."""
    return engine.Facts(
        now=datetime(2026, 11, 23, 12, tzinfo=UTC),
        related_persons={
            "RelatedPerson/9": engine.RelatedPersonFact(
                "RelatedPerson/9", "Patient/c", frozenset({"MTH"})
            ),
            "RelatedPerson/8": engine.RelatedPersonFact(
                "RelatedPerson/8", "Patient/a", frozenset({"SPS"})
            ),
        },
        birth_dates={"Patient/c": date(2015, 1, 1), "Patient/a": date(1980, 1, 1)},
        consents=[
            engine.ConsentFact.scoped(
                "Consent/1", "Patient/a", frozenset({"RelatedPerson/8"}), frozenset({"LAB_RESULTS"})
            )
        ],
    )


def ask(who: str, operation: str, resource_type: str, patient: str | None = None) -> engine.Request:
    """A request of one identity; without a patient, a search."""
    target = engine.Target(frozenset({patient})) if patient else None
    return engine.Request((engine.Identity(who),), operation, resource_type, target)


def main() -> None:
    policy = Policy(default_policy(resource_types()))
    facts = family_facts()
    cases = {
        "parent reads a minor's Observation": ask(
            "RelatedPerson/9", "read", "Observation", "Patient/c"
        ),
        "parent searches Observations": ask("RelatedPerson/9", "search", "Observation"),
        "spouse reads an adult's lab result by Consent": ask(
            "RelatedPerson/8", "read", "Observation", "Patient/a"
        ),
        "write without the related person's reference (denied)": ask(
            "RelatedPerson/9", "create", "CarePlan", "Patient/c"
        ),
    }
    number = 50_000
    reference = (
        min(timeit.repeat(lambda: engine.Decision(allowed=False), number=number, repeat=5)) / number
    )
    print(f"reference (build an empty Decision): {reference * 1e6:.2f} us")
    print("| case | decide() us per call | ratio to reference | goal |")
    print("|---|---|---|---|")
    for name, request in cases.items():
        seconds = (
            min(
                timeit.repeat(
                    lambda r=request: engine.decide(r, policy, facts), number=number, repeat=5
                )
            )
            / number
        )
        print(f"| {name} | {seconds * 1e6:.1f} | {seconds / reference:.1f} | < 20 us |")


if __name__ == "__main__":
    main()
