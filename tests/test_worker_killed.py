"""A worker killed in the middle of a wait, in a real Airflow: the retry reattaches.

The installation, its components and the emulator come from ``test_real_airflow``. The task waits
in the worker (not deferred), so the wait is the task runner process itself; it is killed with
SIGKILL while the emulator holds the deployment open, as the kernel's OOM killer or a lost node
would end it. The retry must find the deployment in the task state store and follow it to the
end, without asking for the change again.
"""

from __future__ import annotations

import json
import re
import signal
import textwrap
import uuid

import psutil
from test_real_airflow import (
    airflow_deployment,  # noqa: F401 - the fixture this test runs in
    emulator_for_airflow,  # noqa: F401 - the fixture that emulator comes from
    start_and_trigger,
    wait_for,
)

DAG_ID = "vapor_worker_killed"
TASK_ID = "scale"
APPLICATION = "shop"
COMPONENTS = ("api-server", "scheduler", "dag-processor")
KILLED_DAG = textwrap.dedent(
    f"""
    from datetime import datetime, timedelta

    from airflow.sdk import DAG

    from airflow_provider_vapor.operators.replica import VaporScaleReplicaOperator

    with DAG(
        "{DAG_ID}",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        default_args={{"retries": 1, "retry_delay": timedelta(seconds=1)}},
    ):
        VaporScaleReplicaOperator(
            task_id="{TASK_ID}",
            application="{APPLICATION}",
            environment="production",
            replica="web",
            replicas=4,
            deferrable=False,
            timeout=120,
        )
    """
)


def task_instance(deployment) -> tuple[str, str, int, str] | None:
    rows = deployment.query(
        "SELECT id, state, try_number, run_id FROM task_instance WHERE dag_id = ? AND task_id = ?",
        DAG_ID,
        TASK_ID,
    )
    return rows[0] if rows else None


def task_runner(ti_id: str) -> psutil.Process | None:
    """The process running the task: the child a LocalExecutor worker forked for it."""
    title = f"airflow worker -- {uuid.UUID(ti_id)}"
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if not cmdline.startswith(title):
            continue
        parent = process.parent()
        if parent is not None and "LocalExecutor" in " ".join(parent.cmdline()):
            return process
    return None


def test_worker_killed_mid_wait_is_retried_and_reattaches_without_a_second_change(
    airflow_deployment,  # noqa: F811
    emulator_for_airflow,  # noqa: F811
):
    deployment, emulator = airflow_deployment, emulator_for_airflow
    (deployment.home / "dags" / f"{DAG_ID}.py").write_text(KILLED_DAG)
    emulator.hold()
    try:
        start_and_trigger(deployment, COMPONENTS, DAG_ID)
        [scale] = wait_for(
            "the scale to reach the service",
            lambda: emulator.mutations(application=APPLICATION),
            deployment,
            90,
        )
        wait_for(
            "the worker to follow the deployment on its channel",
            lambda: any(
                request.status == 101 and request.deployment_id == scale.deployment_id
                for request in emulator.channel_requests
            ),
            deployment,
            30,
        )
        ti_id, state, try_number, run_id = task_instance(deployment)
        runner = wait_for("the task runner process", lambda: task_runner(ti_id), deployment, 10)

        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        wait_for(
            "the second try to reattach",
            lambda: (
                task_instance(deployment)[2] == 2
                and sum(
                    request.status == 101 and request.deployment_id == scale.deployment_id
                    for request in emulator.channel_requests
                )
                >= 3
            ),
            deployment,
            90,
        )
        emulator.hold(False)
        wait_for(
            f"{TASK_ID} to finish",
            lambda: task_instance(deployment)[1] in ("success", "failed"),
            deployment,
            60,
        )

        _, final_state, final_try, _ = task_instance(deployment)
        assert (state, try_number) == ("running", 1)
        assert (final_state, final_try) == ("success", 2)
        assert emulator.mutations(application=APPLICATION) == [scale]
        assert emulator.deployment(scale.deployment_id).status == "success"
        assert emulator.replica(APPLICATION, "production", "web")["replicas"] == 4
        [(summary,)] = deployment.query(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value'",
            DAG_ID,
            TASK_ID,
        )
        assert json.loads(summary)["deployment_id"] == scale.deployment_id
        assert json.loads(summary)["status"] == "success"
        logs = deployment.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
        second_try = (logs / f"task_id={TASK_ID}" / "attempt=2.log").read_text()
        assert re.search(
            f"Deployment {scale.deployment_id} from an earlier try is (waiting|running)",
            second_try,
        )
        assert "Reconnecting to existing job" in second_try
        assert emulator.token not in second_try
    except BaseException:
        print(deployment.component_logs())
        raise
