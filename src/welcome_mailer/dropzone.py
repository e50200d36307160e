"""The drop folder: contact lists dropped into ``incoming/`` become welcome_emails runs, one per file.

    <dropzone>/incoming/     users (or other systems) drop files here
    <dropzone>/processing/   claimed files, while their run is going
    <dropzone>/archive/      files whose run succeeded, and duplicates of files processed before
    <dropzone>/failed/       files that are not CSV or whose run failed, each with a ``.reason.txt``

Rules:
- A file still being written is left alone: names ending in .part or .tmp, hidden files, and files
  modified within the last ``settle_seconds`` (still growing).
- A file is claimed by an atomic rename into processing/: of two overlapping scans, one wins.
- A symbolic link is refused (failed/) without reading, hashing or even checking what it points to: the
  drop folder takes the files dropped into it, never a door to files elsewhere on the worker. Files are
  opened with O_NOFOLLOW, so a link swapped in after the check is not followed either.
- A file whose content (sha256) was already processed, or is being processed, is archived as a
  duplicate without a run; a file whose earlier run failed may be dropped again and is retried.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Engine, select, update

from welcome_mailer.ledger import bulk
from welcome_mailer.ledger.schema import processed_files
from welcome_mailer.vocabulary import utcnow

NOT_READY_SUFFIXES = (".part", ".tmp")
CSV_SUFFIXES = (".csv", ".txt")
PROCESSING, DONE, FAILED = "processing", "done", "failed"
LINK_REASON = (
    "a symbolic link: the drop folder takes regular files only, and did not read what the link points to; "
    "copy the file itself into incoming/"
)


@dataclass(frozen=True)
class DroppedFile:
    path: str  # in processing/
    name: str
    sha256: str
    run_id: str  # the welcome_emails run for this file

    def as_dict(self) -> dict:
        return {"path": self.path, "name": self.name, "sha256": self.sha256, "run_id": self.run_id}


class Dropzone:
    def __init__(self, root: Path, settle_seconds: float = 10.0) -> None:
        self.root = root
        self.incoming, self.processing = root / "incoming", root / "processing"
        self.archive_dir, self.failed_dir = root / "archive", root / "failed"
        self.settle_seconds = settle_seconds

    def ensure_folders(self) -> None:
        for folder in (self.incoming, self.processing, self.archive_dir, self.failed_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def ready_files(self, now: float | None = None) -> list[Path]:
        """Files in incoming/ that are finished: not named as partial, not changed for settle_seconds."""
        now = time.time() if now is None else now
        ready = []
        for path in sorted(self.incoming.iterdir()):
            if path.name.startswith(".") or path.name.endswith(NOT_READY_SUFFIXES):
                continue
            status = path.lstat()  # the entry itself: a link is taken (and refused) without being followed
            if not (stat.S_ISREG(status.st_mode) or stat.S_ISLNK(status.st_mode)):
                continue
            if now - status.st_mtime < self.settle_seconds:
                continue  # still growing
            ready.append(path)
        return ready

    def claim(self, path: Path) -> Path | None:
        """Move the file into processing/ atomically; None when another scan took it first."""
        target = _free_name(self.processing / path.name)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        return target

    def archive(self, path: Path, note: str | None = None) -> Path:
        target = _free_name(self.archive_dir / path.name)
        os.rename(path, target)
        if note:
            target.with_name(target.name + ".note.txt").write_text(note + "\n")
        return target

    def fail(self, path: Path, reason: str) -> Path:
        target = _free_name(self.failed_dir / path.name)
        os.rename(path, target)
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
        return target

    def scan(self, engine: Engine) -> tuple[list[DroppedFile], dict[str, int]]:
        """Claim every ready file: not CSV -> failed/, duplicate -> archive/, else it needs a run."""
        self.ensure_folders()
        to_run: list[DroppedFile] = []
        counts = {"claimed": 0, "links": 0, "not_csv": 0, "duplicates": 0}
        for path in self.ready_files():
            claimed = self.claim(path)
            if claimed is None:
                continue
            counts["claimed"] += 1
            if claimed.is_symlink():
                self.fail(claimed, LINK_REASON)
                counts["links"] += 1
                continue
            reason = not_csv_reason(claimed)
            if reason:
                self.fail(claimed, reason)
                counts["not_csv"] += 1
                continue
            digest = sha256_of(claimed)
            run_id = f"dropzone__{claimed.stem[:80]}__{digest[:12]}__{int(time.time())}"
            if not register_file(engine, digest, claimed.name, run_id):
                self.archive(claimed, note=f"duplicate: a file with the same content (sha256 {digest}) was processed")
                counts["duplicates"] += 1
                continue
            to_run.append(DroppedFile(str(claimed), claimed.name, digest, run_id))
        return to_run, counts


def run_failed_note(run_id: str, state: str, first_failure: str | None) -> str:
    """The ``.reason.txt`` of a file whose run did not succeed: the run's own failure reason first."""
    state = state.removeprefix("DagRunState.").lower()
    if first_failure:
        return f"welcome_emails run {run_id} {state}: failed task {first_failure}\nMore in its task logs and report."
    return f"welcome_emails run {run_id} ended {state}; see its task logs and report"


def not_csv_reason(path: Path) -> str | None:
    if path.suffix.lower() not in CSV_SUFFIXES:
        return f"not a CSV file (expected {' or '.join(CSV_SUFFIXES)}, got {path.suffix or 'no extension'!r})"
    with _open_no_follow(path) as handle:
        head = handle.read(4096)
    if b"\x00" in head:
        return "not a CSV file: it holds binary data"
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with _open_no_follow(path) as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _open_no_follow(path: Path) -> BinaryIO:
    """The file for reading; OSError (ELOOP) when it is a symbolic link."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


def register_file(engine: Engine, digest: str, name: str, run_id: str) -> bool:
    """Take the file's content for this run. False when it was done or is in progress already."""
    now = utcnow()
    with engine.begin() as conn:
        inserted = conn.execute(
            bulk.dialect_insert(conn, processed_files)
            .values(sha256=digest, file_name=name, status=PROCESSING, run_id=run_id, updated_at=now)
            .on_conflict_do_nothing()
        ).rowcount
        if inserted:
            return True
        retried = conn.execute(  # an earlier run of this content failed: try again
            update(processed_files)
            .where(processed_files.c.sha256 == digest, processed_files.c.status == FAILED)
            .values(status=PROCESSING, file_name=name, run_id=run_id, updated_at=now)
        ).rowcount
        return bool(retried)


def finish_file(engine: Engine, digest: str, succeeded: bool) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(processed_files)
            .where(processed_files.c.sha256 == digest)
            .values(status=DONE if succeeded else FAILED, updated_at=utcnow())
        )


def file_status(engine: Engine, digest: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(processed_files.c.status).where(processed_files.c.sha256 == digest)).scalar()


def _free_name(target: Path) -> Path:
    """target, or target with a numeric suffix when a file of that name is already there."""
    candidate, n = target, 1
    while candidate.exists():
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
        n += 1
    return candidate
