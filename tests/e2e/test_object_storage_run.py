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
