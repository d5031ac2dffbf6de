"""The trigger that waits for a Vapor Cloud deployment on its websocket channel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_vapor.api import DEFAULT_CONN_ID
from airflow_provider_vapor.channel import (
    DeploymentOutcome,
    JudgeFromRest,
    follow_deployment,
    judge_replica,
)
from airflow_provider_vapor.exceptions import VaporError
from airflow_provider_vapor.hooks.vapor import VaporHook

ERROR = "error"


class VaporDeploymentTrigger(BaseTrigger):
    """Waits in the triggerer for a deployment to finish, holding one websocket and no worker.

    The deployment's output goes to the task log as it arrives. Exactly one event is yielded:
    ``{"status": "success" | "failed" | "timeout" | "error", "deployment_id", "message",
    "judged_from"}``. The token is read from the connection in the triggerer; it is never part
    of the trigger's arguments.

    :param deployment_id: the deployment to wait for.
    :param channel_url: the deployment's websocket URL.
    :param deadline: when to give up, in seconds since the epoch; kept across triggerer restarts.
    :param vapor_conn_id: the Airflow connection holding the token.
    :param application: with ``environment`` and ``replica``, the replica the deployment
        changes, used to judge the outcome from REST if the channel is gone.
    :param environment: the replica's environment.
    :param replica: the replica's name.
    :param replicas: the replica count the deployment aims for, if it is a scale.
    :param plan: the plan the deployment aims for, if it is a resize.
    :param max_reconnect_wait: the longest pause between two attempts to reopen the channel.
    """

    def __init__(
        self,
        deployment_id: int | str,
        channel_url: str,
        deadline: float,
        vapor_conn_id: str = DEFAULT_CONN_ID,
        application: str | None = None,
        environment: str | None = None,
        replica: str | None = None,
        replicas: int | None = None,
        plan: str | None = None,
        max_reconnect_wait: float = 30.0,
    ) -> None:
        super().__init__()
        self.deployment_id = deployment_id
        self.channel_url = channel_url
        self.deadline = float(deadline)
        self.vapor_conn_id = vapor_conn_id
        self.application = application
        self.environment = environment
        self.replica = replica
        self.replicas = replicas
        self.plan = plan
        self.max_reconnect_wait = max_reconnect_wait

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "deployment_id": self.deployment_id,
                "channel_url": self.channel_url,
                "deadline": self.deadline,
                "vapor_conn_id": self.vapor_conn_id,
                "application": self.application,
                "environment": self.environment,
                "replica": self.replica,
                "replicas": self.replicas,
                "plan": self.plan,
                "max_reconnect_wait": self.max_reconnect_wait,
            },
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} deployment={self.deployment_id} "
            f"conn={self.vapor_conn_id} channel={self.channel_url}>"
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = VaporHook(self.vapor_conn_id)
        self.log.info("Waiting for deployment %s on %s", self.deployment_id, self.channel_url)
        try:
            settings = await hook.aget_settings()
            outcome = await follow_deployment(
                settings,
                self.deployment_id,
                self.channel_url,
                self.deadline,
                on_log=self.log.info,
                judge_from_rest=self._judge_from_rest(hook),
                max_reconnect_wait=self.max_reconnect_wait,
            )
        except VaporError as error:
            outcome = DeploymentOutcome(self.deployment_id, ERROR, str(error))
        finally:
            await hook.aclose()
        self.log.info("Deployment %s finished: %s", self.deployment_id, outcome.status)
        yield TriggerEvent({**outcome.as_dict(), "channel_url": self.channel_url})

    def _judge_from_rest(self, hook: VaporHook) -> JudgeFromRest | None:
        application, environment, replica = self.application, self.environment, self.replica
        if not (application and environment and replica):
            return None

        async def judge() -> DeploymentOutcome:
            view = await hook.aget_replica(application, environment, replica)
            pods = await hook.aget_pods(application, environment, replica)
            return judge_replica(self.deployment_id, view, pods, self.replicas, self.plan)

        return judge
