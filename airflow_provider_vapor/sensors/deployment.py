"""A sensor that waits for any Vapor Cloud deployment by its id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

from airflow_provider_vapor.api import DEFAULT_CONN_ID, check_identifier
from airflow_provider_vapor.exceptions import (
    VaporConfigurationError,
    VaporDeploymentFailedError,
    VaporError,
    VaporProtocolError,
)
from airflow_provider_vapor.protocol import FAILED, SUCCESS, TIMEOUT

if TYPE_CHECKING:
    from airflow_provider_vapor.hooks.vapor import VaporHook


class VaporDeploymentSensor(BaseSensorOperator):
    """Waits until a deployment succeeds; fails the task if it fails.

    In ``poke`` and ``reschedule`` mode each poke opens the channel, reads the status the
    service sends first and closes it, so no socket is held between pokes. Deferred, the
    :class:`~airflow_provider_vapor.triggers.deployment.VaporDeploymentTrigger` follows the
    channel in the triggerer until the end, ``timeout`` included.

    :param deployment_id: the deployment's id (templated), e.g. from an operator's XCom.
    :param channel_url: the deployment's websocket URL (templated); by default the
        connection's channel path with the id.
    :param vapor_conn_id: the Airflow connection of type ``vapor``.
    :param deferrable: wait in the triggerer. Defaults to ``[operators] default_deferrable``.
    """

    template_fields: Sequence[str] = ("deployment_id", "channel_url")
    ui_color = "#cfe8fc"

    def __init__(
        self,
        *,
        deployment_id: int | str,
        channel_url: str | None = None,
        vapor_conn_id: str = DEFAULT_CONN_ID,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deployment_id = deployment_id
        self.channel_url = channel_url
        self.vapor_conn_id = vapor_conn_id
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> VaporHook:
        from airflow_provider_vapor.hooks.vapor import VaporHook

        return VaporHook(self.vapor_conn_id)

    @property
    def url(self) -> str:
        if self.channel_url:
            return self.channel_url
        return self.hook.settings.deployment_channel_url(self.deployment_id)

    def execute(self, context: Any) -> Any:
        self._validate()
        if not self.deferrable:
            return super().execute(context)
        from airflow_provider_vapor.triggers.deployment import VaporDeploymentTrigger

        self.defer(
            trigger=VaporDeploymentTrigger(
                deployment_id=self.deployment_id,
                channel_url=self.url,
                deadline=time.time() + self.timeout,
                vapor_conn_id=self.vapor_conn_id,
            ),
            method_name="execute_complete",
        )

    def poke(self, context: Any) -> PokeReturnValue | bool:
        from airflow_provider_vapor.channel import read_deployment_status

        outcome = asyncio.run(
            read_deployment_status(self.hook.settings, self.deployment_id, self.url)
        )
        self.log.info("Deployment %s is %s", self.deployment_id, outcome.status)
        if outcome.status == FAILED:
            raise VaporDeploymentFailedError(
                f"deployment {self.deployment_id} failed: {outcome.message or 'no reason given'}"
            )
        if outcome.status == SUCCESS:
            return PokeReturnValue(is_done=True, xcom_value=self._summary(SUCCESS))
        return False

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Turn the trigger's event into the task's result, or a clear failure."""
        status = event.get("status") if isinstance(event, dict) else None
        message = event.get("message") if isinstance(event, dict) else None
        if status == SUCCESS:
            self.log.info("Deployment %s finished: success", self.deployment_id)
            return self._summary(SUCCESS)
        if status == TIMEOUT:
            if self.soft_fail:
                raise AirflowSkipException(f"{message}; skipping (soft_fail)")
            raise AirflowSensorTimeout(message)
        if status == FAILED:
            raise VaporDeploymentFailedError(
                f"deployment {self.deployment_id} failed: {message or 'no reason given'}"
            )
        if status == "error":
            raise VaporError(f"deployment {self.deployment_id}: {message}")
        raise VaporProtocolError(f"unexpected event from the trigger: {event!r}")

    def _validate(self) -> None:
        value = self.deployment_id
        if isinstance(value, int) and not isinstance(value, bool):
            return
        if "/" in check_identifier("deployment_id", value):
            raise VaporConfigurationError(f"deployment_id must not contain '/', got {value!r}")

    def _summary(self, status: str) -> dict[str, Any]:
        return {"deployment_id": self.deployment_id, "channel_url": self.url, "status": status}
