"""
### Contacts drop folder

Every contact list dropped into the drop folder's `incoming/` directory becomes one `welcome_emails`
run. Runs on a schedule (every minute by default: `WELCOME_MAILER_DROPZONE_SCHEDULE`).

**How to use**: copy a CSV file into `<dropzone>/incoming/` (`WELCOME_MAILER_DROPZONE`, by default
`data/dropzone`; in docker-compose `./data/dropzone`). Write big files under a `.part` or `.tmp` name and
rename them when complete; files still growing are left alone until they have not changed for
`WELCOME_MAILER_DROPZONE_SETTLE_SECONDS`.

**Where files go**

| folder | when |
|---|---|
| `processing/` | claimed (an atomic move: overlapping scans never take the same file), while its run goes |
| `archive/` | its welcome_emails run succeeded, or the same content (sha256) was processed before (`.note.txt`) |
| `failed/` | not a CSV file, a symbolic link (never followed), or its run failed; a `.reason.txt` says why |

A file whose earlier run failed can simply be dropped again. Each run's report is in the reports
directory under the run id `dropzone__<file>__<sha256 prefix>__<time>`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import TriggerRule, dag, task, task_group

from welcome_mailer.settings import Settings

SETTINGS = Settings.from_env()  # environment only: cheap at parse time


@dag(
    dag_id="contacts_dropzone",
    schedule=SETTINGS.dropzone_schedule,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=3,
    tags=["welcome-mailer", "ingestion"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
)
def contacts_dropzone():
    @task
    def claim_files() -> list[dict]:
        """Claim finished files from incoming/: not CSV -> failed/, duplicates -> archive/, others -> a run."""
        from welcome_mailer.dropzone import Dropzone
        from welcome_mailer.hooks.ledger import LedgerHook
        from welcome_mailer.pipeline import log

        dropzone = Dropzone(SETTINGS.dropzone, SETTINGS.dropzone_settle_seconds)
        files, counts = dropzone.scan(LedgerHook().get_conn().engine)
        log.info("drop folder %s: %s files to run; %s", dropzone.incoming, len(files), counts)
        return [f.as_dict() for f in files]

    @task_group(group_id="per_file")
    def per_file(file: dict):
        @task(multiple_outputs=True, map_index_template="{{ file_name }}")
        def prepare(file: dict) -> dict:
            from airflow.sdk import get_current_context

            get_current_context()["file_name"] = file["name"]
            return {"run_id": file["run_id"], "conf": {"csv_path": file["path"]}}

        prepared = prepare(file)
        trigger_welcome_emails = TriggerDagRunOperator(
            task_id="trigger_welcome_emails",
            trigger_dag_id="welcome_emails",
            trigger_run_id=prepared["run_id"],
            conf=prepared["conf"],
            wait_for_completion=True,
            deferrable=True,  # waits in the triggerer, not in a worker slot
            poke_interval=SETTINGS.poke_seconds,  # how soon a finished run's file is filed away
            allowed_states=["success"],
            failed_states=["failed"],
            retries=0,
        )

        @task(trigger_rule=TriggerRule.ALL_DONE)
        def file_away(file: dict, ti=None) -> str:
            """Archive the file when its run succeeded, else move it to failed/ with the reason."""
            from pathlib import Path

            from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

            from welcome_mailer.dropzone import Dropzone, finish_file, run_failed_note
            from welcome_mailer.hooks.ledger import LedgerHook
            from welcome_mailer.run_failure import run_failure_reason

            try:
                state = RuntimeTaskInstance.get_dagrun_state(dag_id="welcome_emails", run_id=file["run_id"])
            except Exception as exc:  # the run was never created
                state = f"not started ({exc.__class__.__name__})"
            dropzone = Dropzone(SETTINGS.dropzone)
            succeeded = state == "success"
            if succeeded:
                target = dropzone.archive(Path(file["path"]))
            else:
                first = run_failure_reason(ti, "welcome_emails", file["run_id"])
                target = dropzone.fail(Path(file["path"]), run_failed_note(file["run_id"], str(state), first))
            finish_file(LedgerHook().get_conn().engine, file["sha256"], succeeded)
            return str(target)

        trigger_welcome_emails >> file_away(file)

    per_file.expand(file=claim_files())


contacts_dropzone()
