"""Deployment settings, from environment variables (the same in every Airflow component).

| variable | meaning | default |
|---|---|---|
| WELCOME_MAILER_HOME | the base of the defaults below | ``$AIRFLOW_HOME`` (Airflow's: ``~/airflow``) |
| WELCOME_MAILER_DATA_ROOTS | dirs and URI prefixes (``s3://bucket/in``) csv_path lies in, ``:``-split | ``<home>`` |
| WELCOME_MAILER_REPORTS_DIR | where each run's report and rejected-rows CSV go (or a URI) | ``<home>/data/reports`` |
| WELCOME_MAILER_STORAGE_CONN_ID | connection of URIs naming none (``s3://conn@bucket/key``) | ``aws_default`` |
| WELCOME_MAILER_LEASE_MINUTES | how long a silent run keeps its contacts before another run may take them | 30 |
| WELCOME_MAILER_POKE_SECONDS | the sensors' poke interval; also how long a poke goes on with nothing due | 2 |
| WELCOME_MAILER_REQUESTS_IN_FLIGHT | provider requests under way at once in each send task | 4 |
| WELCOME_MAILER_DROPZONE | the drop folder (incoming/, processing/, archive/, failed/) | ``<home>/data/dropzone`` |
| WELCOME_MAILER_DROPZONE_SCHEDULE | how often contacts_dropzone looks for files (cron) | every minute |
| WELCOME_MAILER_DROPZONE_SETTLE_SECONDS | a file unchanged this long is finished | 10 |
| WELCOME_MAILER_ERASE_KEY | the secret key of erased addresses' hashes, the same everywhere | none: no erasing |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Where the api-server mounts the plugin's web app (welcome_mailer.plugin, welcome_mailer.web).
URL_PREFIX = "/welcome-mailer"


def home(environ: Mapping[str, str] | None = None) -> Path:
    """The directory the defaults live under. Never the package's own location: installed code has no
    checkout around it."""
    env = os.environ if environ is None else environ
    base = env.get("WELCOME_MAILER_HOME") or env.get("AIRFLOW_HOME") or "~/airflow"
    return Path(base).expanduser().resolve()


# Each send task keeps this many provider requests under way while it records replies; the provider sees
# up to this many times the email_provider pool's slots at once.
DEFAULT_REQUESTS_IN_FLIGHT = 4


class InvalidCsvPath(ValueError):
    """csv_path cannot be used; the message says why and what to do."""


# -- object storage: URIs are checked here as text (no Airflow import); storage.py opens them ---------
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ROOT_SEPARATOR = re.compile(r":(?!//)")  # ':' between roots, not the one in 's3://'


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


def _location(raw: str, resolve: bool = True) -> Path | str:
    """A root or the reports directory: object URIs stay text, the rest (``file://`` too) are paths."""
    if raw.strip().lower().startswith("file://"):
        raw = unquote(urlsplit(raw.strip()).path)
    if is_uri(raw):
        return raw.strip()
    return Path(raw).resolve() if resolve else Path(raw)


@dataclass(frozen=True)
class Settings:
    data_roots: tuple[Path | str, ...]  # local directories, and object-storage URIs as text
    reports_dir: Path | str  # a URI (text) puts the reports on object storage
    lease: timedelta
    poke_seconds: float
    dropzone: Path
    dropzone_settle_seconds: float
    dropzone_schedule: str
    erase_key: bytes | None = field(default=None, repr=False)  # a secret: never in logs
    storage_conn_id: str = "aws_default"
    requests_in_flight: int = DEFAULT_REQUESTS_IN_FLIGHT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """From this process's environment, or from ``environ`` (the one a child process will get)."""
        env = os.environ if environ is None else environ
        roots = env.get("WELCOME_MAILER_DATA_ROOTS", "")
        base = home(env)
        requests_in_flight = int(env.get("WELCOME_MAILER_REQUESTS_IN_FLIGHT", DEFAULT_REQUESTS_IN_FLIGHT))
        if requests_in_flight < 1:
            raise ValueError(f"WELCOME_MAILER_REQUESTS_IN_FLIGHT must be at least 1, not {requests_in_flight}")
        return cls(
            data_roots=tuple(_location(r) for r in split_roots(roots)) or (base,),
            reports_dir=_location(env.get("WELCOME_MAILER_REPORTS_DIR", str(base / "data" / "reports")), resolve=False),
            lease=timedelta(minutes=float(env.get("WELCOME_MAILER_LEASE_MINUTES", "30"))),
            poke_seconds=float(env.get("WELCOME_MAILER_POKE_SECONDS", "2")),
            dropzone=Path(env.get("WELCOME_MAILER_DROPZONE", base / "data" / "dropzone")),
            dropzone_settle_seconds=float(env.get("WELCOME_MAILER_DROPZONE_SETTLE_SECONDS", "10")),
            dropzone_schedule=env.get("WELCOME_MAILER_DROPZONE_SCHEDULE", "* * * * *"),
            erase_key=env["WELCOME_MAILER_ERASE_KEY"].encode() if env.get("WELCOME_MAILER_ERASE_KEY") else None,
            storage_conn_id=env.get("WELCOME_MAILER_STORAGE_CONN_ID", "aws_default"),
            requests_in_flight=requests_in_flight,
        )
