"""Domain errors of the server: what went wrong, never how a surface says it.

Every error is a ``FhirError`` (the root keeps the server's name; it is no more FHIR's than the
Patient Service API's). Each carries

- ``error_code``, a stable code (snake_case) that clients and tests may rely on: the class's own,
  or one of the class's ``refinements`` given where it is raised
  (``Conflict("...", error_code="duplicate_email")``); ``codes()`` lists them all;
- one or more ``Issue`` values, each with its FHIR IssueType (``code``): what the FHIR surface shows.

No error carries an HTTP status, and none knows a web framework (never FastAPI's HTTPException):
``fhir_server.api.errors`` decides each one's status and renders it per surface (OperationOutcome
under ``/fhir``, ``{code, message, details}`` under ``/api/v1/patients``, ``{code, message}`` under
``/api/v1/relationships``, GraphQL ``extensions.code``). A new code needs a row in each of its
tables; ``tests/unit/test_errors.py`` fails otherwise.

Hierarchy (``error_code``; refinements in brackets)::

    FhirError                 error               an unexpected failure of the server's own
    +-- BadRequest            bad_request         a request the server cannot process as sent
    |   |                     [invalid_query, invalid_idempotency_key]
    |   +-- InvalidResource   invalid_resource    a resource that fails R4 validation
    |   +-- InvalidFields     validation_error    fields that break the rules, each as {field, issue}
    +-- Unauthorized          unauthorized        no valid credentials
    +-- Forbidden             forbidden           valid credentials that may not do this
    |   +-- AccessDenied      access_denied       the compartment engine or the scopes said no
    +-- NotFound              not_found           unknown resource id
    |   +-- NotSupported      not_supported       unknown resource type or interaction
    +-- MethodNotAllowed      method_not_allowed
    +-- NotAcceptable         not_acceptable      a response format the server does not produce
    +-- Conflict              conflict            [duplicate_email, duplicate_phone, not_deleted,
    |                                              idempotency_key_reused]
    +-- Gone                  gone                a deleted resource
    +-- PreconditionFailed    precondition_failed a stale If-Match, or a conditional request
    |                                             matching several [version_mismatch]
    +-- PreconditionRequired  precondition_required  a write that must name the version it read
    +-- PayloadTooLarge       payload_too_large
    +-- UnsupportedMediaType  unsupported_media_type
    +-- Unprocessable         unprocessable       a business rule refused the request
    +-- TooManyRequests       too_many_requests   too many changes in a short time
    +-- BadGateway            bad_gateway         an upstream service failed or answered nonsense
    +-- GatewayTimeout        gateway_timeout     an upstream service did not answer in time
    +-- Unavailable           unavailable         the server cannot take the request now
        +-- AuditUnavailable  audit_unavailable   the audit trail cannot take the decision now

Messages are lowercase and name the offending input in backticks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue: ``code`` from the R4 IssueType value set."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()
    # A stable reason as (system, code, display): OperationOutcome.issue.details.
    details: tuple[str, str, str] | None = None


class FhirError(Exception):
    # The IssueType of the error's issues unless given.
    code: ClassVar[str] = "exception"
    # The stable code of the class, and the finer ones a raise may give instead.
    error_code: str = "error"
    refinements: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        diagnostics: str | None = None,
        *,
        issues: Sequence[Issue] | None = None,
        expression: Sequence[str] = (),
        code: str | None = None,
        error_code: str | None = None,
    ) -> None:
        if issues is None:
            issues = [Issue(code or self.code, diagnostics or "", expression=tuple(expression))]
        self.issues: tuple[Issue, ...] = tuple(issues)
        if error_code is not None:
            self.error_code = error_code
        super().__init__(diagnostics or "; ".join(i.diagnostics for i in self.issues))


class BadRequest(FhirError):
    code = "invalid"
    error_code = "bad_request"
    refinements = frozenset({"invalid_query", "invalid_idempotency_key"})


class InvalidResource(BadRequest):
    code = "structure"
    error_code = "invalid_resource"
    refinements = frozenset()


class InvalidFields(BadRequest):
    """Fields of a JSON body that break the rules, every problem listed as ``{field, issue}``
    (the Patient Service API's ``details``); on FHIR, one issue each, located at the field."""

    error_code = "validation_error"
    refinements = frozenset()

    def __init__(
        self,
        diagnostics: str | None = None,
        details: Sequence[Mapping[str, str]] = (),
        *,
        issues: Sequence[Issue] | None = None,
        expression: Sequence[str] = (),
        code: str | None = None,
        error_code: str | None = None,
    ) -> None:
        self.details: list[dict[str, str]] = [dict(d) for d in details]
        if issues is None and self.details:
            issues = [
                Issue(code or self.code, f"`{d['field']}`: {d['issue']}", expression=(d["field"],))
                for d in self.details
            ]
        super().__init__(
            diagnostics, issues=issues, expression=expression, code=code, error_code=error_code
        )


class Unauthorized(FhirError):
    code = "login"
    error_code = "unauthorized"


class Forbidden(FhirError):
    code = "forbidden"
    error_code = "forbidden"


REASON_SYSTEM = "urn:fhir-server:access-reason"


class AccessDenied(Forbidden):
    """The compartment engine or the token's scopes said no: the reason code is in the
    OperationOutcome (`issue.details`), with its short message; never which resource exists."""

    error_code = "access_denied"

    def __init__(
        self, reason: str = "", message: str = "", *, issues: Sequence[Issue] | None = None
    ) -> None:
        if issues is None:
            issues = [Issue("forbidden", message, details=(REASON_SYSTEM, reason, message))]
        super().__init__(issues=issues)
        details = self.issues[0].details if self.issues else None
        self.reason = details[1] if details else reason


class NotFound(FhirError):
    code = "not-found"
    error_code = "not_found"


class NotSupported(NotFound):
    code = "not-supported"
    error_code = "not_supported"


class MethodNotAllowed(FhirError):
    code = "not-supported"
    error_code = "method_not_allowed"


class NotAcceptable(FhirError):
    code = "not-supported"
    error_code = "not_acceptable"


class Conflict(FhirError):
    code = "conflict"
    error_code = "conflict"
    refinements = frozenset(
        {"duplicate_email", "duplicate_phone", "not_deleted", "idempotency_key_reused"}
    )


class Gone(FhirError):
    code = "deleted"
    error_code = "gone"


class PreconditionFailed(FhirError):
    code = "conflict"
    error_code = "precondition_failed"
    refinements = frozenset({"version_mismatch"})


class PreconditionRequired(FhirError):
    """A write that must say which version it replaces (`If-Match`) and did not."""

    code = "required"
    error_code = "precondition_required"


class PayloadTooLarge(FhirError):
    code = "too-costly"
    error_code = "payload_too_large"


class UnsupportedMediaType(FhirError):
    code = "not-supported"
    error_code = "unsupported_media_type"


class Unprocessable(FhirError):
    code = "business-rule"
    error_code = "unprocessable"


class BadGateway(FhirError):
    """An upstream service (the Client Registry) failed or answered nonsense."""

    code = "transient"
    error_code = "bad_gateway"


class GatewayTimeout(FhirError):
    """An upstream service (the Client Registry) did not answer in time."""

    code = "timeout"
    error_code = "gateway_timeout"


class TooManyRequests(FhirError):
    """Too many changes by one person in a short time (the account pages' rate limit)."""

    code = "throttled"
    error_code = "too_many_requests"


class Unavailable(FhirError):
    """The server cannot take the request now (writes switched off for maintenance)."""

    code = "transient"
    error_code = "unavailable"


class AuditUnavailable(Unavailable):
    """The audit trail cannot take the decision now, so the request is not answered."""

    error_code = "audit_unavailable"


def codes() -> dict[str, type[FhirError]]:
    """Every stable code, with the class whose instances carry it."""
    found: dict[str, type[FhirError]] = {}
    pending: list[type[FhirError]] = [FhirError]
    while pending:
        cls = pending.pop(0)
        for code in (cls.error_code, *sorted(cls.refinements)):
            found.setdefault(code, cls)
        pending.extend(cls.__subclasses__())
    return found
