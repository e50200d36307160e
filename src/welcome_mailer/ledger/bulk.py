"""Set-based SQL for many rows at once, the fastest way on each backend. No rules here: the callers
(the ledger's concerns) decide what to write; these functions only write it.

- Postgres: COPY for loads, one ``UPDATE ... FROM unnest(arrays)`` for updates (an executemany costs a
  round trip per row: an order of magnitude slower), SQLAlchemy's multi-row VALUES for inserts, one index probe
  per value for lookups by a non-unique column (``probe``).
- SQLite: one executemany of plain SQL (SQLAlchemy's per-row parameter processing cost more than
  SQLite's own work, in process).
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Iterable, Sequence
from datetime import datetime
from operator import itemgetter

from sqlalchemy import (
    Connection,
    DateTime,
    FromClause,
    Table,
    Text,
    bindparam,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite


def is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def dialect_insert(conn: Connection, table: Table):
    """INSERT with on_conflict_do_nothing/do_update, for the backend in use."""
    return (postgresql.insert if is_postgres(conn) else sqlite.insert)(table)


def sqlite_value(value: object) -> object:
    """A value as SQLAlchemy stores it in SQLite (datetimes as text), for plain driver SQL."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, datetime) else value


def load_rows(conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """Bulk-load rows into a table: COPY on Postgres, insert_rows elsewhere."""
    if not is_postgres(conn):
        insert_rows(conn, table, columns, list(rows))
        return
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    buffer.seek(0)
    # COPY's CSV reads an empty unquoted field as NULL, and the csv module writes '' unquoted: a column that
    # cannot be NULL (a contact's name, which may be empty) reads it as the empty string it is.
    not_null = [c for c in columns if not table.c[c].nullable]
    options = f", FORCE_NOT_NULL ({', '.join(not_null)})" if not_null else ""
    cursor = conn.connection.dbapi_connection.cursor()
    cursor.copy_expert(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv{options})", buffer)


def insert_rows(conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple]) -> None:
    """INSERT many rows in one go."""
    if not rows:
        return
    if is_postgres(conn):
        conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    # Only datetime columns need their values converted (staging, the big insert, has none), and a bulk
    # insert's datetimes are nearly all one "now": each distinct value is formatted once (formatting every
    # row's was a visible share of each send task).
    datetimes = [n for n, name in enumerate(columns) if isinstance(table.c[name].type, DateTime)]
    if datetimes:
        as_text = functools.cache(sqlite_value)
        converted = []
        for row in rows:
            values = list(row)
            for n in datetimes:
                values[n] = as_text(values[n])
            converted.append(tuple(values))
        rows = converted
    conn.exec_driver_sql(
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows
    )


