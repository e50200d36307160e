"""A run's files, in one place: the contact list it reads (``csv_path``: a local path or an object URI,
checked against the data roots as text, with no Airflow import; ``storage`` opens it), and the files it
writes (its directory under the reports directory: the report and the rejected rows).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

# A run's files, in its run directory.
REPORT_JSON, REPORT_MARKDOWN, REJECTED_CSV = "report.json", "report.md", "rejected.csv"

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ROOT_SEPARATOR = re.compile(r":(?!//)")  # ':' between roots, not the one in 's3://'


class InvalidCsvPath(ValueError):
    """csv_path cannot be used; the message says why and what to do."""


def is_uri(raw: str) -> bool:
    return bool(_URI.match(raw.strip()))


def split_roots(value: str) -> list[str]:
    """WELCOME_MAILER_DATA_ROOTS's entries: ``/data:s3://bucket/in`` -> ``['/data', 's3://bucket/in']``."""
    return [part for part in _ROOT_SEPARATOR.split(value) if part]


def object_uri(raw: str) -> tuple[str, str | None]:
    """(``scheme://bucket/key`` normalised, the connection id the URI names or None). Raises InvalidCsvPath
    for what could escape an allow-list prefix: '.' or '..' segments, a query, a fragment, no bucket."""
    parts = urlsplit(raw.strip())
    conn_id, _, bucket = parts.netloc.rpartition("@")
    key = unquote(parts.path).strip("/")
    if not bucket or parts.query or parts.fragment or any(seg in (".", "..") for seg in key.split("/")):
        raise InvalidCsvPath(f"{raw!r} is not a plain object URI (scheme://bucket/key, no '.' or '..' segments)")
    return f"{parts.scheme.lower()}://{bucket}/{key}".rstrip("/"), conn_id or None


def _under(uri: str, root: str) -> bool:
    return uri == root or uri.startswith(root + "/")


def resolve_csv_path(raw: str, data_roots: Sequence[Path | str]) -> Path | str:
    """The CSV file that ``raw`` names, inside one of the data roots. A local path (or ``file://`` URI) must
    be a readable file under a local root (relative paths are taken from the first one); an object URI
    (``s3://[conn_id@]bucket/key``) must lie under a URI root and comes back as given, normalised: whether
    the object exists is asked by the task (``storage.py``), so this stays free of Airflow. Raises
    InvalidCsvPath with a message meant for the person who triggered the run."""
    if not raw or not raw.strip():
        raise InvalidCsvPath("csv_path is empty: give the path of a CSV file")
    if raw.strip().lower().startswith("file://"):
        return resolve_csv_path(unquote(urlsplit(raw.strip()).path), data_roots)
    if is_uri(raw):
        uri, conn_id = object_uri(raw)
        uri_roots = [object_uri(r)[0] for r in data_roots if isinstance(r, str)]
        if not any(_under(uri, root) for root in uri_roots):
            raise InvalidCsvPath(
                f"csv_path {raw!r} is outside the allowed data roots ({', '.join(uri_roots) or 'no URI roots'}); "
                "add its bucket (and prefix) to WELCOME_MAILER_DATA_ROOTS"
            )
        scheme, _, rest = uri.partition("://")
        return f"{scheme}://{conn_id}@{rest}" if conn_id else uri
    local_roots = [r for r in data_roots if isinstance(r, Path)]
    if not local_roots:
        raise InvalidCsvPath(f"csv_path {raw!r} is a local path, but WELCOME_MAILER_DATA_ROOTS lists no directory")
    path = Path(raw.strip()).expanduser()
    resolved = (path if path.is_absolute() else local_roots[0] / path).resolve()
    if not any(resolved.is_relative_to(root) for root in local_roots):
        roots = ", ".join(str(r) for r in local_roots)
        raise InvalidCsvPath(
            f"csv_path {raw!r} is outside the allowed data roots ({roots}); "
            "move the file there or add its directory to WELCOME_MAILER_DATA_ROOTS"
        )
    if not resolved.exists():
        raise InvalidCsvPath(f"csv_path {raw!r} does not exist (resolved to {resolved})")
    if not resolved.is_file():
        raise InvalidCsvPath(f"csv_path {raw!r} is not a regular file (resolved to {resolved})")
    if not os.access(resolved, os.R_OK):
        raise InvalidCsvPath(f"csv_path {raw!r} is not readable by this worker (resolved to {resolved})")
    return resolved


def root_location(raw: str, resolve: bool = True) -> Path | str:
    """A root or the reports directory: object URIs stay text, the rest (``file://`` too) are paths."""
    if raw.strip().lower().startswith("file://"):
        raw = unquote(urlsplit(raw.strip()).path)
    if is_uri(raw):
        return raw.strip()
    return Path(raw).resolve() if resolve else Path(raw)


def run_directory(reports_dir: Path, run_id: str) -> Path:
    """Where a run's report and rejected-rows CSV go: one directory per run, named after the run id.
    ``reports_dir`` may be an ObjectStoragePath too (storage.location): the result is one as well."""
    return reports_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)


def shown_path(path: str | None, data_roots: Sequence[Path]) -> str | None:
    """A contact list's path as the person who triggered the run gave it: relative to the data root it
    lies in (the form's csv_path), else as it is."""
    if not path:
        return path
    for root in data_roots:
        if Path(path).is_relative_to(root):
            return str(Path(path).relative_to(root))
    return path
