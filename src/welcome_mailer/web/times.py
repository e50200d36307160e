"""Times on the ledger's pages: in Airflow's configured time zone (``[core] default_timezone``: ``utc``,
``system`` or an IANA name), with the UTC time on hover; the ledger stores naive UTC."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from markupsafe import Markup, escape


def zone() -> tzinfo:
    """Airflow's time zone, read at each page (the configuration may come from the environment)."""
    from airflow.configuration import conf

    name = conf.get("core", "default_timezone", fallback="utc").strip()
    if name.lower() == "utc":
        return UTC
    if name.lower() == "system":
        return datetime.now().astimezone().tzinfo or UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def when(value: datetime | None, place: tzinfo | None = None) -> Markup | str:
    """A ledger time (naive UTC) as <time>: local to Airflow's zone, UTC in its title."""
    if not isinstance(value, datetime):
        return value or ""
    utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    local = utc.astimezone(place or zone())
    return Markup('<time datetime="{}" title="{} UTC">{}</time>').format(
        utc.isoformat(timespec="seconds"),
        utc.strftime("%Y-%m-%d %H:%M:%S"),
        escape(local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or "")),
    )
