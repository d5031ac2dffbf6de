"""Operators that change a Vapor Cloud replica and wait for the deployment the change starts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator, ResumableJobMixin, conf

from airflow_provider_vapor.api import DEFAULT_CONN_ID, ReplicaRef, check_identifier
from airflow_provider_vapor.exceptions import (
    VaporConfigurationError,
    VaporDeploymentFailedError,
    VaporDeploymentTimeoutError,
    VaporError,
    VaporNotFoundError,
    VaporProtocolError,
)
from airflow_provider_vapor.links import VaporReplicaLink
from airflow_provider_vapor.protocol import (
    ACTIVE_STATUSES,
    FAILED,
    SUCCESS,
    TERMINAL_STATUSES,
    TIMEOUT,
    deployment_from_response,
)

if TYPE_CHECKING:
    from airflow_provider_vapor.channel import DeploymentOutcome
    from airflow_provider_vapor.hooks.vapor import VaporHook

DEFAULT_TIMEOUT = timedelta(hours=1)
# How long after the trigger's own deadline Airflow gives up on a deferral whose trigger never
# answered (a triggerer that is down, for instance).
DEFERRAL_GRACE = timedelta(minutes=5)


def identifier(field_name: str, value: Any) -> str:
    """Return ``value`` if it can be an application, environment, replica or plan name."""
    check_identifier(field_name, value)
    if "/" in value or value.strip(".") == "":
        raise VaporConfigurationError(
            f"{field_name} must be a single name without '/' and not '.' or '..', got {value!r}"
        )
    return value


def replica_count(value: Any) -> int:
    """Return ``value`` as a replica count: a whole number of 0 or more, digits accepted."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise VaporConfigurationError(
            f"replicas must be a whole number of 0 or more, got {value!r}"
        )
    return value


def is_template(value: Any) -> bool:
    """Whether ``value`` is still to be rendered or resolved when the task runs."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    return hasattr(value, "resolve")


def positive_seconds(field_name: str, value: Any) -> timedelta:
    """Return ``value`` (seconds or a timedelta) as a positive timedelta."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = timedelta(seconds=value)
    if not isinstance(value, timedelta) or value.total_seconds() <= 0:
        raise VaporConfigurationError(
            f"{field_name} must be a positive number of seconds or a timedelta, got {value!r}"
        )
    return value


