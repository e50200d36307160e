"""Where the welcome mailer meets Airflow: Connections -> ledger and ESP client. The only module here
that imports Airflow; DAG files import it lazily, inside tasks.

Connections (any Airflow secrets backend, or environment variables in JSON form):

    AIRFLOW_CONN_ESP_DEFAULT='{"conn_type": "http", "host": "127.0.0.1", "port": 8025, "password": "<api key>"}'
    AIRFLOW_CONN_CONTACTS_DB='{"conn_type": "postgres", "host": "127.0.0.1", "port": 5432,
                               "login": "postgres", "password": "", "schema": "contacts"}'
    AIRFLOW_CONN_CONTACTS_DB='{"conn_type": "sqlite", "host": "/abs/path/ledger.db"}'   # embedded default

The ESP connection's extra may set ``{"scheme": "https", "timeout": 30}``.
"""

from __future__ import annotations

import time
from functools import cache

from airflow.sdk import BaseHook, conf

from welcome_mailer.esp import HttpEmailProvider
from welcome_mailer.ledger import CLAIMED, SENDING, SENT, Ledger, connect
from welcome_mailer.settings import Settings, ledger_url

ESP_CONN_ID = "esp_default"
LEDGER_CONN_ID = "contacts_db"


class EspHook(BaseHook):
    """The email service provider, from an HTTP connection: host, port, password = API key."""

    conn_name_attr = "esp_conn_id"
    default_conn_name = ESP_CONN_ID
    conn_type = "http"
    hook_name = "Welcome mailer ESP"

    def __init__(self, esp_conn_id: str = ESP_CONN_ID) -> None:
        super().__init__()
        self.esp_conn_id = esp_conn_id

    def get_conn(self) -> HttpEmailProvider:
        conn = self.get_connection(self.esp_conn_id)
        extra = conn.extra_dejson
        host = conn.host or ""
        if "://" not in host:
            port = f":{conn.port}" if conn.port else ""
            host = f"{extra.get('scheme', 'http')}://{host}{port}"
        return HttpEmailProvider(host, conn.password or "", timeout=float(extra.get("timeout", 30)))


class LedgerHook(BaseHook):
    """The contacts ledger, from a postgres or sqlite connection."""

    conn_name_attr = "ledger_conn_id"
    default_conn_name = LEDGER_CONN_ID
    conn_type = "postgres"
    hook_name = "Welcome mailer ledger"

    def __init__(self, ledger_conn_id: str = LEDGER_CONN_ID) -> None:
        super().__init__()
        self.ledger_conn_id = ledger_conn_id

    def get_conn(self) -> Ledger:
        ledger = Ledger(_engine(self.sqlalchemy_url()), lease=Settings.from_env().lease)
        ledger.ensure_schema()
        return ledger

    def sqlalchemy_url(self) -> str:
        conn = self.get_connection(self.ledger_conn_id)
        try:
            return ledger_url(conn.conn_type, conn.host, conn.port, conn.login, conn.password, conn.schema)
        except ValueError as exc:
            raise ValueError(f"connection {self.ledger_conn_id!r}: {exc}") from None


@cache
def _engine(url: str):
    return connect(url)


def max_mapped_batches() -> int:
    """Send batches per run: never more mapped tasks than Airflow allows."""
    return conf.getint("core", "max_map_length", fallback=1024)


# Tasks whose return values the report reads (claim's counts are under the key "summary", send_batch's
# per map index); close_out's result means the run got to the end.
UNFINISHED_STATES = (CLAIMED, SENDING, SENT)
REPORTED_TASKS = ("parse", "await_delivery", "resend_blocked", "close_out")


def report_run(ti, dag_run, run_id: str) -> dict:
    """Gather the run's task results, build, log and write the report, release the run's contacts, and
    fail (after reporting) when a phase did not complete, so the run's state tells the truth."""
    import logging

    from airflow.sdk.exceptions import AirflowFailException

    from welcome_mailer.pipeline import run_directory
    from welcome_mailer.report import build_report, render_markdown, write_report

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
    )
    json_path, markdown_path = write_report(report, run_directory(Settings.from_env().reports_dir, run_id))
    report["report_files"] = [str(json_path), str(markdown_path)]
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
