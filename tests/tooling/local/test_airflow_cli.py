"""include/local/airflow_cli.py leaves with the exit code the interpreter would have given."""

from __future__ import annotations

import subprocess
import sys

import pytest

from include.local.airflow_cli import exit_code
from include.local.run_embedded import PROJECT_ROOT


@pytest.mark.parametrize(("code", "expected"), [(None, 0), (0, 0), (3, 3), ("DagRun failed", 1)])
def test_the_exit_code_is_the_interpreters(code, expected, capsys):
    assert exit_code(SystemExit(code)) == expected
    assert capsys.readouterr().err == ("DagRun failed\n" if isinstance(code, str) else "")


def test_a_failing_command_fails_with_its_message():
    """A real airflow command through the wrapper: argparse's error, exit code 2, as `airflow` gives."""
    completed = subprocess.run(
        [sys.executable, "-m", "include.local.airflow_cli", "dags", "test"],  # no dag id
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "dag_id" in completed.stderr
