"""The family page in a real browser (headless Chromium): John signs in, sees Mary and Tom whole
and Jane by her Consent, reaches every why? link by keyboard, and opens Jane's. Headings go
h1, h2, h3 without a gap. With `FHIR_SCREENSHOTS=1` the page (desktop and phone) and the why?
page are saved under docs/images/ for docs/account-family.md."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import date, timedelta
from itertools import pairwise

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from tests.support import browser as browsers
from tests.support.authorize import PASSWORD, add_user
from tests.support.servers import LiveServer
from tests.support.world import World, jane_consent, make_family


@pytest.fixture(scope="module")
def family(make_world: Callable[..., World]) -> World:
    world: World = make_world(people=False, tag_length=0)  # plain names for the pictures
    make_family(world)
    return world


def headings(driver: WebDriver) -> list[int]:
    levels = driver.find_elements(By.CSS_SELECTOR, "main h1, main h2, main h3")
    return [int((h.tag_name or "h0")[1]) for h in levels]


def shoot(driver: WebDriver, name: str, width: int) -> None:
    """The whole page at `width` (as tall as it is, up to 2,400 pixels), then desktop again."""
    if os.environ.get("FHIR_SCREENSHOTS") != "1":
        return
    driver.set_window_size(width, browsers.DESKTOP[1])
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 120, 2400))
    browsers.screenshot(driver, name)
    driver.set_window_size(*browsers.DESKTOP)


def test_john_walks_his_family_page_by_keyboard(
    browser: WebDriver, server: LiveServer, family: World, database_url: str
) -> None:
    last = date.today() + timedelta(days=120)
    family.create(jane_consent(family, "LAB_RESULTS", period={"end": last.isoformat()}))
    john = add_user(database_url, family.ref("john_person"))
    browser.get(f"{server.origin}/account/family")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.ID, "username"))
    browser.find_element(By.ID, "username").send_keys(john)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form[action='/signin'] button[type=submit]").click()
    wait.until(lambda d: d.find_elements(By.ID, "act-for"))
    assert browser.current_url.endswith("/account/family")

    rows = browser.find_elements(By.CSS_SELECTOR, "#act-for > li")
    texts = {r.get_attribute("data-patient"): r.text for r in rows}
    assert "you see her whole record" in texts[family.ref("mary")]
    assert "you see his whole record" in texts[family.ref("tom")]
    assert f"lab results with you until {last.day} {last:%B %Y}" in texts[family.ref("jane")]
    levels = headings(browser)
    assert levels[0] == 1 and all(b - a <= 1 for a, b in pairwise(levels))

    shoot(browser, "account-family.png", browsers.DESKTOP[0])
    shoot(browser, "account-family-phone.png", browsers.PHONE[0])

    # every why? link is reached with Tab alone, in the page's order
    links = browser.find_elements(By.CSS_SELECTOR, "a.why-link")
    assert len(links) == 3
    reached = []
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(40):
        active = browser.switch_to.active_element
        if "why-link" in (active.get_attribute("class") or ""):
            reached.append(active.get_attribute("href"))
        active.send_keys(Keys.TAB)
    assert reached[:3] == [link.get_attribute("href") for link in links]

    browsers.phone(browser)
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= browsers.PHONE[0], "the page scrolls sideways on a phone"
    browser.set_window_size(*browsers.DESKTOP)

    # Jane's why?, opened from the keyboard
    jane = next(r for r in rows if r.get_attribute("data-patient") == family.ref("jane"))
    jane.find_element(By.CSS_SELECTOR, "a.why-link").send_keys(Keys.ENTER)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".why-decisions"))
    text = browser.find_element(By.TAG_NAME, "main").text
    assert "Why you see what you see of Jane" in text
    assert "Lab results: yes" in text and "relatedperson_compartment" in text
    levels = headings(browser)
    assert levels[0] == 1 and all(b - a <= 1 for a, b in pairwise(levels))
    browser.execute_script("document.activeElement.blur()")
    shoot(browser, "account-family-why.png", browsers.DESKTOP[0])
