"""The ledger's pages (welcome_mailer.web.ui) in process, on a real ledger: overview, contact lookup, run
page, streamed CSV, and actions guarded against cross-site requests. Airflow's own authentication is
replaced here by a fixed user (its dependencies are overridden); the Celery stack's tests prove the real
one (tests/stack/test_ui_browser.py, tests/stack/test_celery_stack.py)."""

from __future__ import annotations

import io

import pytest
from airflow.api_fastapi.core_api.security import get_user
from fastapi.testclient import TestClient

from tests.support.runs import whole_run, write_contacts
from welcome_mailer.ledger import Ledger
from welcome_mailer.settings import Settings
from welcome_mailer.web import ui
from welcome_mailer.web.app import create_app

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
    monkeypatch.setattr(ui.operator_actions, "run_view", lambda *args: read.append(args))
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


RUN = "manual__2026-11-29T07:00:00+00:00"


def test_every_count_links_to_the_list_filtered_to_it(setup):
    client, _ = setup
    overview = client.get("/ui/").text
    assert 'href="/welcome-mailer/ui/contacts?state=delivered"' in overview
    assert "/welcome-mailer/ui/contacts?run=manual__2026-11-29T07%3A00%3A00%2B00%3A00&amp;state=bounced" in overview
    run = client.get("/ui/runs/manual__2026-11-29T07%3A00%3A00%2B00%3A00").text
    assert "contacts?run=manual__2026-11-29T07%3A00%3A00%2B00%3A00&amp;state=delivered" in run
    listed = client.get("/ui/contacts", params={"run": RUN, "state": "delivered"}).text
    emails = [e.split('"')[0] for e in listed.split('name="email" value="')[1:]]
    report = client.get("/ui/runs/manual__2026-11-29T07%3A00%3A00%2B00%3A00").text
    delivered = report.split("outcome: delivered</td>")[1].split("</a>")[0].rsplit(">", 1)[1]
    assert len(emails) == int(delivered) > 0


def test_the_list_pages_filters_searches_and_exports(setup):
    client, _ = setup
    first = client.get("/ui/contacts", params={"q": "P1"}).text
    assert "p1@example.com" in first and "p10@example.com" in first and "p2@example.com" not in first
    page = client.get("/ui/contacts").text
    assert page.count('name="email" value="') == 40 and 'id="next-page"' not in page
    link = client.get("/ui/contacts", params={"size": 5}).text  # the page size is not the caller's
    assert link.count('name="email" value="') == 40
    export = client.get("/ui/contacts.csv", params={"q": "p1", "state": ""})
    assert (
        export.headers["content-type"].startswith("text/csv") and "attachment" in export.headers["content-disposition"]
    )
    rows = export.text.splitlines()
    assert rows[0] == "email,name,state,run_id,attempts,source_line,last_change_utc" and len(rows) == 1 + 11
    echoed = client.get("/ui/contacts", params={"q": "x" * 10_000}).text
    assert "x" * 200 in echoed and "x" * 321 not in echoed, "a long search is cut when echoed"


def bulk(client, **form):
    page = client.get("/ui/contacts", params={"q": "p2"}).text
    token = page.split('name="csrf" value="')[1].split('"')[0]
    return client.post("/ui/contacts/bulk", data={"csrf": token, "back": "q=p2", **form})


def test_bulk_suppress_needs_a_selection_a_reason_and_the_box_ticked_and_is_audited(setup):
    client, _ = setup
    chosen = ["p2@example.com", "p20@example.com", "p21@example.com"]
    assert "tick the box to confirm" in bulk(client, action="suppress", reason="CRM", email=chosen).text
    assert "select at least one contact" in bulk(client, action="suppress", reason="CRM", confirm="yes").text
    assert "say why" in bulk(client, action="suppress", reason=" ", email=chosen, confirm="yes").text
    assert "no bulk action" in bulk(client, action="erase", reason="x", email=chosen, confirm="yes").text
    assert (
        client.post("/ui/contacts/bulk", data={"action": "suppress", "reason": "x", "email": chosen}).status_code == 403
    )
    done = bulk(client, action="suppress", reason="CRM cleanup", email=chosen, confirm="yes")
    assert "suppressed 3 of 3 selected" in done.text and done.url.params["q"] == "p2"
    for email in chosen:
        page = client.get("/ui/contact", params={"email": email}).text
        assert (
            ">suppressed</span>" in page and "CRM cleanup" in page and "alice" in page and "bulk, from the list" in page
        )


