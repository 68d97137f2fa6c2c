"""Headless Debian chromium for the page tests, logged in through Airflow's own login page.

Where chromium or chromium-driver is missing the tests that need it are skipped, saying why
(``make browser`` installs both as root).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from devstack.airflowenv import ROOT

ARTIFACTS = ROOT / ".artifacts"


def _missing() -> str | None:
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return None
    return "Debian's chromium and chromium-driver are not installed (make browser installs them as root)"


needs_browser = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@contextmanager
def logged_in(page: str, user: str, password: str, size: str = "1400,1000") -> Iterator[Any]:
    """A browser on ``page``, which it reached logged out and left through the page's login link,
    then came back to logged in as ``user`` (the UI's own form); closed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={size}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(page)  # logged out: the page links to the UI's login
        driver.find_element(By.LINK_TEXT, "Log in to Airflow").click()
        wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys(user)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(ec.url_to_be(page))
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str) -> None:
    """Saved with the test artifacts (``.artifacts/<name>``)."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    assert driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
