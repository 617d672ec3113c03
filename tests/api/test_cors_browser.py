"""CORS in a real browser: a small app page served from an origin of its own fetches the FHIR API
of a server on another origin, with a bearer token (so every request is preflighted). The listed
origin reads the answers and their ETag; an unlisted origin, and any page path, reads nothing."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from fhir_server.settings import Settings
from tests.support.browser import screenshot, wait_for_text
from tests.support.resources import patient
from tests.support.servers import LiveServer
from tests.support.tokens import auth, token

# The app: a page whose script fetches the FHIR server given in its query string and writes what
# it could read into #result (a fetch the browser refuses becomes {"error": ...}).
APP_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>test app</title></head>
<body><h1>test app</h1><pre id="result"></pre>
<script>
const params = new URLSearchParams(location.search);
const base = params.get("fhir");
const bearer = {Authorization: "Bearer " + params.get("token"), Accept: "application/fhir+json"};
async function read(url, headers, init) {
  try {
    const response = await fetch(url, Object.assign({headers: headers}, init || {}));
    const body = await response.json();
    return {status: response.status, etag: response.headers.get("ETag"),
            lastModified: response.headers.get("Last-Modified"),
            location: response.headers.get("Location"),
            resourceType: body.resourceType, id: body.id};
  } catch (e) {
    return {error: String(e)};
  }
}
(async () => {
  const result = {
    metadata: await read(base + "/fhir/metadata", {Accept: "application/fhir+json"}),
    patient: await read(base + "/fhir/Patient/" + params.get("id"), bearer),
    page: await read(base + "/healthz", {}),
    created: await read(
      base + "/fhir/Patient",
      Object.assign({"Content-Type": "application/fhir+json"}, bearer),
      {method: "POST", body: JSON.stringify(
        {resourceType: "Patient", name: [{family: params.get("family")}]})}),
  };
  document.getElementById("result").textContent = JSON.stringify(result);
})();
</script></body></html>
"""


class AppPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(APP_PAGE)))
        self.end_headers()
        self.wfile.write(APP_PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def app_origins() -> Iterator[tuple[str, str]]:
    """Two origins serving the app page: (listed, unlisted), both on 127.0.0.1."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), AppPage) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        listed, unlisted = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
        yield listed, unlisted
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def fhir_base(database_url: str, app_origins: tuple[str, str]) -> Iterator[str]:
    """The FHIR server on `localhost`: another origin than the app pages' `127.0.0.1`."""
    listed, _ = app_origins
    with LiveServer(Settings(cors_origins=(listed,)), database_url) as server:
        yield f"http://localhost:{server.port}"


@pytest.fixture(scope="module")
def patient_id(fhir_base: str) -> str:
    created = httpx.post(
        f"{fhir_base}/fhir/Patient",
        json=patient("Cross-Origin", "Ada"),
        headers={**auth(), "Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert created.status_code == 201
    identifier: str = created.json()["id"]
    return identifier


def patients_named(fhir_base: str, family: str) -> int:
    found = httpx.get(
        f"{fhir_base}/fhir/Patient",
        params={"family:exact": family, "_summary": "count"},
        headers=auth(),
        timeout=30,
    )
    assert found.status_code == 200
    total: int = found.json()["total"]
    return total


def run_app(
    driver: WebDriver, origin: str, fhir_base: str, patient_id: str, family: str
) -> dict[str, Any]:
    query = urlencode({"fhir": fhir_base, "token": token(), "id": patient_id, "family": family})
    driver.get(f"{origin}/app.html?{query}")
    result: dict[str, Any] = json.loads(wait_for_text(driver, "result"))
    return result


def test_a_listed_origin_reads_the_api_and_its_etag_in_a_browser(
    browser: WebDriver, app_origins: tuple[str, str], fhir_base: str, patient_id: str
) -> None:
    listed, _ = app_origins
    family = f"Listed-{uuid.uuid4().hex[:12]}"
    result = run_app(browser, listed, fhir_base, patient_id, family)
    assert result["metadata"]["status"] == 200
    assert result["metadata"]["resourceType"] == "CapabilityStatement"
    # the Authorization header made the browser preflight, and the read came through
    assert result["patient"]["status"] == 200
    assert result["patient"]["id"] == patient_id
    assert result["patient"]["etag"] == 'W/"1"'
    assert result["patient"]["lastModified"]
    # a path outside the API: the server answers, the browser keeps it from the page
    assert "error" in result["page"]
    # a write goes through, and the page reads where it went
    assert result["created"]["status"] == 201
    assert result["created"]["location"].startswith(
        f"{fhir_base}/fhir/Patient/{result['created']['id']}/_history/1"
    )
    assert patients_named(fhir_base, family) == 1


def test_an_unlisted_origin_reads_nothing_in_a_browser(
    browser: WebDriver, app_origins: tuple[str, str], fhir_base: str, patient_id: str
) -> None:
    _, unlisted = app_origins
    family = f"Unlisted-{uuid.uuid4().hex[:12]}"
    result = run_app(browser, unlisted, fhir_base, patient_id, family)
    assert set(result) == {"metadata", "patient", "page", "created"}
    assert all(set(answer) == {"error"} for answer in result.values()), result
    # the refused preflight kept the write from being sent at all: nothing was created
    assert patients_named(fhir_base, family) == 0


def test_screenshots_are_written_only_when_asked_for(
    browser: WebDriver,
    app_origins: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    browser.get(f"{app_origins[0]}/app.html")
    monkeypatch.delenv("FHIR_SCREENSHOTS", raising=False)
    assert screenshot(browser, "app", tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("FHIR_SCREENSHOTS", "1")
    written = screenshot(browser, "app", tmp_path)
    assert written == tmp_path / "app.png"
    assert written.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
