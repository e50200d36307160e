"""Where the pipeline without Airflow spends its time in the ledger's database: seconds and calls per SQL
statement, timed around each cursor execution by SQLAlchemy's engine events, and every commit as one line
(``COMMIT``). What it leaves out: fetching (on SQLite a SELECT's rows after its first are read as they
are fetched), rollbacks, and statements that raised. Every process of the program keeps its own figures;
the send processes return theirs with their result, and ``merged`` adds them up. The bench prints the
costliest statements under the program's figure: the evidence of where the package's own per-message
work goes (issue 34)."""

from __future__ import annotations

import time
from collections import Counter

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.default import DefaultDialect

SHOWN = 8  # statements kept in a program's figures, costliest first
LABEL_CHARS = 90  # of a statement's text, its whitespace folded, to name it by
COMMIT = "COMMIT"

_seconds: Counter[str] = Counter()
_calls: Counter[str] = Counter()
_undo: list = []  # what uninstall runs; empty: not installed


def label(statement: str) -> str:
    """A statement's name in the figures: its text, whitespace folded, cut at LABEL_CHARS."""
    return " ".join(statement.split())[:LABEL_CHARS]


def install() -> None:
    """Time every statement and every commit of every engine of this process from now on (once per
    process)."""
    if _undo:
        return

    @event.listens_for(Engine, "before_cursor_execute")
    def _started(conn, _cursor, _statement, _parameters, _context, _executemany) -> None:
        conn.info["welcome_bench_started"] = time.perf_counter()  # one statement at a time per connection

    @event.listens_for(Engine, "after_cursor_execute")
    def _ended(conn, _cursor, statement, _parameters, _context, _executemany) -> None:
        _count(label(statement), time.perf_counter() - conn.info["welcome_bench_started"])

    # A commit has no event after it: the dialect's commit is timed instead (SQLite's checkpoints run in it).
    commit = DefaultDialect.do_commit

    def timed_commit(dialect, dbapi_connection) -> None:
        started = time.perf_counter()
        try:
            commit(dialect, dbapi_connection)
        finally:
            _count(COMMIT, time.perf_counter() - started)

    DefaultDialect.do_commit = timed_commit
    _undo.extend(
        [
            lambda: event.remove(Engine, "before_cursor_execute", _started),
            lambda: event.remove(Engine, "after_cursor_execute", _ended),
            lambda: setattr(DefaultDialect, "do_commit", commit),
        ]
    )


def uninstall() -> None:
    """Stop timing in this process (tests), and drop the figures."""
    while _undo:
        _undo.pop()()
    taken()


def _count(name: str, seconds: float) -> None:
    _seconds[name] += seconds
    _calls[name] += 1


def taken() -> dict[str, list]:
    """This process's figures so far ({statement: [calls, seconds]}), and starts counting afresh."""
    figures = {name: [_calls[name], _seconds[name]] for name in _seconds}
    _seconds.clear()
    _calls.clear()
    return figures


def merged(*figures: dict[str, list]) -> dict:
    """Several processes' figures added up: the total, and the SHOWN costliest statements as
    [statement, calls, seconds]."""
    seconds: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for each in figures:
        for name, (n, took) in each.items():
            calls[name] += n
            seconds[name] += took
    costliest = [[name, calls[name], round(took, 2)] for name, took in seconds.most_common(SHOWN)]
    return {"total": round(sum(seconds.values()), 2), "statements": costliest}
