"""Business hours for ``web`` of ``my-app/production``: more replicas by day, fewer at night.

Two DAGs, both on Amsterdam wall-clock time:

* ``vapor_business_hours_morning`` scales up at 08:00, Monday to Friday.
* ``vapor_business_hours_evening`` scales down at 19:00 every day, weekends included, so a
  replica someone scaled up by hand on a Saturday does not run all weekend.

``CronTriggerTimetable`` reads the cron expression in the given timezone, so the runs follow
the clock on the wall: 08:00 is 07:00 UTC in winter and 06:00 UTC in summer. Both times lie
outside the hour the clocks skip or repeat (02:00 to 03:00 in Europe/Amsterdam), so every day
has exactly one run, the days the clocks change included.

The DAGs have no ``start_date`` and pass ``run_immediately=timedelta(0)`` on purpose: the first
run is then the next 08:00 (or 19:00) after the DAG is switched on. Otherwise Airflow starts a
run at once for the most recent slot: with a past ``start_date`` and ``catchup=False``, or,
without a ``start_date``, when that slot passed less than a tenth of the gap between runs ago
(2.4 hours for a daily schedule).

The scale operators are deferrable: while the deployment runs, the task holds no worker slot,
and the triggerer streams the deployment's output into the task log. Trigger a run by hand with
another count through the ``replicas`` param, e.g. ``airflow dags trigger
vapor_business_hours_morning --conf '{"replicas": 5}'``.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, CronTriggerTimetable, Param

from airflow_provider_vapor.operators.replica import VaporScaleReplicaOperator

TIMEZONE = pendulum.timezone("Europe/Amsterdam")
MORNING = "0 8 * * 1-5"
EVENING = "0 19 * * *"

APPLICATION = "my-app"
ENVIRONMENT = "production"
REPLICA = "web"

DEFAULT_ARGS = {
    "owner": "platform",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
}


def scaling_dag(dag_id: str, description: str, cron: str, task_id: str, replicas: int) -> DAG:
    """A DAG that scales ``web`` to ``replicas`` on the given cron schedule, in Amsterdam time."""
    with DAG(
        dag_id=dag_id,
        description=description,
        schedule=CronTriggerTimetable(cron, timezone=TIMEZONE, run_immediately=timedelta(0)),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params={"replicas": Param(replicas, type="integer", minimum=0)},
        tags=["vapor", "business-hours"],
        doc_md=__doc__,
    ) as dag:
        VaporScaleReplicaOperator(
            task_id=task_id,
            application=APPLICATION,
            environment=ENVIRONMENT,
            replica=REPLICA,
            replicas="{{ params.replicas }}",
            deferrable=True,
            timeout=timedelta(minutes=30),
        )
    return dag


morning = scaling_dag(
    "vapor_business_hours_morning",
    "Scale my-app/production/web up for the working day",
    MORNING,
    task_id="scale_up",
    replicas=3,
)
evening = scaling_dag(
    "vapor_business_hours_evening",
    "Scale my-app/production/web down for the night",
    EVENING,
    task_id="scale_down",
    replicas=1,
)
