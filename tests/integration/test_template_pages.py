"""Trying a template before a run, from the UI (in process, Airflow's auth overridden as in test_web_ui)
and from the CLI; and the record of which template and version each contact got (lookup, contact page,
run page). The real api-server's auth is proven by tests/stack; here every action is checked for CSRF
and edit rights the same way as the UI's other actions."""

from __future__ import annotations

import json

import pytest
from airflow.api_fastapi.core_api.security import get_user
from fastapi import HTTPException
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.support.runs import whole_run, write_contacts
from tests.support.templates import write_template
from welcome_mailer import cli
from welcome_mailer import operator_actions as actions
from welcome_mailer.ledger import Ledger, send_attempts, sent_contacts
from welcome_mailer.ledger.schema import operator_actions
from welcome_mailer.settings import Settings
from welcome_mailer.templates import load_template
from welcome_mailer.transports.http import HttpEmailProvider
from welcome_mailer.web import template_pages, ui
from welcome_mailer.web.app import create_app

RUN = "manual__2026-12-06T04:00:00+00:00"
SCRIPT = "<script>alert(1)</script>"


class FakeUser:
    def get_name(self) -> str:
        return "alice"


@pytest.fixture
def setup(ledger, start_esp, tmp_path):
    settings = Settings.from_env({"WELCOME_MAILER_HOME": str(tmp_path), "WELCOME_MAILER_DATA_ROOTS": str(tmp_path)})
    write_template(
        settings.templates_dir,
        "spring",
        "Spring, {{ name }}!\n",
        "Hi {{ name }} at {{ email }}\n",
        "<p>Hi {{ name }}</p>",
    )
    esp = start_esp(hold_rate=0, seed=4)
    path = write_contacts(tmp_path / "in.csv", [(SCRIPT, "s@example.com"), ("", "nameless@example.com")])
    app = create_app()
    app.dependency_overrides.update(
        {
            ui.can_read: lambda: None,
            ui.can_edit: lambda: None,
            get_user: FakeUser,
            ui.get_ledger: lambda: ledger,
            ui.get_settings: lambda: settings,
            template_pages.get_transport: lambda: HttpEmailProvider(esp.url, esp.api_key),
        }
    )
    client = TestClient(app, base_url="http://testserver", root_path="/welcome-mailer")
    client.cookies.set("_token", "session-jwt")
    return client, app, esp, path, settings


def counts(ledger) -> tuple[int, int, int]:
    with ledger.engine.connect() as conn:
        return tuple(
            conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (sent_contacts, send_attempts, operator_actions)
        )


def test_the_page_lists_templates_and_previews_a_file_row_with_the_html_sandboxed(setup):
    client = setup[0]
    page = client.get("/ui/templates").text
    assert ">spring</a>" in page and ">welcome</a>" in page and 'href="/welcome-mailer/ui/templates"' in page
    assert 'id="preview-subject">Welcome!<' in page and "Hi Ada Lovelace, Welcome!" in page  # sample values
    page = client.get("/ui/templates", params={"name": "spring", "csv_path": "in.csv", "line": 1}).text
    assert 'id="preview-subject">Spring, &lt;script&gt;alert(1)&lt;/script&gt;!<' in page
    assert "Hi &lt;script&gt;alert(1)&lt;/script&gt; at s@example.com" in page  # the text body, escaped by the page
    iframe = page.split('<iframe id="preview-html"')[1].split(">")[0]
    assert 'sandbox=""' in iframe
    # The HTML body escaped the name once; the srcdoc attribute escapes the whole body once more.
    assert 'srcdoc="&lt;p&gt;Hi &amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt;&lt;/p&gt;"' in iframe
    assert SCRIPT not in page and page.count("<script>") == 1, "no script but the page's own (base.html)"


def test_a_preview_says_why_a_row_would_be_rejected_and_what_is_wrong_with_a_template(setup):
    client, _, _, _, settings = setup
    page = client.get("/ui/templates", params={"name": "spring", "csv_path": "in.csv", "line": 2}).text
    assert 'id="preview-refused"' in page and "missing value" in page
    write_template(settings.templates_dir, "broken", "Hi\n", "{% if %}\n")
    page = client.get("/ui/templates", params={"name": "broken"}).text
    assert 'id="preview-error"' in page and "broken/body.txt, line 1" in page
    page = client.get("/ui/templates", params={"name": "spring", "csv_path": "/etc/hostname"}).text
    assert "outside the allowed data roots" in page


def test_a_test_send_goes_to_the_typed_address_audited_and_never_a_contacts_attempt(setup, ledger):
    client, _, esp, _, _ = setup
    page = client.get("/ui/templates", params={"name": "spring", "csv_path": "in.csv", "line": 1}).text
    token = page.split('name="csrf" value="')[1].split('"')[0]
    form = {"name": "spring", "csv_path": "in.csv", "line": "1", "to": "Me@Example.com"}
    assert client.post("/ui/templates/test-send", data=form).status_code == 403  # no CSRF token
    before = counts(ledger)
    response = client.post("/ui/templates/test-send", data=form | {"csrf": token}, follow_redirects=False)
    assert response.status_code == 303 and "test+sent+to+me%40example.com" in response.headers["location"]
    [message] = esp.messages()
    assert message["to"] == "me@example.com" and message["idempotency_key"].startswith("test-")
    assert (message["subject"], message["text"]) == (f"Spring, {SCRIPT}!", f"Hi {SCRIPT} at s@example.com")
    assert message["html"] == "<p>Hi &lt;script&gt;alert(1)&lt;/script&gt;</p>"
    after = counts(ledger)
    assert after[:2] == before[:2] == (0, 0) and after[2] == before[2] + 1  # one audit row, no contact, no attempt
    with ledger.engine.connect() as conn:
        audit = conn.execute(select(operator_actions)).one()
    detail = json.loads(audit.detail)
    assert (audit.action, audit.actor, audit.email) == ("test_send", "alice", "me@example.com")
    template = load_template("spring", setup[4].templates_dir)
    assert detail["template_hash"] == template.hash
    assert detail["rendered_for"] == "line 1 of a file" and "s@example.com" not in audit.detail  # no contact's address
    assert detail["provider_message_id"] == message["id"]
    # Erasing the address the test went to (GDPR) leaves it nowhere in the audit trail.
    actions.erase(Ledger(ledger.engine, erase_key=b"k"), "me@example.com", "alice", "GDPR", [])
    with ledger.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(operator_actions))]
    assert rows and "me@example.com" not in json.dumps(rows, default=str)


