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
