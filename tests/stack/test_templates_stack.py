"""Templates on the Celery stack, through the real api-server: a run with the template Param sends each
contact their own rendered text and HTML (from the stack ESP's log); the Templates page in headless
Chromium previews a file's row (the HTML in a sandboxed iframe, a script in a name shown as text) and
sends a test, guarded by the api-server's auth and this session's CSRF token."""

from __future__ import annotations

import httpx
import pytest

from tests.stack.helpers import messages_for, run_and_wait
from tests.stack.test_ui_browser import browser, log_in, shot, wait_for  # noqa: F401 (the browser fixture)
from tests.support.invariants import messages_by_recipient
from tests.support.templates import write_template

pytestmark = [pytest.mark.slow, pytest.mark.stack]
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def spring(stack):
    write_template(
        stack.data / "templates",
        "spring",
        "Spring, {{ name }}!\n",
        "Hi {{ name }} ({{ email }})\n",
        "<h1 id='greeting'>Hi {{ name }}</h1>\n",
    )
    path = stack.data / "templates-stack.csv"
    rows = [(f"Person {i}", f"p{i}@tpl.example.org") for i in range(30)] + [(SCRIPT, "script@tpl.example.org")]
    path.write_text("".join(f'"{name}", {email}\n' for name, email in rows))
    return path, dict((email, name) for name, email in rows)


def test_a_run_with_the_template_param_sends_each_contact_their_own_text_and_html(stack, spring):
    path, names = spring
    run_id, state = run_and_wait(stack, path, template="spring")
    assert state == "success"
    sent = messages_by_recipient(messages_for(stack, "tpl"))
    assert set(sent) == set(names)
    for address, messages in sent.items():
        name = names[address]
        escaped = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        for message in messages:
            assert (message["subject"], message["text"]) == (f"Spring, {name}!", f"Hi {name} ({address})")
            assert message["html"] == f"<h1 id='greeting'>Hi {escaped}</h1>"
    run = stack.api("GET", f"/welcome-mailer/ui/runs/{run_id}").text
    assert "spring (version " in run


def test_the_templates_page_previews_and_sends_a_test_in_chromium(stack, browser, spring):  # noqa: F811
    from selenium.webdriver.common.by import By

    path, _ = spring
    form = {"name": "spring", "to": "a@b.example"}
    assert stack.api("POST", "/welcome-mailer/ui/templates/test-send", data=form).status_code == 403  # no CSRF token
    assert httpx.post(f"{stack.config.api_url}/welcome-mailer/ui/templates/test-send", data=form).status_code == 401
    base = log_in(stack, browser)
    browser.get(f"{base}/welcome-mailer/ui/templates?name=spring&csv_path={path.name}&line=31")
    assert wait_for(browser, "//*[@id='preview-subject']").text == f"Spring, {SCRIPT}!"
    assert wait_for(browser, "//*[@id='preview-text']").text == f"Hi {SCRIPT} (script@tpl.example.org)"
    frame = wait_for(browser, "//iframe[@id='preview-html']")
    assert frame.get_attribute("sandbox") == ""
    shot(browser, "20-template-preview")
    browser.switch_to.frame(frame)
    assert browser.find_element(By.ID, "greeting").text == f"Hi {SCRIPT}"  # shown as text, never run
    assert browser.find_elements(By.TAG_NAME, "script") == []
    browser.switch_to.default_content()
    wait_for(browser, "//form[@id='test-send-form']//input[@name='to']").send_keys("me@tplself.example.org")
    wait_for(browser, "//form[@id='test-send-form']//button").click()
    wait_for(browser, "//*[contains(text(), 'test sent to me@tplself.example.org')]")
    shot(browser, "21-template-test-sent")
    [test] = messages_for(stack, "tplself")
    assert test["subject"] == f"Spring, {SCRIPT}!" and test["idempotency_key"].startswith("test-")