def test_a_test_send_needs_edit_rights(setup):
    client, app, esp, _, _ = setup

    def refuse() -> None:
        raise HTTPException(403, "no edit access")

    app.dependency_overrides[ui.can_edit] = refuse
    token = client.get("/ui/templates").text.split('name="csrf" value="')[1].split('"')[0]
    response = client.post("/ui/templates/test-send", data={"name": "welcome", "to": "me@example.com", "csrf": token})
    assert response.status_code == 403 and esp.messages() == []


def test_lookup_and_pages_show_the_template_and_version_each_contact_got(setup, ledger):
    client, _, esp, path, settings = setup
    whole_run(ledger, esp, RUN, path, settings.reports_dir)  # the built-in welcome: nameless rows greeted too
    template = load_template("welcome", None)
    view = actions.lookup(ledger, "s@example.com")
    assert {(a["template"], a["template_hash"]) for a in view.history} == {("welcome", template.hash)}
    page = client.get("/ui/contact", params={"email": "s@example.com"}).text
    assert f'welcome <span class="mono">{template.version}</span>' in page
    run_page = client.get(f"/ui/runs/{RUN.replace(':', '%3A').replace('+', '%2B')}").text
    assert f"welcome (version {template.version})" in run_page


def test_cli_lists_previews_and_test_sends(setup, ledger, ledger_url, monkeypatch, capsys):
    if not ledger_url.startswith("sqlite"):
        pytest.skip("the CLI's own ledger: one backend is enough")
    _, _, esp, path, settings = setup
    monkeypatch.setenv("WELCOME_MAILER_TEMPLATES_DIR", str(settings.templates_dir))
    assert cli.main(["template", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["spring", "welcome"]
    assert cli.main(["template", "preview", "spring", "--file", str(path), "--line", "1"]) == 0
    out = capsys.readouterr().out
    assert f"Subject: Spring, {SCRIPT}!" in out and "<p>Hi &lt;script&gt;" in out
    assert cli.main(["template", "preview", "spring", "--file", str(path), "--line", "2"]) == 1
    assert "missing value" in capsys.readouterr().err
    assert cli.main(["template", "preview", "nope"]) == 2
    assert "unknown template 'nope'" in capsys.readouterr().err
    monkeypatch.setenv("AIRFLOW_CONN_ESP_DEFAULT", json.dumps(esp.connection))
    args = ["template", "test-send", "spring", "--name", "Tess", "--to", "me@example.com", "--url", ledger_url]
    assert cli.main(args) == 0
    assert "accepted as" in capsys.readouterr().out
    [message] = esp.messages()
    assert (message["to"], message["subject"]) == ("me@example.com", "Spring, Tess!")
    with ledger.engine.connect() as conn:
        assert conn.execute(select(operator_actions.c.actor, operator_actions.c.action)).one()[1] == "test_send"


def test_the_preview_renders_a_rows_columns_and_names_a_missing_one(setup, ledger_url, monkeypatch, capsys, tmp_path):
    """CLI and UI: a template using {{ city }} previewed for a row of a file (its fifth column), for the
    sample values (a seed-format row), and refused for a file without such a column."""
    if not ledger_url.startswith("sqlite"):
        pytest.skip("no ledger involved: one backend is enough")
    client, _, _, _, settings = setup
    write_template(settings.templates_dir, "local", "Hi {{ city }}\n", "{{ name }} of {{ street }}, {{ city }}\n")
    seed = tmp_path / "seed.csv"
    seed.write_text("Ann Lee, ann@example.com, 555, 1 Main St, Paris, IDF, 75001\n")
    monkeypatch.setenv("WELCOME_MAILER_TEMPLATES_DIR", str(settings.templates_dir))
    assert cli.main(["template", "preview", "local", "--file", str(seed)]) == 0
    assert "Subject: Hi Paris\n\nAnn Lee of 1 Main St, Paris" in capsys.readouterr().out
    assert cli.main(["template", "preview", "local"]) == 0
    assert "Subject: Hi London\n\nAda Lovelace of 12 St James's Square, London" in capsys.readouterr().out
    headed = tmp_path / "headed.csv"
    headed.write_text("Email, Name, Town\nann@example.com, Ann, Paris\n")
    assert cli.main(["template", "preview", "local", "--file", str(headed), "--line", "2"]) == 2
    err = capsys.readouterr().err
    assert "local/subject.txt, line 1: no contact has a value for city" in err and "name, email, town" in err
    page = client.get("/ui/templates", params={"name": "local", "csv_path": str(seed), "line": 1}).text
    assert "Ann Lee of 1 Main St, Paris" in page
    page = client.get("/ui/templates", params={"name": "local", "csv_path": str(headed), "line": 2}).text
    assert "no contact has a value for city" in page
