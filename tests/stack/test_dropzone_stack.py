"""contacts_dropzone on the local stack: files dropped into incoming/ become the right welcome runs and
end in the right folders; scheduled and triggered scans may overlap, so the test waits for outcomes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.stack.helpers import assert_proven_from_outside, with_domain

pytestmark = [pytest.mark.slow, pytest.mark.stack]


def scan(stack) -> None:
    """Trigger a scan now instead of waiting for the schedule."""
    stack.trigger("contacts_dropzone", {})


def wait_until(condition, timeout: float = 300, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def dropzone_runs(stack) -> list[dict]:
    runs = stack.api("GET", "/api/v2/dags/welcome_emails/dagRuns?limit=100").json()["dag_runs"]
    return [r for r in runs if r["dag_run_id"].startswith("dropzone__")]


def write_contacts(path: Path, domain: str, first: int, count: int) -> None:
    rows = [f"User {i}, user{i}@example.com, 555" for i in range(first, first + count)]
    path.write_text("\n".join(with_domain(row, domain) for row in rows) + "\n")


def test_four_dropped_files_end_where_they_should(stack, tmp_path):
    zone = Path(stack.config.dropzone)
    incoming, archive, failed = zone / "incoming", zone / "archive", zone / "failed"
    incoming.mkdir(parents=True, exist_ok=True)
    staging = tmp_path / "staging"
    staging.mkdir()

    original = staging / "original.csv"
    write_contacts(original, "dropzone", 0, 300)
    shutil.copy(original, incoming / "original.csv")
    scan(stack)
    wait_until(lambda: "original.csv" in names(archive), what="original.csv to be processed")

    write_contacts(staging / "good.csv", "dropzone", 300, 300)
    write_contacts(staging / "late.csv", "dropzone", 600, 300)
    shutil.copy(staging / "good.csv", incoming / "good.csv")
    shutil.copy(original, incoming / "again.csv")  # same content as a file already processed
    shutil.copy(staging / "late.csv", incoming / "late.csv.part")  # still being uploaded
    (incoming / "notes.pdf").write_bytes(b"%PDF-1.4 not contacts\x00")
    time.sleep(3)  # past the settle time
    scan(stack)
    wait_until(lambda: {"good.csv", "again.csv"} <= names(archive) and "notes.pdf" in names(failed),
               what="the first batch of files to be filed")  # fmt: skip
    assert "late.csv.part" in names(incoming), "a .part file is never taken"

    (incoming / "late.csv.part").rename(incoming / "late.csv")
    time.sleep(3)
    scan(stack)
    wait_until(lambda: "late.csv" in names(archive), what="late.csv to be processed")

    assert names(incoming) == set() and names(zone / "processing") == set()
    assert {"original.csv", "good.csv", "again.csv", "again.csv.note.txt", "late.csv"} == names(archive)
    assert names(failed) == {"notes.pdf", "notes.pdf.reason.txt"}
    assert "duplicate" in (archive / "again.csv.note.txt").read_text()
    runs = dropzone_runs(stack)
    ran = sorted(r["dag_run_id"].split("__")[1] for r in runs)
    assert ran == ["good", "late", "original"], "one welcome run per new content, none for the duplicate"
    assert all(r["state"] == "success" for r in runs)
    assert_proven_from_outside(stack, "dropzone", original, staging / "good.csv", staging / "late.csv")
