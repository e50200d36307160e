"""The DAG files parse cleanly, cheaply, and have the shape, params and settings the product promises."""

from __future__ import annotations

from unittest import mock

import pytest

from tests.support import PROJECT_ROOT

DAGS_FOLDER = PROJECT_ROOT / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    with (
        mock.patch("airflow.sdk.bases.hook.BaseHook.get_connection") as get_connection,
        mock.patch("airflow.sdk.definitions.connection.Connection.get") as connection_get,
        mock.patch("airflow.sdk.definitions.variable.Variable.get") as variable_get,
    ):
        bag = DagBag(dag_folder=str(DAGS_FOLDER))
    bag.lookups = get_connection.call_count + connection_get.call_count + variable_get.call_count
    return bag


@pytest.fixture(scope="module")
def welcome(dagbag):
    return dagbag.dags["welcome_emails"]


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "welcome_emails" in dagbag.dags


def test_parsing_looks_up_no_connections_or_variables(dagbag):
    assert dagbag.lookups == 0


def test_every_dag_is_documented_tagged_and_retried(dagbag):
    for dag in dagbag.dags.values():
        assert dag.doc_md and len(dag.doc_md) > 200, dag.dag_id
        assert dag.tags, dag.dag_id
        assert all(task.retries >= 0 for task in dag.tasks)


def test_welcome_emails_shape(welcome):
    edges = {(t.task_id, d) for t in welcome.tasks for d in t.downstream_task_ids}
    assert edges == {
        ("parse", "claim"),
        ("claim", "send_batch"),
        ("send_batch", "await_delivery"),
        ("await_delivery", "decide"),
        ("decide", "resend_blocked"),
        ("decide", "close_out"),
        ("resend_blocked", "close_out"),
        ("close_out", "report"),
    }
    assert type(welcome.timetable).__name__ == "NullTimetable"  # schedule=None: runs only when triggered
    assert welcome.catchup is False


def test_every_task_measures_its_memory_and_freezes_what_its_process_held(welcome):
    from welcome_mailer.task_memory import task_ended, task_started

    for task in welcome.tasks:
        if hasattr(task, "partial_kwargs"):  # a mapped task passes them on to each map index's operator
            hooks = (task.partial_kwargs["pre_execute"], task.partial_kwargs["post_execute"])
        else:  # where the Task SDK's operator keeps default_args' hooks
            hooks = (task._pre_execute_hook, task._post_execute_hook)
        assert hooks == (task_started, task_ended), task.task_id


def test_send_batch_is_mapped_labelled_and_pooled(welcome):
    send = welcome.get_task("send_batch")
    assert send.__class__.__name__.endswith("MappedOperator")
    assert send.partial_kwargs.get("map_index_template") == "{{ batch_label }}"
    assert send.partial_kwargs.get("pool") == "email_provider"
    assert welcome.get_task("resend_blocked").pool == "email_provider"


@pytest.mark.parametrize("task_id", ["await_delivery", "resend_blocked"])
def test_waiting_tasks_are_sensors_that_do_not_hold_a_worker_slot(welcome, task_id):
    sensor = welcome.get_task(task_id)
    assert sensor.mode == "reschedule"
    assert sensor.timeout > 0


def test_join_and_report_trigger_rules(welcome):
    assert welcome.get_task("close_out").trigger_rule == "none_failed_min_one_success"
    assert welcome.get_task("report").trigger_rule == "all_done"
    assert welcome.get_task("await_delivery").trigger_rule == "none_failed"


def test_params_defaults_and_bounds(welcome):
    params = welcome.params
    assert (params["batch_size"], params["max_attempts"], params["max_send_tasks"]) == (500, 5, 8)
    assert params["retry_failed_after_hours"] == 24, "a run straight after another retries no failed contact"
    schema = {name: params.get_param(name).schema for name in params}
    assert schema["batch_size"]["minimum"] == 1 and schema["batch_size"]["maximum"] == 1000
    assert schema["csv_path"]["type"] == "string" and schema["csv_path"]["minLength"] == 1
    for name in params:  # the trigger form shows a title and a description for every field
        assert schema[name].get("title") and params.get_param(name).description, name


@pytest.mark.parametrize(
    ("conf", "valid"),
    [
        ({"csv_path": "input.csv"}, True),
        ({"csv_path": "input.csv", "batch_size": 1000}, True),
        ({"csv_path": "input.csv", "batch_size": 0}, False),
        ({"csv_path": "input.csv", "batch_size": 1001}, False),
        ({"csv_path": "input.csv", "max_attempts": 0}, False),
        ({"csv_path": "input.csv", "max_send_tasks": 0}, False),
        ({"csv_path": "input.csv", "retry_failed_after_hours": 0}, True),
        ({"csv_path": "input.csv", "retry_failed_after_hours": -1}, False),
        ({"csv_path": ""}, False),
        ({}, False),
    ],
)
def test_params_refuse_bad_values_before_any_task_runs(welcome, conf, valid):
    import copy

    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    def apply_and_validate() -> None:
        params: ParamsDict = copy.deepcopy(welcome.params)
        for key, value in conf.items():
            params[key] = value  # assignment validates the value
        params.validate()  # validation finds missing required values

    if valid:
        apply_and_validate()
    else:
        with pytest.raises(ParamValidationError):
            apply_and_validate()


def test_contacts_dropzone_shape(dagbag):
    dropzone = dagbag.dags["contacts_dropzone"]
    assert dropzone.catchup is False
    assert type(dropzone.timetable).__name__ == "CronTriggerTimetable"
    edges = {(t.task_id, d) for t in dropzone.tasks for d in t.downstream_task_ids}
    assert edges == {
        ("claim_files", "per_file.prepare"),
        ("claim_files", "per_file.file_away"),  # the mapped file itself
        ("per_file.prepare", "per_file.trigger_welcome_emails"),
        ("per_file.trigger_welcome_emails", "per_file.file_away"),
    }
    trigger = dropzone.get_task("per_file.trigger_welcome_emails")
    assert trigger.trigger_dag_id == "welcome_emails" and trigger.wait_for_completion and trigger.deferrable
    assert dropzone.get_task("per_file.file_away").trigger_rule == "all_done"
