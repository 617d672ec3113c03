"""The pages' base (fhir_server/web): `page()` renders a template on base.html with autoescape and
the security headers, the stylesheet is served, and in a real browser the CSP holds, the layout
fits a phone and the skip link comes first."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from jinja2 import BaseLoader, ChoiceLoader, DictLoader
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from fhir_server import web
from fhir_server.web import render
from fhir_server.web.render import page
from tests.support.servers import LiveServer, serving

HOSTILE = '<script>alert("x")</script> & "quoted" \'single\''
TEST_TEMPLATE = """{% extends "base.html" %}
{% block title %}{{ _("Test page") }}{% endblock %}
{% block content %}
<h1 id="heading">{{ _("Hello %(name)s", name=name) }}</h1>
<p id="value">{{ value }}</p>
<form method="post" action="/submit"><label for="field">{{ _("Field") }}</label>
<input id="field" name="field" type="text"><button type="submit">{{ _("Send") }}</button></form>
<p id="inline">not run</p>
<script>document.getElementById("inline").textContent = "ran";</script>
{% endblock %}
"""


@pytest.fixture(scope="module")
def pages() -> Iterator[str]:
    original = render.environment.loader
    assert original is not None
    loaders: list[BaseLoader] = [DictLoader({"test.html": TEST_TEMPLATE}), original]
    render.environment.loader = ChoiceLoader(loaders)
    app = FastAPI(title="Family <Health> & Co")

    @app.get("/page")
    def shown(request: Request, name: str = HOSTILE, value: str = HOSTILE) -> HTMLResponse:
        return page(request, "test.html", name=name, value=value)

    @app.get("/approve")
    def approving(request: Request) -> HTMLResponse:
        return page(
            request,
            "test.html",
            status_code=400,
            form_action=["https://app.example:8443/cb?x=1", "com.example.app:/callback"],
            name="n",
            value="v",
        )

    web.install(app)
    try:
        with serving(app) as base:
            yield base
    finally:
        render.environment.loader = original


def test_a_page_carries_the_security_headers(pages: str) -> None:
    response = httpx.get(f"{pages}/page")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = {
        part.split(" ", 1)[0]: part.split(" ", 1)[1]
        for part in response.headers["content-security-policy"].split("; ")
    }
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"  # no 'unsafe-inline': no inline script runs
    assert policy["style-src"] == "'self'"
    assert policy["form-action"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["object-src"] == "'none'"
    assert policy["base-uri"] == "'none'"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_form_action_names_only_the_given_redirect_targets(pages: str) -> None:
    response = httpx.get(f"{pages}/approve")
    assert response.status_code == 400
    policy = response.headers["content-security-policy"]
    assert "form-action 'self' https://app.example:8443 com.example.app:;" in policy


@pytest.mark.parametrize(
    "target",
    [
        "javascript:alert(1)",
        "data:text/html,x",
        "no scheme at all",
        "https://a.example; script-src *",
    ],
)
def test_form_action_refuses_what_is_no_redirect_target(target: str) -> None:
    with pytest.raises(ValueError, match="cannot be a form's target"):
        render.content_security_policy([target])


def test_values_are_escaped_and_the_layout_is_there(pages: str) -> None:
    html = httpx.get(f"{pages}/page").text
    assert HOSTILE not in html
    assert (
        '<p id="value">&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;quoted&#34; &#39;single&#39;</p>'
        in html
    )
    # a value inside a translated text is escaped too
    assert "Hello &lt;script&gt;alert(" in html
    # the server name (the app's title) as well, in the header and the footer
    assert '<p class="site-name">Family &lt;Health&gt; &amp; Co</p>' in html
    assert "Family <Health>" not in html
    assert html.startswith("<!doctype html>")
    assert '<html lang="en">' in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert '<a class="skip-link" href="#main">Skip to main content</a>' in html
    assert '<main id="main"' in html and "<footer" in html and "<header" in html
    assert '<link rel="stylesheet" href="/static/site.css">' in html


def test_the_stylesheet_is_served(pages: str) -> None:
    response = httpx.get(f"{pages}/static/site.css")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")
    assert ":focus-visible" in response.text
    assert httpx.get(f"{pages}/static/../render.py").status_code == 404


def test_an_undefined_value_is_an_error_not_an_empty_text() -> None:
    from jinja2 import UndefinedError

    with pytest.raises(UndefinedError):
        render.environment.from_string("{{ missing }}").render()


def test_the_server_serves_the_stylesheet(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.origin}/static/site.css")
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_in_a_phone_browser_the_page_fits_holds_its_policy_and_starts_with_the_skip_link(
    phone_browser: WebDriver, pages: str
) -> None:
    phone_browser.get(f"{pages}/page")
    # the CSP kept the inline script from running, and the hostile value stayed text
    assert phone_browser.find_element(By.ID, "inline").text == "not run"
    assert phone_browser.find_element(By.ID, "value").text == HOSTILE
    # the stylesheet applied (a rule of site.css), and nothing scrolls sideways on a phone
    link = phone_browser.find_element(By.CLASS_NAME, "skip-link")
    assert link.value_of_css_property("position") == "absolute"
    width = phone_browser.execute_script("return document.documentElement.clientWidth")
    scrolled = phone_browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 400 and scrolled <= width
    # the first Tab reaches the skip link, and it shows itself with a focus outline
    phone_browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    focused = phone_browser.switch_to.active_element
    assert focused.get_attribute("class") == "skip-link"
    assert focused.value_of_css_property("outline-style") == "solid"
    assert focused.location["y"] >= 0
