"""Debian's headless Chromium driven by Selenium with the system driver (nothing downloaded), for
the tests of the atlas site and of the explorer. Tests using it skip, saying why, only where the
browser or its driver is not installed (.ci/run installs both)."""

from __future__ import annotations

import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.chrome.service import Service

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    BROWSER is None or DRIVER is None,
    reason="needs Chromium and its driver: apt-get install chromium chromium-driver (as .ci/run does)",
)


def chromium(height: int = 900):  # type: ignore[no-untyped-def]
    """A headless Chromium 1300 px wide that keeps the console's messages; quit it after use."""
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size=1300,{height}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)
