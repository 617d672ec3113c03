"""Reading the body of a FHIR operation: a `Parameters` resource, as a name -> value map."""

from __future__ import annotations

from typing import Any

from fhir_server.errors import BadRequest


def parameter_values(body: Any, operation: str) -> dict[str, Any]:
    """Each parameter's `value[x]` or `resource` by name (the last one wins), or 400."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest(f"{operation} takes a `Parameters` resource")
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        raise BadRequest(
            "`Parameters.parameter` must be an array", expression=["Parameters.parameter"]
        )
    values: dict[str, Any] = {}
    for index, parameter in enumerate(parameters):
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise BadRequest(
                "a parameter needs a `name`", expression=[f"Parameters.parameter[{index}]"]
            )
        value = parameter.get("resource")
        if value is None:
            value = next((v for k, v in parameter.items() if k.startswith("value")), None)
        values[parameter["name"]] = value
    return values
