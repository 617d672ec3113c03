"""The sharing walk of issue 14 in a real browser (headless Chromium): Mary turns 18 and her
father John loses his access to her record; Mary signs in, shares her lab results with him
until a day through the page; John reads her lab result (and still not her vital signs); Mary
stops it in one click, and John cannot read it any more. Each step checks the page and the FHIR
resources. With `FHIR_SCREENSHOTS=1` the page is saved as docs/images/account-sharing.png and
account-sharing-phone.png."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import psycopg
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from tests.support import browser as browsers
from tests.support.authorize import PASSWORD, add_user
from tests.support.resources import VITALS, years_ago
from tests.support.servers import LiveServer
from tests.support.world import World, make_family

PATH = "/account/sharing"


def sign_in(driver: WebDriver, origin: str, username: str) -> None:
    driver.get(f"{origin}{PATH}")
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "username"))
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form[action='/signin'] button[type=submit]").click()
    # the sign-in page has an h1 too: wait until the browser has left it
    WebDriverWait(driver, 30).until(
        lambda d: "/signin" not in d.current_url and d.find_elements(By.TAG_NAME, "h1")
    )


# What a wait retries while the page it reads is being replaced by the form's answer: Chrome
# reports the old page's node as stale, or (under load) as an inspector error "Node with given
# id does not belong to the document"; both are WebDriverExceptions.
NAVIGATING = (WebDriverException,)


def main_text(driver: WebDriver) -> str:
    return str(driver.find_element(By.TAG_NAME, "main").text)


def consents(db: psycopg.Connection[Any], patient: str) -> list[tuple[str, int, dict[str, Any]]]:
    rows = db.execute(
        "SELECT id, version_id, content FROM resources WHERE resource_type = 'Consent'"
        " AND content->'patient'->>'reference' = %s ORDER BY last_updated",
        (patient,),
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def test_mary_turns_18_shares_her_lab_results_with_her_father_and_stops(
    browser: WebDriver,
    live_server: LiveServer,
    make_world: Callable[..., World],
    database_url: str,
    db: psycopg.Connection[Any],
) -> None:
    family: World = make_world(people=False, tag_length=0)  # plain names for the pictures
    make_family(family)
    mary, rp_mary = family.ref("mary"), family.ref("rp_mary")
    vitals = family.observation(mary, f"mary-vitals-{family.tag}", VITALS)
    john_rp = family.system.get(f"/{rp_mary}").json()
    family.system.put(
        f"/{rp_mary}", json={**john_rp, "name": [{"given": ["John"], "family": "Doe"}]}
    )
    lab = family.ref("obs_mary")
    origin = live_server.origin

    with family.client(family.ref("john_person"), "user/*.rs") as john:
        # Mary is 12: her father sees her whole record
        assert john.get(f"/{lab}").status_code == 200
        # Mary turns 18 (her birthDate, written as the System)
        patient = family.system.get(f"/{mary}").json()
        turned = family.system.put(f"/{mary}", json={**patient, "birthDate": years_ago(18, days=1)})
        assert turned.status_code == 200
        assert john.get(f"/{lab}").status_code == 403
        assert john.get(f"/{mary}").status_code == 200  # an adult's contact details stay

        # his sharing page no longer offers her record
        sign_in(browser, origin, add_user(database_url, family.ref("john_person")))
        browser.get(f"{origin}{PATH}?for={mary}")
        assert "not a record you look after" in main_text(browser).lower()
        browser.delete_all_cookies()

        # Mary signs in and shares her lab results with her father until a day
        sign_in(browser, origin, add_user(database_url, mary))
        assert browser.current_url.endswith(PATH)
        assert "you share nothing yet" in main_text(browser)
        Select(browser.find_element(By.ID, "sharing-grantee")).select_by_value(rp_mary)
        assert "John Doe (father)" in main_text(browser)
        browser.find_element(By.CSS_SELECTOR, "label[for='scope-LAB_RESULTS']").click()
        assert browser.find_element(By.ID, "scope-LAB_RESULTS").is_selected()
        end = date.today() + timedelta(days=90)
        browser.execute_script(
            "document.getElementById('sharing-end').value = arguments[0]", end.isoformat()
        )
        browser.find_element(By.CSS_SELECTOR, "form.sharing-grant button[type=submit]").click()
        WebDriverWait(browser, 30, ignored_exceptions=NAVIGATING).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".notice")
        )
        text = main_text(browser)
        assert "Shared." in text and "John Doe (father)" in text
        assert f"until {end.day} {end:%B %Y}" in text and "lab results" in text
        [(id, version, content)] = consents(db, mary)
        assert (version, content["status"]) == (1, "active")
        assert content["provision"]["period"]["end"] == end.isoformat()
        assert family.system.get(f"/Consent/{id}").json()["provision"]["actor"][0]["reference"] == {
            "reference": rp_mary
        }
        browsers.screenshot(browser, "account-sharing.png")
        if browsers.screenshot(browsers.phone(browser), "account-sharing-phone.png") is not None:
            browser.set_window_size(*browsers.DESKTOP)

        # John reads her lab result, and her vital signs stay hidden
        assert john.get(f"/{lab}").status_code == 200
        assert john.get(f"/{vitals}").status_code == 403
        found = john.get("/Observation", params={"subject": mary}).json()
        assert {e["resource"]["id"] for e in found.get("entry", ())} == {lab.split("/")[1]}

        # Mary stops it in one click
        browser.find_element(
            By.CSS_SELECTOR, "form[action='/account/sharing/revoke'] button"
        ).click()
        WebDriverWait(browser, 30, ignored_exceptions=NAVIGATING).until(
            lambda d: "Stopped." in d.find_element(By.TAG_NAME, "main").text
        )
        assert "you share nothing yet" in main_text(browser)
        [(_, version, content)] = consents(db, mary)
        assert (version, content["status"]) == (2, "inactive")
        assert family.system.get(f"/Consent/{id}").json()["meta"]["versionId"] == "2"
        assert john.get(f"/{lab}").status_code == 403
