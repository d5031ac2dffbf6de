from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest
from airflow.sdk import DAG

from airflow_provider_vapor.exceptions import VaporConfigurationError
from airflow_provider_vapor.hooks.vapor import VaporHook
from airflow_provider_vapor.operators.replica import (
    VaporRebootReplicaOperator,
    VaporResizeReplicaOperator,
    VaporScaleReplicaOperator,
)

APP, ENV, WEB = "my-app", "production", "web"
_dag_ids = itertools.count()

CHANGES = {
    "scale": (VaporScaleReplicaOperator, {"replicas": 3}),
    "resize": (VaporResizeReplicaOperator, {"plan": "medium"}),
    "reboot": (VaporRebootReplicaOperator, {}),
}


def one_task_dag(operator_class, retries=0, **kwargs):
    with DAG(
        f"vapor_test_{next(_dag_ids)}",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        default_args={"retries": retries, "retry_delay": timedelta(0)},
        params=kwargs.pop("params", {}),
    ) as dag:
        defaults = {"application": APP, "environment": ENV, "replica": WEB, "timeout": 20}
        operator_class(task_id="change", **{**defaults, **kwargs})
    return dag


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferred"])
@pytest.mark.parametrize("action", sorted(CHANGES))
def test_operator_changes_the_replica_and_returns_a_summary(
    emulator, run_dag, all_logs, action, deferrable
):
    operator_class, arguments = CHANGES[action]
    dag = one_task_dag(operator_class, deferrable=deferrable, **arguments)

    outcome = run_dag(dag)["change"]

    assert outcome.state == "success"
    summary = outcome.result
    assert summary["status"] == "success"
    assert summary["action"] == action
    deployment = emulator.deployment(summary["deployment_id"])
    assert deployment.status == "success"
    assert summary["channel_url"].endswith(f"/v2/activity/channel/{summary['deployment_id']}")
    assert len(emulator.mutations(action=action)) == 1
    if action == "scale":
        assert summary["replica"]["replicas"] == 3
    if action == "resize":
        assert summary["replica"]["plan"]["slug"] == "medium"
    logs = all_logs()
    assert deployment.log[-1] in logs
    assert ("running trigger in line" in logs) == deferrable
    assert emulator.token not in logs


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferred"])
def test_failed_deployment_fails_the_task_with_the_services_message(
    emulator, run_dag, all_logs, deferrable
):
    emulator.faults.deployment_outcome(status="failed", message="quota exceeded for plan")
    dag = one_task_dag(VaporScaleReplicaOperator, replicas=5, deferrable=deferrable)

    outcome = run_dag(dag)["change"]

    assert outcome.state == "failed"
    logs = all_logs()
    assert "quota exceeded for plan" in logs
    assert VaporHook().get_replica(APP, ENV, WEB)["replicas"] == 1


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferred"])
def test_deployment_past_the_timeout_fails_the_task(emulator, run_dag, all_logs, deferrable):
    emulator.faults.never_finish()
    dag = one_task_dag(VaporScaleReplicaOperator, replicas=2, deferrable=deferrable, timeout=1)

    outcome = run_dag(dag)["change"]

    assert outcome.state == "failed"
    logs = all_logs()
    assert "did not finish by the deadline" in logs


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferred"])
def test_already_finished_deployment_ends_the_task_without_opening_the_channel(
    emulator, run_dag, deferrable
):
    emulator.faults.finish_immediately()
    dag = one_task_dag(VaporScaleReplicaOperator, replicas=2, deferrable=deferrable)

    outcome = run_dag(dag)["change"]

    assert outcome.state == "success"
    assert outcome.result["status"] == "success"
    assert not [r for r in emulator.requests if "/activity/channel/" in r.raw_path]


def test_without_waiting_the_task_returns_once_the_change_is_accepted(emulator, run_dag):
    dag = one_task_dag(VaporScaleReplicaOperator, replicas=2, wait_for_completion=False)

    outcome = run_dag(dag)["change"]

    assert outcome.state == "success"
    assert outcome.result["status"] == "waiting"
    assert not [r for r in emulator.requests if "/activity/channel/" in r.raw_path]


