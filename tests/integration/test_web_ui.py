"""The ledger's pages (welcome_mailer.web.ui) in process, on a real ledger: overview, contact lookup, run
page, streamed CSV, and actions guarded against cross-site requests. Airflow's own authentication is
replaced here by a fixed user (its dependencies are overridden); the Celery stack's tests prove the real
one (tests/stack/test_ui_browser.py, tests/stack/test_celery_stack.py)."""

from __future__ import annotations

import io

import pytest
from airflow.api_fastapi.core_api.security import get_user
from fastapi.testclient import TestClient

from tests.integration.test_operations import whole_run, write_contacts
from welcome_mailer.ledger import Ledger
from welcome_mailer.settings import Settings
from welcome_mailer.web import create_app, ui

KEY = b"ui-key"


class FakeUser:
    def get_name(self) -> str:
        return "alice"


@pytest.fixture
def setup(ledger, start_esp, tmp_path):
    keyed = Ledger(ledger.engine, erase_key=KEY)
    settings = Settings.from_env({"WELCOME_MAILER_HOME": str(tmp_path), "WELCOME_MAILER_ERASE_KEY": KEY.decode()})
    esp = start_esp(hold_rate=0, seed=21)
    path = write_contacts(tmp_path / "in.csv", [(f"Person {i}", f"p{i}@example.com") for i in range(40)])
    with path.open("a") as handle:
        handle.write("Broken, not-an-address, 1\n")
    whole_run(keyed, esp, "manual__2026-11-29T07:00:00+00:00", path, settings.reports_dir)
    app = create_app()
    app.dependency_overrides.update(
        {
            ui.can_read: lambda: None,
            ui.can_edit: lambda: None,
            get_user: FakeUser,
            ui.get_ledger: lambda: keyed,
            ui.get_settings: lambda: settings,
        }
    )
    client = TestClient(app, base_url="http://testserver", root_path="/welcome-mailer")
    client.cookies.set("_token", "session-jwt")
    return client, esp


def csrf(client) -> str:
    page = client.get("/ui/contact", params={"email": "p1@example.com"}).text
    return page.split('name="csrf" value="')[1].split('"')[0]


def test_overview_lists_states_days_and_runs_with_links(setup):
    client, _ = setup
    page = client.get("/ui/").text
    assert "Contacts per state" in page and "delivered" in page and "Messages sent per day" in page
    assert "/welcome-mailer/ui/runs/manual__2026-11-29T07%3A00%3A00%2B00%3A00" in page
    assert 'href="/dags/welcome_emails/runs/manual__2026-11-29T07%3A00%3A00%2B00%3A00" target="_top"' in page


def test_contact_page_shows_every_attempt_and_source(setup):
    client, esp = setup
    message = esp.messages(to="p7@example.com")[-1]
    page = client.get("/ui/contact", params={"email": " P7@Example.COM "}).text
    assert "Person 7" in page and message["id"] in page and message["idempotency_key"] in page
    assert '<span class="mono">in.csv</span>, line 8' in page
    assert "not-an-address" not in page
    assert "invalid email" in client.get("/ui/contact", params={"email": "nope"}).text


def test_run_page_shows_the_report_and_rejected_rows_and_streams_the_csv(setup):
    client, _ = setup
    run = "/ui/runs/manual__2026-11-29T07%3A00%3A00%2B00%3A00"
    page = client.get(run).text
    assert "rows read" in page and "not-an-address" in page and "outcomes.csv" in page
    response = client.get(f"{run}/outcomes.csv")
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    assert len(response.text.splitlines()) == 41


