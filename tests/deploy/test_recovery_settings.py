"""The shared Airflow settings (include/local/stack/airflow.env, read by both deployments) name options Airflow
3.3 and its Celery provider really have (a misspelt AIRFLOW__X__Y is silently ignored), and they bound the
recovery from a lost worker to 2 minutes (issue #30; proven on the stack by test_lost_worker_stack.py).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from include.local.stack import shared_settings

RECOVERY_BOUND = 120  # seconds


def documented_options() -> set[tuple[str, str]]:
    import airflow.config_templates
    from airflow.providers.celery.get_provider_info import get_provider_info

    core = yaml.safe_load(Path(airflow.config_templates.__file__).with_name("config.yml").read_text())
    sections = {**core, **get_provider_info()["config"]}
    return {(section, option) for section, body in sections.items() for option in body["options"]}


def airflow_settings() -> dict[tuple[str, str], str]:
    settings = {}
    for name, value in shared_settings().items():
        if name.startswith("AIRFLOW__"):
            section, option = name.removeprefix("AIRFLOW__").lower().split("__")
            settings[(section, option)] = value
    return settings


def test_every_shared_airflow_setting_is_an_option_airflow_reads():
    from airflow.jobs import scheduler_job_runner

    unknown = set(airflow_settings()) - documented_options()
    # Undocumented on purpose upstream ("intentionally undocumented"), but read by the scheduler.
    assert unknown == {("scheduler", "num_stuck_in_queued_retries")}, unknown
    assert 'key="num_stuck_in_queued_retries"' in inspect.getsource(scheduler_job_runner)


@pytest.mark.parametrize(
    ("timeout", "interval"),
    [("task_queued_timeout", "task_queued_timeout_check_interval"),
     ("task_instance_heartbeat_timeout", "task_instance_heartbeat_timeout_detection_interval")],
)  # fmt: skip
def test_a_lost_workers_tasks_are_taken_back_within_two_minutes(timeout, interval):
    settings = airflow_settings()
    assert float(settings[("scheduler", timeout)]) + float(settings[("scheduler", interval)]) <= RECOVERY_BOUND


def test_celery_keeps_a_dead_workers_messages_and_reserves_none_beyond_its_slots():
    settings = airflow_settings()
    assert settings[("celery", "task_acks_late")] == "True"
    assert settings[("celery", "worker_prefetch_multiplier")] == "1"
    visibility = float(settings[("celery_broker_transport_options", "visibility_timeout")])
    assert float(settings[("scheduler", "task_queued_timeout")]) < visibility < 86400
