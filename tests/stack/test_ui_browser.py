"""A person's path through the Airflow UI, in headless Chromium: log in, open welcome_emails, fill csv_path
in the trigger form, trigger, and see the run succeed. Screenshots are kept in tests/artifacts/ui/."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.stack.helpers import contact_file

pytestmark = [pytest.mark.slow, pytest.mark.stack]
ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts" / "ui"


@pytest.fixture
def browser(tmp_path):
    import os

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromedriver are required under CI=true (apt: chromium chromium-driver)")
        pytest.skip("chromium and chromedriver not installed (apt: chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.implicitly_wait(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shot(driver, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait_for(driver, xpath: str, timeout: float = 60):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for element in driver.find_elements(By.XPATH, xpath):
                if element.is_displayed() and element.is_enabled():
                    return element
        except WebDriverException:
            pass
        time.sleep(0.3)
    shot(driver, "timeout")
    raise AssertionError(f"not found on the page within {timeout}s: {xpath}")


def test_trigger_from_the_ui_form_and_see_success(stack, browser):
    path = contact_file(stack, "ui", rows=300, seed=31, domain="ui")
    base = stack.config.api_url
    browser.get(f"{base}/auth/login")
    wait_for(browser, "//input[@name='username']").send_keys("admin")
    wait_for(browser, "//input[@name='password']").send_keys(stack.config.admin_password)
    shot(browser, "01-login")
    wait_for(browser, "//button[@type='submit']").click()
    wait_for(browser, "//*[normalize-space()='Welcome']")  # logged in: the home page, before moving on

    browser.get(f"{base}/dags/welcome_emails")
    wait_for(browser, "//button[normalize-space()='Trigger']").click()
    csv_field = wait_for(browser, "//*[@role='dialog']//input[@id='element_csv_path']")
    assert wait_for(browser, "//*[@role='dialog']//*[contains(text(), 'Contact list (CSV path)')]")
    csv_field.send_keys(str(path))
    shot(browser, "02-trigger-form")
    submit = wait_for(browser, "//*[@role='dialog']//button[normalize-space()='Trigger']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", submit)
    submit.click()

    deadline = time.monotonic() + 300
    runs = []
    while time.monotonic() < deadline:
        runs = stack.api("GET", "/api/v2/dags/welcome_emails/dagRuns?order_by=-start_date&limit=5").json()["dag_runs"]
        mine = [r for r in runs if (r.get("conf") or {}).get("csv_path") == str(path)]
        if mine and mine[0]["state"] in ("success", "failed"):
            break
        time.sleep(2)
    assert mine, f"no run with csv_path {path}: {runs}"
    assert mine[0]["state"] == "success"
    browser.get(f"{base}/dags/welcome_emails/runs/{mine[0]['dag_run_id']}")
    wait_for(browser, "//*[normalize-space(text())='Success']")  # the run's state badge
    shot(browser, "03-run-succeeded")
