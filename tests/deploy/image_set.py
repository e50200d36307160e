"""The official apache/airflow:3.3.2 image's Python packages, as data: pins and each package's metadata.

The image is built with Airflow's constraints for its release, for `apache-airflow[<the image's extras>]`
(apache/airflow Dockerfile, ARG AIRFLOW_EXTRAS). There is no Docker engine here, so the set is reproduced
from the package registry as it was on the release day:

    python -m tests.deploy.image_set        # rewrites tests/deploy/data/airflow-3.3.2-image.{txt,jsonl}

(needs `uv` on PATH or UV=path/to/uv, and the registry; the data were made with uv 0.13.9; ~2 GB of wheels
are downloaded into a temporary directory to read their metadata). The test that uses the data
(tests/deploy/test_image.py) needs only the registry, for the packages the Dockerfile adds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from email.parser import HeaderParser
from pathlib import Path

AIRFLOW_VERSION = "3.3.2"
# apache/airflow Dockerfile (commit 0060b1a4, the 3.3 line), ARG AIRFLOW_EXTRAS: the extras of the
# published image (docs/docker-stack: "the image contains ... extras").
AIRFLOW_EXTRAS = (
    "aiobotocore,amazon,async,celery,cncf-kubernetes,common-io,common-messaging,docker,elasticsearch,fab,ftp,git,"
    "google,google-auth,graphviz,grpc,hashicorp,http,ldap,microsoft-azure,mysql,odbc,openlineage,opensearch,"
    "pandas,postgres,redis,sendgrid,sftp,slack,snowflake,ssh,statsd,uv"
)
# apache-airflow 3.3.2 reached PyPI on 2026-09-17 at 08:39 UTC (its files' upload time); nothing newer.
RELEASED = "2026-09-17T09:00:00Z"
PYTHON = ("3.11", "x86_64-unknown-linux-gnu")  # apache/airflow:3.3.2-python3.11, linux/amd64

DATA = Path(__file__).parent / "data"
PINS = DATA / f"airflow-{AIRFLOW_VERSION}-image.txt"
METADATA = DATA / f"airflow-{AIRFLOW_VERSION}-image.jsonl"


def compile_command(uv: str, source: str, output: str) -> list[str]:
    return [
        uv, "pip", "compile", "--no-config", "--exclude-newer", RELEASED,
        "--python-version", PYTHON[0], "--python-platform", PYTHON[1], "--no-annotate", "--no-header",
        source, "-o", output,
    ]  # fmt: skip


def _uv_args(uv: str, *args: str) -> list[str]:
    return [uv, "pip", *args, "--no-config", "--python-version", PYTHON[0],
            "--python-platform", PYTHON[1]]  # fmt: skip


def metadata_record(text: str) -> dict:
    """The parts of a METADATA / PKG-INFO file that installing and `pip check` read."""
    headers = HeaderParser().parsestr(text)
    return {
        "name": headers["Name"],
        "version": headers["Version"],
        "requires_python": headers.get("Requires-Python"),
        "requires_dist": headers.get_all("Requires-Dist") or [],
    }


def _sdist_metadata(pin: str, work: Path) -> dict:
    """A package without a wheel: its sdist's PKG-INFO (pip prepares it); a sdist that cannot be prepared
    here (mysqlclient needs the MySQL headers) declares no dependencies of its own, so only its pin counts."""
    target = work / "sdists"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--isolated", "--no-deps",
         "--no-binary", ":all:", "-d", str(target), pin],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    name, version = pin.split("==")
    if done.returncode == 0:
        import tarfile

        archive = next(target.glob(f"{re.sub(r'[-_.]+', '_', name)}-{version}.tar.gz"))
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
            return metadata_record(tar.extractfile(member).read().decode())
    return {"name": name, "version": version, "requires_python": None, "requires_dist": []}


def generate(uv: str) -> None:
    DATA.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "image.in"
        source.write_text(f"apache-airflow[{AIRFLOW_EXTRAS}]=={AIRFLOW_VERSION}\n")
        compiled = work / "image.txt"
        subprocess.run(compile_command(uv, str(source), str(compiled)), check=True, timeout=900)
        pins = [line for line in compiled.read_text().splitlines() if "==" in line]
        shown = " ".join(compile_command("uv", "image.in", PINS.name))
        PINS.write_text(
            f"# The Python packages of apache/airflow:{AIRFLOW_VERSION}-python3.11 (linux/amd64) as resolved on its\n"
            f"# release day; written by `python -m tests.deploy.image_set` (tests/deploy/image_set.py):\n"
            f"#   echo 'apache-airflow[{AIRFLOW_EXTRAS}]=={AIRFLOW_VERSION}' > image.in\n#   {shown}\n"
            + "\n".join(pins)
            + "\n"
        )
        # Wheels only (--no-build): a package without one is read from its sdist below.
        records, wanted = [], list(pins)
        target = work / "target"
        while wanted:
            listing = work / "wanted.txt"
            listing.write_text("\n".join(wanted) + "\n")
            done = subprocess.run(
                _uv_args(uv, "install", "--target", str(target), "--no-deps", "--no-build", "-r", str(listing)),
                capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            if done.returncode == 0:
                break
            found = re.search(r"Because (\S+)==(\S+) has no usable wheels", done.stderr)
            if not found:
                raise RuntimeError(done.stderr)
            pin = f"{found[1]}=={found[2]}"
            wanted.remove(pin)
            records.append(_sdist_metadata(pin, work))
        for path in sorted(target.glob("*.dist-info/METADATA")):
            records.append(metadata_record(path.read_text(encoding="utf-8", errors="replace")))
    records.sort(key=lambda record: record["name"].lower())
    assert len(records) == len(pins), (len(records), len(pins))
    METADATA.write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in records))


if __name__ == "__main__":
    generate(os.environ.get("UV", "uv"))
