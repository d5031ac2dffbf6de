"""The extra link from a replica task to the replica in the Vapor Cloud dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey


class VaporReplicaLink(BaseOperatorLink):
    """Opens the replica the task changed in the Vapor Cloud dashboard.

    The URL comes from the connection's ``dashboard_url`` and is stored when the task runs.
    """

    name = "Vapor Cloud replica"

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=self.xcom_key, ti_key=ti_key) or ""
