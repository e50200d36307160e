"""Deployment settings, from environment variables (the same in every Airflow component).

| variable | meaning | default |
|---|---|---|
| WELCOME_MAILER_HOME | the base of the defaults below | ``$AIRFLOW_HOME`` (Airflow's: ``~/airflow``) |
| WELCOME_MAILER_DATA_ROOTS | dirs and URI prefixes (``s3://bucket/in``) csv_path lies in, ``:``-split | ``<home>`` |
| WELCOME_MAILER_REPORTS_DIR | where each run's report and rejected-rows CSV go (or a URI) | ``<home>/data/reports`` |
| WELCOME_MAILER_STORAGE_CONN_ID | connection of URIs naming none (``s3://conn@bucket/key``) | ``aws_default`` |
| WELCOME_MAILER_LEASE_MINUTES | how long a silent run keeps its contacts before another run may take them | 30 |
| WELCOME_MAILER_POKE_SECONDS | the sensors' poke interval (and the drop folder's, on its runs); a poke's linger | 2 |
| WELCOME_MAILER_REQUESTS_IN_FLIGHT | provider requests under way at once in each send task and outcome poll | 4 |
| WELCOME_MAILER_DROPZONE | the drop folder (incoming/, processing/, archive/, failed/) | ``<home>/data/dropzone`` |
| WELCOME_MAILER_DROPZONE_SCHEDULE | how often contacts_dropzone looks for files (cron) | every minute |
| WELCOME_MAILER_DROPZONE_SETTLE_SECONDS | a file unchanged this long is finished | 10 |
| WELCOME_MAILER_TEMPLATES_DIR | one directory per template (docs/templates.md), or a URI | ``<home>/templates`` |
| WELCOME_MAILER_ERASE_KEY | the secret key of erased addresses' hashes, the same everywhere | none: no erasing |

Without a ``contacts_db`` connection, the embedded default (``make run``, ``make events``, the operator
commands) keeps its SQLite ledger and erase key under ``<home>/data`` (``local_data``): every one of them
finds the same files, wherever ``WELCOME_MAILER_HOME`` points.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from welcome_mailer.run_files import root_location, split_roots

# Where the api-server mounts the plugin's web app (welcome_mailer.plugin, welcome_mailer.web).
URL_PREFIX = "/welcome-mailer"


def home(environ: Mapping[str, str] | None = None) -> Path:
    """The directory the defaults live under. Never the package's own location: installed code has no
    checkout around it."""
    env = os.environ if environ is None else environ
    base = env.get("WELCOME_MAILER_HOME") or env.get("AIRFLOW_HOME") or "~/airflow"
    return Path(base).expanduser().resolve()


def templates_location(raw: str) -> Path | str:
    """The templates folder: a local directory (``~`` expanded), or an object-storage URI as text."""
    location = root_location(raw, resolve=False)
    return location.expanduser() if isinstance(location, Path) else location


def local_data(environ: Mapping[str, str] | None = None) -> Path:
    """``<home>/data``: the embedded default's ledger (``ledger.db``) and erase key (``erase_key``), beside
    the reports and the drop folder's default places."""
    return home(environ) / "data"


# Each send task keeps this many provider requests under way while it records replies; the provider sees
# up to this many times the email_provider pool's slots at once.
DEFAULT_REQUESTS_IN_FLIGHT = 4


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
    templates_dir: Path | str | None = None  # a URI (text) puts the templates on object storage; None: built-in only

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
            data_roots=tuple(root_location(r) for r in split_roots(roots)) or (base,),
            reports_dir=root_location(
                env.get("WELCOME_MAILER_REPORTS_DIR", str(base / "data" / "reports")), resolve=False
            ),
            lease=timedelta(minutes=float(env.get("WELCOME_MAILER_LEASE_MINUTES", "30"))),
            poke_seconds=float(env.get("WELCOME_MAILER_POKE_SECONDS", "2")),
            dropzone=Path(env.get("WELCOME_MAILER_DROPZONE", base / "data" / "dropzone")),
            dropzone_settle_seconds=float(env.get("WELCOME_MAILER_DROPZONE_SETTLE_SECONDS", "10")),
            dropzone_schedule=env.get("WELCOME_MAILER_DROPZONE_SCHEDULE", "* * * * *"),
            erase_key=env["WELCOME_MAILER_ERASE_KEY"].encode() if env.get("WELCOME_MAILER_ERASE_KEY") else None,
            storage_conn_id=env.get("WELCOME_MAILER_STORAGE_CONN_ID", "aws_default"),
            requests_in_flight=requests_in_flight,
            templates_dir=templates_location(env.get("WELCOME_MAILER_TEMPLATES_DIR") or str(base / "templates")),
        )
