"""A run's report: what the file held, what was sent, how it ended, how long each phase took."""

from __future__ import annotations

import json
from pathlib import Path

from welcome_mailer.run_files import REPORT_JSON, REPORT_MARKDOWN
from welcome_mailer.storage import ensure_directory

OUTCOME_ORDER = (
    "delivered",
    "bounced",
    "complained",
    "unsubscribed",
    "failed",
    "unconfirmed",
    "blocked",
    "sent",
    "sending",
    "claimed",
)


def build_report(
    *,
    run_id: str,
    parsed: dict,
    claimed: dict,
    summary: dict,
    phases: dict[str, float],
    peak_rss: dict | None = None,
    limits: dict | None = None,
) -> dict:
    """``peak_rss``: welcome_mailer.task_memory.summarize's view of each task's peak RSS. ``limits``: the
    run's figures about the provider's limits and its reputation guard (``Ledger.limit_figures``, with
    ``outcome_figures`` under "guard")."""
    by_status = summary["by_status"]
    return {
        "run_id": run_id,
        "csv_path": parsed["csv_path"],
        "rejected_csv": parsed["rejected_csv"],
        "encoding": parsed["encoding"],
        "encoding_warning": parsed["encoding_warning"],
        "rows_read": parsed["rows_read"],
        "rejected": parsed["rejected"],
        "duplicates_in_file": parsed["duplicates_in_file"],
        "unique_contacts": parsed["contacts"],
        "template": parsed.get("template"),  # None: a run parsed before templates
        "template_hash": parsed.get("template_hash"),
        # Skipped contacts held by another run in progress were not contacted yet: counted apart.
        "already_contacted_skipped": claimed["skipped"] - claimed.get("held_by_other_runs", 0),
        "failed_recently_skipped": claimed["failed_recently"],
        "held_by_other_runs": claimed.get("held_by_other_runs", 0),
        "held_until": claimed.get("held_until"),
        "claimed": claimed["owned"],
        "claimed_new": claimed["claimed_new"],
        "taken_over": claimed["taken_over"],
        "outcomes": {status: by_status[status] for status in OUTCOME_ORDER if status in by_status},
        "messages_sent": summary["messages_sent"],
        "attempts_histogram": {str(k): v for k, v in summary["attempts_histogram"].items()},
        "resent_after_block": summary["resent_after_block"],
        "phase_seconds": {name: round(seconds, 2) for name, seconds in phases.items()},
        "peak_rss_mb": (peak_rss or {}).get("by_task", {}),
        "peak_rss_scope": (peak_rss or {}).get("scope", "not measured"),
        "limits": limits or {},
    }


def render_markdown(report: dict) -> str:
    lines = ["| item | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in report_rows(report))]
    if report["claimed"] == 0:
        lines.append("")
        lines.append(nothing_sent_sentence(report))
    return "\n".join(lines) + "\n"


def report_rows(report: dict) -> list[tuple[str, object]]:
    """The report's table, as (item, value) rows: report.md and the UI's run page show these."""
    rows = [
        ("run", report["run_id"]),
        ("file", report["csv_path"]),
        *(
            (("template", f"{report['template']} (version {report['template_hash'][:12]})"),)
            if report.get("template")
            else ()
        ),
        ("rows read", report["rows_read"]),
        ("rejected rows", f"{report['rejected']} (see {report['rejected_csv']})"),
        ("duplicates within the file", report["duplicates_in_file"]),
        ("unique contacts", report["unique_contacts"]),
        ("already contacted (skipped)", report["already_contacted_skipped"]),
        ("  of them failed recently (retried later)", report["failed_recently_skipped"]),
        ("held by another run in progress (skipped)", report["held_by_other_runs"]),
        *((("  lease of that run ends at the latest (UTC)", report["held_until"]),) if report["held_until"] else ()),
        ("claimed by this run", report["claimed"]),
        *((f"outcome: {status}", count) for status, count in report["outcomes"].items()),
        ("messages sent", report["messages_sent"]),
        ("  of them resent after a block", report["resent_after_block"]),
        *((f"contacts with {n} attempt(s)", count) for n, count in report["attempts_histogram"].items()),
        *((f"seconds: {phase}", seconds) for phase, seconds in report["phase_seconds"].items()),
        # reports written before the figures existed have none
        *((f"peak RSS MB: {task}", mb) for task, mb in report.get("peak_rss_mb", {}).items()),
    ]
    if report.get("peak_rss_mb"):
        rows.append(("  peak RSS measured", report["peak_rss_scope"]))
    rows += limit_rows(report.get("limits") or {})
    if report["encoding_warning"]:
        rows.append(("warning", report["encoding_warning"]))
    return rows


def limit_rows(limits: dict) -> list[tuple[str, object]]:
    """The provider's limits and the reputation guard, as the run met them (docs/limits.md)."""
    if not limits:
        return []
    rows = [
        ("throttled requests (the provider's rate or quota; no attempt spent)", limits["throttled_requests"]),
        ("seconds waiting after throttling", limits["throttle_wait_seconds"]),
        ("seconds waiting for the send rate", limits["rate_wait_seconds"]),
        ("seconds waiting for the quota", limits["quota_wait_seconds"]),
    ]
    if limits.get("quota_resumes_at"):
        rows.append(("quota used up: sending goes on at (UTC)", limits["quota_resumes_at"]))
    guard = limits.get("guard") or {}
    if guard:
        rows.append(
            ("reputation guard: outcomes, bounce rate, complaint rate",
             f"{guard['outcomes']}, {guard['bounce_rate']:.1%}, {guard['complaint_rate']:.2%}")
        )  # fmt: skip
    if limits.get("guard_stopped_at"):
        reason = json.loads(limits["guard_detail"])["reason"]
        rows.append(("reputation guard STOPPED the run", f"{limits['guard_stopped_at']}: {reason}"))
    return rows


def nothing_sent_sentence(report: dict) -> str:
    """Why a run that claimed nothing sent nothing, without calling contacts held elsewhere "contacted"."""
    if not report["unique_contacts"]:
        return (
            f"Nothing was sent: the file held no valid contact ({report['rows_read']} row(s) read, "
            f"{report['rejected']} rejected: see {report['rejected_csv']} for each row's line and reason)."
        )
    held = report["held_by_other_runs"]
    sentence = (
        f"Nothing was sent: {report['already_contacted_skipped']} contact(s) in the file were already contacted "
        f"(of them {report['failed_recently_skipped']} failed too recently to be retried: "
        "retry_failed_after_hours)"
    )
    if not held:
        return sentence + "."
    return (
        f"{sentence}, and {held} are held by another run still in progress, NOT contacted yet: that run "
        f"sends them, or, if it is dead, the first run started after its lease ends ({report['held_until']} UTC "
        "at the latest) takes them over."
    )


def write_report(report: dict, directory: Path) -> tuple[Path, Path]:
    """report.json and report.md in ``directory``, a local Path or an ObjectStoragePath."""
    ensure_directory(directory)
    json_path, markdown_path = directory / REPORT_JSON, directory / REPORT_MARKDOWN
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    markdown_path.write_text(f"# Welcome emails: {report['run_id']}\n\n{render_markdown(report)}", encoding="utf-8")
    return json_path, markdown_path
