"""The report task (``report_run``: the run's figures, logged, returned and written to its files) and the
one reading of Airflow's configuration the DAG needs (``max_mapped_batches``). Connections are read by the
hooks in ``welcome_mailer.hooks``; the DAG file imports both lazily, inside tasks."""

from __future__ import annotations

import time

from airflow.sdk import conf

from welcome_mailer.hooks.ledger import LedgerHook
from welcome_mailer.ledger import CLAIMED, SENDING, SENT
from welcome_mailer.settings import Settings
from welcome_mailer.task_memory import PEAK_RSS_KEY, current_figure, summarize


def max_mapped_batches() -> int:
    """Send batches per run: never more mapped tasks than Airflow allows."""
    return conf.getint("core", "max_map_length", fallback=1024)


# Tasks whose return values the report reads (claim's counts are under the key "summary", send_batch's
# per map index); close_out's result means the run got to the end.
UNFINISHED_STATES = (CLAIMED, SENDING, SENT)
REPORTED_TASKS = ("parse", "await_delivery", "resend_blocked", "close_out")


def peak_rss_by_task(ti, batch_count: int) -> dict[str, list[dict]]:
    """The figures every task of the run pushed (welcome_mailer.task_memory), one per map index, and the
    report task's own so far."""
    figures = {}
    for task_id in ti.task.dag.task_ids:
        if task_id == ti.task_id:
            figures[task_id] = [current_figure()]
        elif task_id == "send_batch":
            figures[task_id] = ti.xcom_pull(task_ids=task_id, key=PEAK_RSS_KEY, map_indexes=range(batch_count))
        else:
            figures[task_id] = [ti.xcom_pull(task_ids=task_id, key=PEAK_RSS_KEY)]
    return figures


def report_run(ti, dag_run, run_id: str) -> dict:
    """Gather the run's task results, build, log and write the report, release the run's contacts, and
    fail (after reporting) when a phase did not complete, so the run's state tells the truth."""
    import logging

    from airflow.sdk.exceptions import AirflowFailException

    from welcome_mailer.report import build_report, render_markdown, write_report
    from welcome_mailer.run_files import run_directory
    from welcome_mailer.storage import describe, location

    log = logging.getLogger(__name__)
    results = {task_id: ti.xcom_pull(task_ids=task_id) for task_id in REPORTED_TASKS}
    results["claim"] = ti.xcom_pull(task_ids="claim", key="summary")
    ledger = LedgerHook().get_conn()
    ledger.finish_run(run_id)
    parsed, claimed = results["parse"], results["claim"]
    if parsed is None or claimed is None:
        raise AirflowFailException(
            "the run stopped before contacts were claimed: nothing was sent (see parse/claim logs)"
        )
    # Explicit map indexes: a pull of a mapped task with one instance would otherwise return a bare value.
    batch_results = ti.xcom_pull(task_ids="send_batch", map_indexes=range(len(claimed["batches"])))
    batches = [b for b in batch_results if b]
    send_finished = max((b["finished"] for b in batches), default=claimed["finished"])
    phases = {"parse": parsed["seconds"], "claim": claimed["seconds"]}
    if batches:
        phases["send"] = send_finished - min(b["started"] for b in batches)
    if results["await_delivery"]:
        phases["await_delivery"] = results["await_delivery"]["finished"] - send_finished
        if results["resend_blocked"]:
            phases["resend_blocked"] = results["resend_blocked"]["finished"] - results["await_delivery"]["finished"]
    if dag_run is not None and dag_run.start_date is not None:
        phases["total"] = time.time() - dag_run.start_date.timestamp()
    report = build_report(
        run_id=run_id,
        parsed=parsed,
        claimed=claimed,
        summary=ledger.run_summary(run_id),
        phases=phases,
        peak_rss=summarize(peak_rss_by_task(ti, len(claimed["batches"]))),
    )
    settings = Settings.from_env()
    reports_dir = location(settings.reports_dir, settings.storage_conn_id)  # a directory or a URI
    json_path, markdown_path = write_report(report, run_directory(reports_dir, run_id))
    report["report_files"] = [describe(str(json_path)), describe(str(markdown_path))]
    log.info("Welcome run report (%s):\n%s", markdown_path, render_markdown(report))
    unfinished = {s: n for s, n in report["outcomes"].items() if s in UNFINISHED_STATES}
    if results["close_out"] is not None and unfinished:
        raise AirflowFailException(f"the run closed out with contacts still in flight: {unfinished}")
    if results["close_out"] is None:
        raise AirflowFailException(
            "the run did not finish: some messages have no outcome yet (see await_delivery/resend_blocked); "
            "they stay 'sent' and the next run that lists them reconciles them"
        )
    return report
