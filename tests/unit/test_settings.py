"""Settings defaults come from the deployment (WELCOME_MAILER_HOME, else AIRFLOW_HOME), never from where
the package's code happens to be installed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from welcome_mailer.run_files import InvalidCsvPath, resolve_csv_path
from welcome_mailer.settings import Settings

VARIABLES = (
    "WELCOME_MAILER_HOME",
    "WELCOME_MAILER_DATA_ROOTS",
    "WELCOME_MAILER_REPORTS_DIR",
    "WELCOME_MAILER_DROPZONE",
)


def test_defaults_live_under_the_airflow_home(monkeypatch, tmp_path):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    settings = Settings.from_env()
    assert settings.data_roots == (tmp_path.resolve(),)
    assert settings.reports_dir == tmp_path.resolve() / "data" / "reports"
    assert settings.dropzone == tmp_path.resolve() / "data" / "dropzone"


def test_welcome_mailer_home_and_explicit_settings_win(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("WELCOME_MAILER_HOME", str(tmp_path / "mailer"))
    monkeypatch.setenv("WELCOME_MAILER_DATA_ROOTS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    monkeypatch.delenv("WELCOME_MAILER_REPORTS_DIR", raising=False)
    settings = Settings.from_env()
    assert settings.data_roots == (tmp_path.resolve() / "a", tmp_path.resolve() / "b")
    assert settings.reports_dir == (tmp_path / "mailer").resolve() / "data" / "reports"
    assert not str(settings.reports_dir).startswith(str(Path(__file__).resolve().parents[2] / "src"))


def test_data_roots_may_hold_object_storage_uris_next_to_directories(monkeypatch, tmp_path):
    monkeypatch.setenv("WELCOME_MAILER_DATA_ROOTS", f"{tmp_path}:s3://contacts/incoming:file://{tmp_path / 'b'}")
    monkeypatch.setenv("WELCOME_MAILER_REPORTS_DIR", "s3://contacts/reports")
    settings = Settings.from_env()
    assert settings.data_roots == (tmp_path.resolve(), "s3://contacts/incoming", tmp_path.resolve() / "b")
    assert settings.reports_dir == "s3://contacts/reports"


def test_the_templates_folder_may_be_an_object_storage_uri(tmp_path):
    on_s3 = Settings.from_env({"WELCOME_MAILER_TEMPLATES_DIR": "s3://bucket/templates", "HOME": str(tmp_path)})
    assert on_s3.templates_dir == "s3://bucket/templates"
    local = Settings.from_env({"WELCOME_MAILER_TEMPLATES_DIR": "~/mine", "HOME": str(tmp_path)})
    assert local.templates_dir == Path("~/mine").expanduser()
    default = Settings.from_env({"WELCOME_MAILER_HOME": str(tmp_path)})
    assert default.templates_dir == tmp_path.resolve() / "templates"


def test_requests_in_flight_per_send_task_default_to_four_and_must_be_positive():
    assert Settings.from_env({}).requests_in_flight == 4
    assert Settings.from_env({"WELCOME_MAILER_REQUESTS_IN_FLIGHT": "1"}).requests_in_flight == 1
    with pytest.raises(ValueError, match="at least 1"):
        Settings.from_env({"WELCOME_MAILER_REQUESTS_IN_FLIGHT": "0"})


ROOTS = (Path("/srv/data"), "s3://contacts/incoming")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("s3://contacts/incoming/a.csv", "s3://contacts/incoming/a.csv"),
        ("S3://contacts/incoming/sub/a.csv", "s3://contacts/incoming/sub/a.csv"),
        ("s3://my_aws@contacts/incoming/a.csv", "s3://my_aws@contacts/incoming/a.csv"),
    ],
)
def test_an_object_uri_under_a_uri_root_is_taken_as_given(raw, expected):
    assert resolve_csv_path(raw, ROOTS) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("s3://contacts/incoming-other/a.csv", "outside the allowed data roots"),
        ("s3://other/incoming/a.csv", "outside the allowed data roots"),
        ("gs://contacts/incoming/a.csv", "outside the allowed data roots"),
        ("s3://contacts/incoming/../secret/a.csv", "no '.' or '..' segments"),
        ("s3://contacts/incoming/%2e%2e/secret.csv", "no '.' or '..' segments"),
        ("s3://contacts/incoming/a.csv?versionId=1", "not a plain object URI"),
        ("s3:///incoming/a.csv", "not a plain object URI"),
    ],
)
def test_object_uris_outside_the_allow_list_are_refused(raw, message):
    with pytest.raises(InvalidCsvPath, match=re.escape(message)):
        resolve_csv_path(raw, ROOTS)


def test_local_paths_keep_the_local_rule_beside_uri_roots(tmp_path):
    (tmp_path / "a.csv").write_text("Ann, ann@example.com\n")
    roots = ("s3://contacts/incoming", tmp_path.resolve())
    assert resolve_csv_path("a.csv", roots) == tmp_path.resolve() / "a.csv"  # the first *local* root
    assert resolve_csv_path(f"file://{tmp_path}/a.csv", roots) == tmp_path.resolve() / "a.csv"
    with pytest.raises(InvalidCsvPath, match="lists no directory"):
        resolve_csv_path(str(tmp_path / "a.csv"), ("s3://contacts/incoming",))
