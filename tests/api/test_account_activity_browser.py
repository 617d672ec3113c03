"""The walk of issue 14 item 4 in a real browser: John signs in and sees who opened his record,
the doctor's break-glass access highlighted with its reason; he filters by person and date,
downloads the CSV and the Bundle, and sees his 12-year-old's activity but not his wife's.
`FHIR_SCREENSHOTS=1` saves docs/images/account-activity.png and account-activity-phone.png."""

from __future__ import annotations

import csv
import io
import time

import httpx
import orjson
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from tests.api.test_account_activity import REASON, Walk, walk  # noqa: F401 (the fixture)
from tests.support import browser as browsers
from tests.support.authorize import PASSWORD


def sign_in(driver: WebDriver, origin: str, username: str) -> None:
    driver.get(f"{origin}/account/activity")
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "username"))
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form[action='/signin'] button[type=submit]").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "activity-patient"))


def scroll_to(driver: WebDriver, element: WebElement) -> None:
    """The entries in view for the screenshot, the filters just above them."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)


def download(driver: WebDriver, link_id: str) -> httpx.Response:
    """What the export link gives, fetched with the browser's session cookies."""
    href = driver.find_element(By.ID, link_id).get_attribute("href")
    assert href
    cookies = {c["name"]: c["value"] for c in driver.get_cookies()}
    return httpx.get(href, cookies=cookies, timeout=30)


def test_john_sees_who_opened_his_record_filters_and_exports(
    walk: Walk,  # noqa: F811
    browser: WebDriver,
) -> None:
    ids = walk.ids
    origin = walk.server.origin
    sign_in(browser, origin, walk.users["john"])
    emergency = browser.find_elements(By.CSS_SELECTOR, ".activity-emergency")
    assert emergency, "the break-glass accesses are highlighted"
    assert any(REASON in e.text for e in emergency)
    assert "Emergency access (break-glass)" in emergency[0].text
    # whose record: his own and Mary's (12); not Jane's (an adult)
    options = [
        o.get_attribute("value")
        for o in Select(browser.find_element(By.ID, "activity-patient")).options
    ]
    assert ids["john"] in options and ids["mary"] in options
    assert ids["jane"] not in options and ids["tom"] in options
    # styled on a desktop too (a merge once left the rules inside a phone-only @media block)
    style = browser.execute_script(
        "const s = getComputedStyle(arguments[0]); return [s.borderLeftWidth, s.backgroundColor]",
        emergency[0],
    )
    assert style == ["6px", "rgb(253, 240, 242)"], style
    scroll_to(browser, emergency[0])
    browsers.screenshot(browser, "account-activity.png")
    # filter: the doctor, today
    Select(browser.find_element(By.ID, "activity-agent")).select_by_value(walk.doctor)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    for field in ("activity-from", "activity-to"):
        browser.execute_script(f"document.getElementById('{field}').value = '{today}'")
    browser.find_element(By.CSS_SELECTOR, ".activity-filters button[type=submit]").click()
    WebDriverWait(browser, 30).until(lambda d: "agent=" in d.current_url)
    entries = browser.find_elements(By.CSS_SELECTOR, ".activity-entry")
    assert len(entries) >= 2
    assert all("activity-emergency" in (e.get_attribute("class") or "") for e in entries)
    exported = download(browser, "export-csv")
    assert exported.status_code == 200
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == len(entries)
    assert REASON in {r["break-glass reason"] for r in rows}
    bundle = download(browser, "export-bundle")
    assert bundle.status_code == 200
    found = orjson.loads(bundle.content)
    assert found["type"] == "collection" and len(found["entry"]) == len(entries)
    assert {e["resource"]["agent"][0]["who"]["reference"] for e in found["entry"]} == {walk.doctor}
    # Mary's record alone
    browser.get(f"{origin}/account/activity?patient={ids['mary']}")
    text = browser.find_element(By.ID, "activity-list").text
    assert "father" in text
    browser.get(f"{origin}/account/activity")
    browsers.phone(browser)
    scroll_to(browser, browser.find_element(By.CSS_SELECTOR, ".activity-emergency"))
    browsers.screenshot(browser, "account-activity-phone.png")
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= browsers.PHONE[0], "no sideways scrolling on a phone"
