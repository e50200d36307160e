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
| WELCOME_MAILER_ERASE_KEY | the secret key of erased addresses' hashes, the same everywhere | none: no erasing |
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path


def home(environ: Mapping[str, str] | None = None) -> Path:
    """The directory the defaults live under. Never the package's own location: installed code has no
    checkout around it."""
    env = os.environ if environ is None else environ
    base = env.get("WELCOME_MAILER_HOME") or env.get("AIRFLOW_HOME") or "~/airflow"
    return Path(base).expanduser().resolve()


class InvalidCsvPath(ValueError):
    """csv_path cannot be used; the message says why and what to do."""


def resolve_csv_path(raw: str, data_roots: Sequence[Path]) -> Path:
    """The readable CSV file that ``raw`` names, inside one of the data roots (relative paths are taken
    from the first root). Raises InvalidCsvPath with a message meant for the person who triggered the run."""
    if not raw or not raw.strip():
        raise InvalidCsvPath("csv_path is empty: give the path of a CSV file")
    path = Path(raw.strip()).expanduser()
    resolved = (path if path.is_absolute() else data_roots[0] / path).resolve()
    if not any(resolved.is_relative_to(root) for root in data_roots):
        roots = ", ".join(str(r) for r in data_roots)
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


@dataclass(frozen=True)
class Settings:
    data_roots: tuple[Path, ...]
    reports_dir: Path
    lease: timedelta
    poke_seconds: float
    dropzone: Path
    dropzone_settle_seconds: float
    dropzone_schedule: str
    erase_key: bytes | None = field(default=None, repr=False)  # a secret: never in logs

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """From this process's environment, or from ``environ`` (the one a child process will get)."""
        env = os.environ if environ is None else environ
        roots = env.get("WELCOME_MAILER_DATA_ROOTS", "")
        base = home(env)
        return cls(
            data_roots=tuple(Path(r).resolve() for r in roots.split(os.pathsep) if r) or (base,),
            reports_dir=Path(env.get("WELCOME_MAILER_REPORTS_DIR", base / "data" / "reports")),
            lease=timedelta(minutes=float(env.get("WELCOME_MAILER_LEASE_MINUTES", "30"))),
            poke_seconds=float(env.get("WELCOME_MAILER_POKE_SECONDS", "2")),
            dropzone=Path(env.get("WELCOME_MAILER_DROPZONE", base / "data" / "dropzone")),
            dropzone_settle_seconds=float(env.get("WELCOME_MAILER_DROPZONE_SETTLE_SECONDS", "10")),
            dropzone_schedule=env.get("WELCOME_MAILER_DROPZONE_SCHEDULE", "* * * * *"),
            erase_key=env["WELCOME_MAILER_ERASE_KEY"].encode() if env.get("WELCOME_MAILER_ERASE_KEY") else None,
        )
