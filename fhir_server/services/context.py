"""What every interaction needs besides its arguments: settings, validator, clock, caller."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from compartments.engine import Facts, Identity
from compartments.policy import Policy, Rule
from compartments.references import bases
from fhir_server.services.access.guard import Guard
from fhir_server.settings import Settings
from fhir_server.validation import ResourceValidator


def utc_now() -> datetime:
    return datetime.now(UTC)


SERVER = "System/fhir-server"
_SERVER_POLICY = Policy([Rule("System", "*", "*", "allow", "the server's own work")])


def server_guard(account: str = SERVER) -> Guard:
    """The guard of the server's own work (migrations, reindex, tests of the storage layer), or
    of a caller trusted like it (an API key of the Patient Service API): System, unrestricted."""
    return Guard(
        principal=None,
        account=account,
        identities=(Identity(account),),
        facts=Facts(now=utc_now()),
        policy=_SERVER_POLICY,
    )


_NOBODY_POLICY = Policy([])
_NO_FACTS = Facts(now=datetime(1970, 1, 1, tzinfo=UTC))


def nobody() -> Guard:
    """The guard of a context whose caller is not known yet: no identity, so every decision is
    a denial. A request's context gets its caller's guard from `Interaction.authorized`."""
    return Guard(
        principal=None, account="nobody", identities=(), facts=_NO_FACTS, policy=_NOBODY_POLICY
    )


@dataclass(frozen=True, slots=True)
class Context:
    settings: Settings
    validator: ResourceValidator
    # The FHIR base URL as the client sees it, e.g. "http://127.0.0.1:8080/fhir".
    base_url: str
    clock: Callable[[], datetime] = field(default=utc_now)
    # Who calls and what they may do; every read, search and write asks it. Required, with no
    # default: a context built without one is a TypeError, never a System guard by accident
    # (the server's own work passes `server_guard()`, a request `nobody()` until it is known).
    guard: Guard = field(kw_only=True)

    def as_server(self) -> Context:
        """This context acting as the server itself: for the writes of a workflow that has
        already decided, in the caller's name, that they may happen (audited there)."""
        return replace(self, guard=server_guard())

    @property
    def actor(self) -> str:
        """The acting account, recorded as the creator of what it creates."""
        return self.guard.account

    @property
    def local_bases(self) -> tuple[str, ...]:
        """Base URLs under which an absolute reference points at this server."""
        return (self.base_url, *self.settings.local_bases)

    @property
    def reference_bases(self) -> frozenset[str]:
        """`local_bases` as compartments/references.py compares them (no trailing slash)."""
        return bases(self.local_bases)
