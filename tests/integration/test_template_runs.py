"""A run with the operator's template, through both transports: each contact gets their own values,
proven from the mocks' own logs; the checks at parse; one version per run across a mid-run edit."""

from __future__ import annotations

import csv
import email
import email.policy
import json
import time

import pytest
from sqlalchemy import func, select

from tests.support.runs import finish
from tests.support.smtp_relay import FROM_EMAIL, launch_relay
from tests.support.templates import write_template
from welcome_mailer import pipeline
from welcome_mailer.ledger import sent_contacts, staged_contacts
from welcome_mailer.ledger.schema import run_templates
from welcome_mailer.templates import TemplateError, load_template
from welcome_mailer.transports.http import HttpEmailProvider
from welcome_mailer.transports.smtp import SmtpEmailProvider, SmtpSettings

SCRIPT = "<script>alert(1)</script>"
SUBJECT = "Welcome aboard, {{ name }}!"
TEXT = "Hi {{ name }},\n\nyour address is {{ email }}.\n"
HTML = "<p>Hi <b>{{ name }}</b>,</p>\n<p>your address is {{ email }}.</p>\n"


def expected(name: str, address: str) -> tuple[str, str, str]:
    escaped = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        f"Welcome aboard, {name}!",
        f"Hi {name},\n\nyour address is {address}.",  # Jinja drops the file's last line break
        f"<p>Hi <b>{escaped}</b>,</p>\n<p>your address is {address}.</p>",
    )


@pytest.fixture
def folder(tmp_path):
    write_template(tmp_path / "templates", "spring", SUBJECT, TEXT, HTML)
    return tmp_path / "templates"


@pytest.fixture
def contacts(tmp_path):
    """name -> email, a script for a name among them, and one row without a name (line 4)."""
    names = {f"User {i}": f"user{i}@example.com" for i in range(60)} | {SCRIPT: "script@example.com"}
    path = tmp_path / "contacts.csv"
    rows = [f'"{n}", {e}\n' for n, e in names.items()]
    path.write_text("".join(rows[:3]) + ", nameless@example.com\n" + "".join(rows[3:]))
    return path, names


def parse_claim_send(ledger, transport, run_id, path, tmp_path, template) -> dict:
    ledger.renew_lease(run_id)
    parsed = pipeline.parse_file(ledger, run_id, path, tmp_path / f"{run_id}-rejected.csv", template=template)
    for batch in pipeline.claim_contacts(ledger, run_id, 20, 1024)["batches"]:
        pipeline.send_batch(ledger, transport, run_id, batch, 20)
    return parsed


def test_http_each_contact_gets_their_own_rendered_text_and_html(ledger, start_esp, folder, contacts, tmp_path):
    path, names = contacts
    esp = start_esp(hold_rate=0, seed=5)
    template = load_template("spring", folder)
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        parsed = parse_claim_send(ledger, client, "run", path, tmp_path, template)
        finish(ledger, client, "run")
    assert (parsed["template"], parsed["template_hash"]) == ("spring", template.hash)
    assert parsed["contacts"] == len(names) and parsed["rejected"] == 1
    [rejected] = list(csv.DictReader((tmp_path / "run-rejected.csv").open()))
    assert rejected["line_no"] == "4" and "missing value" in rejected["reason"] and "name" in rejected["reason"]
    by_address = {address: name for name, address in names.items()}
    messages = esp.messages()
    assert {m["to"] for m in messages} == set(by_address)  # resends included: nobody else, nobody missing
    for message in messages:
        assert (message["subject"], message["text"], message["html"]) == expected(
            by_address[message["to"]], message["to"]
        )
    script = next(m for m in messages if m["to"] == "script@example.com")
    assert SCRIPT not in script["html"] and "&lt;script&gt;alert(1)&lt;/script&gt;" in script["html"]


def test_smtp_sends_multipart_alternative_with_each_contacts_values(ledger, folder, contacts, tmp_path):
    path, names = contacts
    relay = launch_relay(tmp_path, tmp_path / "maildir", delivered_rate=1.0, bounced_rate=0, blocked_rate=0)
    try:
        settings = SmtpSettings("127.0.0.1", relay.port, from_email=FROM_EMAIL, use_ssl=False, starttls=False)
        with SmtpEmailProvider(settings) as transport:
            parse_claim_send(ledger, transport, "run", path, tmp_path, load_template("spring", folder))
        entries = relay.messages()
    finally:
        relay.stop()
    by_address = {address: name for name, address in names.items()}
    assert sorted(e["to"] for e in entries) == sorted(by_address)
    for entry in entries:
        message = email.message_from_bytes(entry["raw"], policy=email.policy.default)  # the relay's raw MIME
        assert message.get_content_type() == "multipart/alternative"
        text_part, html_part = message.iter_parts()
        subject, text, html = expected(by_address[entry["to"]], entry["to"])
        assert str(message["Subject"]) == subject
        assert (text_part.get_content_type(), html_part.get_content_type()) == ("text/plain", "text/html")
        assert text_part.get_content().replace("\r\n", "\n").rstrip("\n") == text
        assert html_part.get_content().replace("\r\n", "\n").rstrip("\n") == html


