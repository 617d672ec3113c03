"""CORS for browser apps (docs/security.md#browser-apps-cors), over real HTTP: preflights answered
before authentication on the FHIR API and the OAuth endpoints apps fetch, the listed origins
echoed, every other origin and every page path left without a CORS header."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from fhir_server.api.cors import Cors
from fhir_server.settings import Settings
from tests.support.resources import patient
from tests.support.servers import LiveServer, serving
from tests.support.tokens import auth

APP = "http://cors-app.test"
OTHER_APP = "https://second-cors-app.test:8443"
FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[LiveServer]:
    settings = Settings(cors_origins=(APP, OTHER_APP))
    with LiveServer(settings, database_url) as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.origin, timeout=30) as c:
        yield c


def preflight(
    http: httpx.Client, path: str, origin: str, method: str = "GET", headers: str = ""
) -> httpx.Response:
    asked = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        asked["Access-Control-Request-Headers"] = headers
    return http.options(path, headers=asked)


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


@pytest.mark.parametrize(
    "path",
    [
        "/fhir",
        "/fhir/metadata",
        "/fhir/Patient",
        "/fhir/Patient/some-id/_history/2",
        "/fhir/.well-known/smart-configuration",
        "/oauth/token",
        "/oauth/introspect",
        "/oauth/revoke",
        "/oauth/jwks",
        "/oauth/register",
    ],
)
def test_a_preflight_from_a_listed_origin_is_answered_before_authentication(
    http: httpx.Client, path: str
) -> None:
    response = preflight(http, path, APP, "PUT", "authorization, content-type, if-match")
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == APP
    assert listed(response.headers["access-control-allow-methods"]) == {
        "get",
        "post",
        "put",
        "patch",
        "delete",
        "head",
    }
    allowed = listed(response.headers["access-control-allow-headers"])
    assert {
        "authorization",
        "content-type",
        "accept",
        "if-match",
        "if-none-match",
        "if-none-exist",
        "if-modified-since",
        "prefer",
        "x-request-id",
    } <= allowed
    assert int(response.headers["access-control-max-age"]) > 0
    assert "origin" in listed(response.headers["vary"])
    assert "access-control-allow-credentials" not in response.headers


def test_each_listed_origin_gets_itself_back_never_a_wildcard(http: httpx.Client) -> None:
    for origin in (APP, OTHER_APP):
        response = preflight(http, "/fhir/Observation", origin, "POST")
        assert response.status_code == 204
        assert response.headers["access-control-allow-origin"] == origin
        got = http.get("/fhir/metadata", headers={"Origin": origin})
        assert got.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://cors-app.test.evil.example",  # the listed name as a prefix
        "http://evil-cors-app.test",
        "http://cors-app.test:8080",  # another port is another origin
        "https://cors-app.test",  # another scheme is another origin
        "https://second-cors-app.test",  # the listed host on its default port
        "null",  # sandboxed frames, file: pages
        "*",
    ],
)
def test_an_unlisted_origin_gets_no_cors_headers(http: httpx.Client, origin: str) -> None:
    refused = preflight(http, "/fhir/Patient", origin, "GET", "authorization")
    assert refused.status_code == 403
    assert cors_headers(refused) == {}
    # the request itself is answered (the browser is what withholds it from the page) but
    # carries nothing that would let a page on that origin read it
    response = http.get("/fhir/metadata", headers={"Origin": origin})
    assert response.status_code == 200
    assert cors_headers(response) == {}
    assert "origin" in listed(response.headers["vary"])


@pytest.mark.parametrize(
    "path",
    ["/oauth/authorize", "/signin", "/account", "/healthz", "/api/v1/patients", "/static/x.css"],
)
def test_pages_and_other_paths_never_speak_cors(http: httpx.Client, path: str) -> None:
    response = preflight(http, path, APP, "POST", "content-type")
    assert response.status_code != 204
    assert cors_headers(response) == {}
    response = http.get(path, headers={"Origin": APP})
    assert cors_headers(response) == {}
    assert "origin" not in listed(response.headers.get("vary", ""))


def test_a_read_from_a_listed_origin_exposes_the_version_headers(http: httpx.Client) -> None:
    created = http.post(
        "/fhir/Patient",
        json=patient(),
        headers={**auth(), "Content-Type": FHIR_JSON, "Origin": APP},
    )
    assert created.status_code == 201
    assert created.headers["access-control-allow-origin"] == APP
    assert created.headers["location"]
    exposed = listed(created.headers["access-control-expose-headers"])
    assert {"etag", "location", "content-location", "last-modified", "x-request-id"} <= exposed

    read = http.get(f"/fhir/Patient/{created.json()['id']}", headers={**auth(), "Origin": APP})
    assert read.status_code == 200
    assert read.headers["access-control-allow-origin"] == APP
    assert read.headers["etag"] == 'W/"1"'
    assert "origin" in listed(read.headers["vary"])
    assert "access-control-allow-credentials" not in read.headers


def test_a_refusal_is_readable_by_a_listed_origin(http: httpx.Client) -> None:
    # an app must be able to see its 401 (to refresh its token), so errors carry CORS too
    response = http.get("/fhir/Patient", headers={"Origin": APP})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == APP
    # and a preflight without a token is no way around authentication: the request after it
    # is checked as ever
    assert preflight(http, "/fhir/Patient", APP, "DELETE").status_code == 204
    assert http.delete("/fhir/Patient/x", headers={"Origin": APP}).status_code == 401


def test_preflights_are_counted_under_a_route_of_their_own(
    http: httpx.Client, server: LiveServer
) -> None:
    def counted(status: int) -> float:
        metrics = http.get("/metrics").text
        label = f'http_requests_total{{method="OPTIONS",route="cors-preflight",status="{status}"}} '
        found = [line for line in metrics.splitlines() if line.startswith(label)]
        return float(found[0].rsplit(" ", 1)[1]) if found else 0.0

    allowed, refused = counted(204), counted(403)
    assert preflight(http, "/fhir/Patient", APP).status_code == 204
    assert preflight(http, "/fhir/Patient", "http://evil.example").status_code == 403
    assert (counted(204), counted(403)) == (allowed + 1, refused + 1)
    response = preflight(http, "/fhir/Patient", APP)
    assert response.headers["x-request-id"]


def test_a_plain_options_request_is_no_preflight(http: httpx.Client) -> None:
    # without Access-Control-Request-Method, OPTIONS goes to the routes as before
    response = http.options("/fhir/metadata", headers={"Origin": APP})
    assert response.status_code != 204
    assert response.headers["access-control-allow-origin"] == APP


def test_requests_without_an_origin_are_unchanged_but_vary_on_it(http: httpx.Client) -> None:
    response = http.get("/fhir/metadata")
    assert response.status_code == 200
    assert cors_headers(response) == {}
    assert "origin" in listed(response.headers["vary"])


# --- the origin list is asked per request, and an existing Vary is kept ---


def test_origins_are_asked_for_each_request() -> None:
    current: set[str] = set()

    async def resource(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", headers={"Vary": "Accept"})

    inner = Starlette(routes=[Route("/fhir/Patient", resource)])
    with serving(Cors(inner, origins=lambda: frozenset(current))) as base:
        first = httpx.get(f"{base}/fhir/Patient", headers={"Origin": APP})
        assert cors_headers(first) == {}
        current.add(APP)  # e.g. a client registered while the server runs
        second = httpx.get(f"{base}/fhir/Patient", headers={"Origin": APP})
        assert second.headers["access-control-allow-origin"] == APP
        assert second.headers.get_list("vary") == ["Accept, Origin"]
        current.clear()  # and removed again
        third = httpx.options(
            f"{base}/fhir/Patient",
            headers={"Origin": APP, "Access-Control-Request-Method": "GET"},
        )
        assert third.status_code == 403
        assert cors_headers(third) == {}


# --- FHIR_CORS_ORIGINS ---


def test_the_setting_keeps_normalized_origins() -> None:
    settings = Settings.from_env(
        {"FHIR_CORS_ORIGINS": " https://Cors-App.Test:443/ , http://localhost:3000,http://[::1]:80"}
    )
    assert settings.cors_origins == (
        "https://cors-app.test",
        "http://localhost:3000",
        "http://[::1]",
    )
    assert Settings.from_env({}).cors_origins == ()


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "null",
        "cors-app.test",
        "https://cors-app.test/callback",
        "https://cors-app.test?x=1",
        "https://user@cors-app.test",
        "ftp://cors-app.test",
        "https://cors-app.test:99999",
        "https://cors-app.test; x",
        "https://app example",
        "https://[zz::1]",
    ],
)
def test_the_setting_refuses_what_is_no_origin(value: str) -> None:
    with pytest.raises(ValueError, match="FHIR_CORS_ORIGINS") as refused:
        Settings.from_env({"FHIR_CORS_ORIGINS": f"http://ok.example,{value}"})
    assert value in str(refused.value)
