"""Each task's peak RSS: read from the kernel, reset per task, summarized for the report."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from welcome_mailer.report import report_rows
from welcome_mailer.task_memory import (
    PEAK_RSS_KEY,
    peak_rss_from_status,
    peak_rss_mb,
    reset_peak_rss,
    summarize,
    task_ended,
    task_started,
)

STATUS_EXCERPT = "Name:\tairflow\nVmPeak:\t 2097152 kB\nVmHWM:\t  524288 kB\nVmRSS:\t  262144 kB\n"


def test_the_peak_is_vmhwm_in_megabytes():
    assert peak_rss_from_status(STATUS_EXCERPT) == 512
    assert peak_rss_from_status("Name:\tkernel thread\n") is None


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_a_reset_forgets_an_earlier_peak_and_a_forked_child_starts_with_its_own():
    """Relative to this process's own figures: under the whole suite pytest itself holds 300 MB or more."""
    ballast = bytearray(200 * 1024 * 1024)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page: resident
    del ballast  # a mapping of its own: given back to the system at once
    peak_with_ballast = peak_rss_mb()
    assert peak_with_ballast >= 200

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # what Airflow's supervisor does for every task on Celery
        os.write(write, str(peak_rss_mb()).encode())
        os._exit(0)
    os.waitpid(child, 0)
    # The child starts at what the parent holds now, not at the parent's peak (200 MB of ballast above it).
    assert int(os.read(read, 32)) < peak_with_ballast - 150
    os.close(read)
    os.close(write)

    assert reset_peak_rss()
    assert peak_rss_mb() < peak_with_ballast - 150


def figure(mb: int, pid: int, since: str = "task start") -> dict:
    return {"mb": mb, "pid": pid, "since": since}


def test_the_report_gets_each_tasks_largest_figure_and_what_they_mean():
    celery = summarize(
        {
            "parse": [figure(310, 11)],
            "send_batch": [figure(180, 12), figure(240, 13), None],  # a map index that pushed nothing
            "resend_blocked": [None],  # skipped
            "report": [figure(150, 14)],
        }
    )
    assert celery["by_task"] == {"parse": 310, "send_batch": 240, "report": 150}
    assert celery["scope"].startswith("each task in a process of its own")

    dags_test = summarize({"parse": [figure(240, 7)], "claim": [figure(250, 7, since="process start")]})
    assert dags_test["scope"].startswith("every task ran in one process (airflow dags test)")
    assert "since their process started" in dags_test["scope"]

    assert summarize({"parse": [None]}) == {"by_task": {}, "scope": "not measured"}


def test_the_report_table_shows_the_figures_and_older_reports_still_render():
    report = {
        "run_id": "r", "csv_path": "f.csv", "rows_read": 1, "rejected": 0, "rejected_csv": "x.csv",
        "duplicates_in_file": 0, "unique_contacts": 1, "already_contacted_skipped": 0, "failed_recently_skipped": 0,
        "held_by_other_runs": 0, "held_until": None, "claimed": 1, "outcomes": {}, "messages_sent": 1,
        "resent_after_block": 0, "attempts_histogram": {}, "phase_seconds": {}, "encoding_warning": None,
    }  # fmt: skip
    assert not any(name.startswith("peak RSS") for name, _ in report_rows(report))

    report |= {"peak_rss_mb": {"parse": 310}, "peak_rss_scope": "each task in a process of its own"}
    rows = dict(report_rows(report))
    assert rows["peak RSS MB: parse"] == 310
    assert rows["  peak RSS measured"] == "each task in a process of its own"


class _TaskInstance:
    def __init__(self) -> None:
        self.pushed: dict = {}

    def xcom_push(self, key: str, value) -> None:
        self.pushed[key] = value


def test_a_task_runs_with_what_its_process_held_frozen_and_gives_it_back_when_it_ends():
    """The collector walks only what the task makes (a million objects took 2.4x as long beside Airflow's
    objects, in a process that holds them as a task's does); what the process held is collectable again
    once the task ends, so under `dags test` nothing a task left behind stays frozen."""
    ti = _TaskInstance()
    gc.unfreeze()
    try:
        task_started({"ti": ti})
        assert gc.get_freeze_count() > 0, "what the process held is frozen"
        made_by_the_task = [[] for _ in range(3)]
        tracked_now = {id(o) for o in gc.get_objects()}  # the collector's generations: frozen ones are not
        assert all(id(o) in tracked_now for o in made_by_the_task)
        assert id(ti) not in tracked_now, "an object from before the task is frozen"
        task_ended({"ti": ti})
        assert gc.get_freeze_count() == 0
        assert id(ti) in {id(o) for o in gc.get_objects()}, "given back to the collector"
        assert ti.pushed[PEAK_RSS_KEY]["pid"] == os.getpid()
    finally:
        gc.unfreeze()
