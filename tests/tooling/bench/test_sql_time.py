"""The bench's SQL figures (include/bench/sql_time.py): every statement and commit of a process timed, the
send processes' figures added to the program's, and the costliest printed under the pipeline's figure."""

from __future__ import annotations

import multiprocessing

import pytest
from sqlalchemy import create_engine, text

from include.bench import baseline_pipeline, sql_time
from include.bench.run import summary_lines


def run_statements(url: str, rows: int) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS t (n INTEGER)"))
        conn.execute(text("INSERT INTO t (n) VALUES (:n)"), [{"n": n} for n in range(rows)])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() >= rows
    engine.dispose()


@pytest.fixture(autouse=True)
def timing():
    """Statements timed in this test only: the listeners and the commit's wrapper are removed after it."""
    sql_time.install()
    sql_time.taken()
    yield
    sql_time.uninstall()


def figures_of_a_send_process(url: str) -> dict:
    """A send process's statements (after the pipeline's initializer), and its figures as it returns them."""
    run_statements(url, 3)
    return sql_time.taken()


def test_each_statement_and_commit_is_counted_once_and_taking_starts_afresh(tmp_path):
    sql_time.install()  # a second install adds no second listener
    sql_time.taken()

    run_statements(f"sqlite:///{tmp_path / 'db.sqlite'}", 5)

    figures = sql_time.taken()
    assert figures["CREATE TABLE IF NOT EXISTS t (n INTEGER)"][0] == 1
    assert figures["INSERT INTO t (n) VALUES (?)"][0] == 1  # executemany: one execution
    assert figures["SELECT count(*) FROM t"][0] == 1
    assert figures[sql_time.COMMIT][0] == 1  # engine.begin's; the read-only connection rolled back
    assert sql_time.taken() == {}


def test_a_send_process_reports_its_own_statements_not_its_parents(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_statements(url, 5)  # the parent's, before the fork
    started = {"initializer": baseline_pipeline.start_send_process, "initargs": (url, "http://127.0.0.1:9", "k")}
    with multiprocessing.get_context("fork").Pool(1, **started) as pool:
        child = pool.apply(figures_of_a_send_process, (url,))
    parent = sql_time.taken()

    assert child["CREATE TABLE IF NOT EXISTS t (n INTEGER)"][0] == 1  # its own, not 2
    total = sql_time.merged(parent, child)
    calls = {statement: n for statement, n, _ in total["statements"]}
    assert calls["CREATE TABLE IF NOT EXISTS t (n INTEGER)"] == 2
    assert calls[sql_time.COMMIT] == 2
    assert total["total"] == round(sum(s for f in (parent, child) for _, s in f.values()), 2)


def test_uninstalled_nothing_is_timed(tmp_path):
    sql_time.uninstall()
    run_statements(f"sqlite:///{tmp_path / 'db.sqlite'}", 2)
    assert sql_time.taken() == {}
    sql_time.install()  # and it can be installed again
    run_statements(f"sqlite:///{tmp_path / 'db.sqlite'}", 2)
    assert sql_time.taken()[sql_time.COMMIT][0] == 1


def test_the_costliest_statements_are_kept_most_first_and_printed_under_the_figure():
    figures = {f"SELECT {n}": [n, float(n)] for n in range(1, sql_time.SHOWN + 3)}

    total = sql_time.merged(figures, {"SELECT 1": [1, 100.0]})

    assert [s for s, _, _ in total["statements"]][:2] == ["SELECT 1", f"SELECT {sql_time.SHOWN + 2}"]
    assert len(total["statements"]) == sql_time.SHOWN
    assert total["statements"][0] == ["SELECT 1", 2, 101.0]
    result = {"benchmark": "baseline_pipeline_1000", "seconds": 202.0, "floor_s": 9.0, "floor_chain_messages": 2}
    printed = "\n".join(summary_lines([{**result, "sql_seconds": total}]))
    assert f"SQL s: {total['total']}, summed over its processes (" in printed
    assert "    101.0 s, 2x: SELECT 1" in printed
    assert sql_time.label("UPDATE  t\n   SET n = 1" + " x" * 100) == ("UPDATE t SET n = 1" + " x" * 100)[:90]
