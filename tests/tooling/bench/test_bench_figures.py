"""The bench's own figures: where an end-to-end run's time went, the floor the mock's holds set, and who
used the CPU."""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime

import psutil
import pytest

from include.bench import run
from include.bench.run import (
    cpu_figures,
    hold_chain_floor,
    journal_messages,
    phase_breakdown,
    process_tree_cpu,
    sizes_to_run,
    summary_lines,
    task_instances,
    with_ratios,
    yardstick_lines,
)
from include.mocks.esp.store import MessageStore, OutcomeSettings


def ti(task_id: str, start: float | None, end: float | None) -> dict:
    return {"task_id": task_id, "start": start, "end": end}


# A run started at t=0 and measured until t=40: parse's task ran 5-15 (1 s of it the parse), a scheduling
# gap, claim, two overlapping send tasks, the sensors, bookkeeping, and the process exiting after.
RUN = [
    ti("parse", 5, 15),
    ti("claim", 16, 17),
    ti("send_batch", 17, 20),
    ti("send_batch", 18, 21),
    ti("await_delivery", 21, 25),
    ti("decide", 25, 25.5),
    ti("resend_blocked", 26, 30),
    ti("close_out", 30, 30.5),
    ti("report", 30.5, 32),
]
PHASE_SECONDS = {"parse": 1.0, "claim": 0.25, "send": 3.5, "await_delivery": 4.2, "total": 31.0}


def test_the_breakdown_adds_up_to_the_figure_and_puts_each_second_in_its_phase():
    breakdown = phase_breakdown(RUN, PHASE_SECONDS, started=0.0, finished=40.0)

    assert breakdown == {
        "airflow fixed cost": 14.0,  # until parse's work began: its task's start-up is Airflow's too
        "parse": 1.0,
        "claim": 0.25,
        "send": 3.5,  # two overlapping tasks: their union (4 s) less the send work is start-up
        "awaiting outcomes": 4.0,
        "resends": 4.0,
        "bookkeeping": 2.5,  # decide, close_out, report
        "task start-up": 1.25,  # claim's 0.75 s beyond its work, and send's 0.5 s
        "scheduling waits": 1.5,  # 15-16 and 25.5-26: no task running
        "teardown": 8.0,
    }
    assert sum(breakdown.values()) == pytest.approx(40.0)


def test_tasks_that_never_ran_and_time_outside_the_figure_count_for_nothing():
    run = [ti("parse", -3, 2), ti("claim", 2, 3), ti("resend_blocked", None, None), ti("report", 3, 50)]
    breakdown = phase_breakdown(run, {"parse": 1.0, "claim": 1.0}, started=0.0, finished=10.0)

    assert breakdown["airflow fixed cost"] == 1.0 and breakdown["parse"] == 1.0
    assert breakdown["resends"] == 0.0 and breakdown["bookkeeping"] == 7.0 and breakdown["teardown"] == 0.0
    assert sum(breakdown.values()) == pytest.approx(10.0)


def test_without_tasks_the_whole_figure_is_airflows_fixed_cost():
    assert phase_breakdown([], {}, started=0.0, finished=12.0)["airflow fixed cost"] == 12.0


def test_a_rescheduled_sensor_starts_at_its_first_poke(tmp_path):
    """Airflow keeps only the last poke's start on the task instance; the first is in task_reschedule."""
    db = tmp_path / "airflow.db"
    with sqlite3.connect(db) as conn:  # the columns task_instances reads, in Airflow's text form (naive UTC)
        conn.execute("CREATE TABLE task_instance (id, dag_id, run_id, task_id, map_index, start_date, end_date)")
        conn.execute("CREATE TABLE task_reschedule (ti_id, start_date, end_date)")
        conn.executemany(
            "INSERT INTO task_instance VALUES (?, 'welcome_emails', ?, ?, ?, ?, ?)",
            [
                ("a", "run1", "send_batch", 0, "2026-11-29 09:41:26.000000", "2026-11-29 09:41:27.000000"),
                ("b", "run1", "resend_blocked", -1, "2026-11-29 09:41:31.000000", "2026-11-29 09:41:31.500000"),
                ("c", "run1", "close_out", -1, None, None),
                ("d", "run2", "parse", -1, "2026-11-29 09:41:20.000000", "2026-11-29 09:41:21.000000"),
            ],
        )
        conn.executemany(
            "INSERT INTO task_reschedule VALUES ('b', ?, ?)",
            [("2026-11-29 09:41:28.000000", "2026-11-29 09:41:28.100000"),
             ("2026-11-29 09:41:29.000000", "2026-11-29 09:41:29.100000")],
        )  # fmt: skip

    found = {row["task_id"]: row for row in task_instances(f"sqlite:///{db}", ["run1"])}

    assert set(found) == {"send_batch", "resend_blocked", "close_out"}
    assert found["resend_blocked"]["end"] - found["resend_blocked"]["start"] == pytest.approx(3.5)
    assert found["send_batch"]["start"] == datetime(2026, 11, 29, 9, 41, 26, tzinfo=UTC).timestamp()  # naive: UTC
    assert found["close_out"]["start"] is None and found["close_out"]["end"] is None


