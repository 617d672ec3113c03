"""SMART App Launch end to end in a real browser (headless Chromium through Selenium), with a
real SMART app: the Python `fhirclient` behind a few pages on its own origin
(tests/support/smart_app.py), which exchanges the code at the token endpoint and reads FHIR with
the token, exactly as a third-party app would.

- Standalone: John signs in, the picker lists John, Mary (12), Tom (8) and Jane; he picks Mary,
  approves, and the app reads Mary's Observations. Picking Jane gives demographics only (the app's
  Observation search is refused), then her lab results (and not her vital signs) once she has
  consented.
- EHR launch: the EHR (a System client) creates a launch for Jane; her doctor signs in and the app
  reads her Observations.

With `FHIR_SCREENSHOTS=1` the sign-in, picker and approval pages are saved under docs/images/
(desktop and phone sizes) for docs/smart.md."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from fhir_server.storage import oauth
from tests.support import browser as browsers
from tests.support.authorize import PASSWORD, add_client, add_user
from tests.support.resources import care_team
from tests.support.servers import LiveServer
from tests.support.smart_app import App, Result
from tests.support.tokens import auth
from tests.support.world import World, jane_consent, make_family

SCOPE = "launch/patient openid fhirUser offline_access patient/*.read"


@pytest.fixture(scope="module")
def family(make_world: Callable[..., World]) -> World:
    world: World = make_world(people=False, tag_length=0)  # plain names for the pictures
    make_family(world)
    world.ids["doctor"] = world.create(
        {"resourceType": "Practitioner", "name": [{"family": "Lee"}]}
    )
    world.create(care_team(world.ref("jane"), world.ref("doctor")))
    return world


@pytest.fixture
def app(server: LiveServer, database_url: str) -> Iterator[App]:
    """The SMART app, registered as a public client for both launches."""
    with App(f"{server.origin}/fhir", "", SCOPE) as running:
        client = add_client(
            database_url,
            name="Family Health",
            redirect_uris=(running.redirect_uri,),
            scope=f"launch {SCOPE}",
            launch_types=("standalone", "ehr"),
        )
        running.client_id = client.client_id
        yield running


def sign_in(driver: WebDriver, username: str, shoot: bool = False) -> None:
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "username"))
    if shoot:
        _shoot(driver, "signin")
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form[action='/signin'] button[type=submit]").click()


def pick(driver: WebDriver, patient: str) -> dict[str, str]:
    """Choose `patient` in the picker: every option's label, by patient reference."""
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.NAME, "patient"))
    radios = driver.find_elements(By.NAME, "patient")
    labels = {
        r.get_attribute("value") or "": driver.find_element(
            By.CSS_SELECTOR, f"label[for='{r.get_attribute('id')}']"
        ).text
        for r in radios
    }
    chosen = next(r for r in radios if r.get_attribute("value") == patient)
    driver.find_element(By.CSS_SELECTOR, f"label[for='{chosen.get_attribute('id')}']").click()
    assert chosen.is_selected()
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    return labels


def approve(driver: WebDriver, shoot: bool = False) -> str:
    """Approve on the approval page, if the app is not approved already: the page's text."""
    wait = WebDriverWait(driver, 30)
    wait.until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "button[value=approve]")
            or d.find_elements(By.ID, "observations")
        )
    )
    if not driver.find_elements(By.CSS_SELECTOR, "button[value=approve]"):
        return ""
    text = driver.find_element(By.TAG_NAME, "main").text
    if shoot:
        _shoot(driver, "approve")
    driver.find_element(By.CSS_SELECTOR, "button[value=approve]").click()
    return text


def landed(driver: WebDriver, app: App) -> Result:
    """The app's page after the launch, and what the app recorded."""
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "observations"))
    assert driver.current_url.startswith(app.redirect_uri)
    return app.results[-1]


def fresh(driver: WebDriver) -> None:
    """Forget the sign-in (the server's cookies), as another person at the same browser."""
    driver.delete_all_cookies()


def _shoot(driver: WebDriver, name: str) -> None:
    """The page at desktop and at phone size (then desktop again)."""
    browsers.screenshot(driver, f"smart-{name}.png")
    if browsers.screenshot(browsers.phone(driver), f"smart-{name}-phone.png") is not None:
        driver.set_window_size(*browsers.DESKTOP)


