"""Domain errors of the FHIR server, each becoming one OperationOutcome in one place (``api.errors``).

Hierarchy::

    FhirError                      status, and one or more Issues
    +-- BadRequest                 400 a request the server cannot process as sent
    |   +-- InvalidResource        400 a resource that fails R4 validation (every problem listed)
    +-- Unauthorized               401
    +-- Forbidden                  403
    +-- NotFound                   404 unknown resource id
    |   +-- NotSupported           404 unknown resource type or interaction
    +-- MethodNotAllowed           405
    +-- NotAcceptable              406 a response format the server does not produce
    +-- Conflict                   409
    +-- Gone                       410 a deleted resource
    +-- PreconditionFailed         412 a stale If-Match, or a conditional request matching several
    +-- PayloadTooLarge            413
    +-- UnsupportedMediaType       415
    +-- Unprocessable              422 a business rule refused the request

These never subclass FastAPI's HTTPException: the core knows nothing of HTTP frameworks.
Messages are lowercase and name the offending input in backticks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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
    status: int = 500
    code: str = "exception"

    def __init__(
        self,
        diagnostics: str | None = None,
        *,
        issues: Sequence[Issue] | None = None,
        expression: Sequence[str] = (),
        code: str | None = None,
    ) -> None:
        if issues is None:
            issues = [Issue(code or self.code, diagnostics or "", expression=tuple(expression))]
        self.issues: tuple[Issue, ...] = tuple(issues)
        super().__init__(diagnostics or "; ".join(i.diagnostics for i in self.issues))


class BadRequest(FhirError):
    status = 400
    code = "invalid"


class InvalidResource(BadRequest):
    status = 400
    code = "structure"


class Unauthorized(FhirError):
    status = 401
    code = "login"


class Forbidden(FhirError):
    status = 403
    code = "forbidden"


REASON_SYSTEM = "urn:fhir-server:access-reason"


class AccessDenied(Forbidden):
    """The compartment engine or the token's scopes said no: the reason code is in the
    OperationOutcome (`issue.details`), with its short message; never which resource exists."""

    def __init__(
        self, reason: str = "", message: str = "", *, issues: Sequence[Issue] | None = None
    ) -> None:
        if issues is None:
            issues = [Issue("forbidden", message, details=(REASON_SYSTEM, reason, message))]
        super().__init__(issues=issues)
        details = self.issues[0].details if self.issues else None
        self.reason = details[1] if details else reason


class NotFound(FhirError):
    status = 404
    code = "not-found"


class NotSupported(NotFound):
    status = 404
    code = "not-supported"


class MethodNotAllowed(FhirError):
    status = 405
    code = "not-supported"


class NotAcceptable(FhirError):
    status = 406
    code = "not-supported"


class Conflict(FhirError):
    status = 409
    code = "conflict"


class Gone(FhirError):
    status = 410
    code = "deleted"


class PreconditionFailed(FhirError):
    status = 412
    code = "conflict"


class PayloadTooLarge(FhirError):
    status = 413
    code = "too-costly"


class UnsupportedMediaType(FhirError):
    status = 415
    code = "not-supported"


class BadGateway(FhirError):
    """An upstream service (the Client Registry) failed or answered nonsense."""

    status = 502
    code = "transient"


class GatewayTimeout(FhirError):
    """An upstream service (the Client Registry) did not answer in time."""

    status = 504
    code = "timeout"


class Unprocessable(FhirError):
    status = 422
    code = "business-rule"
