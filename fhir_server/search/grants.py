"""What a caller may see, as values (DESIGN.md 5.5): the `Grant` of each resource type.

The services compute them before storage is called (`Guard.grants(operation, types)`, in
services/access/guard.py) and hand them down: the search planner and the repository
(fhir_server/storage/) turn them into SQL and never ask the Guard anything. `Grants` maps a type
to its Grant, or to None for a type the caller may see nothing of; a statement that needs a type
the mapping does not hold is refused (LookupError: a caller that did not compute what the planner
needs, never a type shown). `Everything` and `InCompartments` are the fixed mappings of the
server's own work and of tests.

A leaf of `search/`: imports nothing of storage or services (tests/unit/test_layers.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from fhir_server.search.query import Criterion


@dataclass(frozen=True, slots=True)
class Grant:
    """Which rows of one resource type the caller may see (DESIGN.md 5.5): everything, or those in
    any of `compartments`, created by one of `creators` or admitted by one of `parts`; then, if
    set, only those also in the `within` compartment (a `patient/` scope's launch context) and
    matching one of `criteria` (granular scopes such as `Observation.rs?category=laboratory`,
    each a conjunction)."""

    everything: bool = False
    compartments: frozenset[str] = frozenset()
    creators: frozenset[str] = frozenset()
    parts: tuple[GrantPart, ...] = ()
    within: str | None = None
    criteria: tuple[tuple[Criterion, ...], ...] = ()

    @property
    def unrestricted(self) -> bool:
        return self.everything and self.within is None and not self.criteria


@dataclass(frozen=True, slots=True, order=True)
class GrantPart:
    """The rows of a compartment a Consent opens: all but `ids` (`every`), or only `ids`; and
    when `where` is set (a Consent's lab results: `category=...|laboratory`), only those that
    also match `criteria`, that search parsed (every caller's filter, not only a token's)."""

    compartment: str
    every: bool
    ids: tuple[str, ...] = ()
    where: tuple[tuple[str, str], ...] = ()
    criteria: tuple[Criterion, ...] = field(default=(), compare=False)


UNRESTRICTED = Grant(everything=True)

# resource type -> its Grant, None (or absent) when the caller may see nothing of it
Grants: TypeAlias = Mapping[str, Grant | None]


class _Fixed(Mapping[str, Grant | None]):
    """The same grant for every resource type (iterates over none: it holds every type)."""

    __slots__ = ()

    def fixed(self) -> Grant | None:
        raise NotImplementedError

    def __getitem__(self, resource_type: str) -> Grant | None:
        return self.fixed()

    def __contains__(self, resource_type: object) -> bool:
        return isinstance(resource_type, str)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        return True  # a mapping that holds every type is never an empty one


class Everything(_Fixed):
    """No restriction: for System and Admin callers, and for the server's own work."""

    __slots__ = ()

    def fixed(self) -> Grant | None:
        return UNRESTRICTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Everything)

    def __hash__(self) -> int:
        return hash(Everything)

    def __repr__(self) -> str:
        return "Everything()"


class InCompartments(_Fixed):
    """The same grant for every type: resources in these compartments or created by `creator`."""

    __slots__ = ("_grant", "compartments", "creator")

    def __init__(self, compartments: frozenset[str], creator: str | None = None) -> None:
        self.compartments = compartments
        self.creator = creator
        creators = frozenset({creator}) if creator else frozenset()
        self._grant = Grant(compartments=compartments, creators=creators)

    def fixed(self) -> Grant | None:
        return self._grant

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InCompartments) and (self.compartments, self.creator) == (
            other.compartments,
            other.creator,
        )

    def __hash__(self) -> int:
        return hash((self.compartments, self.creator))

    def __repr__(self) -> str:
        return f"InCompartments({self.compartments!r}, {self.creator!r})"
