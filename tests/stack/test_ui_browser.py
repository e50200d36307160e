"""A person's path through the Airflow UI, in headless Chromium: log in, open welcome_emails, fill csv_path
in the trigger form, trigger, and see the run succeed; open "Welcome mailer", look up a contact of a
finished run, download the run's CSV, erase and suppress addresses and see a later run send them nothing.
Every action on the ledger's pages is done inside the Airflow UI's frame (sandboxed without allow-modals
or top navigation, as an operator meets it), and the pages are opened directly too.
Screenshots are kept in tests/artifacts/ui/."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import bindparam, create_engine, text

from tests.stack.helpers import contact_file, ledger_url, messages_for, run_and_wait
from tests.support import PROJECT_ROOT
from tests.support.invariants import messages_by_recipient
from welcome_mailer.plugin import NAV_LABEL

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
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads")})
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


def log_in(stack, browser, screenshot: str | None = None) -> str:
    base = stack.config.api_url
    browser.get(f"{base}/auth/login")
    wait_for(browser, "//input[@name='username']").send_keys("admin")
    wait_for(browser, "//input[@name='password']").send_keys(stack.config.admin_password)
    if screenshot:
        shot(browser, screenshot)
    wait_for(browser, "//button[@type='submit']").click()
    wait_for(browser, "//*[normalize-space()='Welcome']")  # logged in: the home page, before moving on
    return base


def test_trigger_from_the_ui_form_and_see_success(stack, browser):
    # Typed as a person would: relative to the data root (the form's rule), so the screenshot in the
    # README shows a real csv_path, not the test's temporary directory.
    path = contact_file(stack, "new-signups-november", rows=300, seed=31, domain="ui")
    base = log_in(stack, browser, "01-login")

    browser.get(f"{base}/dags/welcome_emails")
    wait_for(browser, "//button[normalize-space()='Trigger']").click()
    csv_field = wait_for(browser, "//*[@role='dialog']//input[@id='element_csv_path']")
    assert wait_for(browser, "//*[@role='dialog']//*[contains(text(), 'Contact list (CSV path)')]")
    csv_field.send_keys(path.name)
    shot(browser, "02-trigger-form")
    submit = wait_for(browser, "//*[@role='dialog']//button[normalize-space()='Trigger']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", submit)
    submit.click()

    deadline = time.monotonic() + 300
    runs = []
    while time.monotonic() < deadline:
        runs = stack.api("GET", "/api/v2/dags/welcome_emails/dagRuns?order_by=-start_date&limit=5").json()["dag_runs"]
        mine = [r for r in runs if (r.get("conf") or {}).get("csv_path") == path.name]
        if mine and mine[0]["state"] in ("success", "failed"):
            break
        time.sleep(2)
    assert mine, f"no run with csv_path {path}: {runs}"
    assert mine[0]["state"] == "success"
    browser.get(f"{base}/dags/welcome_emails/runs/{mine[0]['dag_run_id']}")
    wait_for(browser, "//*[normalize-space(text())='Success']")  # the run's state badge
    shot(browser, "03-run-succeeded")


def test_the_ledger_pages_are_for_logged_in_users_only(stack):
    base = stack.config.api_url
    anonymous = httpx.get(f"{base}/welcome-mailer/ui/", headers={"Accept": "text/html"}, timeout=30)
    assert anonymous.status_code == 401 and "/auth/login" in anonymous.text
    assert httpx.get(f"{base}/welcome-mailer/ui/contact?email=a@b.example", timeout=30).status_code == 401
    refused = httpx.post(f"{base}/welcome-mailer/ui/contact/erase", data={"email": "a@b.example", "reason": "x"})
    assert refused.status_code == 401
    forged = stack.api("POST", "/welcome-mailer/ui/contact/erase", data={"email": "a@b.example", "reason": "x"})
    assert forged.status_code == 403, "an authenticated POST without this session's CSRF token"
    assert stack.api("GET", "/welcome-mailer/ui/").status_code == 200
    views = stack.api("GET", "/api/v2/plugins").json()["plugins"]
    [plugin] = [p for p in views if p["name"] == "welcome_mailer"]
    assert plugin["external_views"][0]["href"] == "/welcome-mailer/ui/"


def in_frame(browser) -> None:
    """Into the Airflow UI's frame that holds the plugin's page (sandboxed: no dialogs, no top navigation)."""
    browser.switch_to.default_content()
    frame = wait_for(browser, "//iframe")
    assert "allow-modals" not in (frame.get_attribute("sandbox") or ""), "the frame this test is about"
    browser.switch_to.frame(frame)


def shot_of_ui(browser, name: str) -> None:
    """A screenshot of the whole Airflow UI around the frame, then back into the frame."""
    browser.switch_to.default_content()
    shot(browser, name)
    in_frame(browser)


def download(tmp_path, click) -> Path:
    downloads = tmp_path / "downloads"
    before = set(downloads.glob("*.csv")) if downloads.is_dir() else set()
    click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = set(downloads.glob("*.csv")) - before if downloads.is_dir() else set()
        if new:
            return new.pop()
        time.sleep(0.3)
    raise AssertionError("no CSV downloaded")


def notice(browser) -> str:
    return wait_for(browser, "//*[@role='status']").text


def test_every_action_inside_the_airflow_ui_s_frame_and_on_the_page_opened_directly(stack, browser, tmp_path):
    from selenium.webdriver.common.by import By

    domain = "ledgerui"
    path = contact_file(stack, "ledger-ui", rows=60, seed=37, domain=domain)
    run_id, state = run_and_wait(stack, path)
    assert state == "success"
    history = messages_by_recipient(messages_for(stack, domain))
    email = max(history, key=lambda e: len(history[e]))  # the contact with the most attempts
    # Two contacts made failed in the ledger, for the release actions (the mock's outcomes vary).
    to_release = sorted(e for e in history if e != email)[:3]
    engine = create_engine(ledger_url(stack))
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sent_contacts SET status = 'failed' WHERE email IN :e").bindparams(
                bindparam("e", expanding=True)
            ),
            {"e": to_release},
        )
    engine.dispose()
    base = log_in(stack, browser)

    # The side bar's entry for the pages is shown whole, not cut.
    label = wait_for(browser, f"//*[@aria-label='{NAV_LABEL}']")
    assert browser.execute_script(
        "return [...arguments[0].querySelectorAll('*')].every(e => e.scrollWidth <= e.clientWidth + 1)", label
    ), "the side-bar label is cut"
    label.click()
    in_frame(browser)
    wait_for(browser, "//*[normalize-space()='Contacts per state']")
    wait_for(browser, f"//a[normalize-space()='{run_id}']")
    shot_of_ui(browser, "10-ledger-overview")

    # Look a contact up, every attempt shown.
    search = wait_for(browser, "//input[@name='email']")
    search.send_keys(email.upper())
    wait_for(browser, "//button[normalize-space()='Look up']").click()
    wait_for(browser, "//*[@id='contact-state']")
    for message in history[email]:
        row = wait_for(browser, f"//table[@aria-label='Attempts']//tr[td[normalize-space()='{message['id']}']]")
        assert message["idempotency_key"] in row.text and message["status"] in row.text
    shot_of_ui(browser, "11-ledger-contact")

    # The run's page, its CSV, and a count that opens the list filtered to it.
    wait_for(browser, f"//a[normalize-space()='{run_id}']").click()
    wait_for(browser, "//table[@aria-label='Report']//td[normalize-space()='rows read']")
    shot_of_ui(browser, "12-ledger-run")
    downloaded = download(tmp_path, lambda: wait_for(browser, "//a[@id='outcomes-csv']").click())
    with downloaded.open(newline="") as handle:
        rows = {row["email"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(history) and rows[email]["attempts"] == str(len(history[email]))
    claimed = wait_for(browser, "//tr[td[normalize-space()='claimed by this run']]//a")
    count = int(claimed.text)
    claimed.click()
    wait_for(browser, "//table[@aria-label='Contacts']")
    assert len(browser.find_elements(By.XPATH, "//input[@type='checkbox'][@name='email']")) == min(count, 50)

    # The list: search, filter, export, bulk actions.
    browser.switch_to.default_content()
    browser.get(f"{base}/plugin/welcome-mailer")
    in_frame(browser)
    wait_for(browser, "//header//a[normalize-space()='Contacts']").click()
    wait_for(browser, "//select[@name='state']/option[@value='failed']").click()
    wait_for(browser, "//button[normalize-space()='Filter']").click()
    for address in to_release:
        wait_for(browser, f"//input[@aria-label='select {address}']")
    shot_of_ui(browser, "13-ledger-contacts")
    exported = download(tmp_path, lambda: wait_for(browser, "//a[@id='export-csv']").click())
    with exported.open(newline="") as handle:
        assert {row["email"] for row in csv.DictReader(handle)} >= set(to_release)
    for address in to_release[:2]:
        wait_for(browser, f"//input[@aria-label='select {address}']").click()
    wait_for(browser, "//input[@aria-label='Bulk: why']").send_keys("block lifted (browser test)")
    wait_for(browser, "//input[@aria-label='Bulk: confirm']").click()
    wait_for(browser, "//button[@value='release']").click()
    assert "released 2 of 2 selected" in notice(browser)

    search = wait_for(browser, "//input[@name='q']")
    search.clear()
    search.send_keys(to_release[2].split("@")[0])
    wait_for(browser, "//select[@name='state']/option[@value='']").click()
    wait_for(browser, "//button[normalize-space()='Filter']").click()
    wait_for(browser, f"//input[@aria-label='select {to_release[2]}']").click()
    wait_for(browser, "//input[@aria-label='Bulk: why']").send_keys("asked by mail (browser test)")
    wait_for(browser, "//button[@value='suppress']").click()  # the box not ticked: the browser asks for it
    wait_for(browser, "//input[@aria-label='Bulk: confirm']").click()
    wait_for(browser, "//button[@value='suppress']").click()
    assert "suppressed 1 of 1 selected" in notice(browser)

    # Erase, inside the frame: the address retyped, no dialog.
    fresh, suppressed = f"fresh@{domain}.example.org", f"stop-me@{domain}.example.org"
    search = wait_for(browser, "//header//input[@name='email']")
    search.send_keys(email)
    wait_for(browser, "//button[normalize-space()='Look up']").click()
    wait_for(browser, "//input[@aria-label='Erase (GDPR): why']").send_keys("GDPR request (browser test)")
    wait_for(browser, "//input[@aria-label='Erase (GDPR): retype the address']").send_keys(email.upper())
    wait_for(browser, "//button[@value='erase']").click()
    assert notice(browser).startswith("erased: the contact's address and name")
    wait_for(browser, "//*[contains(text(), 'Only a keyed hash is kept')]")
    wait_for(browser, "//*[contains(text(), 'History erased on')]")

    # A link to an Airflow page leaves the frame for the Airflow UI's own page.
    wait_for(browser, "//header//a[normalize-space()='Contacts']").click()
    wait_for(browser, f"//a[normalize-space()='{run_id}']").click()
    wait_for(browser, "//a[normalize-space()='Open the run in Airflow']").click()
    browser.switch_to.default_content()
    deadline = time.monotonic() + 20
    while "/runs/" not in browser.current_url and time.monotonic() < deadline:
        time.sleep(0.3)
    assert browser.current_url.startswith(f"{base}/dags/welcome_emails/runs/"), browser.current_url

    # Times follow the time zone chosen in the Airflow UI (its local storage), UTC on hover.
    browser.execute_script("localStorage.setItem('timezone', JSON.stringify('Asia/Kolkata'))")
    browser.get(f"{base}/welcome-mailer/ui/contact?email={to_release[0]}")
    stamp = wait_for(browser, "//tr[th[normalize-space()='last change']]//time")
    assert stamp.text.endswith("GMT+5:30") and stamp.get_attribute("title").endswith(" UTC"), stamp.text
    browser.execute_script("localStorage.removeItem('timezone')")

    # The same pages opened directly: suppress an address no run has seen; an erase not confirmed is refused.
    browser.get(f"{base}/welcome-mailer/ui/contact?email={suppressed}")
    wait_for(browser, "//input[@aria-label='Suppress: why']").send_keys("asked by phone")
    wait_for(browser, "//button[@value='suppress']").click()
    wait_for(browser, "//*[@id='contact-state'][normalize-space()='suppressed']")
    wait_for(browser, "//td[normalize-space()='asked by phone']")
    wait_for(browser, "//input[@aria-label='Erase (GDPR): why']").send_keys("typo test")
    wait_for(browser, "//input[@aria-label='Erase (GDPR): retype the address']").send_keys("someone@else.example")
    wait_for(browser, "//button[@value='erase']").click()
    assert "not done: to erase, retype the address" in notice(browser)
    wait_for(browser, "//*[@id='contact-state'][normalize-space()='suppressed']")

    later = stack.data / "ledger-ui-later.csv"
    later.write_text(
        f"Jane Erased, {email}, 1\nStop Me, {suppressed}, 2\nFresh Person, {fresh}, 3\n"
        f"Bulk Stop, {to_release[2]}, 4\nReleased, {to_release[0]}, 5\n"
    )
    before = len(messages_for(stack, domain))
    assert run_and_wait(stack, later)[1] == "success"
    sent_later = messages_by_recipient(messages_for(stack, domain)[before:])
    assert set(sent_later) == {fresh, to_release[0]}, f"the ESP got messages for {sorted(sent_later)}"


def test_unknown_runs_are_not_found_through_the_api_server(stack):
    for path in ("/welcome-mailer/ui/runs/nonexistent_run", "/welcome-mailer/ui/runs/%2E%2E"):
        assert stack.api("GET", path).status_code == 404
