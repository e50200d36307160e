"""Deployment settings, from environment variables (the same in every Airflow component).

| variable | meaning | default |
|---|---|---|
| WELCOME_MAILER_HOME | the base of the defaults below | ``$AIRFLOW_HOME`` (Airflow's: ``~/airflow``) |
| WELCOME_MAILER_DATA_ROOTS | directories csv_path must lie in, separated by ``:`` | ``<home>`` |
| WELCOME_MAILER_REPORTS_DIR | where each run's report and rejected-rows CSV go | ``<home>/data/reports`` |
| WELCOME_MAILER_LEASE_MINUTES | how long a silent run keeps its contacts before another run may take them | 30 |
| WELCOME_MAILER_POKE_SECONDS | how often delivery outcomes are polled | 2 |
| WELCOME_MAILER_DROPZONE | the drop folder (incoming/, processing/, archive/, failed/) | ``<home>/data/dropzone`` |
| WELCOME_MAILER_DROPZONE_SCHEDULE | how often contacts_dropzone looks for files (cron) | every minute |
| WELCOME_MAILER_DROPZONE_SETTLE_SECONDS | a file unchanged this long is finished | 10 |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path


def home() -> Path:
    """The directory the defaults live under. Never the package's own location: installed code has no
    checkout around it."""
    base = os.environ.get("WELCOME_MAILER_HOME") or os.environ.get("AIRFLOW_HOME") or "~/airflow"
    return Path(base).expanduser().resolve()


@dataclass(frozen=True)
class Settings:
    data_roots: tuple[Path, ...]
    reports_dir: Path
    lease: timedelta
    poke_seconds: float
    dropzone: Path
    dropzone_settle_seconds: float
    dropzone_schedule: str

    @classmethod
    def from_env(cls) -> Settings:
        roots = os.environ.get("WELCOME_MAILER_DATA_ROOTS", "")
        base = home()
        return cls(
            data_roots=tuple(Path(r).resolve() for r in roots.split(os.pathsep) if r) or (base,),
            reports_dir=Path(os.environ.get("WELCOME_MAILER_REPORTS_DIR", base / "data" / "reports")),
            lease=timedelta(minutes=float(os.environ.get("WELCOME_MAILER_LEASE_MINUTES", "30"))),
            poke_seconds=float(os.environ.get("WELCOME_MAILER_POKE_SECONDS", "2")),
            dropzone=Path(os.environ.get("WELCOME_MAILER_DROPZONE", base / "data" / "dropzone")),
            dropzone_settle_seconds=float(os.environ.get("WELCOME_MAILER_DROPZONE_SETTLE_SECONDS", "10")),
            dropzone_schedule=os.environ.get("WELCOME_MAILER_DROPZONE_SCHEDULE", "* * * * *"),
        )
