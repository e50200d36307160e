"""The drop folder's rules: which files are taken, where they go, and no file content processed twice."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from welcome_mailer import dropzone as dropzone_module
from welcome_mailer.dropzone import DONE, FAILED, Dropzone, file_status, finish_file, sha256_of


@pytest.fixture
def dropzone(tmp_path) -> Dropzone:
    zone = Dropzone(tmp_path / "dropzone", settle_seconds=5)
    zone.ensure_folders()
    return zone


def drop(zone: Dropzone, name: str, content: bytes | str = "Ann Lee, ann@example.com\n", age: float = 60) -> None:
    path = zone.incoming / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_files_still_being_written_are_left_alone(dropzone):
    drop(dropzone, "done.csv")
    drop(dropzone, "big.csv.part")
    drop(dropzone, "upload.tmp")
    drop(dropzone, ".hidden.csv")
    drop(dropzone, "growing.csv", age=1)
    assert [p.name for p in dropzone.ready_files()] == ["done.csv"]


def test_scan_sorts_files_into_runs_duplicates_and_failures(dropzone, ledger):
    drop(dropzone, "first.csv", "Ann Lee, ann@example.com\n")
    drop(dropzone, "image.png", b"\x89PNG\r\n\x1a\n\x00\x00")
    drop(dropzone, "binary.csv", b"a,b\x00c")
    to_run, counts = dropzone.scan(ledger.engine)
    assert [f.name for f in to_run] == ["first.csv"] and to_run[0].run_id.startswith("dropzone__first__")
    assert counts == {"claimed": 3, "links": 0, "not_csv": 2, "duplicates": 0}
    assert names(dropzone.processing) == ["first.csv"]
    assert names(dropzone.failed_dir) == ["binary.csv", "binary.csv.reason.txt", "image.png", "image.png.reason.txt"]
    assert "not a CSV" in (dropzone.failed_dir / "image.png.reason.txt").read_text()

    drop(dropzone, "same-content-other-name.csv", "Ann Lee, ann@example.com\n")
    again, counts = dropzone.scan(ledger.engine)
    assert again == [] and counts["duplicates"] == 1, "content in progress is not run twice"
    assert "duplicate" in (dropzone.archive_dir / "same-content-other-name.csv.note.txt").read_text()


def test_a_failed_file_can_be_dropped_again_and_a_done_one_cannot(dropzone, ledger):
    drop(dropzone, "list.csv")
    [first], _ = dropzone.scan(ledger.engine)
    finish_file(ledger.engine, first.sha256, succeeded=False)
    assert file_status(ledger.engine, first.sha256) == FAILED
    drop(dropzone, "list.csv")
    [retry], _ = dropzone.scan(ledger.engine)
    assert retry.sha256 == first.sha256 and retry.path != first.path, "same content, its own processing copy"
    finish_file(ledger.engine, retry.sha256, succeeded=True)
    assert file_status(ledger.engine, retry.sha256) == DONE
    drop(dropzone, "list.csv")
    assert dropzone.scan(ledger.engine)[0] == []


def test_overlapping_scans_never_take_the_same_file(dropzone, ledger):
    for n in range(20):
        drop(dropzone, f"file{n}.csv", f"User {n}, user{n}@example.com\n")
    ready = dropzone.ready_files()
    claimed_by_first = [dropzone.claim(p) for p in ready]
    claimed_by_second = [dropzone.claim(p) for p in ready]  # a second scan that listed the same files
    assert all(claimed_by_first) and not any(claimed_by_second)


def test_archive_and_fail_keep_both_files_when_names_collide(dropzone):
    for _ in range(2):
        drop(dropzone, "same.csv")
        dropzone.archive(dropzone.claim(dropzone.incoming / "same.csv"))
    assert names(dropzone.archive_dir) == ["same.1.csv", "same.csv"]


def test_sha256_of_reads_in_blocks(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"x" * (3 << 20))
    assert sha256_of(path) == __import__("hashlib").sha256(b"x" * (3 << 20)).hexdigest()


def test_a_symlink_is_refused_without_reading_or_hashing_its_target(dropzone, ledger, tmp_path, monkeypatch):
    secret = tmp_path / "outside" / "secret.csv"
    secret.parent.mkdir()
    secret.write_text("Ann Lee, ann@example.com\n")
    (dropzone.incoming / "link.csv").symlink_to(secret)
    (dropzone.incoming / "dangling.csv").symlink_to(tmp_path / "nowhere.csv")
    stamp = time.time() - 60
    for name in ("link.csv", "dangling.csv"):
        os.utime(dropzone.incoming / name, (stamp, stamp), follow_symlinks=False)
    opened = []
    real_os_open, real_path_open = os.open, Path.open
    monkeypatch.setattr(os, "open", lambda path, *a, **kw: opened.append(str(path)) or real_os_open(path, *a, **kw))
    monkeypatch.setattr(Path, "open", lambda path, *a, **kw: opened.append(str(path)) or real_path_open(path, *a, **kw))
    to_run, counts = dropzone.scan(ledger.engine)
    assert to_run == [] and counts["links"] == 2
    assert [p for p in opened if p.endswith(("link.csv", "dangling.csv"))] == [], "no link opened, read or hashed"
    assert names(dropzone.failed_dir) == ["dangling.csv", "dangling.csv.reason.txt", "link.csv", "link.csv.reason.txt"]
    assert "symbolic link" in (dropzone.failed_dir / "link.csv.reason.txt").read_text()
    assert (dropzone.failed_dir / "link.csv").is_symlink() and secret.read_text().startswith("Ann")


def test_a_link_swapped_in_after_the_check_is_not_followed(tmp_path):
    target = tmp_path / "target.csv"
    target.write_text("x")
    (tmp_path / "link.csv").symlink_to(target)
    with pytest.raises(OSError):
        dropzone_module.sha256_of(tmp_path / "link.csv")
    with pytest.raises(OSError):
        dropzone_module.not_csv_reason(tmp_path / "link.csv")
