"""Why a run failed, in its own words: the first failed task and its error, as ``make run`` prints it
(``failed task parse: NotADirectoryError: ...``), readable by another DAG's task.

``record_failure`` is every welcome_emails task's ``on_failure_callback``: when a task ends failed (no
retry left) it pushes ``{"task", "error", "at"}`` as the XCom ``failure``. ``run_failure_reason`` (the
drop folder's ``file_away``) finds the run's failed tasks and returns the first one's. A task that died
without running its callback (its process killed) is named without an error: its log says more.

Stdlib only at import: the DAG file imports this module at parse time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)
FAILURE_KEY = "failure"  # the XCom key of a failed task's error


def error_text(error: BaseException | str | None) -> str:
    """An exception as the last line of its traceback reads (``module.Class: message``)."""
    if error is None:
        return "failed (no exception recorded)"
    if isinstance(error, str):
        return error
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"{name}: {error}" if str(error) else name


def record_failure(context) -> None:
    """``on_failure_callback``: the failed task's error, as an XCom of its own task instance."""
    ti = context["ti"]
    task = ti.task_id if getattr(ti, "map_index", -1) in (None, -1) else f"{ti.task_id}[{ti.map_index}]"
    ti.xcom_push(FAILURE_KEY, {"task": task, "error": error_text(context.get("exception"))[:2000], "at": time.time()})


def first_failure(failed_tasks: Iterable[str], records: Iterable[dict | None]) -> str | None:
    """``task: error`` of the earliest failure recorded; else the first failed task without its error."""
    found = [r for r in records if isinstance(r, dict) and r.get("task")]
    if found:
        first = min(found, key=lambda r: r.get("at") or 0)
        return f"{first['task']}: {first.get('error') or 'failed'}"
    failed = sorted(failed_tasks)
    return f"{failed[0]}: failed without an error recorded (see its log)" if failed else None


def run_failure_reason(ti, dag_id: str, run_id: str) -> str | None:
    """The first failed task of another run and its error (None: no task of it failed, no such run, or
    it could not be asked: the caller still has a file to put away)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    try:
        crumbs = RuntimeTaskInstance.get_task_breadcrumbs(dag_id=dag_id, run_id=run_id)
        failed = sorted({c["task_id"] for c in crumbs if c.get("state") == "failed"})
        if not failed:
            return None
        records = ti.xcom_pull(task_ids=failed, dag_id=dag_id, run_id=run_id, key=FAILURE_KEY)
    except Exception:
        log.warning("could not read why %s run %s failed", dag_id, run_id, exc_info=True)
        return None
    return first_failure(failed, records if isinstance(records, list) else [records])
