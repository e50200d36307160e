"""Run welcome_emails once on the embedded default: no Postgres, no Docker, nothing left running.

    python -m include.local.run_embedded [CSV]          (what `make run CSV=...` calls)

- Airflow home: ``.airflow/`` in the project (SQLite metadata DB, created on first use).
- Ledger: ``<WELCOME_MAILER_HOME>/data/ledger.db`` (SQLite; the home is the project directory unless set),
  unless AIRFLOW_CONN_CONTACTS_DB names another one; reports under ``<home>/data/reports`` unless
  WELCOME_MAILER_REPORTS_DIR says otherwise: the places of settings.py's table, which ``make events`` and
  the operator commands use too.
- Email provider: the mock ESP, started on a free port and stopped afterwards, unless
  AIRFLOW_CONN_ESP_DEFAULT names a running one.
- Then ``airflow dags test welcome_emails -c '{"csv_path": CSV}'`` (through include/local/airflow_cli.py, which
  skips the interpreter's 3 s teardown at the end); its full log goes to
  ``.airflow/logs/``; the run's report is printed at the end, and when the run failed, each failed task
  with its error. Exit code 0 only when the run succeeded.
- A bad CSV path fails before anything starts, by the DAG's own rule (``resolve_csv_path``).
- Ctrl-C (or SIGTERM, SIGHUP) stops everything it started within seconds (SIGTERM, then SIGKILL) and
  releases the run's contacts in the ledger. Each `airflow dags test` it starts is recorded in
  ``.airflow/runs/<pid>.json``; a later start releases the recorded runs whose process is gone (a crash, a
  kill), so their unfinished contacts are taken over at once instead of after the 30-minute lease.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path

import psutil

from include.local.net import free_port, wait_healthy

PROJECT_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_HOME = PROJECT_ROOT / ".airflow"
MOCK_ESP_KEY = "mock-esp-key"
GRACE_SECONDS = 3.0  # between SIGTERM and SIGKILL when stopping what `make run` started


def project_env(home: Path) -> dict[str, str]:
    """This process's environment, with Airflow pointed at this project and the given home."""
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])),
        }
    )
    env.setdefault("WELCOME_MAILER_HOME", str(PROJECT_ROOT))
    return env


def esp_connection(port: int, api_key: str) -> str:
    """AIRFLOW_CONN_ESP_DEFAULT (JSON form) for a mock ESP on this machine."""
    return json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port, "password": api_key})


def airflow_env(home: Path = AIRFLOW_HOME) -> dict[str, str]:
    """The environment every Airflow command of the embedded default runs with."""
    env = project_env(home)
    env.update(
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        }
    )
    env.setdefault("WELCOME_MAILER_POKE_SECONDS", "1")
    if "AIRFLOW_CONN_CONTACTS_DB" not in env:  # the embedded ledger, and the key of its erased contacts
        env["AIRFLOW_CONN_CONTACTS_DB"] = json.dumps({"conn_type": "sqlite", "host": str(embedded_ledger_path(env))})
        env.setdefault("WELCOME_MAILER_ERASE_KEY", embedded_erase_key(env))
    return env


def embedded_data(env: Mapping[str, str] | None = None) -> Path:
    """``<home>/data`` (settings.local_data), the home being the project directory unless
    WELCOME_MAILER_HOME is set: make run, make events and the operator commands all look here."""
    from welcome_mailer.settings import local_data

    env = os.environ if env is None else env
    return local_data({**env, "WELCOME_MAILER_HOME": env.get("WELCOME_MAILER_HOME") or str(PROJECT_ROOT)})


def embedded_ledger_path(env: Mapping[str, str] | None = None) -> Path:
    return embedded_data(env) / "ledger.db"


def embedded_ledger_url(env: Mapping[str, str] | None = None) -> str:
    """The embedded ledger's SQLAlchemy URL (the Makefile's operator commands pass it to --url)."""
    return f"sqlite:///{embedded_ledger_path(env)}"