def test_bulk_release_releases_the_failed_among_the_selection(setup):
    client, _ = setup
    ledger = client.app.dependency_overrides[ui.get_ledger]()
    from welcome_mailer.ledger.schema import sent_contacts

    with ledger.engine.begin() as conn:
        conn.execute(
            sent_contacts.update()
            .where(sent_contacts.c.email.in_(["p2@example.com", "p22@example.com"]))
            .values(status="failed")
        )
    done = bulk(
        client,
        action="release",
        reason="block lifted",
        email=["p2@example.com", "p22@example.com", "p23@example.com"],
        confirm="yes",
    )
    assert "released 2 of 3 selected" in done.text
    page = client.get("/ui/contact", params={"email": "p22@example.com"}).text
    assert "block lifted" in page and "release" in page


def test_the_run_csv_is_named_for_what_it_is_and_says_when_actions_changed_it(setup):
    client, _ = setup
    run = "/ui/runs/manual__2026-11-29T07%3A00%3A00%2B00%3A00"
    page = client.get(run).text
    assert "current state of this run's contacts" in page and 'id="changed-since-report"' not in page
    bulk(client, action="suppress", reason="CRM", email=["p2@example.com", "p24@example.com"], confirm="yes")
    page = client.get(run).text
    assert 'id="changed-since-report"' in page and "2 of this run's contacts changed since its report" in page


def test_a_released_contact_says_when_and_by_whom_not_the_internal_marker(setup):
    client, _ = setup
    ledger = client.app.dependency_overrides[ui.get_ledger]()
    from welcome_mailer.ledger.schema import sent_contacts

    with ledger.engine.begin() as conn:
        conn.execute(sent_contacts.update().where(sent_contacts.c.email == "p8@example.com").values(status="failed"))
    form = {"email": "p8@example.com", "reason": "block lifted", "csrf": csrf(client)}
    page = client.post("/ui/contact/release", data=form).text
    assert "released: the next run that lists it retries it" in page
    released = page.split('id="released">')[1].split("</span>")[0]
    assert released.startswith("released by alice on <time") and "2000-01-01" not in page
    assert "2000-01-01" not in client.get("/ui/contacts", params={"state": "failed"}).text


def test_an_erased_address_says_its_history_was_erased_and_the_result_is_in_words(setup):
    client, _ = setup
    form = {"email": "p9@example.com", "reason": "GDPR", "csrf": csrf(client), "confirm": "p9@example.com"}
    page = client.post("/ui/contact/erase", data=form).text
    notice = page.split('role="status">')[1].split("</div>")[0]
    assert notice.startswith("erased: the contact&#39;s address and name, the record of ")
    assert "sent_contacts" not in notice and "send_attempts" not in notice and "never emailed again" in notice
    assert "History erased on <time" in page and "No email was ever sent" not in page


def test_long_input_is_cut_when_echoed(setup):
    client, _ = setup
    page = client.get("/ui/contact", params={"email": "y" * 10_000}).text
    assert "email longer than" in page and "y" * 321 not in page
    assert "n" * 501 not in client.get("/ui/", params={"notice": "n" * 10_000}).text


def test_times_are_in_airflow_s_time_zone_with_utc_on_hover(setup, monkeypatch):
    client, _ = setup
    monkeypatch.setenv("AIRFLOW__CORE__DEFAULT_TIMEZONE", "Asia/Kolkata")
    page = client.get("/ui/contact", params={"email": "p1@example.com"}).text
    stamp = page.split("<th>last change</th><td>")[1].split("</td>")[0]
    utc = stamp.split('title="')[1].split(' UTC"')[0]
    shown = stamp.split('">')[1].split("</time>")[0]
    from datetime import datetime, timedelta

    assert shown.endswith(" IST")
    local = datetime.fromisoformat(shown.removesuffix(" IST"))
    assert local - datetime.fromisoformat(utc) == timedelta(hours=5, minutes=30)


def test_the_list_filters_by_the_source_file_as_shown(setup):
    client, _ = setup
    assert client.get("/ui/contacts", params={"file": "in.csv"}).text.count('name="email" value="') == 40
    assert "No contact matches" in client.get("/ui/contacts", params={"file": "other.csv"}).text


def test_a_search_too_broad_for_the_ledger_says_how_to_narrow_it(setup, monkeypatch):
    from welcome_mailer import contact_list

    def too_long(*args, **kwargs):
        raise contact_list.SearchTooBroad("the search took more than 5 s: narrow it")

    monkeypatch.setattr(contact_list, "page", too_long)
    page = setup[0].get("/ui/contacts", params={"q": "example"})
    assert page.status_code == 200 and "narrow it" in page.text and "No contact matches" in page.text