def test_the_run_keeps_its_snapshot_when_the_files_change_mid_run(ledger, start_esp, folder, contacts, tmp_path):
    """Parsed with one version; the files change before the sends, and again before the resends; a retried
    parse reads the new files: every message of the run, resends included, is the first version."""
    path, names = contacts
    esp = start_esp(hold_rate=0, blocked_rate=0.3, delivered_rate=0.6, bounced_rate=0.1, seed=3)
    first = load_template("spring", folder)
    ledger.renew_lease("run")
    pipeline.parse_file(ledger, "run", path, tmp_path / "rejected.csv", template=first)
    write_template(folder, "spring", "Changed {{ name }}", "Changed\n", "<p>Changed</p>")
    again = pipeline.parse_file(
        ledger, "run", path, tmp_path / "rejected.csv", template=load_template("spring", folder)
    )
    assert again["template_hash"] == first.hash  # the first snapshot of a run stands
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        for batch in pipeline.claim_contacts(ledger, "run", 20, 1024)["batches"]:
            pipeline.send_batch(ledger, client, "run", batch, 20)
        write_template(folder, "spring", "Changed again", "Again\n")
        finish(ledger, client, "run")
    messages = esp.messages()
    by_address = {address: name for name, address in names.items()}
    assert len(messages) > len(by_address)  # blocked contacts were resent
    for message in messages:
        assert (message["subject"], message["text"], message["html"]) == expected(
            by_address[message["to"]], message["to"]
        )


@pytest.mark.parametrize(
    ("files", "error"),
    [
        (None, r"unknown template 'spring'"),
        (("Hi\n", "Hi {{ name }\n"), r"spring/body\.txt, line 1"),
        (("Hi\n", "ok\n", "<p>\n{% for x in %}\n"), r"spring/body\.html, line 2"),
        (
            ("Hi {{ shoe_size }}\n", "ok\n"),
            r"spring/subject\.txt, line 1: no contact has a value for shoe_size: \S*contacts\.csv has no such column",
        ),
    ],
)
def test_a_template_that_cannot_be_used_fails_the_parse_before_anything_is_staged(
    ledger, contacts, tmp_path, files, error
):
    folder = tmp_path / "templates"
    folder.mkdir()
    if files is not None:
        write_template(folder, "spring", *files)
    ledger.renew_lease("run")
    with pytest.raises(TemplateError, match=error):
        pipeline.parse_file(
            ledger, "run", contacts[0], tmp_path / "rejected.csv", template=load_template("spring", folder)
        )
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(staged_contacts)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(run_templates)).scalar_one() == 0


def test_the_builtin_default_is_snapshot_and_sends_todays_text(ledger, start_esp, contacts, tmp_path):
    path, names = contacts
    esp = start_esp(hold_rate=0, delivered_rate=1.0, bounced_rate=0, blocked_rate=0)
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        parsed = parse_claim_send(ledger, client, "run", path, tmp_path, load_template("welcome", None))
    assert parsed["template"] == "welcome" and parsed["rejected"] == 0  # the nameless row is greeted "Hi there"
    deadline = time.monotonic() + 10
    while len(esp.messages()) < len(names) + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    texts = {m["to"]: (m["subject"], m["text"], "html" in m) for m in esp.messages()}
    assert texts["nameless@example.com"] == ("Welcome!", "Hi there, Welcome!", False)
    assert texts["user1@example.com"] == ("Welcome!", "Hi User 1, Welcome!", False)


def test_a_contact_without_a_name_is_staged_with_an_empty_name(ledger):
    """On Postgres too: COPY read the empty name as NULL (the column is NOT NULL) and the parse failed."""
    from welcome_mailer.contacts import Contact

    ledger.stage("run", [Contact("nameless@example.com", "", 4), Contact("ann@example.com", "Ann", 5)])
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(staged_contacts.c.email, staged_contacts.c.name).order_by(staged_contacts.c.email))
        assert [tuple(r) for r in rows] == [("ann@example.com", "Ann"), ("nameless@example.com", "")]


CITIES = ["San Diego", "Paris", "Zoë's <Town>", "Lyon, Rhône"]


