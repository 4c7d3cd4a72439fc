"""The report in a real browser: headless Chromium (Debian's chromium and chromium-driver) loads it
from disk with the network off, and the test checks the console, every image and a screenshot.

Selenium drives the system's chromedriver by its path, so Selenium Manager never downloads a
driver or a browser. The screenshots go to the test's temporary folder, never into the repository.
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from report_runs import trained_run

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra: pip install -e '.[test]'")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium is not installed (Debian: apt-get install chromium chromium-driver; .ci/run does)")

NATURAL_WIDTHS = "return Array.from(document.images, im => [im.complete, im.naturalWidth, im.alt]);"


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--hide-scrollbars", "--window-size=1280,1600",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def pixel_std(png: bytes) -> float:
    with Image.open(io.BytesIO(png)) as image:
        return float(np.asarray(image.convert("L"), dtype=np.float64).std())


def test_the_report_renders_in_headless_chromium(browser, fake_cifar, tmp_path_factory, tmp_path):
    run = trained_run("se", fake_cifar, tmp_path_factory)
    browser.get((run / "report.html").as_uri())
    assert browser.title.startswith("cifarkit report")
    assert console_errors(browser) == []
    images = browser.execute_script(NATURAL_WIDTHS)
    assert len(images) == 4
    assert all(complete and width > 0 for complete, width, _ in images), images

    shot = browser.get_screenshot_as_png()
    (tmp_path / "report.png").write_bytes(shot)
    assert pixel_std(shot) > 10                 # text and tables, not an empty page
    from selenium.webdriver.common.by import By
    for element in browser.find_elements(By.TAG_NAME, "img"):
        browser.execute_script("arguments[0].scrollIntoView();", element)
        figure = element.screenshot_as_png          # each figure as drawn on the screen
        assert pixel_std(figure) > 10, element.get_attribute("alt")


def test_the_checks_see_a_broken_page(browser, tmp_path):
    """The same checks fail on a page with an image that cannot load: they are not blind."""
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><head><title>x</title><link rel="icon" href="data:,"></head>'
                      '<body><img src="missing.png" alt="missing"></body></html>')
    browser.get(broken.as_uri())
    assert any("missing.png" in message for message in console_errors(browser))
    ((complete, width, _),) = browser.execute_script(NATURAL_WIDTHS)
    assert width == 0
    blank = tmp_path / "blank.html"
    blank.write_text('<!DOCTYPE html><html><head><title>x</title><link rel="icon" href="data:,"></head>'
                     "<body></body></html>")
    browser.get(blank.as_uri())
    assert pixel_std(browser.get_screenshot_as_png()) < 1
