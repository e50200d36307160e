"""Whole runs through `airflow dags test` with csv_path and the reports on a local S3 API (moto): the
file is read from the bucket, the reports land there, invariants proven from the ESP's log; a bad bucket,
a missing key and denied access fail at parse, at once, with a clear message, and nothing is sent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from include.tools.generate_contacts import write_file
from tests.support.dags_test import MAX_ATTEMPTS, run_welcome, sqlite_ledger
from tests.support.invariants import assert_ledger_matches, assert_run_invariants, expected_contacts
from welcome_mailer.run_files import run_directory

pytestmark = pytest.mark.slow

BUCKET = "wm-e2e"


def storage_env(workspace, server, conn_id: str = "aws_default") -> dict[str, str]:
    return {
        **server.connection_env(conn_id),
        "WELCOME_MAILER_DATA_ROOTS": f"{workspace / 'data'}:s3://{BUCKET}/incoming",
        "WELCOME_MAILER_REPORTS_DIR": f"s3://{BUCKET}/reports",
    }


def test_a_run_over_a_file_on_s3_writes_its_reports_there(migrated_airflow_home, workspace, start_esp, s3_server):
    esp = start_esp(hold_rate=0.1, hold_min_seconds=0.2, hold_max_seconds=0.5)
    source = write_file(workspace / "upload.csv", rows=800, seed=31)  # outside the data roots: only in S3
    uri = s3_server.upload(BUCKET, "incoming/contacts.csv", source)
    connection, url = sqlite_ledger(workspace)
    result = run_welcome(
        migrated_airflow_home, workspace, esp, connection, uri, extra_env=storage_env(workspace, s3_server)
    )
    assert result.state == "success", result.output[-3000:]
    messages = esp.messages()
    assert_run_invariants(messages, expected_contacts(source), MAX_ATTEMPTS)
    assert_ledger_matches(url, messages)
    run_id = re.search(r"DagRun Finished: .*?run_id=([^,]+),", result.output).group(1)
    key = str(run_directory(Path("reports"), run_id))
    report = json.loads(s3_server.read(BUCKET, f"{key}/report.json"))
    assert report["csv_path"] == uri
    assert report["unique_contacts"] == len(expected_contacts(source))
    assert report["rejected_csv"] == f"s3://{BUCKET}/{key}/rejected.csv"
    rejected = s3_server.read(BUCKET, f"{key}/rejected.csv").decode()
    assert rejected.count("\n") == report["rejected"] + 1


@pytest.mark.parametrize(
    ("csv_path", "message", "denied"),
    [
        (f"s3://{BUCKET}-missing/incoming/a.csv", "outside the allowed data roots", False),
        (f"s3://{BUCKET}/incoming/missing.csv", "does not exist: no such bucket or key", False),
        (f"s3://{BUCKET}/incoming/a.csv", "access denied", True),
    ],
    ids=["bucket-not-allowed", "missing-key", "denied"],
)
def test_bad_objects_fail_at_once_and_send_nothing(
    migrated_airflow_home, workspace, esp, s3_server, s3_denying_server, csv_path, message, denied
):
    s3_server.upload(BUCKET, "incoming/present.csv", write_file(workspace / "p.csv", rows=10, seed=1))
    connection, _ = sqlite_ledger(workspace)
    env = storage_env(workspace, s3_denying_server if denied else s3_server)
    result = run_welcome(migrated_airflow_home, workspace, esp, connection, csv_path, extra_env=env)
    assert result.state == "failed"
    assert message in result.output
    assert esp.messages() == []


def test_a_missing_bucket_inside_the_allow_list_fails_at_once(migrated_airflow_home, workspace, esp, s3_server):
    connection, _ = sqlite_ledger(workspace)
    env = storage_env(workspace, s3_server)
    env["WELCOME_MAILER_DATA_ROOTS"] += ":s3://wm-no-such-bucket"
    csv_path = "s3://wm-no-such-bucket/a.csv"
    result = run_welcome(migrated_airflow_home, workspace, esp, connection, csv_path, extra_env=env)
    assert result.state == "failed"
    assert "does not exist: no such bucket or key" in result.output
    assert esp.messages() == []


def test_the_templates_folder_on_s3_picks_the_operators_template(
    migrated_airflow_home, workspace, start_esp, s3_server
):
    """WELCOME_MAILER_TEMPLATES_DIR on the bucket, like the data roots: the run renders the template read
    from there, with each contact's own city (the mock ESP's log)."""
    from tests.support.templates import write_template

    esp = start_esp(hold_rate=0)
    local = write_template(workspace / "upload", "spring", "Hello {{ city }}\n", "Hi {{ name }} of {{ city }}\n")
    for part in local.iterdir():
        s3_server.upload(BUCKET, f"templates/spring/{part.name}", part)
    path = workspace / "data" / "c.csv"
    path.write_text("".join(f"Person {i}, p{i}@example.com, 555, 1 Main St, Town {i}, CA, 90000\n" for i in range(20)))
    connection, _ = sqlite_ledger(workspace)
    env = {**storage_env(workspace, s3_server), "WELCOME_MAILER_TEMPLATES_DIR": f"s3://{BUCKET}/templates"}
    del env["WELCOME_MAILER_REPORTS_DIR"]  # the report stays local, for the test to read
    result = run_welcome(migrated_airflow_home, workspace, esp, connection, str(path), env, template="spring")
    assert result.state == "success", result.output[-3000:]
    assert result.report["template"] == "spring" and result.report["rejected"] == 0
    messages = esp.messages()
    assert {m["to"] for m in messages} == {f"p{i}@example.com" for i in range(20)}
    for m in messages:
        n = m["to"][1:].split("@")[0]
        assert (m["subject"], m["text"]) == (f"Hello Town {n}", f"Hi Person {n} of Town {n}")