# As the mock ESP journals them (one JSON object a line); holds are resolve_at - created_at.
JOURNAL_EXCERPT = [
    # ann: held 1.5 s and blocked, resent, held 3 s and blocked, resent, delivered at once: a 4.5 s chain
    {"to": "ann@example.com", "created_at": 100.0, "resolve_at": 101.5, "outcome": "blocked"},
    {"to": "ann@example.com", "created_at": 102.0, "resolve_at": 105.0, "outcome": "blocked"},
    {"to": "ann@example.com", "created_at": 106.0, "resolve_at": 106.0, "outcome": "delivered"},
    # bob: one message held 4 s: shorter than ann's chain, though it alone is the longest hold
    {"to": "bob@example.com", "created_at": 100.5, "resolve_at": 104.5, "outcome": "delivered"},
    {"to": "cid@example.com", "created_at": 101.0, "resolve_at": 101.0, "outcome": "bounced"},
    # a message of a later run on the same mock
    {"to": "dan@example.com", "created_at": 200.0, "resolve_at": 205.0, "outcome": "delivered"},
]


def test_the_floor_is_the_longest_chain_of_holds_of_one_contact(tmp_path):
    journal = tmp_path / "esp.jsonl"
    journal.write_text("".join(json.dumps(message) + "\n" for message in JOURNAL_EXCERPT))

    assert hold_chain_floor(journal_messages(journal, since=100.0, until=150.0)) == {
        "floor_s": 4.5,
        "floor_chain_messages": 3,
    }
    assert hold_chain_floor(journal_messages(journal, since=150.0)) == {"floor_s": 5.0, "floor_chain_messages": 1}
    assert hold_chain_floor([]) == {"floor_s": 0.0, "floor_chain_messages": 0}


def test_the_floor_reads_the_journal_the_mock_writes(tmp_path):
    """The contract between the mock's journal and the floor: the fields it needs are the ones it writes."""
    clock = iter(float(t) for t in range(1000, 2000))
    journal = tmp_path / "esp.jsonl"
    store = MessageStore(OutcomeSettings(seed=3, hold_rate=1.0), clock=lambda: next(clock), journal=journal)
    accepted = [store.accept("eve@example.com", "Welcome!", "Hi Eve, Welcome!", f"k{n}")[0] for n in range(3)]

    holds = sum(message.resolve_at - message.created_at for message in accepted)
    assert hold_chain_floor(journal_messages(journal)) == {"floor_s": round(holds, 2), "floor_chain_messages": 3}


def test_a_sensor_whose_first_poke_airflow_did_not_record_counts_from_its_own_clock():
    """Airflow 3.3 writes task_reschedule.start_date when the reschedule is recorded, after the poke: a
    resend sensor that worked 21-29 then poked once more at 29.5-30 looks like 29-30. The report's
    phase_seconds (the sensor's own clock, from the end of the phase before) gives its real span."""
    run = [ti("parse", 1, 2), ti("claim", 2, 3), ti("send_batch", 3, 5), ti("await_delivery", 5, 6)]
    run += [ti("resend_blocked", 29, 30), ti("report", 30, 31)]
    phases = {"parse": 1.0, "claim": 1.0, "send": 2.0, "await_delivery": 1.0, "resend_blocked": 24.0}
    breakdown = phase_breakdown(run, phases, started=0.0, finished=31.0)

    assert breakdown["resends"] == 24.0 and breakdown["scheduling waits"] == 0.0
    assert sum(breakdown.values()) == pytest.approx(31.0)


BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n{then}"


def test_a_process_trees_cpu_counts_its_live_children_and_those_it_reaped():
    """A component's CPU is its own, its running descendants' (a task process in flight) and that of the
    children it has waited for (a finished task process, a closed Postgres backend)."""
    me = psutil.Process()
    before = process_tree_cpu(me)
    # each child burns 0.5 CPU seconds; the kernel counts them in clock ticks, so 0.4 at least is asserted
    subprocess.run([sys.executable, "-c", BURN.format(seconds=0.5, then="")], check=True)
    reaped = process_tree_cpu(me)
    assert reaped - before >= 0.4
    child = subprocess.Popen(
        [sys.executable, "-c", BURN.format(seconds=0.5, then="print('done', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "done\n"
        assert process_tree_cpu(me) - reaped >= 0.4
    finally:
        child.kill()
        child.wait()


def test_cpu_figures_are_each_components_share_of_the_run_most_first_and_the_cores_kept_busy(monkeypatch):
    monkeypatch.setattr("include.bench.run.os.cpu_count", lambda: 2)
    before = {"postgres": 100.0, "worker": 10.0, "mock-esp": 5.0}
    after = {"postgres": 160.0, "worker": 40.0, "mock-esp": 35.0, "api-server": 5.0}
    figures = cpu_figures(before, after, seconds=100.0)
    assert list(figures["cpu_seconds"].items()) == [
        ("postgres", 60.0), ("worker", 30.0), ("mock-esp", 30.0), ("api-server", 5.0)
    ]  # fmt: skip
    assert figures["cpu_busy"] == 0.62  # 125 CPU seconds over 100 s on 2 cores


def test_each_figure_is_a_ratio_to_both_baselines_of_its_size_and_ledger_backend():
    results = with_ratios(
        [
            {"benchmark": "baseline_100000", "seconds": 10.0, "floor_s": 9.0, "floor_chain_messages": 3},
            {"benchmark": "baseline_pipeline_100000", "seconds": 20.0, "floor_s": 9.0, "floor_chain_messages": 3},
            {"benchmark": "baseline_pipeline_postgres_100000", "seconds": 25.0},
            {"benchmark": "end_to_end_100000", "seconds": 30.0, "floor_s": 10.0, "floor_chain_messages": 3},
            {"benchmark": "stack_end_to_end_100000", "seconds": 40.0},
            {"benchmark": "smtp_end_to_end_100000", "seconds": 33.0},
            {"benchmark": "stack_end_to_end_10000", "seconds": 20.0},  # no baseline of its size ran
        ]
    )
    figures = {r["benchmark"]: r for r in results}

    assert figures["end_to_end_100000"]["ratio_to_baseline"] == 3.0
    assert figures["end_to_end_100000"]["ratio_to_pipeline_without_airflow"] == 1.5  # SQLite, as make run's
    assert figures["stack_end_to_end_100000"]["ratio_to_baseline"] == 4.0
    assert figures["stack_end_to_end_100000"]["ratio_to_pipeline_without_airflow"] == 1.6  # Postgres
    assert "ratio_to_pipeline_without_airflow" not in figures["smtp_end_to_end_100000"]  # the pipeline's is HTTP
    assert "ratio_to_baseline" not in figures["stack_end_to_end_10000"]
    assert "ratio_to_baseline" not in figures["baseline_pipeline_100000"]
    assert figures["end_to_end_100000"]["ratio_to_floor"] == 3.0
    assert "end_to_end_100000: 30.0 s; 3.0x the baseline; 1.5x the pipeline without Airflow; hold-chain floor" in (
        "\n".join(summary_lines(results))
    )


def test_a_stack_run_prints_the_cpu_it_used_beyond_the_pipeline_without_airflow_per_component(monkeypatch):
    """Airflow's share of a stack run beyond its fixed cost is CPU on the machine's cores: each component
    against the process doing its work without Airflow (worker: the program; api-server: the events app)."""
    monkeypatch.setattr("include.bench.run.os.cpu_count", lambda: 2)
    pipeline_cpu = {"postgres": 109.3, "program": 61.6, "mock-esp": 46.9, "events-app": 31.8}
    stack_cpu = {"postgres": 119.2, "worker": 66.8, "mock-esp": 49.5, "api-server": 40.4, "scheduler": 7.2}
    results = with_ratios(
        [
            {"benchmark": "baseline_pipeline_postgres_1000000", "seconds": 157.0, "cpu_seconds": pipeline_cpu},
            {"benchmark": "stack_end_to_end_1000000", "seconds": 184.7, "floor_s": 13.0, "floor_chain_messages": 5,
             "cpu_seconds": stack_cpu, "cpu_busy": 0.78},
            {"benchmark": "end_to_end_1000000", "seconds": 130.0},  # no CPU figures: nothing to compare
            {"benchmark": "baseline_pipeline_1000000", "seconds": 110.0, "cpu_seconds": {"program": 60.0}},
        ]
    )  # fmt: skip
    figures = {r["benchmark"]: r for r in results}

    assert figures["stack_end_to_end_1000000"]["cpu_over_pipeline_without_airflow"] == {
        "postgres": 9.9, "api-server": 8.6, "scheduler": 7.2, "worker": 5.2, "mock-esp": 2.6
    }  # fmt: skip
    assert "cpu_over_pipeline_without_airflow" not in figures["end_to_end_1000000"]
    printed = "\n".join(summary_lines(results))
    assert (
        "  CPU s over the pipeline without Airflow: +33.5 "
        "(postgres +9.9 | api-server +8.6 | scheduler +7.2 | worker +5.2 | mock-esp +2.6)"
    ) in printed


def test_each_figure_is_a_ratio_to_the_yardstick_of_its_size_on_its_backend_and_is_printed_so():
    results = with_ratios(
        [
            {"benchmark": "yardstick_100000", "seconds": 12.5},
            {"benchmark": "yardstick_postgres_1000000", "seconds": 100.0},
            {"benchmark": "baseline_100000", "seconds": 10.0},
            {"benchmark": "baseline_pipeline_100000", "seconds": 20.0},
            {"benchmark": "baseline_pipeline_postgres_1000000", "seconds": 140.0},
            {"benchmark": "end_to_end_100000", "seconds": 30.0, "floor_s": 10.0, "floor_chain_messages": 3},
            {"benchmark": "stack_end_to_end_1000000", "seconds": 160.0},
            {"benchmark": "smtp_end_to_end_100000", "seconds": 33.0},  # another transport: not the same job
            {"benchmark": "end_to_end_10000", "seconds": 20.0},  # no yardstick of its size ran
        ]
    )
    figures = {r["benchmark"]: r for r in results}

    assert figures["end_to_end_100000"]["ratio_to_yardstick"] == 2.4  # SQLite, as make run's
    assert figures["stack_end_to_end_1000000"]["ratio_to_yardstick"] == 1.6  # Postgres, as the stack's
    assert figures["baseline_100000"]["ratio_to_yardstick"] == 0.8  # what recording costs the yardstick
    assert figures["baseline_pipeline_100000"]["ratio_to_yardstick"] == 1.6
    assert figures["baseline_pipeline_postgres_1000000"]["ratio_to_yardstick"] == 1.4
    assert "ratio_to_yardstick" not in figures["smtp_end_to_end_100000"]
    assert "ratio_to_yardstick" not in figures["end_to_end_10000"]
    assert "ratio_to_yardstick" not in figures["yardstick_100000"]
    assert "end_to_end_100000: 30.0 s; 2.4x the yardstick; 3.0x the baseline; 1.5x the pipeline without Airflow" in (
        "\n".join(summary_lines(results))
    )
    assert yardstick_lines(results) == [
        "the program recording nothing after its claim 100k: 10.0 s = 0.8x the lean durable program (12.5 s)",
        "the pipeline without Airflow 100k: 20.0 s = 1.6x the lean durable program (12.5 s)",
        "the pipeline without Airflow on Postgres 1M: 140.0 s = 1.4x the lean durable program (100.0 s, Postgres)",
        "make run 100k: 30.0 s = 2.4x the lean durable program (12.5 s); target <= 1.25x",
        "the stack 1M: 160.0 s = 1.6x the lean durable program (100.0 s, Postgres); target <= 1.5x",
    ]


def test_the_yardstick_on_the_ledgers_tables_is_a_ratio_to_the_yardstick_and_each_run_a_ratio_to_it():
    """The same program writing the ledger's tables (the floor the ledger's writes set), on each backend:
    a figure of its own against the yardstick, and the DAG runs and the pipeline without Airflow against it."""
    results = with_ratios(
        [
            {"benchmark": "yardstick_1000000", "seconds": 60.0},
            {"benchmark": "yardstick_ledger_tables_1000000", "seconds": 90.0},
            {"benchmark": "yardstick_ledger_tables_written_once_1000000", "seconds": 75.0},
            {"benchmark": "yardstick_postgres_1000000", "seconds": 100.0},
            {"benchmark": "yardstick_ledger_tables_postgres_1000000", "seconds": 125.0},
            {"benchmark": "baseline_pipeline_postgres_1000000", "seconds": 120.0},
            {"benchmark": "baseline_pipeline_1000000", "seconds": 108.0},
            {"benchmark": "end_to_end_1000000", "seconds": 135.0, "breakdown": {"airflow fixed cost": 9.0}},
            {"benchmark": "stack_end_to_end_1000000", "seconds": 200.0, "breakdown": {"airflow fixed cost": 25.0}},
        ]
    )
    figures = {r["benchmark"]: r for r in results}

    assert figures["yardstick_ledger_tables_1000000"]["ratio_to_yardstick"] == 1.5
    assert figures["yardstick_ledger_tables_written_once_1000000"]["ratio_to_yardstick"] == 1.25
    assert figures["yardstick_ledger_tables_postgres_1000000"]["ratio_to_yardstick"] == 1.25  # Postgres's own
    assert figures["baseline_pipeline_1000000"]["ratio_to_ledger_tables"] == 1.2
    assert figures["baseline_pipeline_postgres_1000000"]["ratio_to_ledger_tables"] == 0.96  # against Postgres's
    assert figures["end_to_end_1000000"]["ratio_to_ledger_tables"] == 1.5
    assert figures["stack_end_to_end_1000000"]["ratio_to_ledger_tables"] == 1.6  # against Postgres's
    assert "ratio_to_ledger_tables" not in figures["yardstick_ledger_tables_written_once_1000000"]
    # A DAG run's floor: the quicker program without Airflow that writes its ledger's rows (here the
    # yardstick on the ledger's tables on SQLite, the pipeline on Postgres), then Airflow's cost before any
    # task works.
    assert figures["end_to_end_1000000"]["floor_of_ledger_and_airflow_s"] == 99.0
    assert figures["end_to_end_1000000"]["floor_ratio_to_yardstick"] == 1.65
    assert figures["stack_end_to_end_1000000"]["floor_without_airflow_s"] == 120.0
    assert figures["stack_end_to_end_1000000"]["floor_ratio_to_yardstick"] == 1.45
    assert "floor_ratio_to_yardstick" not in figures["baseline_pipeline_1000000"]
    assert yardstick_lines(results) == [
        "the same program on the ledger's tables 1M: 90.0 s = 1.5x the lean durable program (60.0 s)",
        "the same on the ledger's tables, each contact's row written once 1M: 75.0 s = 1.25x the lean durable"
        " program (60.0 s)",
        "the same program on the ledger's tables on Postgres 1M: 125.0 s = 1.25x the lean durable program"
        " (100.0 s, Postgres)",
        "the pipeline without Airflow on Postgres 1M: 120.0 s = 1.2x the lean durable program (100.0 s, Postgres);"
        " 0.96x it on the ledger's tables (125.0 s)",
        "the pipeline without Airflow 1M: 108.0 s = 1.8x the lean durable program (60.0 s); 1.2x it on the"
        " ledger's tables (90.0 s)",
        "make run 1M: 135.0 s = 2.25x the lean durable program (60.0 s); target <= 1.25x; 1.5x it on the"
        " ledger's tables (90.0 s); floor: the quicker of it and the pipeline without Airflow (90.0 s) + Airflow's"
        " fixed cost (9.0 s) = 99.0 s, 1.65x",
        "the stack 1M: 200.0 s = 2.0x the lean durable program (100.0 s, Postgres); target <= 1.5x; 1.6x it on"
        " the ledger's tables (125.0 s); floor: the quicker of it and the pipeline without Airflow (120.0 s) +"
        " Airflow's fixed cost (25.0 s) = 145.0 s, 1.45x",
    ]


def test_the_template_cost_prints_both_runs_and_the_ratio(tmp_path, monkeypatch):
    """`make bench` with --template ROWS: the built-in text and an HTML template over the same file, the
    second with its ratio to the first (issue 31: at most 1.10)."""
    from include.bench import run as bench
    from welcome_mailer.templates import compile_template, load_template

    runs = []

    def fake_end_to_end(rows, workdir, connections=None, name="end_to_end", template=None):
        runs.append((name, template))
        return {"benchmark": f"{name}_{rows}", "ok": True, "seconds": 100.0 if template is None else 105.0,
                "floor_s": 1.0, "floor_chain_messages": 1}  # fmt: skip

    monkeypatch.setattr(bench, "end_to_end", fake_end_to_end)
    builtin, html = bench.template_cost(1000, tmp_path)
    assert [name for name, _ in runs] == ["end_to_end_builtin", "end_to_end_html_template"]
    template = load_template(runs[1][1].name, runs[1][1].parent)
    assert template.html is not None and compile_template(template).render("a@example.com", "Ann").html
    assert html["ratio_to_builtin"] == 1.05 and "ratio_to_builtin" not in builtin
    assert "1.05x the built-in text (target <= 1.10)" in "\n".join(summary_lines([builtin, html]))


def flags(sizes, stack=False, stack_sizes=None, million=False, rated=0) -> argparse.Namespace:
    return argparse.Namespace(sizes=sizes, stack=stack, stack_sizes=stack_sizes, million=million, rated=rated)


def test_each_size_runs_once_embedded_and_once_on_the_stack_however_often_the_flags_name_it():
    """--sizes ... 1000000 with --million ran 1M twice on the stack: the second run met a mock that
    remembered the first's idempotency keys and answered from them, and was printed as a figure."""
    assert sizes_to_run(flags([10_000, 1_000_000], stack=True, million=True)) == (
        [10_000, 1_000_000],
        [10_000, 1_000_000],
    )
    assert sizes_to_run(flags([100_000, 10_000, 10_000])) == ([10_000, 100_000], [])
    assert sizes_to_run(flags([10_000], stack_sizes=[1_000_000, 1_000_000], million=True)) == (
        [10_000, 1_000_000],
        [1_000_000],
    )
    # the rated size's unlimited run beside it, on the stack too with --stack
    assert sizes_to_run(flags([10_000], stack=True, rated=100_000)) == ([10_000, 100_000], [10_000, 100_000])


def test_the_stack_mocks_peak_rss_is_printed_with_the_messages_it_holds():
    """The goal names a number of messages (1M), so the figure says how many the mock held."""
    printed = "\n".join(
        summary_lines(
            [{"benchmark": "stack_one_file_1000000", "seconds": 211.3, "floor_s": 13.08, "floor_chain_messages": 3,
              "esp_peak_rss_mb": 899, "esp_messages_held": 997_846}]
        )
    )  # fmt: skip
    assert "  the stack's mock ESP: peak RSS 899 MB, holding 997,846 messages (goal after 1M: <= 1 GB)" in printed


def test_each_stack_measurement_gets_a_fresh_mock_on_an_empty_journal(tmp_path):
    """A mock that remembers an earlier measurement's idempotency keys answers a repeated contact without a
    new message: the stack's 1M run after its 100k run had 100k of them. Stopped before its journal goes,
    started on none, and healthy before the measurement starts."""
    journal = tmp_path / "stack_esp.jsonl"
    journal.write_text('{"id": "msg_1_000000000"}\n')
    calls = []

    class Stack:
        def stop(self, component):
            calls.append(("stop", component, journal.exists()))

        def start(self, component):
            calls.append(("start", component, journal.exists()))

        def wait_healthy(self):
            calls.append(("healthy", journal.exists()))

    run.fresh_stack_mock(Stack(), journal)
    assert calls == [("stop", "mock-esp", True), ("start", "mock-esp", False), ("healthy", False)]
