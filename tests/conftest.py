from __future__ import annotations

import json
import logging
import os
import tempfile

import pytest

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="vapor-tests-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")

FAST_RETRIES = {"retry_backoff": 0.01, "max_retry_wait": 2, "read_timeout": 5, "connect_timeout": 2}


def vapor_connection(emulator, token: str | None = None, **extra) -> str:
    """The JSON form of a ``vapor`` connection to the emulator, with fast retries."""
    return json.dumps(
        {
            "conn_type": "vapor",
            "host": emulator.url,
            "password": emulator.token if token is None else token,
            "extra": {**FAST_RETRIES, **extra},
        }
    )


@pytest.fixture
def emulator(vapor_emulator, monkeypatch):
    """The running emulator, with ``vapor_default`` pointing at it and retries kept short."""
    monkeypatch.setenv("AIRFLOW_CONN_VAPOR_DEFAULT", vapor_connection(vapor_emulator))
    return vapor_emulator


@pytest.fixture
def use_connection(monkeypatch):
    """Point a connection id at the emulator with the given settings."""

    def use(conn_id: str, emulator, token: str | None = None, **extra) -> str:
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}", vapor_connection(emulator, token, **extra)
        )
        return conn_id

    return use


@pytest.fixture
def all_logs(caplog, capfd):
    """Everything logged during the test so far, DEBUG included, as text.

    Covers the standard library's records and what Airflow's structlog loggers print.
    """
    caplog.set_level(logging.DEBUG)
    printed = []

    def text() -> str:
        output = capfd.readouterr()
        printed.append(output.out + output.err)
        records = "\n".join(f"{record.name} {record.getMessage()}" for record in caplog.records)
        return "\n".join([records, caplog.text, *printed])

    return text


@pytest.fixture(scope="session")
def airflow_db():
    """A fresh metadata database in this run's AIRFLOW_HOME, for ``dag.test()``."""
    from airflow.utils.db import initdb

    initdb()


def register(dag) -> None:
    """Store a DAG built inside a test in the metadata database, as the DAG processor would."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
        session.commit()
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session
        )


class TaskOutcome:
    """What one task instance of a finished test run ended with."""

    def __init__(self, state, try_number, result):
        self.state = state
        self.try_number = try_number
        self.result = result

    def __repr__(self):
        return f"TaskOutcome({self.state!r}, try={self.try_number}, result={self.result!r})"


@pytest.fixture
def run_dag(airflow_db):
    """Run a DAG with ``dag.test()``; return each task's state, try number and return value."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    def run(dag, **run_conf) -> dict[str, TaskOutcome]:
        register(dag)
        dag_run = dag.test(run_conf=run_conf or None)
        outcomes = {}
        with create_session() as session:
            instances = session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == dag_run.run_id
                )
            ).all()
            for ti in instances:
                row = session.scalars(
                    select(XComModel).where(
                        XComModel.dag_id == dag.dag_id,
                        XComModel.run_id == dag_run.run_id,
                        XComModel.task_id == ti.task_id,
                        XComModel.map_index == ti.map_index,
                        XComModel.key == "return_value",
                    )
                ).first()
                result = XComModel.deserialize_value(row) if row is not None else None
                key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
                outcomes[key] = TaskOutcome(ti.state, ti.try_number, result)
        return outcomes

    return run
