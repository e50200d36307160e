"""
### Welcome emails

Sends every contact in a CSV file one welcome email (the built-in **"Hi {name}, Welcome!"**, or the operator's
`template`), at most once per contact, ever.

**How to run**: trigger this DAG with the `csv_path` of a contact list (a path inside the allowed data
roots, `WELCOME_MAILER_DATA_ROOTS`; relative paths start at the first root). That root is the project
directory for `make run` and `make stack-up`; under docker compose it is `/opt/airflow/data`, which is
`./data` on the host, where the first start puts `input.csv`. So `{"csv_path": "input.csv"}` works in all
three. From a shell: `airflow dags test welcome_emails -c '{"csv_path": "input.csv"}'`, or
`make run CSV=input.csv`. Files dropped into the drop folder are picked up by `contacts_dropzone`.

**What happens**

1. `parse` checks the `template` and keeps its version for the run, then reads the file in chunks; unique
   valid contacts are staged, bad rows (and contacts the template lacks a value for) go to a rejected-rows CSV.
2. `claim` takes the contacts nobody has emailed into the ledger, in batches (and failed ones again, once
   `retry_failed_after_hours` have passed).
3. `send_batch` (one mapped task per batch) records each attempt, then sends it with an idempotency key.
4. `await_delivery` polls the provider and records outcomes until every message has one, or until some
   blocked contacts can be resent (reschedule mode: a poke goes on while outcomes arrive; no slot held
   between pokes).
5. `decide` -> `resend_blocked` sends a NEW email to each blocked contact once its backoff is over, up to
   `max_attempts`, and keeps recording outcomes until none is missing (a reschedule-mode sensor too: it
   gives its slot back whenever the next resend is more than a poke away); `close_out` marks the ones
   that never got through as failed. Bounced is final.
6. `report` returns, logs and writes the run's report (`<reports dir>/<run id>/report.md` and `.json`).

Connections: `esp_default` (the email provider) and `contacts_db` (the ledger). Pool: `email_provider`.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pendulum
from airflow.sdk import Label, Param, PokeReturnValue, TriggerRule, dag, get_current_context, task

from welcome_mailer.run_failure import record_failure
from welcome_mailer.settings import Settings
from welcome_mailer.task_memory import task_ended, task_started

ESP_POOL = "email_provider"  # the provider's concurrency limit, shared by every run
DELIVERY_TIMEOUT = timedelta(hours=1)  # then messages stay 'sent' for a later run to reconcile
RESEND_TIMEOUT = timedelta(days=1)  # room for max_attempts backoffs of up to an hour each
POLL_SECONDS = 0.25  # within a sensor's poke: how often to look for outcomes
SETTINGS = Settings.from_env()  # environment only: cheap at parse time
MIN_CONTACTS_PER_SEND_TASK = 10_000  # see the Param; measured in docs/performance.md


def reputation_guard(params: dict):
    """The run's reputation guard, from its params (docs/limits.md)."""
    from welcome_mailer.ledger.limits import ReputationGuard

    return ReputationGuard(params["guard_min_outcomes"], params["max_bounce_rate"], params["max_complaint_rate"])