def test_a_standalone_launch_for_john_reads_marys_record(
    browser: WebDriver, server: LiveServer, family: World, app: App, database_url: str
) -> None:
    john = add_user(database_url, family.ref("john_person"))
    browser.get(f"{app.origin}/start")
    sign_in(browser, john, shoot=True)

    labels = pick_and_shoot(browser, family.ref("mary"))
    assert set(labels) == {family.ref(n) for n in ("john", "mary", "tom", "jane")}
    assert "John" in labels[family.ref("john")]
    assert "Mary" in labels[family.ref("mary")] and "age 12" in labels[family.ref("mary")]
    assert "Tom" in labels[family.ref("tom")] and "age 8" in labels[family.ref("tom")]
    assert "Jane" in labels[family.ref("jane")] and "spouse" in labels[family.ref("jane")]
    assert "Mary" in approve(browser, shoot=True)

    result = landed(browser, app)
    assert result.error is None, result.error
    assert result.patient == family.ref("mary").split("/")[1]
    assert result.observations == [family.ref("obs_mary").split("/")[1]]
    assert result.token["refresh_token"]  # offline_access was granted
    with psycopg.connect(database_url) as db:
        row: Any = db.execute(
            "SELECT fhir_user, patient FROM oauth_codes WHERE client_id = %s",
            (app.client_id,),
        ).fetchone()
    assert row == (family.ref("rp_mary"), result.patient)

    # the token of Mary's record is no key to Tom's
    other = httpx.get(
        f"{server.origin}/fhir/Observation/{family.ref('obs_tom').split('/')[1]}",
        headers={"Authorization": f"Bearer {result.token['access_token']}"},
    )
    assert other.status_code == 403


def test_jane_gives_demographics_then_her_lab_results_once_she_consents(
    browser: WebDriver, family: World, app: App, database_url: str
) -> None:
    john = add_user(database_url, family.ref("john_person"))
    browser.get(f"{app.origin}/start")
    sign_in(browser, john)
    pick(browser, family.ref("jane"))
    words = approve(browser)
    assert "not available for this person" in words.lower()  # the Observations asked for
    before = landed(browser, app)
    assert before.patient == family.ref("jane").split("/")[1]
    assert before.observations == [] and before.error  # the search was refused
    assert before.scope is not None and "Observation" not in before.scope

    consent = family.create(jane_consent(family, "LAB_RESULTS"))
    browser.get(f"{app.origin}/start")
    pick(browser, family.ref("jane"))  # still signed in
    approve(browser)
    after = landed(browser, app)
    assert after.error is None, after.error
    assert after.observations == [family.ref("obs_jane").split("/")[1]]  # no vital signs
    assert after.scope is not None and "laboratory" in after.scope
    family.system.delete(f"/{consent}")


def test_an_ehr_launch_for_janes_doctor(
    browser: WebDriver, server: LiveServer, family: World, app: App, database_url: str
) -> None:
    doctor = add_user(database_url, family.ref("doctor"))
    jane = family.ref("jane").split("/")[1]
    created = httpx.post(
        f"{server.origin}/oauth/launch",
        json={"patient": jane, "client_id": app.client_id},
        headers=auth(scope="system/*.cruds"),
    )
    assert created.status_code == 200, created.text
    launch = created.json()["launch"]
    fresh(browser)
    browser.get(f"{app.origin}/launch?iss={server.origin}/fhir&launch={launch}")
    sign_in(browser, doctor)
    approve(browser)  # no picker: the EHR said whose record
    result = landed(browser, app)
    assert result.error is None, result.error
    assert result.patient == jane
    assert sorted(result.observations) == sorted(
        family.ref(n).split("/")[1] for n in ("obs_jane", "vitals_jane")
    )
    with psycopg.connect(database_url) as db:
        used = db.execute(
            "SELECT used_at IS NOT NULL FROM oauth_launches WHERE launch_hash = %s",
            (oauth.digest(launch),),
        ).fetchone()
    assert used == (True,)


def pick_and_shoot(driver: WebDriver, patient: str) -> dict[str, str]:
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.NAME, "patient"))
    _shoot(driver, "picker")
    return pick(driver, patient)
