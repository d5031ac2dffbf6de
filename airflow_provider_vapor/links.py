"""The extra link from a replica task to the replica in the Vapor Cloud dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey


class VaporReplicaLink(BaseOperatorLink):
    """Opens the replica the task changed in the Vapor Cloud dashboard.

    The URL comes from the connection's ``dashboard_url``. Airflow computes it in the worker
    when the task ends and stores it for the UI; a task whose replica or connection is not
    valid gets no link.
    """

    name = "Vapor Cloud replica"

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        try:
            return operator.hook.settings.dashboard_link(operator.target)
        except Exception:
            return ""
