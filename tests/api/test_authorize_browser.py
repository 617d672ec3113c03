"""The standalone launch in a real browser (headless Chromium through Selenium): John signs in,
the picker lists John, Mary (12), Tom (8) and Jane, he picks Mary, approves, and the browser lands
on the app's redirect URI (a page of its own origin, served by the test) with a code for Mary.

With `FHIR_SCREENSHOTS=1` the sign-in, picker and approval pages are saved under docs/images/
(desktop and phone sizes) for docs/smart-authorize.md."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import uvicorn
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from fhir_server.settings import Settings
from fhir_server.storage import oauth
from tests.support import browser as browsers
from tests.support.authorize import add_client, add_user, authorize_params, authorize_url, query_of
from tests.support.servers import LiveServer, free_port
from tests.support.world import World, make_family


async def _callback(request: Request) -> HTMLResponse:
    code = request.query_params.get("code", "")
    return HTMLResponse(f"<!doctype html><title>App</title><p id='code'>{code}</p>")


@pytest.fixture(scope="module")
def app_origin() -> Iterator[str]:
    """The SMART app's own origin (another port than the server's): its redirect target."""
    port = free_port()
    app = Starlette(routes=[Route("/callback", _callback)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the app did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[LiveServer]:
    with LiveServer(Settings(), database_url, fixed_base=True) as live:
        yield live


def _shoot(driver: WebDriver, name: str) -> None:
    """The page at desktop and at phone size (then desktop again)."""
    browsers.screenshot(driver, f"smart-{name}.png")
    if browsers.screenshot(browsers.phone(driver), f"smart-{name}-phone.png") is not None:
        driver.set_window_size(*browsers.DESKTOP)


def test_john_picks_mary_in_a_browser_and_the_app_gets_her_code(
    browser: WebDriver,
    server: LiveServer,
    app_origin: str,
    make_world: Callable[..., World],
    database_url: str,
) -> None:
    world: World = make_world(people=False, tag_length=0)  # plain names for the pictures
    make_family(world)
    client = add_client(database_url, redirect_uris=(f"{app_origin}/callback",))
    john = add_user(database_url, world.ref("john_person"))
    params = authorize_params(client, f"{server.origin}/fhir")
    wait = WebDriverWait(browser, 20)

    browser.get(server.origin + authorize_url(params))
    wait.until(lambda d: d.find_elements(By.ID, "username"))
    _shoot(browser, "signin")
    browser.find_element(By.ID, "username").send_keys(john)
    browser.find_element(By.ID, "password").send_keys("correct horse battery staple")
    browser.find_element(By.CSS_SELECTOR, "form[action='/signin'] button[type=submit]").click()

    wait.until(lambda d: d.find_elements(By.NAME, "patient"))
    labels = {
        radio.get_attribute("value"): browser.find_element(
            By.CSS_SELECTOR, f"label[for='{radio.get_attribute('id')}']"
        ).text
        for radio in browser.find_elements(By.NAME, "patient")
    }
    assert set(labels) == {world.ref(n) for n in ("john", "mary", "tom", "jane")}
    assert "John" in labels[world.ref("john")]
    assert "Mary" in labels[world.ref("mary")] and "age 12" in labels[world.ref("mary")]
    assert "Tom" in labels[world.ref("tom")] and "age 8" in labels[world.ref("tom")]
    assert "Jane" in labels[world.ref("jane")] and "spouse" in labels[world.ref("jane")]
    _shoot(browser, "picker")
    mary = next(
        r
        for r in browser.find_elements(By.NAME, "patient")
        if r.get_attribute("value") == world.ref("mary")
    )
    browser.find_element(By.CSS_SELECTOR, f"label[for='{mary.get_attribute('id')}']").click()
    assert mary.is_selected()
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[value=approve]"))
    assert "Mary" in browser.find_element(By.TAG_NAME, "main").text
    _shoot(browser, "approve")
    browser.find_element(By.CSS_SELECTOR, "button[value=approve]").click()

    wait.until(lambda d: d.current_url.startswith(f"{app_origin}/callback"))
    answer = query_of(browser.current_url)
    assert answer["state"] == params["state"]
    assert browser.find_element(By.ID, "code").text == answer["code"]
    with psycopg.connect(database_url) as db:
        row: Any = db.execute(
            "SELECT patient, fhir_user FROM oauth_codes WHERE code_hash = %s",
            (oauth.digest(answer["code"]),),
        ).fetchone()
    assert row == (world.ref("mary").split("/", 1)[1], world.ref("rp_mary"))
