"""Files on object storage (``s3://``, ``gs://``, ...) through Airflow's ObjectStoragePath, for tasks.

Which URIs a run may use is decided by ``run_files.resolve_csv_path`` (text only); this module opens them,
so it needs Airflow and the filesystem's provider (s3: apache-airflow-providers-amazon with s3fs).
Credentials come from an Airflow connection: the one a URI names (``s3://conn_id@bucket/key``), else
WELCOME_MAILER_STORAGE_CONN_ID (``aws_default``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from welcome_mailer.run_files import InvalidCsvPath, is_uri, object_uri

COPY_BUFFER = 8 << 20  # bytes in memory at a time while a file comes down


def location(raw: Path | str, default_conn_id: str | None):
    """A local Path as it is; a URI as an ObjectStoragePath with its connection."""
    if isinstance(raw, Path) or not is_uri(raw):
        return Path(raw)
    from airflow.sdk import ObjectStoragePath

    uri, conn_id = object_uri(raw)
    return ObjectStoragePath(uri, conn_id=conn_id or default_conn_id)


def describe(raw: str) -> str:
    """A URI as people should see it in messages and reports: without the connection id."""
    return object_uri(raw)[0] if is_uri(raw) else raw


@contextmanager
def local_copy(raw: str, default_conn_id: str | None, directory: str | None = None) -> Iterator[Path]:
    """The object a csv_path URI names, streamed into a temporary local file that is removed afterwards.

    Why a copy rather than parsing the stream: the parser reads the file twice (the encoding is decided
    from the whole file before the first row is taken), so one transfer to the worker's disk beats two
    over the network, and memory stays at COPY_BUFFER whatever the file's size. A missing bucket or key
    and a refused access raise InvalidCsvPath with what to do."""
    source = location(raw, default_conn_id)
    shown = describe(raw)
    with tempfile.TemporaryDirectory(prefix="welcome-mailer-", dir=directory) as scratch:
        target = Path(scratch) / Path(source.path).name
        try:
            if source.fs.info(source.path).get("type") != "file":
                raise InvalidCsvPath(f"csv_path {shown!r} is not a file (a prefix or a bucket?)")
            with source.open("rb", block_size=COPY_BUFFER) as remote, target.open("wb") as local:
                shutil.copyfileobj(remote, local, COPY_BUFFER)
        except FileNotFoundError as exc:
            raise InvalidCsvPath(
                f"csv_path {shown!r} does not exist: no such bucket or key ({exc}); check the URI, upload the file"
            ) from None
        except PermissionError as exc:
            raise InvalidCsvPath(
                f"csv_path {shown!r}: access denied ({exc}); check the credentials of connection "
                f"{source.conn_id!r} and that it may read this bucket"
            ) from None
        yield target


@contextmanager
def readable_csv(resolved: Path | str, default_conn_id: str | None) -> Iterator[Path]:
    """A local file to parse for what ``resolve_csv_path`` returned: the file itself, or a local copy."""
    if isinstance(resolved, Path):
        yield resolved
    else:
        with local_copy(resolved, default_conn_id) as copy:
            yield copy


def ensure_directory(directory) -> None:
    """Local directories are created; object stores need none (and mkdir there would create a bucket)."""
    if isinstance(directory, Path):
        directory.mkdir(parents=True, exist_ok=True)
