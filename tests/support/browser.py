"""A headless Chromium for the browser tests: Debian's `chromium` driven through its
`chromium-driver` with Selenium (`scripts/ensure-browser`, run by `make test`, installs both).

`start()` opens one (1280x900, or `PHONE` size); `unavailable()` says why none can run here. The
`browser` and `phone_browser` fixtures (tests/conftest.py) skip a test when the browser is not
installed, except in CI (`CI=true`), where a missing browser fails the test instead.
`screenshot()` writes PNGs for the docs, only when `FHIR_SCREENSHOTS=1`.
"""

from __future__ import annotations

import os
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM = Path(os.environ.get("FHIR_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("FHIR_CHROMEDRIVER", "/usr/bin/chromedriver"))
DESKTOP = (1280, 900)
PHONE = (390, 844)  # a common phone's CSS viewport
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable() -> str | None:
    """Why no browser can run here, or None when one can."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return None
    return (
        f"no headless browser: {', '.join(missing)} missing; `scripts/ensure-browser` (run by "
        "`make test`) installs Debian's chromium and chromium-driver"
    )


def start(size: tuple[int, int] = DESKTOP) -> WebDriver:
    """A new headless Chromium with a fresh profile (no cookies, no cache) of window `size`."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        # the tests run as root in containers, where Chromium's sandbox cannot start
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(argument)
    # With the driver's path given, Selenium Manager never looks for (or downloads) a driver.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_window_size(*size)
    driver.set_page_load_timeout(30)
    return driver


def phone(driver: WebDriver) -> WebDriver:
    """`driver` resized to a phone's viewport (the same session, cookies kept)."""
    driver.set_window_size(*PHONE)
    return driver


def wait_for_text(driver: WebDriver, element_id: str, timeout: float = 20) -> str:
    """The text of the element `element_id` once it has any (a page's script filled it in)."""
    waited: str = WebDriverWait(driver, timeout).until(
        lambda d: d.find_element("id", element_id).text or False
    )
    return waited


def screenshot(driver: WebDriver, name: str, folder: Path = IMAGES) -> Path | None:
    """Save the page as `docs/images/<name>` (PNG) when `FHIR_SCREENSHOTS=1`, so that only a
    deliberate run (`FHIR_SCREENSHOTS=1 make test`) rewrites the docs' pictures."""
    if os.environ.get("FHIR_SCREENSHOTS") != "1":
        return None
    path = folder / (name if name.endswith(".png") else f"{name}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    # a page just navigated to may not have applied its stylesheet yet: the picture would show
    # the bare HTML (it happened to the activity page)
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete'"
            " && [...document.styleSheets].every(s => { try { return s.cssRules.length > 0 }"
            " catch (e) { return true } })"
        )
    )
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"the screenshot `{path}` was not written")
    return path