def test_actions_need_this_session_s_csrf_token_and_a_same_origin(setup):
    client, _ = setup
    form = {"email": "p3@example.com", "reason": "asked by phone"}
    assert client.post("/ui/contact/suppress", data=form).status_code == 403
    assert client.post("/ui/contact/suppress", data={**form, "csrf": "forged"}).status_code == 403
    token = csrf(client)
    foreign = client.post(
        "/ui/contact/suppress", data={**form, "csrf": token}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    done = client.post(
        "/ui/contact/suppress",
        data={**form, "csrf": token},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"].startswith("/welcome-mailer/ui/contact?")
    page = client.get(done.headers["location"]).text
    assert "suppressed: never emailed" in page and "alice" in page and "asked by phone" in page


def test_erase_and_suppression_import_from_the_page(setup):
    client, _ = setup
    token = csrf(client)
    client.post(
        "/ui/contact/erase",
        data={"email": "p5@example.com", "reason": "GDPR #1", "csrf": token, "confirm": " P5@example.com"},
    )
    page = client.get("/ui/contact", params={"email": "p5@example.com"}).text
    assert "erased" in page and "Person 5" not in page and "GDPR #1" in page
    upload = {"file": ("list.csv", io.BytesIO(b"email\np6@example.com\nnew@example.com\n"), "text/csv")}
    done = client.post("/ui/suppressions", data={"reason": "CRM", "csrf": token}, files=upload)
    assert "list.csv: suppressed 2" in done.text


def test_an_anonymous_browser_is_sent_to_the_login(ledger):
    client = TestClient(create_app(), root_path="/welcome-mailer")
    page = client.get("/ui/", headers={"Accept": "text/html"})
    assert page.status_code == 401 and "/auth/login?next=" in page.text
    assert client.get("/ui/contact?email=a@b.c").status_code == 401
    assert client.post("/ui/contact/erase", data={"email": "a@b.c", "reason": "x"}).status_code == 401


@pytest.fixture
def real_auth(monkeypatch, setup):
    """Airflow's simple auth manager decides, from real signed tokens (the two lookups that need Airflow's
    metadata database answer "no team" and "not revoked")."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api import security
    from airflow.models.dag import DagModel
    from airflow.models.revoked_token import RevokedToken

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "test-secret")
    manager = SimpleAuthManager()
    monkeypatch.setattr(security, "get_auth_manager", lambda: manager)
    monkeypatch.setattr(DagModel, "get_team_name", staticmethod(lambda dag_id, session=None: None))
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, session=None: False))
    client, _ = setup
    for dependency in (ui.can_read, ui.can_edit, get_user):
        client.app.dependency_overrides.pop(dependency)

    def token(role: str) -> str:
        return manager.generate_jwt(SimpleAuthManagerUser(username=role, role=role), expiration_time_in_seconds=600)

    return client, token


def test_a_viewer_reads_but_cannot_act_and_a_user_can(real_auth):
    client, token = real_auth
    client.cookies.set("_token", token("viewer"))
    assert client.get("/ui/").status_code == 200
    form = {"email": "p2@example.com", "reason": "asked", "csrf": csrf(client)}
    refused = client.post("/ui/contact/suppress", data=form, headers={"Accept": "text/html"})
    assert refused.status_code == 403 and "Not allowed" in refused.text
    client.cookies.set("_token", token("user"))
    form["csrf"] = csrf(client)
    done = client.post("/ui/contact/suppress", data=form, follow_redirects=False)
    assert done.status_code == 303
    assert "suppressed: never emailed" in client.get(done.headers["location"]).text
    client.cookies.set("_token", "not-a-jwt")
    assert client.get("/ui/").status_code == 403


@pytest.mark.parametrize(
    "path",
    [
        "/ui/runs/nonexistent_run",
        "/ui/runs/nonexistent_run/outcomes.csv",
        "/ui/runs/%2E%2E",
        "/ui/runs/%2E%2E/outcomes.csv",
        "/ui/runs/%2E",
        "/ui/runs/manual__2026-11-29T07%3A00%3A00%2B00%3A01",
    ],
)
def test_a_run_the_ledger_does_not_know_is_not_found_and_no_file_is_read(setup, path, monkeypatch):
    client, _ = setup
    read = []
    monkeypatch.setattr(ui.operations, "run_view", lambda *args: read.append(args))
    response = client.get(path)
    assert response.status_code == 404 and read == []
    page = client.get(path, headers={"Accept": "text/html"})
    assert page.status_code == 404 and "Not found" in page.text and "no run" in page.text


@pytest.mark.parametrize("typed", ["", "p4@example.co", "someone@example.com"])
def test_erase_is_done_only_when_the_address_is_retyped(setup, typed):
    client, _ = setup
    form = {"email": "p4@example.com", "reason": "GDPR #2", "csrf": csrf(client), "confirm": typed}
    page = client.post("/ui/contact/erase", data=form).text
    assert "not done: to erase, retype the address" in page
    assert 'id="contact-state"' in page and "Person 4" in page, "still in the ledger"


def test_the_pages_open_no_browser_dialog(setup):
    """The UI's frame is sandboxed without allow-modals: a confirm() or alert() would be ignored there."""
    client, _ = setup
    pages = [client.get(p).text for p in ("/ui/", "/ui/contact?email=p1@example.com", "/ui/contact?email=x@y.org")]
    for page in pages:
        assert "confirm(" not in page and "alert(" not in page and "prompt(" not in page
    assert 'name="confirm"' in pages[1]
