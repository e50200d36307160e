"""``airflow`` exactly as its console script runs it, ending without the interpreter's teardown.

    python -m include.local.airflow_cli dags test welcome_emails -c '{...}'

After `airflow dags test` has finished a run, the Python interpreter spends ~3 s (on a 2-core machine)
tearing down the hundreds of modules and objects Airflow loaded: memory the operating system takes
back at once anyway. This wrapper runs the same ``main()``, then the exit handlers Airflow and its
libraries registered (atexit) and logging's flush, then leaves with the same exit code. `make run` uses
it; nothing about the run changes.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys


def exit_code(exc: SystemExit) -> int:
    """What the interpreter would exit with for this SystemExit (a message: printed, and 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def main() -> None:
    from airflow.__main__ import main as airflow_main

    try:
        airflow_main()
        code = 0
    except SystemExit as exc:
        code = exit_code(exc)
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
