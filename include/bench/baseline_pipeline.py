"""The package's own pipeline without Airflow, for `make bench`: how much of a run's time is Airflow's.

    python -m include.bench.baseline_pipeline FILE --esp-url URL --api-key KEY [--ledger-url URL] [--conf JSON]

The welcome_emails DAG's steps with the DAG's own functions and parameter defaults (welcome_mailer.pipeline,
the ledger), called in order by one program: parse; claim; every send batch at once, each in a process of
its own as the DAG's mapped send tasks run on the stack (one after another on SQLite: one writer, as under
`dags test`); then outcomes polled every POLL_SECONDS until each message has one or blocked contacts
can be resent; pipeline.resend_blocked until it is done; close_out. Everything the DAG records is
recorded, and each send and poke checks the reputation guard as the DAG's do, so a DAG run's time over
this one is Airflow's: scheduling, task start-up, its metadata database (and the DAG's report).
include/bench/yardstick.py is the other: the lean durable program, the same job recorded in bulk without
the package. ``--conf`` overrides Params as a trigger's conf does. Prints one JSON
line: seconds per phase, the run's summary, and the SQL statements that took longest, summed over its
processes (include/bench/sql_time.py).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from include.bench import sql_time

if TYPE_CHECKING:
    from welcome_mailer.ledger.limits import ReputationGuard

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUN_ID = "baseline_pipeline"
_worker: dict = {}  # a send process's own ledger and transport (send_in_process)


def dag_module() -> ModuleType:
    """dags/welcome_emails.py: its Params' defaults and poll intervals are the ones measured here."""
    spec = importlib.util.spec_from_file_location("welcome_emails_dag", PROJECT_ROOT / "dags" / "welcome_emails.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def open_ledger(ledger_url: str):
    from welcome_mailer.ledger import Ledger, connect

    return Ledger(connect(ledger_url))


def open_transport(esp_url: str, api_key: str):
    from welcome_mailer.transports.http import HttpEmailProvider
    from welcome_mailer.unsubscribe import UnsubscribeSettings

    return HttpEmailProvider(esp_url, api_key, unsubscribe=UnsubscribeSettings.from_env())


def start_send_process(ledger_url: str, esp_url: str, api_key: str) -> None:
    sql_time.taken()  # a forked process starts with its parent's figures: those are the parent's to report
    sql_time.install()
    _worker["ledger"], _worker["transport"] = open_ledger(ledger_url), open_transport(esp_url, api_key)


def send_in_process(
    batch_no: int, batch_size: int, requests_in_flight: int, guard: ReputationGuard | None
) -> tuple[dict, dict]:
    """A send task's work, and the SQL figures of this process since its last batch."""
    from welcome_mailer import pipeline

    ledger, transport = _worker["ledger"], _worker["transport"]
    sent = pipeline.send_batch(ledger, transport, RUN_ID, batch_no, batch_size, requests_in_flight, guard=guard)
    return sent, sql_time.taken()


def run(csv_path: Path, ledger_url: str, esp_url: str, api_key: str, workdir: Path, conf: dict) -> dict:
    from welcome_mailer import pipeline
    from welcome_mailer.ledger.migrate import upgrade
    from welcome_mailer.outcomes.http_lookup import HttpLookupSource

    dag = dag_module()
    params = dag.welcome_emails().params.dump()
    if unknown := set(conf) - set(params):
        raise SystemExit(f"--conf: welcome_emails has no Param {', '.join(sorted(unknown))}")
    params.update(conf)
    settings = dag.SETTINGS
    guard = dag.reputation_guard(params)  # as every send task and sensor poke of the DAG checks it
    sql_time.install()
    gc.freeze()  # what the program holds now is never walked by the collector, as in every task of the DAG
    ledger = open_ledger(ledger_url)
    upgrade(ledger.engine)
    phases: dict[str, float] = {}
    started = mark = time.perf_counter()
    sql_time.taken()  # the run's statements only: not the migration's

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = round(now - mark, 2)
        mark = now

    ledger.renew_lease(RUN_ID)
    pipeline.parse_file(ledger, RUN_ID, csv_path, workdir / "rejected.csv")
    phase("parse")
    claimed = pipeline.claim_contacts(
        ledger, RUN_ID, params["batch_size"], params["max_send_tasks"],
        timedelta(hours=params["retry_failed_after_hours"]), params["min_contacts_per_send_task"],
    )  # fmt: skip
    phase("claim")
    batches = claimed["batches"]
    processes = 1 if ledger.engine.dialect.name == "sqlite" else max(1, len(batches))
    ledger.engine.dispose()  # the send processes open their own connections
    opened = {"initializer": start_send_process, "initargs": (ledger_url, esp_url, api_key)}
    with ProcessPoolExecutor(processes, **opened) as pool:
        sends = [
            pool.submit(send_in_process, b, params["batch_size"], settings.requests_in_flight, guard) for b in batches
        ]
        sent, send_sql = zip(*(send.result() for send in sends), strict=True) if sends else ((), ())
    phase("send")
    with open_transport(esp_url, api_key) as transport:
        sources = [HttpLookupSource(transport)]
        while not pipeline.await_delivery(  # the sensor's pokes, each after the last without a wait
            ledger, sources, RUN_ID, params["max_attempts"],
            linger_seconds=settings.poke_seconds, poll_seconds=dag.POLL_SECONDS, guard=guard,
        ):  # fmt: skip
            time.sleep(dag.POLL_SECONDS)
        phase("awaiting outcomes")
        while not pipeline.resend_blocked(  # resend_blocked's pokes, each after the last without a wait
            ledger, transport, sources, RUN_ID,
            max_attempts=params["max_attempts"], batch_size=params["batch_size"],
            max_batches=params["max_send_tasks"], backoff_seconds=params["resend_backoff_seconds"],
            linger_seconds=settings.poke_seconds, poll_seconds=dag.POLL_SECONDS,
            requests_in_flight=settings.requests_in_flight, guard=guard,
        ):  # fmt: skip
            time.sleep(dag.POLL_SECONDS)
    phase("resends")
    failed = ledger.close_out(RUN_ID, params["max_attempts"])
    ledger.finish_run(RUN_ID)
    phase("close out")
    sql = sql_time.merged(sql_time.taken(), *send_sql)  # before the figures below are read
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "phase_seconds": phases,
        "ledger": ledger.engine.dialect.name,
        "send_processes": processes,
        "contacts": claimed["to_send"],
        "sent_first_time": sum(s["sent"] for s in sent),
        "closed_out_failed": failed,
        "summary": ledger.run_summary(RUN_ID),
        "pushed_event_posts": pushed_event_posts(ledger),
        "sql_seconds": sql,
    }


def pushed_event_posts(ledger) -> int:
    """Webhook posts the ledger received (a provider in push mode; 0 when outcomes were only polled)."""
    from sqlalchemy import func, select

    from welcome_mailer.ledger.schema import provider_events

    with ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(provider_events)).scalar_one()


def main(argv: list[str] | None = None) -> None:
    from include.bench.yardstick import arguments

    parser = arguments(__doc__)
    parser.add_argument("--conf", type=json.loads, default={}, help="Params to override, as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="baseline-pipeline-") as tmp:
        ledger_url = args.ledger_url or f"sqlite:///{Path(tmp) / 'ledger.db'}"
        print(json.dumps(run(args.csv, ledger_url, args.esp_url, args.api_key, Path(tmp), args.conf), default=str))


if __name__ == "__main__":
    main()
