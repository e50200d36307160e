"""The image's Python packages: the runtime requirements hold no test tools, and fit the Airflow image.

The official image's own package set is data (tests/deploy/data/airflow-3.3.2-image.*, made by
tests/deploy/image_set.py from the package registry as it was on the release day): there is no Docker
engine here. The Dockerfile's install step is replayed on that set in a scratch venv that holds only the
packages' metadata, which is all pip's resolver and `pip check` read.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from include.tools.lock import canonical, closure, installed, lock, requirement_lines
from tests.deploy import image_set
from tests.support import PROJECT_ROOT

RUNTIME_LOCK = PROJECT_ROOT / "requirements.lock"
DEV_LOCK = PROJECT_ROOT / "requirements-dev.lock"
# uvloop: the mock SMTP relay's event loop (the runtime lock has it too, through uvicorn; the runtime code
# does not import it).
DEV_TOOLS = {
    "pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "ruff",
    "compose-spec", "selenium", "aiosmtpd", "moto", "uvloop",
}  # fmt: skip


def names(lines) -> set[str]:
    return {canonical(line.split("==")[0].split("[")[0]) for line in lines}  # without extras


def pins(path: Path) -> dict[str, str]:
    return {canonical(line.split("==")[0]): line.split("==")[1] for line in requirement_lines(path)}


def image_records() -> list[dict]:
    return [json.loads(line) for line in image_set.METADATA.read_text().splitlines()]


def install_metadata(site: Path, record: dict) -> None:
    """A package as pip sees it installed: its .dist-info with the metadata (the files it would bring are
    irrelevant to resolving and to `pip check`). Replaces whatever version was there."""
    name = canonical(record["name"])
    for old in site.glob("*.dist-info"):
        if canonical(old.name.removesuffix(".dist-info").rsplit("-", 1)[0]) == name:
            shutil.rmtree(old)
    dist_info = site / f"{name.replace('-', '_')}-{record['version']}.dist-info"
    dist_info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {record['name']}", f"Version: {record['version']}"]
    if record.get("requires_python"):
        lines.append(f"Requires-Python: {record['requires_python']}")
    lines += [f"Requires-Dist: {line}" for line in record.get("requires_dist") or []]
    (dist_info / "METADATA").write_text("\n".join(lines) + "\n")
    (dist_info / "INSTALLER").write_text("pip\n")
    (dist_info / "RECORD").write_text("")


def dockerfile_pip_install(dockerfile: str) -> list[str]:
    """The Dockerfile's `pip install ...` command, with the image's AIRFLOW_VERSION (from its FROM line)
    and the project's paths on this machine."""
    version = re.search(r"^FROM apache/airflow:([0-9.]+)", dockerfile, re.MULTILINE)[1]
    runs = re.sub(r"\\\n", " ", dockerfile)
    commands = [part.strip() for line in runs.splitlines() if line.startswith("RUN ") for part in line[4:].split("&&")]
    (install,) = [command for command in commands if command.startswith("pip install")]
    install = install.replace("${AIRFLOW_VERSION}", version).replace("/opt/welcome-mailer", str(PROJECT_ROOT))
    return shlex.split(install)


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


def test_the_dockerfile_extends_the_image_as_airflow_documents_it():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "requirements-dev" not in dockerfile
    command = dockerfile_pip_install(dockerfile)
    assert "apache-airflow==3.3.2" in command, "Airflow pinned to the image's version on the same pip command"
    assert "--no-deps" not in command, "pip resolves what our requirements need against the image"
    assert dockerfile.rstrip().endswith("pip check"), "the last step checks the whole environment"


def test_the_package_floors_are_met_by_the_airflow_image():
    """What welcome_mailer itself asks for installs on the image without upgrading anything: its floors
    are what the code needs, not the versions the tests happen to run."""
    from packaging.requirements import Requirement

    image = {canonical(record["name"]): record["version"] for record in image_records()}
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    unmet = [
        f"{line} (image: {image.get(canonical(Requirement(line).name))})"
        for line in project["dependencies"]
        if image.get(canonical(Requirement(line).name)) not in Requirement(line).specifier
    ]
    assert not unmet, unmet


@pytest.mark.slow
def test_the_dockerfile_install_step_fits_the_airflow_image(tmp_path):
    """The Dockerfile's pip install, replayed (resolution only, against the package registry) on
    apache/airflow:3.3.2's package set (tests/deploy/data, see image_set.py), then `pip check` on the result.
    Needs the registry: without it pip fails and so does this test."""
    scratch = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(scratch)], check=True, timeout=60)
    site = next((scratch / "lib").glob("python3*/site-packages"))
    python = str(scratch / "bin" / "python")
    for record in image_records():
        install_metadata(site, record)
    command = dockerfile_pip_install((PROJECT_ROOT / "Dockerfile").read_text())
    report = tmp_path / "report.json"
    started = time.monotonic()
    dry_run = ["--dry-run", "--quiet", "--report", str(report)]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, *command[1:], *dry_run],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    changed = [item["metadata"] for item in json.loads(report.read_text())["install"]]
    for metadata in changed:
        install_metadata(site, metadata)
    print(f"pip would install {len(changed)} packages in {time.monotonic() - started:.0f} s:", *sorted(
        f"{m['name']}=={m['version']}" for m in changed))  # fmt: skip
    versions = {canonical(m["name"]): m["version"] for m in changed}
    assert versions.get("apache-airflow", "3.3.2") == "3.3.2", "Airflow itself is never replaced"
    assert "welcome-mailer" in versions
    check = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "check"], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("dev_tool", sorted(DEV_TOOLS))
def test_dev_tools_are_in_the_dev_lock(dev_tool):
    assert dev_tool in pins(DEV_LOCK)
