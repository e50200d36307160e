"""csv_path and the reports directory on object storage (a local S3 API): parsing streams the object to a
local copy, reports go back to the bucket, and a bad bucket, key or access fails with what to do."""

from __future__ import annotations

import csv
import io
import json

import pytest

from include.tools.generate_contacts import write_file
from welcome_mailer.pipeline import parse_file
from welcome_mailer.report import write_report
from welcome_mailer.run_files import InvalidCsvPath, resolve_csv_path, run_directory
from welcome_mailer.storage import describe, location, readable_csv

CONN_ID = "wm_test_s3"  # its own id: Airflow caches one filesystem per connection id
DENIED_CONN_ID = "wm_test_s3_denied"


@pytest.fixture
def s3(s3_server, monkeypatch):
    for name, value in s3_server.connection_env(CONN_ID).items():
        monkeypatch.setenv(name, value)
    return s3_server


def test_a_file_on_s3_is_parsed_and_its_rejected_rows_go_back_to_the_bucket(s3, ledger, tmp_path):
    source = write_file(tmp_path / "contacts.csv", rows=3000, seed=5)
    uri = s3.upload("wm-parse", "incoming/contacts.csv", source)
    resolved = resolve_csv_path(f"s3://{CONN_ID}@wm-parse/incoming/contacts.csv", ("s3://wm-parse/incoming",))
    rejected_csv = run_directory(location("s3://wm-parse/reports", CONN_ID), "manual__1") / "rejected.csv"

    with readable_csv(resolved, "unused_default") as local_file:
        assert local_file.read_bytes() == source.read_bytes()
        from_s3 = parse_file(ledger, "run-s3", local_file, rejected_csv, chunk_size=500, source=describe(resolved))
    assert not local_file.exists(), "the local copy is removed after parsing"
    from_disk = parse_file(ledger, "run-local", source, tmp_path / "rejected.csv", chunk_size=500)

    assert from_s3["csv_path"] == uri, "the report names the object, not the temporary copy"
    assert from_s3["rejected_csv"] == "s3://wm-parse/reports/manual__1/rejected.csv"
    same = ("rows_read", "contacts", "duplicates_in_file", "rejected", "encoding", "header_skipped")
    assert {k: from_s3[k] for k in same} == {k: from_disk[k] for k in same}
    assert from_s3["rejected"] > 0
    rows = list(csv.reader(io.StringIO(s3.read("wm-parse", "reports/manual__1/rejected.csv").decode())))
    assert rows == list(csv.reader(io.StringIO((tmp_path / "rejected.csv").read_text())))


def test_the_report_is_written_to_the_bucket(s3, monkeypatch):
    s3.client().create_bucket(Bucket="wm-reports")
    directory = run_directory(location("s3://wm-reports/runs", CONN_ID), "manual__2026-01-01T00:00:00+00:00")
    report = {"run_id": "r1", "csv_path": "s3://wm-reports/in.csv", "rows_read": 0}
    monkeypatch.setattr("welcome_mailer.report.render_markdown", lambda r: "| item | value |\n")  # not the point
    _, markdown_path = write_report(report, directory)
    key = "runs/manual__2026-01-01T00_00_00_00_00"
    assert json.loads(s3.read("wm-reports", f"{key}/report.json")) == report
    assert s3.read("wm-reports", f"{key}/report.md").decode().startswith("# Welcome emails: r1")
    assert describe(str(markdown_path)) == f"s3://wm-reports/{key}/report.md", "shown without the connection id"
    assert [b["Name"] for b in s3.client().list_buckets()["Buckets"]].count("wm-reports") == 1


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://wm-no-such-bucket/incoming/a.csv", "does not exist: no such bucket or key"),
        ("s3://wm-parse-missing/incoming/missing.csv", "does not exist: no such bucket or key"),
        ("s3://wm-parse-missing/incoming", "is not a file"),
    ],
)
def test_a_missing_bucket_or_key_is_refused_with_what_to_do(s3, tmp_path, uri, message):
    s3.upload("wm-parse-missing", "incoming/present.csv", write_file(tmp_path / "p.csv", rows=10, seed=1))
    with pytest.raises(InvalidCsvPath, match=message), readable_csv(uri, CONN_ID):
        pytest.fail("no local copy for a missing object")


def test_denied_access_is_refused_with_the_connection_to_check(s3_denying_server, monkeypatch):
    for name, value in s3_denying_server.connection_env(DENIED_CONN_ID).items():
        monkeypatch.setenv(name, value)
    denied = pytest.raises(InvalidCsvPath, match=f"access denied .*connection '{DENIED_CONN_ID}'")
    with denied, readable_csv("s3://wm-any/incoming/a.csv", DENIED_CONN_ID):
        pytest.fail("no local copy without access")


def test_the_templates_folder_may_be_on_object_storage(s3, ledger, start_esp, tmp_path, monkeypatch, capsys):
    """WELCOME_MAILER_TEMPLATES_DIR=s3://...: the templates are listed, loaded and snapshot from the bucket,
    named without the connection id, and a run renders each contact's own values from them."""
    from tests.support.templates import write_template
    from welcome_mailer import cli, pipeline
    from welcome_mailer.settings import Settings
    from welcome_mailer.templates import TemplateError, list_templates, load_template
    from welcome_mailer.transports.http import HttpEmailProvider

    local = write_template(tmp_path / "upload", "spring", "Hello {{ city }}\n", "Hi {{ name }} of {{ city }}\n")
    for part in local.iterdir():
        s3.upload("wm-templates", f"folder/spring/{part.name}", part)
    monkeypatch.setenv("WELCOME_MAILER_TEMPLATES_DIR", f"s3://{CONN_ID}@wm-templates/folder")
    settings = Settings.from_env()
    assert settings.templates_dir == f"s3://{CONN_ID}@wm-templates/folder"
    folder = location(settings.templates_dir, settings.storage_conn_id)
    assert [t.name for t in list_templates(folder)] == ["spring", "welcome"]
    spring = load_template("spring", folder)
    assert (spring.subject, spring.text, spring.origin) == (
        "Hello {{ city }}",
        "Hi {{ name }} of {{ city }}\n",
        "s3://wm-templates/folder/spring",
    )
    assert spring.hash == load_template("spring", local.parent).hash, "the same content, the same version"
    with pytest.raises(TemplateError, match="unknown template 'autumn'"):
        load_template("autumn", folder)

    assert cli.main(["template", "list"]) == 0
    assert f"spring\t{spring.version}\tsubject, text\ts3://wm-templates/folder/spring" in capsys.readouterr().out

    path = tmp_path / "contacts.csv"
    path.write_text(
        "".join(f"User {i}, u{i}@example.com, 555, {i} Main St, City {i}, CA, 9{i:04}\n" for i in range(30))
    )
    esp = start_esp(hold_rate=0, delivered_rate=1.0, bounced_rate=0, blocked_rate=0)
    ledger.renew_lease("run")
    parsed = pipeline.parse_file(ledger, "run", path, tmp_path / "rejected.csv", template=spring)
    assert parsed["template_hash"] == spring.hash
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        for batch in pipeline.claim_contacts(ledger, "run", 10, 1024)["batches"]:
            pipeline.send_batch(ledger, client, "run", batch, 10)
    messages = esp.messages()
    assert len(messages) == 30
    for message in messages:
        n = message["to"][1:].split("@")[0]
        assert (message["subject"], message["text"]) == (f"Hello City {n}", f"Hi User {n} of City {n}")
