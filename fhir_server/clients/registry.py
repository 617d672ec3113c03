"""The Client Registry (master patient index): an upstream FHIR server where people are looked up
by national id before a new Patient is created here.

A real HTTP client (httpx) with a timeout per request and bounded retries of failures that may
pass (connection errors, 502/503/504); what still fails becomes a 502 (the registry failed) or a
504 (it did not answer in time) OperationOutcome, before anything is written.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx
from opentelemetry.trace import SpanKind

import fhir_server.tracing as tracing
from fhir_server.errors import BadGateway, GatewayTimeout

log = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    url: str  # the registry's FHIR base, e.g. https://cr.example.org/fhir
    token: str | None = None  # a bearer token for the registry (CLIENT_REGISTRY_TOKEN)
    timeout_seconds: float = 5.0
    retries: int = 2
    backoff_seconds: float = 0.2


class ClientRegistry:
    def __init__(
        self, settings: RegistrySettings, transport: httpx.AsyncBaseTransport | None = None
    ):
        self.settings = settings
        headers = {"Accept": "application/fhir+json"}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self._client = httpx.AsyncClient(
            base_url=settings.url.rstrip("/"),
            headers=headers,
            timeout=settings.timeout_seconds,
            transport=transport,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def find_patient(self, system: str, value: str) -> dict[str, Any] | None:
        """The registry's one Patient with this identifier, or None; 502 when it has several."""
        with tracing.tracer.start_as_current_span(
            "Client Registry GET /Patient", kind=SpanKind.CLIENT
        ):
            bundle = await self._get("/Patient", {"identifier": f"{system}|{value}"})
        patients = [
            e["resource"]
            for e in bundle.get("entry", [])
            if isinstance(e, dict)
            and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == "Patient"
        ]
        if len(patients) > 1:
            raise BadGateway(
                f"the Client Registry holds {len(patients)} Patients with this national id"
            )
        return patients[0] if patients else None

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._client.get(path, params=params, headers=tracing.inject({}))
            except httpx.TimeoutException:
                if last:
                    raise GatewayTimeout("the Client Registry did not answer in time") from None
            except httpx.TransportError as exc:
                if last:
                    raise BadGateway(
                        f"the Client Registry cannot be reached ({type(exc).__name__})"
                    ) from None
            else:
                if response.status_code == 200:
                    return _bundle(response)
                if response.status_code not in RETRIED_STATUSES or last:
                    raise BadGateway(
                        f"the Client Registry answered {response.status_code} to a Patient search"
                    )
            log.warning(
                "the Client Registry failed (attempt %d of %d); retrying", attempt + 1, attempts
            )
            await asyncio.sleep(self.settings.backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")


def _bundle(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise BadGateway("the Client Registry answered with something that is not JSON") from None
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise BadGateway("the Client Registry answered a search without a Bundle")
    return body
