"""The example DAGs parse offline, schedule on the wall clock, and change replicas for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import date, datetime, time, timedelta
from pathlib import Path

import pendulum
import pytest

EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"
AMSTERDAM = pendulum.timezone("Europe/Amsterdam")
EXPECTED_DAG_IDS = {
    "vapor_business_hours_morning",
    "vapor_business_hours_evening",
    "vapor_batch_resize",
    "vapor_fleet",
    "vapor_nightly_reboot",
}
FLEET = ("my-app", "shop", "billing", "search")
ENV, WEB = "production", "web"

# Loads every example DAG file with all network access and every Variable or Connection lookup
# refused, and prints what the DagBag found, and every refused attempt, as one JSON line.
OFFLINE_PARSE = """
import json
import socket
import sys

attempts = []


def refuse(*args, **kwargs):
    attempts.append(repr(args))
    raise RuntimeError(f"parsing the example DAGs must not reach out: {args!r}")


socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse

from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import BaseHook, Connection, Variable

Variable.get = staticmethod(refuse)
Connection.get = classmethod(refuse)
BaseHook.get_connection = classmethod(refuse)

bag = DagBag(dag_folder=sys.argv[1])
found = {
    "dag_ids": sorted(bag.dags),
    "files": sorted({dag.fileloc for dag in bag.dags.values()}),
    "import_errors": bag.import_errors,
    "refused": attempts,
}
print("DAGBAG " + json.dumps(found))
"""


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLE_DAGS))
    assert bag.import_errors == {}
    return bag


@pytest.fixture
def example_dag(dagbag, monkeypatch, emulator):
    """An example DAG by id, runnable with ``dag.test()`` against the emulator.

    ``dag.test()`` serialises the DAGs of the configured DAG folder, so it points there.
    """
    from airflow import settings

    monkeypatch.setattr(settings, "DAGS_FOLDER", str(EXAMPLE_DAGS))

    def get(dag_id: str):
        return dagbag.dags[dag_id]

    return get


def last_run_state(dag_id: str) -> str:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc())
        ).first()
        return run.state


def rendered_map_indexes(dag_id: str, task_id: str) -> list[str]:
    """The names the mapped instances of the DAG's latest run show in the UI."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run_id = session.scalars(
            select(DagRun.run_id).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc())
        ).first()
        return list(
            session.scalars(
                select(TaskInstance.rendered_map_index)
                .where(
                    TaskInstance.dag_id == dag_id,
                    TaskInstance.run_id == run_id,
                    TaskInstance.task_id == task_id,
                )
                .order_by(TaskInstance.map_index)
            )
        )


