"""Why a run failed, in its own words (issue 30, item 7): what each failed task records, which one is
the run's reason, and the drop folder's note."""

from __future__ import annotations

from welcome_mailer.dropzone import run_failed_note
from welcome_mailer.run_failure import FAILURE_KEY, error_text, first_failure, record_failure
from welcome_mailer.run_files import InvalidCsvPath


class FakeTi:
    def __init__(self, task_id: str, map_index: int = -1) -> None:
        self.task_id, self.map_index, self.pushed = task_id, map_index, {}

    def xcom_push(self, key: str, value) -> None:
        self.pushed[key] = value


def test_errors_read_as_the_last_line_of_their_traceback():
    assert error_text(NotADirectoryError(20, "Not a directory")) == "NotADirectoryError: [Errno 20] Not a directory"
    assert error_text(InvalidCsvPath("outside the data roots")) == (
        "welcome_mailer.run_files.InvalidCsvPath: outside the data roots"
    )
    assert error_text(None) == "failed (no exception recorded)"


def test_a_failed_task_records_its_error_under_its_own_name():
    ti = FakeTi("send_batch", map_index=3)
    record_failure({"ti": ti, "exception": RuntimeError("relay gone")})
    assert ti.pushed[FAILURE_KEY]["task"] == "send_batch[3]"
    assert ti.pushed[FAILURE_KEY]["error"] == "RuntimeError: relay gone"


def test_the_first_failure_is_the_runs_reason():
    records = [
        {"task": "report", "error": "AirflowFailException: the run stopped before contacts were claimed", "at": 20},
        {"task": "parse", "error": "NotADirectoryError: x", "at": 10},
    ]
    assert first_failure(["parse", "report"], records) == "parse: NotADirectoryError: x"
    assert first_failure(["send_batch"], [None]) == "send_batch: failed without an error recorded (see its log)"
    assert first_failure([], []) is None


def test_the_reason_file_says_the_runs_own_failure():
    note = run_failed_note("dropzone__a__1", "DagRunState.FAILED", "parse: NotADirectoryError: x")
    assert note.startswith("welcome_emails run dropzone__a__1 failed: failed task parse: NotADirectoryError: x")
    assert "DagRunState" not in run_failed_note("r", "DagRunState.FAILED", None)
