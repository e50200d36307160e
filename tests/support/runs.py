"""Whole runs without Airflow, as the DAG's tasks call the pipeline: the helpers integration tests share."""

from __future__ import annotations

import time

from welcome_mailer import pipeline, run_files
from welcome_mailer.outcomes.http_lookup import HttpLookupSource
from welcome_mailer.report import build_report, write_report
from welcome_mailer.transports.http import HttpEmailProvider


def resend_poke(
    ledger, esp_client, run_id, *, max_attempts=5, backoff_seconds=0.0, linger_seconds=0.5, sleep=time.sleep
):
    return pipeline.resend_blocked(
        ledger,
        esp_client,
        [HttpLookupSource(esp_client)],
        run_id,
        max_attempts=max_attempts,
        batch_size=50,
        max_batches=1024,
        backoff_seconds=backoff_seconds,
        linger_seconds=linger_seconds,
        poll_seconds=0.05,
        sleep=sleep,
    )


def finish(ledger, esp_client, run_id, max_attempts=5):
    """What the resend sensor does: poke until done (the sensor's timeout is 60 s here)."""
    deadline = time.monotonic() + 60
    while not resend_poke(ledger, esp_client, run_id, max_attempts=max_attempts):
        assert time.monotonic() < deadline, "the resend phase did not finish"
        time.sleep(0.1)  # the reschedule
    ledger.close_out(run_id, max_attempts)


def write_contacts(path, rows):
    path.write_text("".join(f"{name}, {email}, 555\n" for name, email in rows), encoding="utf-8")
    return path


def whole_run(ledger, esp, run_id, path, reports):
    """parse -> claim -> send -> outcomes and resends -> close_out -> report, as the DAG does."""
    directory = run_files.run_directory(reports, run_id)
    ledger.renew_lease(run_id)
    parsed = pipeline.parse_file(ledger, run_id, path, directory / "rejected.csv")
    claimed = pipeline.claim_contacts(ledger, run_id, 50, 1024)
    with HttpEmailProvider(esp.url, esp.api_key) as client:
        for batch_no in claimed["batches"]:
            pipeline.send_batch(ledger, client, run_id, batch_no, 50)
        finish(ledger, client, run_id)
    ledger.finish_run(run_id)
    report = build_report(
        run_id=run_id, parsed=parsed, claimed=claimed, summary=ledger.run_summary(run_id), phases={"parse": 0.1}
    )
    write_report(report, directory)
    return report
