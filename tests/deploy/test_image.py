"""The image's Python packages: the runtime lock holds no test tools, and fits the Airflow image.

The Airflow image's own package set is taken from the installed apache-airflow 3.3.2 and its providers
(their metadata, with the versions this venv has): there is no Docker engine or registry here. The
Dockerfile's install step runs against that set in a scratch venv that holds only their metadata, which is
all `include/tools/lock.py missing` and `pip check` read.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import Distribution
from pathlib import Path

import pytest

from include.tools.lock import canonical, closure, installed, lock, requirement_lines
from tests.support import PROJECT_ROOT

RUNTIME_LOCK = PROJECT_ROOT / "requirements.lock"
DEV_LOCK = PROJECT_ROOT / "requirements-dev.lock"
# uvloop: the mock SMTP relay's event loop (the runtime lock has it too, through uvicorn; the runtime code
# does not import it).
DEV_TOOLS = {"pytest", "pytest-timeout", "hypothesis", "ruff", "compose-spec", "selenium", "aiosmtpd", "moto", "uvloop"}


def names(lines) -> set[str]:
    return {canonical(line.split("==")[0].split("[")[0]) for line in lines}  # without extras


def pins(path: Path) -> dict[str, str]:
    return {canonical(line.split("==")[0]): line.split("==")[1] for line in requirement_lines(path)}


def airflow_image_set(packages: dict[str, Distribution]) -> set[str]:
    providers = [name for name in packages if name.startswith("apache-airflow-providers-")]
    return closure(["apache-airflow==3.3.2", *providers], packages)


def test_runtime_requirements_hold_no_test_or_lint_tools():
    runtime = names(requirement_lines(PROJECT_ROOT / "requirements.txt"))
    assert not runtime & DEV_TOOLS, runtime & DEV_TOOLS
    dev_only = names(
        line for line in (PROJECT_ROOT / "requirements-dev.txt").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "-"))
    )  # fmt: skip
    assert dev_only == DEV_TOOLS


def test_runtime_lock_is_exactly_what_the_runtime_requirements_need():
    assert list(requirement_lines(RUNTIME_LOCK)) == lock(PROJECT_ROOT / "requirements.txt"), "run make lock"
    runtime = closure(requirement_lines(PROJECT_ROOT / "requirements.txt"), installed())
    test_packages = closure(sorted(DEV_TOOLS), installed()) - runtime
    assert {"iniconfig", "pluggy", "trio", "sortedcontainers"} & test_packages
    assert not names(requirement_lines(RUNTIME_LOCK)) & test_packages


def test_dev_lock_is_the_whole_venv_and_agrees_with_the_runtime_lock():
    assert list(requirement_lines(DEV_LOCK)) == lock(PROJECT_ROOT / "requirements-dev.txt"), "run make lock"
    runtime, dev = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    assert {name: dev.get(name) for name in runtime} == runtime, "tests run what the image ships"
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "-r requirements-dev.lock" in makefile, "make venv installs everything for the tests"


def test_the_dockerfile_installs_the_runtime_set_only_and_checks_it():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "requirements.lock" in dockerfile and "requirements-dev" not in dockerfile
    assert "lock.py missing" in dockerfile, "only what the image lacks: Airflow's pins stay"
    assert "--no-deps" in dockerfile
    assert dockerfile.rstrip().endswith("pip check"), "the last step checks the whole environment"


def test_the_runtime_lock_installs_cleanly_on_the_airflow_image(tmp_path):
    packages = installed()
    image = airflow_image_set(packages)
    assert {"apache-airflow", "apache-airflow-core", "apache-airflow-task-sdk"} <= image
    scratch = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(scratch)], check=True, timeout=60)
    site = next((scratch / "lib").glob("python3*/site-packages"))
    python = str(scratch / "bin" / "python")

    def install_metadata(name: str) -> None:
        source = Path(packages[name]._path)  # its .dist-info directory (PathDistribution)
        shutil.copytree(source, site / source.name)

    for name in image:
        install_metadata(name)
    lock_script = str(PROJECT_ROOT / "include" / "tools" / "lock.py")
    missing = subprocess.run(
        [python, lock_script, "missing", str(RUNTIME_LOCK)], check=True, capture_output=True, text=True, timeout=60
    ).stdout.split()
    added = names(missing)
    assert added, "the image lacks some of our packages (s3fs, aiobotocore)"
    assert not added & image, "nothing the image has is reinstalled: Airflow's pins stay"
    assert not added & DEV_TOOLS
    for name in added | {"welcome-mailer"}:
        install_metadata(name)
    check = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "check"], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("dev_tool", sorted(DEV_TOOLS))
def test_dev_tools_are_in_the_dev_lock(dev_tool):
    assert dev_tool in pins(DEV_LOCK)