def scheduled_runs(dag, first_day: date, last_day: date) -> list[pendulum.DateTime]:
    """Every run the DAG's timetable schedules from ``first_day`` to ``last_day``, local time."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    timetable = coerce_to_core_timetable(dag.timetable)
    start = pendulum.datetime(first_day.year, first_day.month, first_day.day, tz=AMSTERDAM)
    end = pendulum.datetime(last_day.year, last_day.month, last_day.day, tz=AMSTERDAM).add(days=1)
    restriction = TimeRestriction(
        earliest=start.in_tz("UTC"), latest=end.in_tz("UTC"), catchup=True
    )
    runs, last_interval = [], None
    for _ in range(100):
        info = timetable.next_dagrun_info(
            last_automated_data_interval=last_interval, restriction=restriction
        )
        if info is None:
            return runs
        runs.append(pendulum.instance(info.run_after).in_tz(AMSTERDAM))
        last_interval = info.data_interval
    raise AssertionError(f"{dag.dag_id} scheduled more than 100 runs in {first_day}..{last_day}")


def days(first_day: date, last_day: date) -> list[date]:
    return [first_day + timedelta(days=n) for n in range((last_day - first_day).days + 1)]


def test_every_example_dag_file_imports_without_errors_and_without_network(tmp_path):
    environment = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    environment.pop("AIRFLOW_CONN_VAPOR_DEFAULT", None)

    completed = subprocess.run(
        [sys.executable, "-c", OFFLINE_PARSE, str(EXAMPLE_DAGS)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    line = next(line for line in completed.stdout.splitlines() if line.startswith("DAGBAG "))
    found = json.loads(line.removeprefix("DAGBAG "))
    assert found["import_errors"] == {}
    assert found["refused"] == []
    assert set(found["dag_ids"]) == EXPECTED_DAG_IDS
    assert set(found["files"]) == {str(path) for path in EXAMPLE_DAGS.glob("*.py")}


def test_the_clocks_change_in_amsterdam_on_the_weekends_the_schedule_tests_cover():
    noon = time(12)

    def offset(day: date) -> timedelta:
        return AMSTERDAM.utcoffset(datetime.combine(day, noon))

    assert offset(date(2026, 3, 28)) == timedelta(hours=1)
    assert offset(date(2026, 3, 29)) == timedelta(hours=2)
    assert offset(date(2026, 10, 24)) == timedelta(hours=2)
    assert offset(date(2026, 10, 25)) == timedelta(hours=1)


@pytest.mark.parametrize(
    ("first_day", "last_day", "change_day"),
    [
        (date(2026, 3, 23), date(2026, 4, 5), date(2026, 3, 29)),
        (date(2026, 10, 19), date(2026, 11, 1), date(2026, 10, 25)),
    ],
    ids=["clocks-forward", "clocks-back"],
)
@pytest.mark.parametrize(
    ("dag_id", "local_time", "weekdays"),
    [
        ("vapor_business_hours_morning", time(8), {0, 1, 2, 3, 4}),
        ("vapor_business_hours_evening", time(19), {0, 1, 2, 3, 4, 5, 6}),
    ],
    ids=["morning", "evening"],
)
def test_business_hours_run_once_a_day_at_the_same_local_time_across_a_clock_change(
    dagbag, dag_id, local_time, weekdays, first_day, last_day, change_day
):
    dag = dagbag.dags[dag_id]

    runs = scheduled_runs(dag, first_day, last_day)

    expected_days = [day for day in days(first_day, last_day) if day.weekday() in weekdays]
    assert Counter(run.date() for run in runs) == Counter(expected_days)
    assert {run.time() for run in runs} == {local_time}
    offsets_before = {run.utcoffset() for run in runs if run.date() < change_day}
    offsets_after = {run.utcoffset() for run in runs if run.date() >= change_day}
    assert len(offsets_before) == len(offsets_after) == 1
    assert offsets_before != offsets_after


def test_the_evening_scale_down_runs_once_on_each_day_the_clocks_change(dagbag):
    dag = dagbag.dags["vapor_business_hours_evening"]

    spring = scheduled_runs(dag, date(2026, 3, 29), date(2026, 3, 29))
    autumn = scheduled_runs(dag, date(2026, 10, 25), date(2026, 10, 25))

    assert [run.in_tz("UTC") for run in spring] == [pendulum.datetime(2026, 3, 29, 17)]
    assert [run.in_tz("UTC") for run in autumn] == [pendulum.datetime(2026, 10, 25, 18)]


def test_business_hours_start_with_the_next_slot_instead_of_catching_up(dagbag):
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    now = pendulum.now("UTC")

    for dag_id in ("vapor_business_hours_morning", "vapor_business_hours_evening"):
        dag = dagbag.dags[dag_id]
        restriction = TimeRestriction(earliest=dag.start_date, latest=None, catchup=dag.catchup)
        first = coerce_to_core_timetable(dag.timetable).next_dagrun_info(
            last_automated_data_interval=None, restriction=restriction
        )

        assert first.run_after > now


def test_morning_and_evening_scale_web_up_and_back_down(emulator, example_dag, run_dag, all_logs):
    morning = run_dag(example_dag("vapor_business_hours_morning"))
    replicas_by_day = emulator.replica("my-app", ENV, WEB)["replicas"]
    evening = run_dag(example_dag("vapor_business_hours_evening"))

    assert morning["scale_up"].state == "success"
    assert evening["scale_down"].state == "success"
    assert replicas_by_day == 3
    assert emulator.replica("my-app", ENV, WEB)["replicas"] == 1
    scales = emulator.mutations(action="scale", application="my-app", replica=WEB)
    assert [request.body for request in scales] == [{"replicas": 3}, {"replicas": 1}]
    deployment = emulator.deployment(morning["scale_up"].result["deployment_id"])
    logs = all_logs()
    assert len(deployment.log) >= 3
    assert all(line in logs for line in deployment.log)


def test_morning_scale_takes_the_replica_count_from_the_run_conf(emulator, example_dag, run_dag):
    outcomes = run_dag(example_dag("vapor_business_hours_morning"), replicas=5)

    assert outcomes["scale_up"].state == "success"
    assert outcomes["scale_up"].result["replica"]["replicas"] == 5
    assert emulator.replica("my-app", ENV, WEB)["replicas"] == 5
    assert len(emulator.mutations(action="scale")) == 1


def test_batch_resizes_up_for_the_job_and_back_down_afterwards(emulator, example_dag, run_dag):
    outcomes = run_dag(example_dag("vapor_batch_resize"), job_seconds=0)

    assert {task: outcome.state for task, outcome in outcomes.items()} == {
        "resize_up": "success",
        "run_job": "success",
        "resize_down": "success",
    }
    assert last_run_state("vapor_batch_resize") == "success"
    resizes = emulator.mutations(action="resize", application="my-app", replica=WEB)
    assert [request.body for request in resizes] == [{"plan": "large"}, {"plan": "small"}]
    assert emulator.replica("my-app", ENV, WEB)["plan"]["slug"] == "small"


def test_batch_resizes_back_down_even_when_the_job_fails(emulator, example_dag, run_dag):
    outcomes = run_dag(example_dag("vapor_batch_resize"), job_seconds=0, fail_job=True)

    assert outcomes["resize_up"].state == "success"
    assert outcomes["run_job"].state == "failed"
    assert outcomes["resize_down"].state == "success"
    assert last_run_state("vapor_batch_resize") == "failed"
    resizes = emulator.mutations(action="resize", application="my-app", replica=WEB)
    assert [request.body for request in resizes] == [{"plan": "large"}, {"plan": "small"}]
    assert emulator.replica("my-app", ENV, WEB)["plan"]["slug"] == "small"


def test_fleet_scales_every_application_once_a_few_at_a_time(emulator, example_dag, run_dag):
    dag = example_dag("vapor_fleet")

    outcomes = run_dag(dag, replicas=4)

    assert outcomes["fleet"].result == list(FLEET)
    mapped = {key: outcome for key, outcome in outcomes.items() if key.startswith("scale[")}
    assert len(mapped) == len(FLEET)
    assert {outcome.state for outcome in mapped.values()} == {"success"}
    for application in FLEET:
        scales = emulator.mutations(action="scale", application=application)
        assert [(request.replica, request.body) for request in scales] == [(WEB, {"replicas": 4})]
        assert emulator.replica(application, ENV, WEB)["replicas"] == 4
    assert len(emulator.mutations()) == len(FLEET)
    assert rendered_map_indexes("vapor_fleet", "scale") == list(FLEET)
    assert dag.get_task("scale").max_active_tis_per_dagrun == 2


def test_fleet_takes_its_applications_from_the_variable_when_set(
    emulator, example_dag, run_dag, monkeypatch
):
    monkeypatch.setenv("AIRFLOW_VAR_VAPOR_FLEET", json.dumps(["shop", "billing", "shop"]))

    outcomes = run_dag(example_dag("vapor_fleet"), replicas=4)

    assert outcomes["fleet"].result == ["shop", "billing"]
    assert sorted(request.application for request in emulator.mutations()) == ["billing", "shop"]
    assert emulator.replica("my-app", ENV, WEB)["replicas"] == 1


def test_nightly_reboot_reboots_web_once_and_the_sensor_follows_the_worker_scale(
    emulator, example_dag, run_dag
):
    outcomes = run_dag(example_dag("vapor_nightly_reboot"), worker_replicas=4)

    assert {task: outcome.state for task, outcome in outcomes.items()} == {
        "reboot_web": "success",
        "scale_worker": "success",
        "wait_for_worker": "success",
    }
    reboots = emulator.mutations(action="reboot")
    assert [(request.application, request.replica) for request in reboots] == [("my-app", WEB)]
    assert emulator.deployment(outcomes["reboot_web"].result["deployment_id"]).status == "success"
    started = outcomes["scale_worker"].result["deployment_id"]
    followed = outcomes["wait_for_worker"].result
    assert str(followed["deployment_id"]) == str(started)
    assert followed["status"] == "success"
    assert emulator.deployment(started).status == "success"
    assert emulator.replica("my-app", ENV, "worker")["replicas"] == 4
