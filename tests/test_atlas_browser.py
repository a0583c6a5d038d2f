"""The atlas site in a real browser: headless Chromium (Debian's chromium + chromium-driver),
driven by Selenium with the system driver, nothing downloaded. Skips, saying why, only where the
browser or its driver is not installed (.ci/run installs both)."""

from __future__ import annotations

import io

import pytest
from atlas_data import LAYERS, Troubled, small_net
from browser import chromium, needs_chromium
from PIL import Image, ImageStat
from selenium.webdriver.common.by import By

from deconvnet.analysis.atlas import build_atlas

pytestmark = needs_chromium
BROKEN_IMAGES = "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"


@pytest.fixture(scope="module")
def browser():
    driver = chromium(900)
    yield driver
    driver.quit()


def _check_page(driver, expected_title: str) -> None:
    assert expected_title in driver.title
    # Images are lazy below the fold: scroll through, then wait until each has loaded or failed.
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    driver.execute_async_script(
        "const done = arguments[0];"
        "Promise.all(Array.from(document.images).map(i => { i.loading = 'eager';"
        " return i.complete ? null : new Promise(r => { i.onload = i.onerror = r; }); })).then(done);"
    )
    assert driver.execute_script(BROKEN_IMAGES) == []
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert errors == []


def test_the_site_opens_from_the_file_system_and_every_link_works(browser, tmp_path):
    build_atlas(small_net(), Troubled(), LAYERS, tmp_path, k=4, batch_size=8, model_name="small")
    browser.get((tmp_path / "index.html").as_uri())
    _check_page(browser, "Unit atlas: small")
    assert "2 skipped" in browser.find_element(By.ID, "skipped").text

    browser.find_element(By.LINK_TEXT, "4").click()  # the layer page
    _check_page(browser, "4: small atlas")
    cards = browser.find_elements(By.CSS_SELECTOR, "#grid .card")
    assert len(cards) == 8
    browser.find_element(By.CSS_SELECTOR, "[data-sort=value]").click()
    values = [float(c.get_attribute("data-value")) for c in browser.find_elements(By.CSS_SELECTOR, "#grid .card")]
    assert values == sorted(values, reverse=True)
    browser.find_element(By.ID, "filter").send_keys("2-3, 6")
    shown = [c.get_attribute("data-channel") for c in browser.find_elements(By.CSS_SELECTOR, "#grid .card")
             if c.is_displayed()]
    assert sorted(shown) == ["2", "3", "6"]

    browser.find_element(By.CSS_SELECTOR, '#grid .card[data-channel="3"]').click()  # a unit page
    _check_page(browser, "4 channel 3: small atlas")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".unit")) == 4
    browser.find_element(By.CSS_SELECTOR, "a[rel=next]").click()
    _check_page(browser, "4 channel 4")
    browser.find_element(By.PARTIAL_LINK_TEXT, "4").click()  # back up to the layer
    _check_page(browser, "4: small atlas")
    browser.find_element(By.PARTIAL_LINK_TEXT, "all layers").click()
    _check_page(browser, "Unit atlas: small")

    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    assert shot.size[0] >= 800
    assert max(ImageStat.Stat(shot).stddev) > 20  # text and thumbnails, not a blank page
    assert len(shot.getcolors(maxcolors=1 << 20) or []) > 50