@dag(
    dag_id="welcome_emails",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["welcome-mailer", "email"],
    doc_md=__doc__,
    max_active_tasks=16,
    default_args={
        "retries": 3,
        "retry_delay": timedelta(seconds=5),
        "retry_exponential_backoff": True,
        # every task's peak RSS, for the report, and the collector kept off what the process held before
        # the task (welcome_mailer.task_memory says what the figure means, and why)
        "pre_execute": task_started,
        "post_execute": task_ended,
        # a failed task's error, for whoever asks why the run failed (the drop folder's .reason.txt)
        "on_failure_callback": record_failure,
    },
    params={
        "csv_path": Param(
            type="string",
            minLength=1,
            title="Contact list (CSV path)",
            description="Path of the CSV file on the workers, inside the allowed data roots. "
            "Relative paths start at the first data root (the project directory by default; "
            "/opt/airflow/data, ./data on the host, under docker compose). Or an object URI under a URI "
            "data root, s3://bucket/key (credentials: the aws_default connection, or s3://conn_id@bucket/key).",
        ),
        "template": Param(
            "welcome",
            type="string",
            minLength=1,
            maxLength=64,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
            title="Email template",
            description="The message every contact gets: a directory of the templates folder "
            "(WELCOME_MAILER_TEMPLATES_DIR, default <home>/templates) with subject.txt, body.txt and an optional "
            "body.html. 'welcome' is the built-in \"Hi {name}, Welcome!\". Checked before anything is sent; "
            "the run keeps the version it started with (docs/templates.md).",
        ),
        "batch_size": Param(
            500,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Batch size",
            description="Contacts per provider request (the provider takes at most 1000).",
        ),
        "max_send_tasks": Param(
            8,
            type="integer",
            minimum=1,
            maximum=1024,
            title="Max send tasks",
            description="At most this many mapped send tasks; each sends its share of the contacts in "
            "requests of batch_size. Every task costs scheduling time, so a few large tasks beat many small "
            "ones, and more tasks than the email_provider pool has slots only queue: raise both together "
            "when you add workers. Also capped by max_map_length and min_contacts_per_send_task.",
        ),
        "min_contacts_per_send_task": Param(
            MIN_CONTACTS_PER_SEND_TASK,
            type="integer",
            minimum=1,
            title="Min contacts per send task",
            description="No more than one send task per this many contacts: a task costs Airflow about "
            "as much time as sending this many emails, so smaller files are not split (one task up to "
            "twice this, ...), and large ones still get max_send_tasks.",
        ),
        "max_attempts": Param(
            5,
            type="integer",
            minimum=1,
            maximum=20,
            title="Max attempts",
            description="Emails a blocked contact may get in this run, counting the first. "
            "Then the contact is marked failed; bounced contacts are never retried.",
        ),
        "retry_failed_after_hours": Param(
            24,
            type="number",
            minimum=0,
            title="Retry failed contacts after (hours)",
            description="A contact that ended failed (blocked on every attempt) is emailed again by a later "
            "run that lists it, once this many hours have passed since it failed; until then it is skipped. "
            "Blocks are temporary: retrying minutes later only meets the same block. 0 retries at once.",
        ),
        "resend_backoff_seconds": Param(
            0.5,
            type="number",
            minimum=0,
            maximum=3600,
            title="Resend backoff (seconds)",
            description="Wait between a contact being reported blocked and its next email. 0.5 s suits the "
            "mock provider; "
            "with a real provider use 600 or more, so that temporary blocks can clear.",
        ),
        # The reputation guard (docs/limits.md): a run that burns the sender's reputation stops sending.
        "guard_min_outcomes": Param(
            200,
            type="integer",
            minimum=1,
            title="Reputation guard: outcomes before it judges",
            description="The guard looks at the run's bounce and complaint shares once this many of its "
            "messages have an outcome.",
        ),
        "max_bounce_rate": Param(
            0.2,
            type="number",
            minimum=0,
            maximum=1,
            title="Reputation guard: max bounce rate",
            description="Above this share of bounced messages the run stops sending and releases every "
            "contact it has not emailed, and ends failed. 0 turns this limit off. 0.2 lets the mock "
            "provider's 10% through; use 0.05 with a real account (SES reviews an account at 5%).",
        ),
        "max_complaint_rate": Param(
            0.005,
            type="number",
            minimum=0,
            maximum=1,
            title="Reputation guard: max complaint rate",
            description="Above this share of spam complaints the run stops as above. 0 turns it off.",
        ),
    },
)
def welcome_emails():
    @task(retries=0)
    def parse(params: dict | None = None, run_id: str | None = None) -> dict:
        """Read the CSV in chunks: stage unique valid contacts, write rejected rows to a CSV. Counts only."""
        from airflow.sdk.exceptions import AirflowFailException

        from welcome_mailer.hooks.ledger import LedgerHook
        from welcome_mailer.pipeline import parse_file
        from welcome_mailer.run_files import REJECTED_CSV, InvalidCsvPath, resolve_csv_path, run_directory
        from welcome_mailer.storage import describe, location, readable_csv
        from welcome_mailer.templates import TemplateError, load_template

        reports_dir = location(SETTINGS.reports_dir, SETTINGS.storage_conn_id)  # a directory or a URI
        rejected_csv = run_directory(reports_dir, run_id) / REJECTED_CSV
        try:
            csv_path = resolve_csv_path(params["csv_path"], SETTINGS.data_roots)
            templates_folder = location(SETTINGS.templates_dir, SETTINGS.storage_conn_id)  # a directory or a URI
            template = load_template(params.get("template") or "welcome", templates_folder)
            ledger = LedgerHook().get_conn()
            ledger.renew_lease(run_id)
            # An object on object storage is parsed from a local copy (storage.local_copy says why).
            with readable_csv(csv_path, SETTINGS.storage_conn_id) as local_file:
                return parse_file(
                    ledger, run_id, local_file, rejected_csv, source=describe(str(csv_path)), template=template
                )
        except (InvalidCsvPath, TemplateError) as exc:
            raise AirflowFailException(str(exc)) from None

    @task
    def claim(parsed: dict, params: dict | None = None, run_id: str | None = None, ti=None) -> list[dict]:
        """Take this run's new contacts into the ledger (set-based statements) and number the batches.
        Returns one small ref per batch; the counts go to the report under the XCom key "summary"."""
        from welcome_mailer.hooks.ledger import LedgerHook
        from welcome_mailer.pipeline import claim_contacts
        from welcome_mailer.report_task import max_mapped_batches

        ledger = LedgerHook().get_conn()
        ledger.renew_lease(run_id)
        max_batches = min(params["max_send_tasks"], max_mapped_batches())
        retry_failed_after = timedelta(hours=params["retry_failed_after_hours"])
        claimed = claim_contacts(
            ledger, run_id, params["batch_size"], max_batches, retry_failed_after, params["min_contacts_per_send_task"]
        )
        ti.xcom_push(key="summary", value=claimed)
        return [{"batch_no": n, "batch_count": len(claimed["batches"])} for n in claimed["batches"]]

    @task(pool=ESP_POOL, map_index_template="{{ batch_label }}", retries=5)
    def send_batch(batch_no: int, batch_count: int, params: dict | None = None, run_id: str | None = None) -> dict:
        """Record an attempt for each contact of the batch, then send them with idempotency keys."""
        from welcome_mailer import pipeline
        from welcome_mailer.hooks.esp import EspHook
        from welcome_mailer.hooks.ledger import LedgerHook

        get_current_context()["batch_label"] = f"batch {batch_no + 1}/{batch_count}"
        ledger = LedgerHook().get_conn()
        ledger.renew_lease(run_id)
        esp = EspHook()
        with esp.get_conn() as transport:
            result = pipeline.send_batch(
                ledger, transport, run_id, batch_no, params["batch_size"], SETTINGS.requests_in_flight,
                limiter=esp.send_limiter(ledger), quota_linger_seconds=SETTINGS.poke_seconds,
                guard=reputation_guard(params),
            )  # fmt: skip
        pipeline.log.info(
            "batch %s/%s: %s sent, %s refused, %s throttled requests; %s left for the quota (it frees at %s UTC)",
            batch_no + 1, batch_count, result["sent"], result["refused"], result["throttled_requests"],
            result["unsent"], result["quota_resumes_at"],
        )  # fmt: skip
        return result

    @task.sensor(
        poke_interval=SETTINGS.poke_seconds,
        timeout=DELIVERY_TIMEOUT.total_seconds(),
        mode="reschedule",
        trigger_rule=TriggerRule.NONE_FAILED,  # also when there was nothing to send
    )
    def await_delivery(params: dict | None = None, run_id: str | None = None) -> PokeReturnValue:
        """Wait on the ledger until none of this run's messages lacks an outcome, polling the provider's
        outcome sources on the way (pushed outcomes land in the ledger by themselves). Done as soon as
        blocked contacts can be resent too: resend_blocked then takes over the waiting, so resends overlap
        the slow outcomes instead of queuing behind them. A poke goes on while outcomes arrive, and gives
        its slot back after a poke interval without one."""
        from welcome_mailer import pipeline
        from welcome_mailer.hooks.esp import EspHook
        from welcome_mailer.hooks.ledger import LedgerHook

        ledger = LedgerHook().get_conn()
        with EspHook().get_conn() as transport:
            sources = EspHook.outcome_sources(transport)
            done = pipeline.await_delivery(
                ledger, sources, run_id, params["max_attempts"],
                linger_seconds=SETTINGS.poke_seconds, poll_seconds=POLL_SECONDS, guard=reputation_guard(params),
            )  # fmt: skip
        return PokeReturnValue(is_done=done, xcom_value={"finished": time.time()})

    @task.branch
    def decide(params: dict | None = None, run_id: str | None = None) -> list[str]:
        """Resend when blocked contacts have attempts left, or when the quota held messages back; always
        close out."""
        from welcome_mailer.hooks.ledger import LedgerHook

        ledger = LedgerHook().get_conn()
        # Also when the provider's quota stopped a send task: resend_blocked sends the rest when it frees.
        waiting = ledger.count_resendable(run_id, params["max_attempts"]) or ledger.count_unsent(run_id)
        return ["resend_blocked", "close_out"] if waiting else ["close_out"]

    @task.sensor(
        poke_interval=SETTINGS.poke_seconds,
        timeout=RESEND_TIMEOUT.total_seconds(),
        mode="reschedule",
        pool=ESP_POOL,
    )
    def resend_blocked(params: dict | None = None, run_id: str | None = None) -> PokeReturnValue:
        """A NEW email to each blocked contact with attempts left once its backoff is over; record outcomes
        until none is missing. Works through a poke while resends are due within a poke interval."""
        from welcome_mailer import pipeline
        from welcome_mailer.hooks.esp import EspHook
        from welcome_mailer.hooks.ledger import LedgerHook
        from welcome_mailer.report_task import max_mapped_batches

        ledger = LedgerHook().get_conn()
        esp = EspHook()
        with esp.get_conn() as transport:
            done = pipeline.resend_blocked(
                ledger,
                transport,
                EspHook.outcome_sources(transport),
                run_id,
                max_attempts=params["max_attempts"],
                batch_size=params["batch_size"],
                max_batches=max_mapped_batches(),
                backoff_seconds=params["resend_backoff_seconds"],
                linger_seconds=SETTINGS.poke_seconds,
                poll_seconds=POLL_SECONDS,
                requests_in_flight=SETTINGS.requests_in_flight,
                limiter=esp.send_limiter(ledger),
                guard=reputation_guard(params),
            )
        return PokeReturnValue(is_done=done, xcom_value={"finished": time.time()})

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def close_out(params: dict | None = None, run_id: str | None = None) -> dict:
        """Blocked contacts that used up their attempts become failed (a later run may try them again,
        after retry_failed_after_hours)."""
        from welcome_mailer.hooks.ledger import LedgerHook

        return {"failed": LedgerHook().get_conn().close_out(run_id, params["max_attempts"])}

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=1)
    def report(run_id: str | None = None, ti=None, dag_run=None) -> dict:
        """Count outcomes, log them as a table, write report.md/.json; fail the run if a phase failed."""
        from welcome_mailer.report_task import report_run

        return report_run(ti, dag_run, run_id)

    parsed = parse()
    claimed = claim(parsed)
    sent = send_batch.expand_kwargs(claimed)
    delivered = await_delivery()
    branch = decide()
    resent = resend_blocked()
    closed = close_out()
    sent >> delivered >> branch
    branch >> Label("blocked contacts with attempts left") >> resent >> closed
    branch >> Label("always") >> closed
    closed >> report()


welcome_emails()
