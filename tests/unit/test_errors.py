"""One error system (fhir_server/errors.py, fhir_server/api/errors.py): every stable code renders
on every surface as the table below says, the domain errors know no HTTP status, every code a
raise gives is one its class declares, and no service reaches up into the API layer."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import orjson
import pytest
from graphql import GraphQLError

from fhir_server import errors
from fhir_server.api.errors import (
    INTERNAL,
    PATIENT_CODES,
    RELATIONSHIP_CODES,
    STATUS,
    Surface,
    graphql_error,
    internal,
    rendered,
    status_of,
    surface_of,
)
from fhir_server.errors import AccessDenied, FhirError, InvalidFields

ROOT = Path(__file__).resolve().parents[2]

# stable code: (class, status, FHIR IssueType)
HTTP: dict[str, tuple[type[FhirError], int, str]] = {
    "error": (errors.FhirError, 500, "exception"),
    "bad_request": (errors.BadRequest, 400, "invalid"),
    "invalid_query": (errors.BadRequest, 400, "invalid"),
    "invalid_idempotency_key": (errors.BadRequest, 400, "invalid"),
    "invalid_resource": (errors.InvalidResource, 400, "structure"),
    "validation_error": (errors.InvalidFields, 400, "invalid"),
    "unauthorized": (errors.Unauthorized, 401, "login"),
    "forbidden": (errors.Forbidden, 403, "forbidden"),
    "access_denied": (errors.AccessDenied, 403, "forbidden"),
    "not_found": (errors.NotFound, 404, "not-found"),
    "not_supported": (errors.NotSupported, 404, "not-supported"),
    "method_not_allowed": (errors.MethodNotAllowed, 405, "not-supported"),
    "not_acceptable": (errors.NotAcceptable, 406, "not-supported"),
    "conflict": (errors.Conflict, 409, "conflict"),
    "duplicate_email": (errors.Conflict, 409, "conflict"),
    "duplicate_phone": (errors.Conflict, 409, "conflict"),
    "not_deleted": (errors.Conflict, 409, "conflict"),
    "idempotency_key_reused": (errors.Conflict, 409, "conflict"),
    "gone": (errors.Gone, 410, "deleted"),
    "precondition_failed": (errors.PreconditionFailed, 412, "conflict"),
    "version_mismatch": (errors.PreconditionFailed, 412, "conflict"),
    "precondition_required": (errors.PreconditionRequired, 428, "required"),
    "payload_too_large": (errors.PayloadTooLarge, 413, "too-costly"),
    "unsupported_media_type": (errors.UnsupportedMediaType, 415, "not-supported"),
    "unprocessable": (errors.Unprocessable, 422, "business-rule"),
    "too_many_requests": (errors.TooManyRequests, 429, "throttled"),
    "bad_gateway": (errors.BadGateway, 502, "transient"),
    "gateway_timeout": (errors.GatewayTimeout, 504, "timeout"),
    "unavailable": (errors.Unavailable, 503, "transient"),
    "audit_unavailable": (errors.AuditUnavailable, 503, "transient"),
}
# stable code: (Patient Service API code, relationship API code)
API_CODES: dict[str, tuple[str, str]] = {
    "error": ("error", "error"),
    "bad_request": ("invalid_body", "invalid_request"),
    "invalid_query": ("invalid_query", "invalid_request"),
    "invalid_idempotency_key": ("invalid_idempotency_key", "invalid_request"),
    "invalid_resource": ("invalid_body", "invalid_request"),
    "validation_error": ("validation_error", "invalid_request"),
    "unauthorized": ("unauthorized", "unauthorized"),
    "forbidden": ("forbidden", "not_authorized"),
    "access_denied": ("forbidden", "not_authorized"),
    "not_found": ("not_found", "not_found"),
    "not_supported": ("not_found", "not_found"),
    "method_not_allowed": ("error", "error"),
    "not_acceptable": ("error", "error"),
    "conflict": ("error", "error"),
    "duplicate_email": ("duplicate_email", "error"),
    "duplicate_phone": ("duplicate_phone", "error"),
    "not_deleted": ("not_deleted", "error"),
    "idempotency_key_reused": ("idempotency_key_reused", "error"),
    "gone": ("error", "error"),
    "precondition_failed": ("error", "error"),
    "version_mismatch": ("version_mismatch", "error"),
    "precondition_required": ("precondition_required", "error"),
    "payload_too_large": ("too_large", "error"),
    "unsupported_media_type": ("unsupported_media_type", "unsupported_media_type"),
    "unprocessable": ("error", "error"),
    "too_many_requests": ("error", "error"),
    "bad_gateway": ("error", "error"),
    "gateway_timeout": ("error", "error"),
    "unavailable": ("error", "error"),
    "audit_unavailable": ("error", "error"),
}
# stable code: (class, status, FHIR IssueType, Patient Service API code, relationship API code)
TABLE: dict[str, tuple[type[FhirError], int, str, str, str]] = {
    code: (*HTTP[code], *API_CODES[code]) for code in HTTP
}


def example(code: str, cls: type[FhirError]) -> FhirError:
    """An error of `cls` carrying `code`, with the message `it went wrong`."""
    if cls is AccessDenied:
        return AccessDenied("some_reason", "it went wrong")
    if cls is InvalidFields:
        return InvalidFields("it went wrong", [{"field": "given_name", "issue": "required"}])
    return cls("it went wrong", error_code=None if code == cls.error_code else code)


def test_the_table_names_every_code_and_its_class() -> None:
    assert set(API_CODES) == set(HTTP)
    assert {code: cls for code, (cls, *_) in TABLE.items()} == errors.codes()
    assert set(PATIENT_CODES) == set(RELATIONSHIP_CODES) == set(errors.codes())


@pytest.mark.parametrize("code", sorted(TABLE))
def test_every_code_renders_on_every_surface(code: str) -> None:
    cls, status, issue_type, patient_code, relationship_code = TABLE[code]
    exc = example(code, cls)
    assert exc.error_code == code and str(exc) == "it went wrong"
    assert status_of(exc) == status

    got, media, body, _ = rendered(Surface.FHIR, exc)
    outcome = orjson.loads(body)
    assert (got, media) == (status, "application/fhir+json; charset=utf-8")
    assert outcome["resourceType"] == "OperationOutcome"
    assert {issue["code"] for issue in outcome["issue"]} == {issue_type}

    got, media, body, headers = rendered(Surface.PATIENT_API, exc)
    answer: dict[str, Any] = orjson.loads(body)
    assert (got, media, answer["code"]) == (status, "application/json", patient_code)
    assert set(answer) == (
        {"code", "message", "details"} if cls is InvalidFields else {"code", "message"}
    )
    challenge = {"WWW-Authenticate": 'Bearer realm="fhir"'} if status == 401 else {}
    assert headers == challenge

    got, media, body, headers = rendered(Surface.RELATIONSHIP_API, exc)
    answer = orjson.loads(body)
    assert (got, media) == (status, "application/json")
    assert answer == {"code": relationship_code, "message": "it went wrong"}
    assert headers == challenge

    got, media, body, _ = rendered(Surface.GRAPHQL, exc)  # a refusal before GraphQL runs
    assert (got, media, body) == (status, "text/plain; charset=utf-8", b"it went wrong")
    error = GraphQLError("it went wrong", path=["me"], original_error=exc)
    assert graphql_error(error) == {
        "message": "it went wrong",
        "path": ["me"],
        "extensions": {"code": code},
    }


def test_the_json_apis_keep_their_own_words() -> None:
    reused = errors.Conflict(
        "the Idempotency-Key `k` was used", error_code="idempotency_key_reused"
    )
    assert orjson.loads(rendered(Surface.PATIENT_API, reused)[2])["message"] == (
        "the key was used with another body"
    )
    assert orjson.loads(rendered(Surface.RELATIONSHIP_API, reused)[2])["message"] == str(reused)
    fields = InvalidFields("the patient is not valid", [{"field": "email", "issue": "no"}])
    assert orjson.loads(rendered(Surface.PATIENT_API, fields)[2])["details"] == [
        {"field": "email", "issue": "no"}
    ]
    outcome = orjson.loads(rendered(Surface.FHIR, fields)[2])
    assert outcome["issue"] == [
        {
            "severity": "error",
            "code": "invalid",
            "diagnostics": "`email`: no",
            "expression": ["email"],
        }
    ]


def test_an_unexpected_failure_carries_no_internals() -> None:
    assert set(INTERNAL) == set(Surface)
    assert orjson.loads(internal(Surface.PATIENT_API)[2]) == {
        "code": "internal_error",
        "message": "internal error",
    }
    assert orjson.loads(internal(Surface.RELATIONSHIP_API)[2]) == {
        "code": "relationship_service_failure",
        "message": "relationship service failure",
    }
    assert internal(Surface.GRAPHQL)[:2] == (500, "text/plain; charset=utf-8")
    assert orjson.loads(internal(Surface.FHIR)[2])["issue"][0]["code"] == "exception"


def test_a_graphql_error_that_is_no_domain_error_is_left_as_it_was() -> None:
    error = GraphQLError("Cannot query field 'x'", original_error=None)
    assert graphql_error(error) == {"message": "Cannot query field 'x'"}


def test_paths_belong_to_surfaces() -> None:
    assert surface_of("/api/v1/patients/1:restore") is Surface.PATIENT_API
    assert surface_of("/api/v1/relationships/verify") is Surface.RELATIONSHIP_API
    assert surface_of("/graphql") is Surface.GRAPHQL
    assert surface_of("/fhir/Patient") is Surface.FHIR


def test_domain_errors_know_no_http_status() -> None:
    for cls in errors.codes().values():
        assert not hasattr(cls, "status"), cls
    assert set(STATUS) <= set(errors.codes().values())


def _error_code_literals() -> list[tuple[str, str, str]]:
    """(where, class name, code) of every `error_code="..."` given where an error is made."""
    found = []
    for path in sorted((ROOT / "fhir_server").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                if keyword.arg != "error_code" or not isinstance(keyword.value, ast.Constant):
                    continue
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "?")
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found.append((where, name, str(keyword.value.value)))
    return found


def test_every_code_given_at_a_raise_is_one_its_class_declares() -> None:
    found = _error_code_literals()
    assert len(found) >= 10  # the Patient Service API's, the idempotency keys', the last resort's
    for where, name, code in found:
        cls = getattr(errors, name, None)
        assert isinstance(cls, type) and issubclass(cls, FhirError), where
        assert code in cls.refinements or code == cls.error_code, where


def test_a_refinement_survives_its_move_into_a_bundle_entry() -> None:
    from fhir_server.services.interactions.batch import _entry_error

    moved = _entry_error(3, errors.Conflict("taken", error_code="duplicate_email"))
    assert moved.error_code == "duplicate_email"
    assert moved.issues[0].expression == ("Bundle.entry[3]",)


def _project_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def services_importing_the_api(root: Path) -> list[str]:
    return [
        f"{path.relative_to(root)} imports {name}"
        for path in sorted((root / "fhir_server" / "services").rglob("*.py"))
        for name in _project_imports(path)
        if name == "fhir_server.api" or name.startswith("fhir_server.api.")
    ]


def test_no_service_module_imports_the_api() -> None:
    assert services_importing_the_api(ROOT) == []


def test_the_check_sees_a_service_that_imports_the_api(tmp_path: Path) -> None:
    services = tmp_path / "fhir_server" / "services" / "workflows"
    services.mkdir(parents=True)
    (services / "bad.py").write_text("from fhir_server.api.errors import status_of\n")
    assert services_importing_the_api(tmp_path) == [
        "fhir_server/services/workflows/bad.py imports fhir_server.api.errors"
    ]
