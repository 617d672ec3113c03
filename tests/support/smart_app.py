"""A SMART app for the end-to-end tests: the Python `fhirclient` (SMART's own client library)
behind a few pages, served on its own origin (`localhost`, while the FHIR server answers on
`127.0.0.1`), exactly as a third-party app would run.

- `GET /start`: a standalone launch (redirect to the server's authorize endpoint, PKCE S256);
- `GET /launch?iss=...&launch=...`: an EHR launch;
- `GET /callback`: the redirect URI: the code is exchanged by fhirclient, then the app reads the
  patient's Observations and shows what it got (`App.results` keeps it for the test too).
"""

from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fhirclient import client as smart
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.support.servers import free_port


@dataclass
class Result:
    """What one launch ended with."""

    patient: str | None = None
    scope: str | None = None
    token: dict[str, Any] = field(default_factory=dict)
    observations: list[str] = field(default_factory=list)  # Observation ids read
    read_status: int | None = None
    error: str | None = None


class App:
    def __init__(self, fhir_base: str, client_id: str, scope: str) -> None:
        self.port = free_port()
        self.fhir_base = fhir_base
        self.client_id = client_id
        self.scope = scope
        self.results: list[Result] = []
        self._client: smart.FHIRClient | None = None
        routes = [
            Route("/start", self.start),
            Route("/launch", self.launch),
            Route("/callback", self.callback),
        ]
        self.server = uvicorn.Server(
            uvicorn.Config(
                Starlette(routes=routes), host="127.0.0.1", port=self.port, log_level="warning"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def redirect_uri(self) -> str:
        return f"{self.origin}/callback"

    def __enter__(self) -> App:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the SMART app did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def _new_client(self, launch: str | None = None) -> smart.FHIRClient:
        settings = {
            "app_id": self.client_id,
            "api_base": self.fhir_base,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
        }
        if launch is not None:
            settings["launch_token"] = launch
        self._client = smart.FHIRClient(settings=settings)
        return self._client

    def start(self, request: Request) -> Response:
        return RedirectResponse(self._new_client().authorize_url, status_code=303)

    def launch(self, request: Request) -> Response:
        if request.query_params.get("iss") != self.fhir_base:
            return HTMLResponse("<p id='error'>unknown iss</p>", status_code=400)
        client = self._new_client(request.query_params.get("launch"))
        return RedirectResponse(client.authorize_url, status_code=303)

    def callback(self, request: Request) -> Response:
        result = Result()
        self.results.append(result)
        client = self._client
        try:
            assert client is not None, "no launch started"
            client.handle_callback(str(request.url))
            auth = client.server.auth
            result.token = {
                "access_token": auth.access_token,
                "refresh_token": auth.refresh_token,
            }
            result.patient = client.patient_id
            result.scope = client.launch_context.get("scope") if client.launch_context else None
            bundle = client.server.request_json(f"Observation?patient={client.patient_id}")
            result.read_status = 200
            result.observations = [
                e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e
            ]
        except Exception as exc:  # shown on the page: the test reads it
            result.error = str(exc)
        items = "".join(f"<li>{html.escape(o)}</li>" for o in result.observations)
        body = (
            "<!doctype html><html lang='en'><title>Test SMART app</title><body>"
            f"<p id='patient'>{html.escape(str(result.patient))}</p>"
            f"<p id='scope'>{html.escape(str(result.scope))}</p>"
            f"<p id='error'>{html.escape(result.error or '')}</p>"
            f"<ul id='observations'>{items}</ul></body></html>"
        )
        return HTMLResponse(body)