class VaporReplicaOperator(ResumableJobMixin, BaseOperator):
    """Base of the operators that change a replica and wait for the resulting deployment.

    The change is made once: the deployment it starts is kept in the task state store, so a try
    that follows a crashed or killed worker reattaches to that deployment while it is running
    or has succeeded, instead of changing the replica again.

    :param application: the application's slug (templated).
    :param environment: the environment's name, e.g. ``production`` (templated).
    :param replica: the replica's name, e.g. ``web`` (templated).
    :param vapor_conn_id: the Airflow connection of type ``vapor``.
    :param wait_for_completion: wait for the deployment to finish; if false, return as soon
        as the service has accepted the change.
    :param deferrable: wait in the triggerer instead of the worker. Defaults to
        ``[operators] default_deferrable``.
    :param timeout: how long to wait for the deployment (seconds or a timedelta).
    :param max_reconnect_wait: the longest pause between two attempts to reopen the channel.
    """

    template_fields: Sequence[str] = ("application", "environment", "replica")
    operator_extra_links = (VaporReplicaLink(),)
    external_id_key = "vapor_deployment"
    ui_color = "#cfe8fc"
    action: ClassVar[str]

    def __init__(
        self,
        *,
        application: str,
        environment: str,
        replica: str,
        vapor_conn_id: str = DEFAULT_CONN_ID,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        max_reconnect_wait: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.application = application
        self.environment = environment
        self.replica = replica
        self.vapor_conn_id = vapor_conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.timeout = positive_seconds("timeout", timeout)
        self.max_reconnect_wait = positive_seconds(
            "max_reconnect_wait", max_reconnect_wait
        ).total_seconds()
        for name in ("application", "environment", "replica"):
            if not is_template(getattr(self, name)):
                identifier(name, getattr(self, name))
        self._deployment_status: str | None = None
        self._followed: Any = None

    @cached_property
    def hook(self) -> VaporHook:
        from airflow_provider_vapor.hooks.vapor import VaporHook

        return VaporHook(self.vapor_conn_id)

    @property
    def target(self) -> ReplicaRef:
        return ReplicaRef(
            identifier("application", self.application),
            identifier("environment", self.environment),
            identifier("replica", self.replica),
        )

    def validate(self) -> None:
        """Check every rendered value; raise a clear error naming the first bad one."""
        self.target  # noqa: B018 - validates the identifiers

    def change(self, replica: ReplicaRef) -> dict[str, Any]:
        """Ask the service for the change; return its response."""
        raise NotImplementedError

    def target_state(self) -> dict[str, Any]:
        """What the replica should look like once the deployment succeeds."""
        return {}

    def execute(self, context: Any) -> dict[str, Any]:
        self.validate()
        summary = self.execute_resumable(context)
        if summary is None and self._followed is not None:
            # A try that reattached to a running deployment gets no result from the mixin.
            summary = self.get_job_result(self._followed, context)
        self._forget_deployment(context)
        return summary

    def submit_job(self, context: Any) -> dict[str, Any]:
        response = self.change(self.target)
        deployment = deployment_from_response(response, f"{self.action} {self.target}")
        self._deployment_status = deployment.status
        self.log.info(
            "Deployment %s started to %s %s: %s",
            deployment.deployment_id,
            self.action,
            self.target,
            deployment.status,
        )
        return {
            "deployment_id": deployment.deployment_id,
            "channel_url": self.hook.settings.deployment_channel_url(
                deployment.deployment_id, deployment.tracking_url
            ),
        }

    def get_job_status(self, external_id: Any, context: Any) -> str:
        from airflow_provider_vapor.channel import read_deployment_status

        deployment_id, url = external_id["deployment_id"], external_id["channel_url"]
        try:
            outcome = asyncio.run(read_deployment_status(self.hook.settings, deployment_id, url))
        except VaporNotFoundError:
            outcome = self._judge_from_rest(deployment_id)
        self.log.info("Deployment %s from an earlier try is %s", deployment_id, outcome.status)
        self._deployment_status = outcome.status
        return outcome.status

    def is_job_active(self, status: str) -> bool:
        return status in ACTIVE_STATUSES

    def is_job_succeeded(self, status: str) -> bool:
        return status == SUCCESS

    def poll_until_complete(self, external_id: Any, context: Any) -> None:
        from airflow_provider_vapor.channel import DeploymentOutcome, follow_deployment
        from airflow_provider_vapor.triggers.deployment import VaporDeploymentTrigger

        deployment_id, url = external_id["deployment_id"], external_id["channel_url"]
        self._followed = external_id
        if self._deployment_status in TERMINAL_STATUSES:
            self._check(DeploymentOutcome(deployment_id, self._deployment_status))
            return
        if not self.wait_for_completion:
            return
        deadline = time.time() + self.timeout.total_seconds()
        if self.deferrable:
            self.defer(
                trigger=VaporDeploymentTrigger(
                    deployment_id=deployment_id,
                    channel_url=url,
                    deadline=deadline,
                    vapor_conn_id=self.vapor_conn_id,
                    application=self.target.application,
                    environment=self.target.environment,
                    replica=self.target.replica,
                    max_reconnect_wait=self.max_reconnect_wait,
                    **self.target_state(),
                ),
                method_name="execute_complete",
                timeout=self.timeout + DEFERRAL_GRACE,
            )

        async def judge_from_rest() -> DeploymentOutcome:
            return await asyncio.to_thread(self._judge_from_rest, deployment_id)

        outcome = asyncio.run(
            follow_deployment(
                self.hook.settings,
                deployment_id,
                url,
                deadline,
                on_log=self.log.info,
                judge_from_rest=judge_from_rest,
                max_reconnect_wait=self.max_reconnect_wait,
            )
        )
        self._check(outcome)

    def get_job_result(self, external_id: Any, context: Any) -> dict[str, Any]:
        return self._summary(external_id["deployment_id"], external_id["channel_url"])

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Turn the trigger's event into the task's result, or a clear failure."""
        from airflow_provider_vapor.channel import DeploymentOutcome

        try:
            outcome = DeploymentOutcome(
                event["deployment_id"], event["status"], event.get("message"), event["judged_from"]
            )
        except (KeyError, TypeError):
            raise VaporProtocolError(f"unexpected event from the trigger: {event!r}") from None
        self._check(outcome)
        self._forget_deployment(context)
        return self._summary(outcome.deployment_id, event.get("channel_url"))

    def _forget_deployment(self, context: Any) -> None:
        """Drop the finished deployment from the task state store.

        A retry after a failure still finds a deployment that may be running; once the task has
        succeeded, clearing it in Airflow makes the change again, as a user who clears it means.
        """
        task_state_store = context.get("task_state_store")
        if task_state_store is not None:
            task_state_store.delete(self.external_id_key)

    def _check(self, outcome: DeploymentOutcome) -> None:
        self._deployment_status = outcome.status
        what = f"deployment {outcome.deployment_id} ({self.action} {self.target})"
        if outcome.status == SUCCESS:
            self.log.info("%s finished: success", what)
            return
        if outcome.status == FAILED:
            raise VaporDeploymentFailedError(
                f"{what} failed: {outcome.message or 'the service gave no reason'}"
            )
        if outcome.status == TIMEOUT:
            raise VaporDeploymentTimeoutError(
                f"{self.action} {self.target}: {outcome.message}. A retry of this task waits "
                "for the same deployment; raise timeout if deployments take longer."
            )
        if outcome.status == "error":
            raise VaporError(f"{what}: {outcome.message}")
        raise VaporProtocolError(f"{what} ended with unexpected status {outcome.status!r}")

    def _judge_from_rest(self, deployment_id: int | str) -> DeploymentOutcome:
        from airflow_provider_vapor.channel import judge_replica

        ref = self.target
        return judge_replica(
            deployment_id,
            self.hook.get_replica(ref.application, ref.environment, ref.replica),
            self.hook.get_pods(ref.application, ref.environment, ref.replica),
            **self.target_state(),
        )

    def _summary(self, deployment_id: int | str, channel_url: str | None) -> dict[str, Any]:
        ref = self.target
        return {
            "action": self.action,
            "application": ref.application,
            "environment": ref.environment,
            "replica_name": ref.replica,
            "deployment_id": deployment_id,
            "channel_url": channel_url,
            "status": self._deployment_status,
            "replica": self.hook.get_replica(ref.application, ref.environment, ref.replica),
        }


class VaporScaleReplicaOperator(VaporReplicaOperator):
    """Sets how many copies of a replica run, and waits for the deployment.

    :param replicas: the number of copies, 0 or more (templated; digits from a template are
        accepted).
    """

    template_fields: Sequence[str] = (*VaporReplicaOperator.template_fields, "replicas")
    action = "scale"

    def __init__(self, *, replicas: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replicas = replicas
        if not is_template(replicas):
            replica_count(replicas)

    def validate(self) -> None:
        super().validate()
        self.replicas = replica_count(self.replicas)

    def target_state(self) -> dict[str, Any]:
        return {"replicas": replica_count(self.replicas)}

    def change(self, replica: ReplicaRef) -> dict[str, Any]:
        return self.hook.scale_replica(
            replica.application, replica.environment, replica.replica, replica_count(self.replicas)
        )


class VaporResizeReplicaOperator(VaporReplicaOperator):
    """Moves a replica to another plan, and waits for the deployment.

    :param plan: the plan's slug, e.g. ``small`` (templated).
    """

    template_fields: Sequence[str] = (*VaporReplicaOperator.template_fields, "plan")
    action = "resize"

    def __init__(self, *, plan: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        if not is_template(plan):
            identifier("plan", plan)

    def validate(self) -> None:
        super().validate()
        identifier("plan", self.plan)

    def target_state(self) -> dict[str, Any]:
        return {"plan": self.plan}

    def change(self, replica: ReplicaRef) -> dict[str, Any]:
        return self.hook.resize_replica(
            replica.application, replica.environment, replica.replica, self.plan
        )


class VaporRebootReplicaOperator(VaporReplicaOperator):
    """Reboots a replica's pods, and waits for the deployment.

    A reboot is never repeated by a retry while the one it started is running or has
    succeeded, nor when its request may have reached the service without an answer.
    """

    action = "reboot"

    def change(self, replica: ReplicaRef) -> dict[str, Any]:
        return self.hook.reboot_replica(replica.application, replica.environment, replica.replica)