def update_rows(
    conn: Connection,
    table: Table,
    rows: list[dict],
    *,
    match: dict[str, str],
    assign: dict[str, str],
    guards: dict[str, object],
    constants: dict[str, object],
) -> int:
    """For every row: UPDATE table SET column = row[key] (assign) and column = value (constants)
    WHERE column = row[key] (match) AND column = value (guards; a tuple value: column IN values).
    Returns the rows changed."""
    if not rows:
        return 0
    guard_values = {col: value if isinstance(value, tuple) else (value,) for col, value in guards.items()}
    if not is_postgres(conn):
        # Numbered parameters: each row's values first (one itemgetter call), then the fixed ones, shared
        # by every row (building each row's tuple value by value cost a third of record_sent).
        keys = [*assign.values(), *match.values()]
        fixed = [*constants.values(), *(v for values in guard_values.values() for v in values)]
        numbers = iter(range(1, len(keys) + len(fixed) + 1))
        sets = [f"{col} = ?{next(numbers)}" for col in assign]
        conditions = [f"{col} = ?{next(numbers)}" for col in match]
        sets += [f"{col} = ?{next(numbers)}" for col in constants]
        conditions += [
            f"{col} IN ({', '.join(f'?{next(numbers)}' for _ in values)})" for col, values in guard_values.items()
        ]
        row_values = itemgetter(*keys) if len(keys) > 1 else lambda row: (row[keys[0]],)
        fixed_values = tuple(map(sqlite_value, fixed))
        result = conn.exec_driver_sql(
            f"UPDATE {table.name} SET {', '.join(sets)} WHERE {' AND '.join(conditions)}",
            [row_values(row) + fixed_values for row in rows],
        )
        return result.rowcount
    # One statement for all rows, whatever their number, and each row found by its primary key whatever
    # the statistics say. With the guards as constants, the planner estimated the run's rows in a guarded
    # state from statistics older than the bulk claim (a few; in fact up to the whole run), and every chunk
    # read all of them (a hash join over ix_sent_contacts_run_status; a nested loop over a seq scan of
    # send_attempts): quadratic in the run's size. So the guards are columns
    # of a MATERIALIZED CTE (no estimate from a constant), compared with IS NOT DISTINCT FROM (no index can
    # serve it; the same as = on these NOT NULL columns): only the key's index can drive the join.
    unnested = unnest(table, rows, [*match.items(), *assign.items()])
    guard_columns = {
        col: [literal(value, table.c[col].type).label(f"guard_{col}_{n}") for n, value in enumerate(values)]
        for col, values in guard_values.items()
    }
    given = select(unnested, *(c for cs in guard_columns.values() for c in cs)).cte("given").prefix_with("MATERIALIZED")
    # And only by probes: costing each at random_page_cost, the planner preferred to read the whole table
    # into a hash for each chunk (the join was most of the UPDATE; the whole ledger is in memory). For this
    # statement only: the settings are reset after it, inside the transaction.
    conn.exec_driver_sql("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
    result = conn.execute(
        update(table)
        .where(
            *(table.c[col] == given.c[key] for col, key in match.items()),
            *(
                or_(*(table.c[col].is_not_distinct_from(given.c[c.name]) for c in columns))
                for col, columns in guard_columns.items()
            ),
        )
        .values({**{col: given.c[key] for col, key in assign.items()}, **constants})
    )
    conn.exec_driver_sql("RESET enable_hashjoin; RESET enable_mergejoin")
    return result.rowcount


def probe(
    table: Table,
    column: str | Sequence[str],
    values: Sequence,
    returning: Sequence,
    *,
    source: FromClause | None = None,
    lock: bool = False,
):
    """Postgres: ``SELECT returning FROM table WHERE column IN values``, each value an index probe of its
    own whatever the statistics say. With the values as an IN list, statistics taken while the column held
    few distinct values (before a run's sends) made the planner expect many rows per value, and every
    lookup read the whole table (parallel sequential scans); with none at all (a table just bulk-loaded,
    autovacuum behind), a lookup was a sequential scan too, ten times the probes' time. As a LATERAL
    subquery behind an OFFSET 0 fence (which keeps the planner from flattening it into a join), each value
    is a lookup of its own, and for one value the index is the cheaper plan even by those statistics.

    ``column``: one column (``values`` its values) or a key of several (``values`` tuples); ``returning``:
    column names of ``table``, or columns of ``source`` (``table`` joined to others); ``lock``: FOR UPDATE
    of ``table``'s rows, one by one in the order of ``values``."""
    columns = [column] if isinstance(column, str) else list(column)
    rows = [dict(zip(columns, value if len(columns) > 1 else (value,), strict=True)) for value in values]
    given = unnest(table, rows, [(col, col) for col in columns])
    found = (
        select(*(table.c[c] if isinstance(c, str) else c for c in returning))
        .select_from(table if source is None else source)
        .where(*(table.c[col] == given.c[col] for col in columns))
        .offset(0)
    )
    if lock:
        found = found.with_for_update(of=table)
    found = found.lateral("found")
    return select(found).select_from(given.join(found, true()))


def unnest(table: Table, rows: list[dict], columns: Iterable[tuple[str, str]]):
    """Postgres: the rows as a derived table ``given`` (one array parameter per key), each key typed like
    the table column it stands for. ``columns`` pairs (table column, row key)."""
    column_of = {}
    for col, key in columns:
        column_of.setdefault(key, col)
    arrays = [
        cast(bindparam(f"a_{key}", array_literal(row[key] for row in rows), Text), postgresql.ARRAY(table.c[col].type))
        for key, col in column_of.items()
    ]
    return func.unnest(*arrays).table_valued(*column_of).render_derived(name="given")


def array_literal(values: Iterable[object]) -> str:
    """Postgres's text form of an array of these values (each element quoted and escaped, None as NULL),
    sent as one text parameter cast to the array's type: the server reads it as a single constant. A
    Python list goes as an ARRAY[...] constructor instead, one expression per element for the server to
    parse, plan and cast: several times slower for a chunk of thousands (docs/performance-history.md)."""
    quoted = ("NULL" if v is None else '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"
