"""A batch job that needs a bigger plan while it runs, and gives it back however it ends.

``resize_up`` moves ``web`` of ``my-app/production`` to the ``large`` plan as a setup task,
``run_job`` does the work against it, and ``resize_down`` moves it back to ``small`` as the
teardown. A teardown runs once its setup has succeeded, whether the work succeeded or failed,
so a failing job never leaves the replica on the expensive plan; the run itself still fails.

Try it with ``airflow dags test vapor_batch_resize --conf '{"fail_job": true}'``: the run fails
at ``run_job`` and the replica is back on ``small``.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from airflow.sdk import DAG, Param, task

from airflow_provider_vapor.operators.replica import VaporResizeReplicaOperator

APPLICATION = "my-app"
ENVIRONMENT = "production"
REPLICA = "web"

log = logging.getLogger(__name__)


with DAG(
    dag_id="vapor_batch_resize",
    description="Run a batch job on a larger plan of my-app/production/web",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "platform", "retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "batch_plan": Param("large", type="string", description="plan while the job runs"),
        "normal_plan": Param("small", type="string", description="plan to return to"),
        "job_seconds": Param(1, type="number", minimum=0, description="how long the job works"),
        "fail_job": Param(False, type="boolean", description="make the job fail"),
    },
    tags=["vapor", "setup-teardown"],
    doc_md=__doc__,
) as dag:
    resize_up = VaporResizeReplicaOperator(
        task_id="resize_up",
        application=APPLICATION,
        environment=ENVIRONMENT,
        replica=REPLICA,
        plan="{{ params.batch_plan }}",
        deferrable=True,
        timeout=timedelta(minutes=30),
    )

    @task(retries=0)
    def run_job(params: dict | None = None) -> dict:
        """Stand in for the real work: wait a while, then succeed or fail as asked."""
        params = params or {}
        seconds = float(params.get("job_seconds", 1))
        log.info("Working for %s s on the %s plan", seconds, params.get("batch_plan"))
        time.sleep(seconds)
        if params.get("fail_job"):
            raise RuntimeError("the batch job failed because the fail_job param is set")
        return {"processed_seconds": seconds}

    resize_down = VaporResizeReplicaOperator(
        task_id="resize_down",
        application=APPLICATION,
        environment=ENVIRONMENT,
        replica=REPLICA,
        plan="{{ params.normal_plan }}",
        deferrable=True,
        timeout=timedelta(minutes=30),
    )

    resize_up >> run_job() >> resize_down.as_teardown(setups=resize_up)
