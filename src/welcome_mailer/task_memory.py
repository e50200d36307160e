"""A task's process memory: its peak resident memory (RSS), carried to the run's report (the goal: <= 500 MB a
task at 1M rows), and the garbage collector kept off what the process held before the task.

The DAG sets ``task_started`` and ``task_ended`` as every task's pre- and post-execute hooks.

The collector: a task's process holds Airflow, its API client and server (under ``dags test``), SQLAlchemy
and the DAG, hundreds of thousands of objects, before the task makes one of its own. Python's full
collections walk all of them, and a task that builds a million objects (a send task's attempts, a poll's
outcomes) triggers many: a million small objects took 2.4x as long beside Airflow's objects as alone.
``task_started`` freezes what the process holds (``gc.freeze``: never walked again); ``task_ended`` gives
it back (``gc.unfreeze``), so whatever a task leaves behind is collected as usual afterwards (under
``dags test`` the next task freezes the process again). The Task SDK skips the post-execute hook when a
task raises: a failure, a retry, and every poke of a sensor in reschedule mode that is not done yet. Under
``dags test`` such a task's cyclic garbage (what reference counting does not free) is then frozen by the
next task too, until a task ends well and gives everything back; on Celery each try and each poke is a
process of its own. Celery's executor freezes its objects before it forks a task's process (no copy of
their pages on write); a task's end hands those back too, just before its process exits.

The peak is reset when a task starts (Linux: ``/proc/self/clear_refs``), so each figure is the peak of the
task's process while the task ran, not since the process started:

- on Celery every task runs in a process of its own (Airflow's supervisor forks one per task; on Linux a
  forked child starts with its own peak, not its parent's), so the figure is that task's alone, on top
  of what the process holds after loading Airflow and the DAG;
- under ``airflow dags test`` every task runs in ONE process: the figure also holds whatever earlier
  tasks left in that process. ``summarize`` says which case a run was in, from the processes' ids.

A sensor in reschedule mode runs once per poke, each poke clears its XComs: its figure is its last poke's.
Stdlib only: the DAG file imports this module at parse time.
"""

from __future__ import annotations

import gc
import os
import resource
from pathlib import Path

PEAK_RSS_KEY = "peak_rss"  # the XCom key each task pushes its figure under
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_measured_since = "process start"  # becomes "task start" when the reset works (Linux >= 4.0)


def reset_peak_rss() -> bool:
    """Make the process's peak RSS its current RSS. False where the kernel offers no way to."""
    try:
        _CLEAR_REFS.write_text("5")  # 5: reset the peak RSS (VmHWM); see proc(5)
    except OSError:
        return False
    return True


def peak_rss_from_status(status: str) -> int | None:
    """VmHWM (peak RSS) in MB from the text of /proc/<pid>/status; None when it is not there."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return None


def peak_rss_mb() -> int:
    """This process's peak RSS in MB since it started or since the last reset."""
    try:
        peak = peak_rss_from_status(_STATUS.read_text())
    except OSError:
        peak = None
    # ru_maxrss is never reset, but it is what a system without /proc offers (kilobytes on Linux).
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def start_measuring(context) -> None:
    """Pre-execute hook of every task."""
    global _measured_since
    _measured_since = "task start" if reset_peak_rss() else "process start"


def current_figure() -> dict:
    """The running task's figure so far: peak RSS in MB, its process, and since when the peak counts."""
    return {"mb": peak_rss_mb(), "pid": os.getpid(), "since": _measured_since}


def push_peak_rss(context, result=None) -> None:
    """Post-execute hook of every task: its figure, as an XCom for the report task."""
    context["ti"].xcom_push(key=PEAK_RSS_KEY, value=current_figure())


def task_started(context) -> None:
    """Pre-execute hook of every task: the peak RSS counts from now; what the process holds is frozen."""
    start_measuring(context)
    gc.freeze()


def task_ended(context, result=None) -> None:
    """Post-execute hook of every task: its figure for the report; the frozen objects collectable again."""
    try:
        push_peak_rss(context, result)
    finally:
        gc.unfreeze()


def summarize(figures: dict[str, list[dict | None]]) -> dict:
    """The report's view of the figures pushed per task (a list: one per map index; None where a task did
    not run): the largest per task, in MB, and in a sentence what the figures mean for this run."""
    measured = {task: [f for f in task_figures if f] for task, task_figures in figures.items()}
    by_task = {task: max(f["mb"] for f in task_figures) for task, task_figures in measured.items() if task_figures}
    every = [f for task_figures in measured.values() for f in task_figures]
    if not every:
        return {"by_task": {}, "scope": "not measured"}
    if len(every) > 1 and len({f["pid"] for f in every}) == 1:
        scope = (
            "every task ran in one process (airflow dags test): each figure is that process's peak while the "
            "task ran, including what earlier tasks left in it"
        )
    else:
        scope = "each task in a process of its own (a sensor: its last poke)"
    if any(f["since"] != "task start" for f in every):
        scope += "; some are peaks since their process started (the peak could not be reset)"
    return {"by_task": by_task, "scope": scope}