@pytest.mark.parametrize(
    ("params", "field", "shown"),
    [
        ({"replicas": "-1", "application": APP}, "replicas", "'-1'"),
        ({"replicas": "three", "application": APP}, "replicas", "'three'"),
        ({"replicas": "2", "application": "my-app/../admin"}, "application", "'my-app/../admin'"),
        ({"replicas": "2", "application": ""}, "application", "''"),
    ],
)
def test_bad_rendered_values_fail_the_task_before_any_call(
    emulator, run_dag, all_logs, params, field, shown
):
    dag = one_task_dag(
        VaporScaleReplicaOperator,
        replicas="{{ params.replicas }}",
        application="{{ params.application }}",
        params=params,
    )

    outcome = run_dag(dag)["change"]

    assert outcome.state == "failed"
    logs = all_logs()
    assert f"{field} must be" in logs
    assert shown in logs
    assert emulator.requests == []


def test_digits_from_a_template_are_accepted_as_the_replica_count(emulator, run_dag):
    dag = one_task_dag(
        VaporScaleReplicaOperator, replicas="{{ params.replicas }}", params={"replicas": "4"}
    )

    outcome = run_dag(dag)["change"]

    assert outcome.state == "success"
    assert emulator.mutations(action="scale")[0].body == {"replicas": 4}


@pytest.mark.parametrize(
    ("operator_class", "arguments", "field"),
    [
        (VaporScaleReplicaOperator, {"replicas": -1}, "replicas"),
        (VaporScaleReplicaOperator, {"replicas": True}, "replicas"),
        (VaporResizeReplicaOperator, {"plan": ""}, "plan"),
        (VaporRebootReplicaOperator, {"replica": "web/1"}, "replica"),
    ],
)
def test_literal_bad_values_are_refused_when_the_dag_is_parsed(operator_class, arguments, field):
    values = {"task_id": "t", "application": APP, "environment": ENV, "replica": WEB}

    with pytest.raises(VaporConfigurationError, match=field):
        operator_class(**{**values, **arguments})


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferred"])
def test_retried_reboot_reattaches_to_its_deployment_instead_of_rebooting_again(
    emulator, run_dag, deferrable
):
    emulator.faults.send_channel_frames([b"\x00not text"])
    dag = one_task_dag(VaporRebootReplicaOperator, retries=1, deferrable=deferrable)

    outcome = run_dag(dag)["change"]

    assert outcome.state == "success"
    assert outcome.try_number == 2
    assert len(emulator.mutations(action="reboot")) == 1


def test_operator_stores_the_dashboard_link_of_the_replica(emulator, run_dag, airflow_db):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag = one_task_dag(VaporRebootReplicaOperator, wait_for_completion=False)

    run_dag(dag)

    with create_session() as session:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag.dag_id, XComModel.key == "_link_VaporReplicaLink"
            )
        ).one()
        link = XComModel.deserialize_value(row)
    assert link == "https://dashboard.vapor.cloud/apps/my-app/production/web"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"replicas": 3.5}, "replicas"),
        ({"replicas": None}, "replicas"),
        ({"replicas": "²"}, "replicas"),
        ({"replicas": 2, "timeout": "60"}, "timeout"),
        ({"replicas": 2, "max_reconnect_wait": 0}, "max_reconnect_wait"),
    ],
)
def test_literal_values_of_the_wrong_kind_are_refused_when_the_dag_is_parsed(arguments, field):
    values = {"task_id": "t", "application": APP, "environment": ENV, "replica": WEB}

    with pytest.raises(VaporConfigurationError, match=field):
        VaporScaleReplicaOperator(**{**values, **arguments})


def stored_deployments(dag_id):
    from airflow.utils.session import create_session
    from sqlalchemy import text

    with create_session() as session:
        return session.execute(
            text("SELECT count(*) FROM task_state_store WHERE dag_id = :dag_id"),
            {"dag_id": dag_id},
        ).scalar()


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferred"])
def test_a_succeeded_change_is_forgotten_so_clearing_the_task_changes_again(
    emulator, run_dag, deferrable
):
    dag = one_task_dag(VaporScaleReplicaOperator, replicas=2, deferrable=deferrable)

    outcome = run_dag(dag)["change"]

    assert outcome.state == "success"
    assert stored_deployments(dag.dag_id) == 0


def test_a_deployment_still_running_at_the_timeout_is_kept_for_the_retry(emulator, run_dag):
    emulator.faults.never_finish()
    dag = one_task_dag(VaporScaleReplicaOperator, replicas=2, timeout=1)

    outcome = run_dag(dag)["change"]

    assert outcome.state == "failed"
    assert stored_deployments(dag.dag_id) == 1