@pytest.mark.parametrize("header", [False, True])
def test_each_contact_gets_their_own_columns_in_sends_and_resends(ledger, start_esp, tmp_path, header):
    """{{ city }} and {{ zip_code }} (a header's name; ``zip`` in the seed format): each message carries its
    own row's values, resends of blocked contacts too (they render from the ledger); a row without a city
    is rejected with the reason; nothing else of the row is kept."""
    zip_variable = "zip_code" if header else "zip"
    folder = tmp_path / "templates"
    write_template(
        folder, "local", "Hello {{ city }}", f"Hi {{{{ name }}}} of {{{{ city }}}} {{{{ {zip_variable} }}}}\n"
    )
    rows = [
        (f"User {i}", f"user{i}@example.com", f"555-{i}", f"{i} Main St", CITIES[i % 4], "CA", f"9{i:04}")
        for i in range(80)
    ]
    lines = [", ".join(f'"{v}"' for v in row) + "\n" for row in rows]
    lines[5] = '"No City", nocity@example.com, 555, 1 Main St, "", CA, 90000\n'
    head = "Name, Email, Phone, Street, City, State, Zip Code\n" if header else ""
    path = tmp_path / "contacts.csv"
    path.write_text(head + "".join(lines))
    esp = start_esp(hold_rate=0, blocked_rate=0.3, delivered_rate=0.7, bounced_rate=0, seed=11)
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        parsed = parse_claim_send(ledger, client, "run", path, tmp_path, load_template("local", folder))
        finish(ledger, client, "run")
    assert parsed["rejected"] == 1
    [rejected] = list(csv.DictReader((tmp_path / "run-rejected.csv").open()))
    assert rejected["line_no"] == str(6 + header) and "missing value ('city' is undefined)" in rejected["reason"]
    expected_rows = {row[1]: row for n, row in enumerate(rows) if n != 5}
    messages = esp.messages()
    assert len(messages) > len(expected_rows), "blocked contacts were resent"
    assert {m["to"] for m in messages} == set(expected_rows)
    for message in messages:
        name, _, _, _, city, _, zip_code = expected_rows[message["to"]]
        assert (message["subject"], message["text"]) == (f"Hello {city}", f"Hi {name} of {city} {zip_code}")
    with ledger.engine.connect() as conn:
        kept = [json.loads(f) for f in conn.execute(select(sent_contacts.c.fields)).scalars()]
    assert len(kept) == len(expected_rows) and all(set(f) == {"city", zip_variable} for f in kept), "only what it uses"


def test_a_template_of_name_and_email_writes_no_fields(ledger, start_esp, contacts, folder, tmp_path):
    path, names = contacts
    esp = start_esp(hold_rate=0, delivered_rate=1.0, bounced_rate=0, blocked_rate=0)
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        for run_id, template in (
            ("spring", load_template("spring", folder)),
            ("welcome", load_template("welcome", None)),
        ):
            path.write_text("".join(f'"{n}", {run_id}-{e}\n' for n, e in names.items()))
            ledger.renew_lease(run_id)
            pipeline.parse_file(ledger, run_id, path, tmp_path / "rejected.csv", template=template)
            with ledger.engine.connect() as conn:
                staged = conn.execute(select(staged_contacts.c.fields).where(staged_contacts.c.run_id == run_id))
                assert set(staged.scalars()) == {None}
            for batch in pipeline.claim_contacts(ledger, run_id, 20, 1024)["batches"]:
                pipeline.send_batch(ledger, client, run_id, batch, 20)
    with ledger.engine.connect() as conn:
        assert set(conn.execute(select(sent_contacts.c.fields)).scalars()) == {None}
        assert conn.execute(select(func.count()).select_from(sent_contacts)).scalar_one() == 2 * len(names)


def test_a_column_the_file_lacks_fails_before_anything_is_stored(ledger, tmp_path):
    folder = tmp_path / "templates"
    write_template(folder, "local", "Hello\n", "Line one\n{{ company }}\n")
    path = tmp_path / "contacts.csv"
    path.write_text("Email, Name, Company Name\nann@example.com, Ann, Acme\n")
    ledger.renew_lease("run")
    with pytest.raises(
        TemplateError,
        match=r"local/body\.txt, line 2: no contact has a value for company: "
        r"\S*contacts\.csv has no such column \(its columns: name, email, company_name\)",
    ):
        pipeline.parse_file(ledger, "run", path, tmp_path / "rejected.csv", template=load_template("local", folder))
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(staged_contacts)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(run_templates)).scalar_one() == 0
    write_template(folder, "local", "Hello\n", "Line one\n{{ company_name }}\n")  # mended, the parse retried
    parsed = pipeline.parse_file(
        ledger, "run", path, tmp_path / "rejected.csv", template=load_template("local", folder)
    )
    assert parsed["contacts"] == 1
