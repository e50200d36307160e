"""Fixtures of the `airflow dags test` runs: a migrated Airflow home, a workspace with its data root."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.local.run_embedded import airflow_env, ensure_metadata_db


@pytest.fixture(scope="session")
def migrated_airflow_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("airflow-home")
    ensure_metadata_db(airflow_env(home))
    return home


@pytest.fixture
def workspace(tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    return tmp_path
