"""One scale change across a fleet of applications, a few at a time.

``fleet`` decides which applications to change when the run starts: the ``vapor_fleet``
Variable (a JSON list of application slugs) if it is set, the ``applications`` param
otherwise. ``scale`` is mapped over that list, one task instance per application, and at most
``MAX_PARALLEL`` (two) of them change a replica at the same time, so a fleet-wide change never
restarts everything at once. Each mapped instance is named after its application in the UI.

Set the fleet once with ``airflow variables set vapor_fleet '["my-app", "shop"]'``, or pass it
per run with ``--conf '{"applications": ["shop", "billing"], "replicas": 3}'``.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param, task

from airflow_provider_vapor.operators.replica import VaporScaleReplicaOperator

ENVIRONMENT = "production"
REPLICA = "web"
MAX_PARALLEL = 2


with DAG(
    dag_id="vapor_fleet",
    description="Scale web of every application in the fleet",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "platform", "retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "applications": Param(
            ["my-app", "shop", "billing", "search"],
            type="array",
            items={"type": "string"},
            description="applications to change when the vapor_fleet Variable is not set",
        ),
        "replicas": Param(2, type="integer", minimum=0, description="replicas of each web"),
    },
    render_template_as_native_obj=True,
    tags=["vapor", "fleet"],
    doc_md=__doc__,
) as dag:

    @task
    def fleet(applications: list[str]) -> list[str]:
        """Check the list of applications and drop repeats, keeping its order."""
        if not isinstance(applications, list) or not all(
            isinstance(name, str) and name for name in applications
        ):
            raise ValueError(
                f"the fleet must be a list of application slugs, got {applications!r}; "
                "fix the vapor_fleet Variable or the applications param"
            )
        return list(dict.fromkeys(applications))

    VaporScaleReplicaOperator.partial(
        task_id="scale",
        environment=ENVIRONMENT,
        replica=REPLICA,
        replicas="{{ params.replicas }}",
        deferrable=True,
        timeout=timedelta(minutes=30),
        max_active_tis_per_dagrun=MAX_PARALLEL,
        map_index_template="{{ task.application }}",
    ).expand(
        application=fleet("{{ var.json.get('vapor_fleet', params.applications) }}"),
    )
