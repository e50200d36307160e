"""Settings defaults come from the deployment (WELCOME_MAILER_HOME, else AIRFLOW_HOME), never from where
the package's code happens to be installed."""

from __future__ import annotations

from pathlib import Path

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
