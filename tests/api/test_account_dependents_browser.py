"""The dependents and connected-apps pages in a real browser (headless Chromium): Jane adds a
child with the keyboard, sees a refusal in plain words with what she typed kept; John approves
an app for Mary through the real authorization pages and revokes it on "Connected apps". Each
step is checked on the page and in the FHIR resources or the authorization server's records.

With `FHIR_SCREENSHOTS=1` the pages are saved under docs/images/ (account-dependents.png,
account-dependents-phone.png, account-apps.png) for docs/account-dependents.md and
docs/account-apps.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from tests.support import browser as browsers
from tests.support.authorize import PASSWORD, add_client, add_user, authorize_params
from tests.support.oauth import pkce
from tests.support.resources import years_ago
from tests.support.servers import LiveServer
from tests.support.tokens import auth
from tests.support.world import World, make_family

SCOPE = "launch/patient openid fhirUser offline_access patient/*.rs"


@pytest.fixture(scope="module")
def family(make_world: Callable[..., World]) -> World:
    world: World = make_world(people=False, tag_length=0)  # plain names for the pictures
    make_family(world)
    return world


def wait_for(driver: WebDriver, css: str) -> None:
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))


def sign_in(driver: WebDriver, username: str) -> None:
    wait_for(driver, "#username")
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD + Keys.ENTER)


def type_date(driver: WebDriver, element_id: str, iso: str) -> None:
    """Type a date into a date input as a person would (Chromium's en-US order: month, day,
    year)."""
    year, month, day = iso.split("-")
    driver.find_element(By.ID, element_id).send_keys(month + day + year)


def fill_dependent(driver: WebDriver, relationship: str, given: str, born: str) -> None:
    Select(driver.find_element(By.ID, "relationship")).select_by_value(relationship)
    for element_id, text in (("given", given), ("family", "Doe")):
        box = driver.find_element(By.ID, element_id)
        box.clear()
        box.send_keys(text)
    type_date(driver, "birth_date", born)
    driver.find_element(By.ID, "birth_date").send_keys(Keys.ENTER)  # submit by keyboard


def no_sideways_scroll(driver: WebDriver) -> bool:
    width: Any = driver.execute_script("return document.documentElement.scrollWidth")
    return int(width) <= driver.get_window_size()["width"]


def shoot(driver: WebDriver, name: str, *, phone: bool) -> None:
    """The whole page at desktop size (and at a phone's width too, when `phone`)."""
    height: Any = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(browsers.DESKTOP[0], max(browsers.DESKTOP[1], int(height) + 40))
    browsers.screenshot(driver, f"{name}.png")
    if phone:
        driver.set_window_size(*browsers.PHONE)
        assert no_sideways_scroll(driver)
        tall: Any = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(browsers.PHONE[0], int(tall) + 40)
        browsers.screenshot(driver, f"{name}-phone.png")
    driver.set_window_size(*browsers.DESKTOP)


def test_jane_adds_a_child_and_a_refusal_keeps_what_she_typed(
    browser: WebDriver, server: LiveServer, family: World, database_url: str
) -> None:
    jane = add_user(database_url, family.ref("jane"))
    browser.get(f"{server.origin}/account/dependents")
    sign_in(browser, jane)
    wait_for(browser, "#relationship")
    born = years_ago(3)
    fill_dependent(browser, "CHILD", "Lucy", born)
    wait_for(browser, "#added-notice")
    listed = browser.find_element(By.ID, "dependents").text
    assert "Lucy Doe" in listed and "Your child" in listed and "a minor" in listed

    found = family.system.get(
        "/Patient", params={"given:exact": "Lucy", "family:exact": "Doe"}
    ).json()
    (lucy,) = [e["resource"] for e in found["entry"]]
    assert lucy["birthDate"] == born
    kid = f"Patient/{lucy['id']}"
    links = family.system.get("/RelatedPerson", params={"patient": kid}).json()["entry"]
    (link,) = [e["resource"] for e in links]
    assert link["active"] is True and link["patient"]["reference"] == kid
    assert link["extension"][0]["valueReference"]["reference"] == family.ref("jane")
    with family.client(family.ref("jane")) as as_jane:
        assert as_jane.get(f"/{kid}").status_code == 200

    # a "child" older than Jane: refused in plain words, what she typed is still there
    fill_dependent(browser, "CHILD", "Grandpa", "1950-05-01")
    wait_for(browser, "#add-problem")
    assert "A child must be younger than you." in browser.find_element(By.ID, "add-problem").text
    assert browser.find_element(By.ID, "given").get_attribute("value") == "Grandpa"
    assert browser.find_element(By.ID, "birth_date").get_attribute("value") == "1950-05-01"
    none = family.system.get(
        "/Patient", params={"given:exact": "Grandpa", "family:exact": "Doe"}
    ).json()
    assert not none.get("entry")
    shoot(browser, "account-dependents", phone=True)


def test_john_revokes_an_app_he_approved_for_mary(
    browser: WebDriver, server: LiveServer, family: World, database_url: str
) -> None:
    john = add_user(database_url, family.ref("john_person"))
    callback = f"{server.origin}/app-callback"
    app = add_client(database_url, name="Growth Chart", redirect_uris=(callback,))
    verifier, challenge = pkce()
    params = authorize_params(app, f"{server.origin}/fhir", scope=SCOPE, code_challenge=challenge)
    browser.get(f"{server.origin}/oauth/authorize?{httpx.QueryParams(params)}")
    sign_in(browser, john)
    wait_for(browser, "input[name=patient]")
    mary = family.ref("mary")
    radio = next(
        r for r in browser.find_elements(By.NAME, "patient") if r.get_attribute("value") == mary
    )
    browser.find_element(By.CSS_SELECTOR, f"label[for='{radio.get_attribute('id')}']").click()
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, "button[value=approve]")
    browser.find_element(By.CSS_SELECTOR, "button[value=approve]").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.startswith(callback))
    code = parse_qs(urlsplit(browser.current_url).query)["code"][0]
    with httpx.Client(base_url=server.origin, timeout=30) as http:
        tokens = http.post(
            "/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": callback,
                "client_id": app.client_id,
                "code_verifier": verifier,
            },
        ).json()
        refresh_token = tokens["refresh_token"]

        browser.get(f"{server.origin}/account/apps")
        wait_for(browser, ".account-apps")
        card = browser.find_element(By.CSS_SELECTOR, ".account-apps").text
        assert "Growth Chart" in card and "Mary Doe" in card
        assert "Read and search all kinds of records of Mary Doe" in card
        shoot(browser, "account-apps", phone=False)
        button = browser.find_element(By.CSS_SELECTOR, ".account-apps form button")
        assert "Growth Chart" in (button.get_attribute("textContent") or "")
        button.send_keys(Keys.ENTER)  # keyboard only
        wait_for(browser, "#revoked-notice")
        assert "Growth Chart" not in browser.find_element(By.TAG_NAME, "main").text

        refused = http.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": app.client_id,
            },
        )
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
        status = http.post("/oauth/introspect", data={"token": refresh_token}, headers=auth())
        assert status.json() == {"active": False}
