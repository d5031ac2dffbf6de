"""Business hours for ``web`` of ``my-app/production``: more replicas by day, fewer at night.

Two DAGs, both on Amsterdam wall-clock time:

* ``vapor_business_hours_morning`` scales up at 08:00, Monday to Friday.
* ``vapor_business_hours_evening`` scales down at 19:00 every day, weekends included, so a
  replica someone scaled up by hand on a Saturday does not run all weekend.

``CronTriggerTimetable`` reads the cron expression in the given timezone, so the runs follow
the clock on the wall: 08:00 is 07:00 UTC in winter and 06:00 UTC in summer. Both times lie
outside the hour the clocks skip or repeat (02:00 to 03:00 in Europe/Amsterdam), so every day
has exactly one run, the days the clocks change included.

The DAGs have no ``start_date`` on purpose: the first run is then the next 08:00 (or 19:00)
after the DAG is switched on. With a past ``start_date`` and ``catchup=False``, Airflow would
start a run at once for the most recent slot it missed, scaling up at whatever hour the DAG
was deployed.

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


with DAG(
    dag_id="vapor_business_hours_morning",
    description="Scale my-app/production/web up for the working day",
    schedule=CronTriggerTimetable(MORNING, timezone=TIMEZONE),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "replicas": Param(
            3, type="integer", minimum=0, description="replicas of web during the day"
        ),
    },
    tags=["vapor", "business-hours"],
    doc_md=__doc__,
) as morning:
    VaporScaleReplicaOperator(
        task_id="scale_up",
        application=APPLICATION,
        environment=ENVIRONMENT,
        replica=REPLICA,
        replicas="{{ params.replicas }}",
        deferrable=True,
        timeout=timedelta(minutes=30),
    )


with DAG(
    dag_id="vapor_business_hours_evening",
    description="Scale my-app/production/web down for the night",
    schedule=CronTriggerTimetable(EVENING, timezone=TIMEZONE),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "replicas": Param(
            1, type="integer", minimum=0, description="replicas of web outside business hours"
        ),
    },
    tags=["vapor", "business-hours"],
    doc_md=__doc__,
) as evening:
    VaporScaleReplicaOperator(
        task_id="scale_down",
        application=APPLICATION,
        environment=ENVIRONMENT,
        replica=REPLICA,
        replicas="{{ params.replicas }}",
        deferrable=True,
        timeout=timedelta(minutes=30),
    )
