from __future__ import annotations

import itertools
from datetime import datetime

import pytest
from airflow.sdk import DAG

from airflow_provider_vapor.operators.replica import VaporScaleReplicaOperator
from airflow_provider_vapor.sensors.deployment import VaporDeploymentSensor

APP, ENV, WEB = "my-app", "production", "web"
MODES = {
    "poke": {"mode": "poke", "deferrable": False},
    "reschedule": {"mode": "reschedule", "deferrable": False},
    "deferred": {"deferrable": True},
}
_dag_ids = itertools.count()


def start_then_sense(mode, **sensor_arguments):
    """A DAG that starts a scale without waiting, then waits for it with the sensor."""
    with DAG(
        f"vapor_sensor_test_{next(_dag_ids)}", schedule=None, start_date=datetime(2026, 1, 1)
    ) as dag:
        start = VaporScaleReplicaOperator(
            task_id="start",
            application=APP,
            environment=ENV,
            replica=WEB,
            replicas=2,
            wait_for_completion=False,
        )
        sense = VaporDeploymentSensor(
            task_id="sense",
            deployment_id="{{ ti.xcom_pull(task_ids='start')['deployment_id'] }}",
            poke_interval=0.2,
            timeout=sensor_arguments.pop("timeout", 20),
            **MODES[mode],
            **sensor_arguments,
        )
        start >> sense
    return dag


@pytest.mark.parametrize("mode", sorted(MODES))
def test_sensor_succeeds_when_the_deployment_succeeds(emulator, run_dag, mode):
    outcomes = run_dag(start_then_sense(mode))

    assert outcomes["sense"].state == "success"
    deployment_id = outcomes["start"].result["deployment_id"]
    assert emulator.deployment(deployment_id).status == "success"
    assert emulator.open_channels() == 0


@pytest.mark.parametrize("mode", sorted(MODES))
def test_sensor_fails_when_the_deployment_fails(emulator, run_dag, all_logs, mode):
    emulator.faults.deployment_outcome(status="failed", message="node pool exhausted")

    outcomes = run_dag(start_then_sense(mode))

    assert outcomes["sense"].state == "failed"
    logs = all_logs()
    assert "node pool exhausted" in logs


@pytest.mark.parametrize("mode", sorted(MODES))
def test_sensor_timeout_with_soft_fail_skips(emulator, run_dag, mode):
    emulator.faults.never_finish()

    outcomes = run_dag(start_then_sense(mode, timeout=1, soft_fail=True))

    assert outcomes["sense"].state == "skipped"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_sensor_timeout_without_soft_fail_fails(emulator, run_dag, mode):
    emulator.faults.never_finish()

    outcomes = run_dag(start_then_sense(mode, timeout=1))

    assert outcomes["sense"].state == "failed"


def test_poking_holds_no_socket_between_pokes(emulator, run_dag):
    emulator.faults.never_finish()

    run_dag(start_then_sense("poke", timeout=1, soft_fail=True))

    channel_requests = [r for r in emulator.requests if "/activity/channel/" in r.raw_path]
    assert len(channel_requests) >= 3
    assert emulator.open_channels() == 0