def embedded_erase_key(env: Mapping[str, str] | None = None) -> str:
    """The embedded ledger's erase key (<home>/data/erase_key, made once): make run and make contact share it."""
    import secrets

    path = embedded_data(env) / "erase_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def ensure_metadata_db(env: dict[str, str]) -> None:
    """`airflow db migrate` once per Airflow version (it is idempotent, but takes seconds)."""
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    stamp = home / "migrated-version"
    version = importlib.metadata.version("apache-airflow")
    if stamp.exists() and stamp.read_text() == version and (home / "airflow.db").exists():
        return
    print(f"setting up the Airflow metadata DB in {home} ...", flush=True)
    subprocess.run([_airflow(), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    stamp.write_text(version)


def migrate_ledger(env: dict[str, str]) -> None:
    """Bring the ledger named by AIRFLOW_CONN_CONTACTS_DB to the code's schema (tasks only check it). The
    JSON form is read here, without starting Airflow; any other form goes through `welcome-mailer db migrate`."""
    value = env["AIRFLOW_CONN_CONTACTS_DB"]
    if not value.lstrip().startswith("{"):
        subprocess.run([str(Path(sys.executable).with_name("welcome-mailer")), "db", "migrate"], env=env, check=True)
        return
    from welcome_mailer.ledger import connect
    from welcome_mailer.ledger.engine import url_from_connection_json
    from welcome_mailer.ledger.migrate import upgrade

    engine = connect(url_from_connection_json(value))
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before != after:
        print(f"migrated the ledger's schema from {before} to {after}", flush=True)


AIRFLOW_CLI = (sys.executable, "-m", "include.local.airflow_cli")


def _airflow() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def start_mock_esp(env: dict[str, str], log_dir: Path) -> tuple[subprocess.Popen | None, dict[str, str], Callable]:
    """Start the mock ESP on a free port unless AIRFLOW_CONN_ESP_DEFAULT is set.

    Returns the process (or None), the env to run with and a function that waits until the ESP answers: it
    starts while Airflow imports, so the two start-ups overlap instead of adding up."""
    if env.get("AIRFLOW_CONN_ESP_DEFAULT"):
        return None, env, lambda: None
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "mock_esp.log").open("a") as log:
        process = subprocess.Popen(
            # The journal keeps the mock's messages across runs, as a real provider keeps them: a run that
            # resumes an interrupted one finds the messages it sent (idempotency keys, outcomes).
            [
                sys.executable,
                "-m",
                "include.mocks.esp",
                "--port",
                str(port),
                "--api-key",
                MOCK_ESP_KEY,
                "--journal",
                str(log_dir.parent / "mock_esp_messages.jsonl"),
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return (
        process,
        {**env, "AIRFLOW_CONN_ESP_DEFAULT": esp_connection(port, MOCK_ESP_KEY)},
        lambda: wait_healthy(f"http://127.0.0.1:{port}/healthz", process),
    )


def stop_processes(processes: list[subprocess.Popen], grace: float = GRACE_SECONDS) -> None:
    """Stop these processes and everything they started: SIGTERM, then SIGKILL after ``grace`` seconds
    (`airflow dags test` ignores SIGINT and SIGTERM while a task runs)."""
    tree: list[psutil.Process] = []
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            parent = psutil.Process(process.pid)
            tree += [parent, *parent.children(recursive=True)]
    for proc in tree:
        with suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for proc in alive:
        with suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
    for process in processes:
        process.poll()


# -- runs started from an Airflow home, so that the next start knows which of them died -----------------
def record_run(home: Path, process: subprocess.Popen, run_log: Path, env: dict[str, str]) -> Path:
    """<home>/runs/<pid>.json: the `airflow dags test` process, its log (which names the run) and ledger."""
    path = home / "runs" / f"{process.pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "pid": process.pid,
        "create_time": psutil.Process(process.pid).create_time(),
        "log": str(run_log),
        "ledger": env["AIRFLOW_CONN_CONTACTS_DB"],
    }
    path.write_text(json.dumps(state))
    return path


def process_alive(pid: int, create_time: float) -> bool:
    """Whether that very process (not a later one with a recycled pid) still runs."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == create_time and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_id_from_log(run_log: Path) -> str | None:
    """The id of the DAG run an `airflow dags test` log belongs to (None: it died before creating one)."""
    with suppress(FileNotFoundError), run_log.open(errors="replace") as log:
        for line in log:
            found = re.search(r"creating dag run .*\brun_id=(\S+)", line)
            if found:
                return found.group(1)
    return None


def release_run(state_path: Path) -> str | None:
    """End the lease of the run recorded in ``state_path``, whose process is gone: whatever it still holds
    (claimed, sending, sent, blocked contacts) is taken over at once by the next run that lists it, instead
    of after the lease (30 minutes). Returns the run id (None: the run never started, or its ledger cannot
    be reached from here: then its contacts wait for the lease to end, as they would without this)."""
    from sqlalchemy.exc import SQLAlchemyError

    from welcome_mailer.ledger import Ledger, connect
    from welcome_mailer.ledger.engine import url_from_connection_json

    state = json.loads(state_path.read_text())
    run_id = run_id_from_log(Path(state["log"]))
    if run_id is not None:
        try:
            engine = connect(url_from_connection_json(state["ledger"]))
            try:
                Ledger(engine).finish_run(run_id)
            finally:
                engine.dispose()
        except (ValueError, SQLAlchemyError) as exc:  # not JSON, not postgres/sqlite, or unreachable
            print(f"could not release run {run_id} in its ledger ({exc}): its contacts wait for its lease to end")
            run_id = None
    state_path.unlink()
    return run_id


def release_dead_runs(home: Path) -> None:
    """Release the runs earlier `make run`s started from this home and that died with them (killed, crashed,
    the terminal closed). Runs whose process still runs keep their contacts."""
    for path in sorted((home / "runs").glob("*.json")):
        state = json.loads(path.read_text())
        if process_alive(state["pid"], state["create_time"]):
            print(f"another run started here is still in progress (pid {state['pid']}): it keeps its contacts")
            continue
        run_id = release_run(path)
        if run_id is not None:
            print(f"resuming the interrupted run {run_id}: its unfinished contacts are taken over now")


# -- what a failed run says ------------------------------------------------------------------------------
def failed_tasks(run_log: Path) -> list[str]:
    """'task: error' for every task of the run that ended failed, in the order they failed."""
    failures, task, error = [], None, None
    exception_line = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Terminated|Timeout)\b.*")
    for line in run_log.read_text(errors="replace").splitlines():
        if found := re.search(r"\[DAG TEST\] starting task_id=(\S+) map_index=(-?\d+)", line):
            task_id, map_index = found.groups()
            task, error = task_id if map_index == "-1" else f"{task_id}[{map_index}]", None
        elif exception_line.match(line):
            error = line.strip()
        elif "Task instance state updated" in line and "new_state=failed" in line and task:
            failures.append(f"{task}: {error or 'failed (no exception in the log)'}")
    return failures


def newest_report(reports_dir: Path, since: float) -> Path | None:
    reports = [p for p in reports_dir.glob("*/report.md") if p.stat().st_mtime >= since]
    return max(reports, key=lambda p: p.stat().st_mtime, default=None)


class Interrupted(Exception):
    """SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal closed) reached `make run`."""


def _interrupted(signum, _frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="?", default="input.csv", help="the contact list (default: input.csv)")
    parser.add_argument("--airflow-home", type=Path, default=AIRFLOW_HOME, help="default: .airflow/ here")
    parser.add_argument("--template", help="the email template (docs/templates.md; default: the built-in welcome)")
    args = parser.parse_args(argv)
    home = args.airflow_home.resolve()
    env = airflow_env(home)
    csv_path = str(Path(args.csv).resolve())
    conf = {"csv_path": csv_path, **({"template": args.template} if args.template else {})}
    env.setdefault("WELCOME_MAILER_DATA_ROOTS", os.pathsep.join([str(PROJECT_ROOT), str(Path(csv_path).parent)]))
    # The DAG's own rule, before anything heavy starts: a bad path fails in a second, with the reason.
    from welcome_mailer.run_files import InvalidCsvPath, resolve_csv_path
    from welcome_mailer.settings import Settings

    try:
        resolve_csv_path(csv_path, Settings.from_env(env).data_roots)
    except InvalidCsvPath as exc:
        print(f"welcome_emails not started: {exc}", file=sys.stderr)
        return 2
    reports_dir = Path(Settings.from_env(env).reports_dir)  # <home>/data/reports unless set
    embedded_data(env).mkdir(parents=True, exist_ok=True)
    log_dir = home / "logs"
    run_log = log_dir / f"welcome_emails-{time.strftime('%Y%m%dT%H%M%S')}.log"
    started = time.time()
    processes: list[subprocess.Popen] = []
    state_path = None
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupted)
    try:
        migrate_ledger(env)
    except Exception as exc:  # a bad or unreachable ledger: say so before starting anything else
        print(
            f"welcome_emails not started: the ledger (AIRFLOW_CONN_CONTACTS_DB) cannot be used: {exc}", file=sys.stderr
        )
        return 2
    try:
        release_dead_runs(home)
        ensure_metadata_db(env)
        esp, run_env, esp_ready = start_mock_esp(env, log_dir)
        processes += [esp] if esp else []
        print(f"running welcome_emails on {csv_path} (full log: {run_log}) ...", flush=True)
        with run_log.open("w") as log:
            airflow = subprocess.Popen(
                # `airflow dags test`, ending without the interpreter's teardown (include/local/airflow_cli.py)
                [*AIRFLOW_CLI, "dags", "test", "welcome_emails", "-c", json.dumps(conf)],
                env=run_env,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.insert(0, airflow)
        state_path = record_run(home, airflow, run_log, run_env)
        esp_ready()
        returncode = airflow.wait()
    except Interrupted as exc:
        for signum in STOP_SIGNALS:  # a second Ctrl-C must not cut the clean-up short (it takes seconds)
            signal.signal(signum, signal.SIG_IGN)
        stopping = time.monotonic()
        stop_processes(processes)
        run_id = release_run(state_path) if state_path else None
        resume = "make run" + ("" if args.csv == "input.csv" else f" CSV={args.csv}")
        print(
            f"\ninterrupted ({exc}): stopped everything this run started in {time.monotonic() - stopping:.1f}s"
            + (f"; run {run_id} released its unfinished contacts" if run_id else "")
            + f".\nTo resume: {resume}. It takes over those contacts at once; what was already sent is not "
            f"sent again (recorded attempts are re-sent with their idempotency key). Full log: {run_log}",
            flush=True,
        )
        return 130
    except RuntimeError as exc:  # the mock ESP did not start
        print(f"welcome_emails FAILED: {exc}; full log: {run_log}")
        return 1
    finally:
        stop_processes(processes)
        if state_path is not None and state_path.exists():
            release_run(state_path)  # the run is over: a run that died on its own leaves nothing held
    from welcome_mailer.run_files import run_directory

    seconds = time.time() - started
    run_id = run_id_from_log(run_log)
    report_path = run_directory(reports_dir, run_id) / "report.md" if run_id else None
    if report_path is not None and report_path.exists():
        print(report_path.read_text())
    failures = failed_tasks(run_log)
    if returncode != 0 or failures or "state=failed" in run_log.read_text():
        print(f"welcome_emails FAILED after {seconds:.1f}s:")
        for failure in failures or ["no task failed: see the end of the log"]:
            print(f"  failed task {failure}")
        print(f"full log: {run_log}")
        return 1
    print(f"welcome_emails succeeded in {seconds:.1f}s end to end; report: {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
