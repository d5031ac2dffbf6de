"""Nightly maintenance: reboot ``web``, and follow a deployment that something else started.

``reboot_web`` reboots the pods of ``web`` of ``my-app/production`` at 04:00 Amsterdam time
and waits, deferred, until the deployment has finished. The reboot is never sent twice: a
retry reattaches to the deployment the first try started. With no ``start_date`` and
``run_immediately=timedelta(0)``, the first run is the next 04:00 after the DAG is switched on,
not an immediate one.

The second branch shows :class:`~airflow_provider_vapor.sensors.deployment.VaporDeploymentSensor`,
which waits for any deployment by its id. Here ``scale_worker`` sets ``worker`` to its night-time
count (the ``worker_replicas`` param) without waiting (``wait_for_completion=False``) and returns
at once; ``wait_for_worker`` takes the deployment's id and channel from that task's XCom by
template. A deployment started by a CI pipeline or
another DAG is followed the same way, its id passed in through XCom or a param.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, CronTriggerTimetable, Param

from airflow_provider_vapor.operators.replica import (
    VaporRebootReplicaOperator,
    VaporScaleReplicaOperator,
)
from airflow_provider_vapor.sensors.deployment import VaporDeploymentSensor

TIMEZONE = pendulum.timezone("Europe/Amsterdam")
APPLICATION = "my-app"
ENVIRONMENT = "production"


with DAG(
    dag_id="vapor_nightly_reboot",
    description="Reboot my-app/production/web every night",
    schedule=CronTriggerTimetable("0 4 * * *", timezone=TIMEZONE, run_immediately=timedelta(0)),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "platform", "retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "worker_replicas": Param(
            2, type="integer", minimum=0, description="replicas of worker for the night"
        ),
    },
    tags=["vapor", "maintenance"],
    doc_md=__doc__,
) as dag:
    VaporRebootReplicaOperator(
        task_id="reboot_web",
        application=APPLICATION,
        environment=ENVIRONMENT,
        replica="web",
        deferrable=True,
        timeout=timedelta(minutes=30),
    )

    scale_worker = VaporScaleReplicaOperator(
        task_id="scale_worker",
        application=APPLICATION,
        environment=ENVIRONMENT,
        replica="worker",
        replicas="{{ params.worker_replicas }}",
        wait_for_completion=False,
    )

    wait_for_worker = VaporDeploymentSensor(
        task_id="wait_for_worker",
        deployment_id="{{ ti.xcom_pull(task_ids='scale_worker')['deployment_id'] }}",
        channel_url="{{ ti.xcom_pull(task_ids='scale_worker')['channel_url'] }}",
        deferrable=True,
        timeout=timedelta(minutes=30).total_seconds(),
    )

    scale_worker >> wait_for_worker
