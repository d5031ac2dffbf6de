from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="vapor-tests-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")

FAST_RETRIES = {"retry_backoff": 0.01, "max_retry_wait": 2, "read_timeout": 5, "connect_timeout": 2}


def vapor_connection(emulator, token: str | None = None, **extra) -> str:
    """The JSON form of a ``vapor`` connection to the emulator, with fast retries."""
    TOKEN_SCAN.remember(emulator.token if token is None else token)
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


MIN_SCANNED_TOKEN_LENGTH = 8
SCANNED_COLUMNS = {
    "xcom": "value",
    "rendered_task_instance_fields": "rendered_fields",
    "trigger": "kwargs",
    "task_instance": "next_kwargs",
    "task_state_store": "value",
}
SCANNED_FILE_PATTERNS = ("*.log", "*.out")


class TokenScan:
    """The tokens this run used, and the search for them in everything the run produced.

    Tokens shorter than ``MIN_SCANNED_TOKEN_LENGTH`` (``"wrong"``) are not searched for: they
    occur in ordinary words. A hit names where the token was, never the token.
    """

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.consumed: list[str] = []
        self._seen: dict[tuple[str, ...], object] = {}

    def remember(self, token: str | None) -> None:
        if token and len(token) >= MIN_SCANNED_TOKEN_LENGTH:
            self.tokens.add(token)

    def hits_in(self, text: str, where: str) -> list[str]:
        """Where in ``text`` a token occurs, as sentences that do not contain it."""
        hits = []
        for token in sorted(self.tokens, key=len, reverse=True):
            position = text.find(token)
            if position >= 0:
                hits.append(f"{where}: a {len(token)}-character token at character {position}")
        return hits

    def redact(self, text: str) -> str:
        for token in sorted(self.tokens, key=len, reverse=True):
            text = text.replace(token, "***")
        return text

    def database_hits(self, database: Path, decrypt) -> list[str]:
        """Hits in the XCom, rendered field, trigger and task state rows not scanned before."""
        import sqlite3

        hits = []
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
        try:
            for table, column in SCANNED_COLUMNS.items():
                try:
                    rows = connection.execute(f"SELECT rowid, {column} FROM {table}").fetchall()
                except sqlite3.Error:
                    continue
                for rowid, value in rows:
                    key = (str(database), table, str(rowid))
                    if value is None or self._seen.get(key) == value:
                        continue
                    self._seen[key] = value
                    text = value.decode(errors="replace") if isinstance(value, bytes) else value
                    if table == "trigger" and not str(text).startswith("{"):
                        text = decrypt(text)
                    where = f"{table}.{column} of row {rowid} in {database}"
                    hits += self.hits_in(str(text), where)
        finally:
            connection.close()
        return hits

    def file_hits(self, root: Path, patterns=("*",)) -> list[str]:
        """Hits in the files under ``root`` that are new or changed since the last scan."""
        hits = []
        for pattern in patterns:
            for path in sorted(root.rglob(pattern)):
                if not path.is_file():
                    continue
                stat = path.stat()
                key = (str(path),)
                if self._seen.get(key) == (stat.st_size, stat.st_mtime_ns):
                    continue
                self._seen[key] = (stat.st_size, stat.st_mtime_ns)
                hits += self.hits_in(path.read_text(errors="replace"), f"file {path}")
        return hits


TOKEN_SCAN = TokenScan()
_read_captured_output = pytest.CaptureFixture.readouterr


def _readouterr_and_keep(self):
    captured = _read_captured_output(self)
    TOKEN_SCAN.consumed.append(captured.out + captured.err)
    return captured


pytest.CaptureFixture.readouterr = _readouterr_and_keep


@pytest.fixture
def token_scan() -> TokenScan:
    """The run's token scan, to check that it finds what it must."""
    return TOKEN_SCAN


@pytest.fixture
def vapor_emulator(vapor_emulator):
    """The plugin's emulator, its token remembered for the run's token scan."""
    TOKEN_SCAN.remember(vapor_emulator.token)
    return vapor_emulator


@pytest.fixture(scope="session", autouse=True)
def remember_every_emulator_token():
    """Remember the token of every emulator the run starts, fixtures or not."""
    from airflow_provider_vapor.emulator import VaporEmulator

    start = VaporEmulator.start

    def start_and_remember(self):
        TOKEN_SCAN.remember(self.token)
        return start(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(VaporEmulator, "start", start_and_remember)
        yield


def _session_database() -> Path | None:
    database = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    return database if database.exists() else None


def _session_decrypt(text: str) -> str:
    from airflow.models.crypto import get_fernet

    try:
        return get_fernet().decrypt(text.encode()).decode(errors="replace")
    except Exception:
        return text


def _home_decrypt(home: Path):
    import configparser

    config = configparser.ConfigParser(interpolation=None)
    config.read(home / "airflow.cfg")
    key = config.get("core", "fernet_key", fallback="")

    def decrypt(text: str) -> str:
        from cryptography.fernet import Fernet

        try:
            return Fernet(key.encode()).decrypt(text.encode()).decode(errors="replace")
        except Exception:
            return text

    return decrypt


def _produced_hits(item: pytest.Item, report: pytest.TestReport) -> list[str]:
    hits = []
    for title, content in report.sections:
        if title.endswith(f" {report.when}"):
            hits += TOKEN_SCAN.hits_in(content, title.lower())
    consumed, TOKEN_SCAN.consumed[:] = "\n".join(TOKEN_SCAN.consumed), []
    hits += TOKEN_SCAN.hits_in(consumed, f"output read through capfd/capsys during {report.when}")
    if report.failed:
        hits += TOKEN_SCAN.hits_in(report.longreprtext, f"the exception text of {report.when}")
    if report.when == "setup":
        return hits
    database = _session_database()
    if database is not None and "airflow_db" in item.fixturenames:
        hits += TOKEN_SCAN.database_hits(database, _session_decrypt)
        hits += TOKEN_SCAN.file_hits(database.parent / "logs")
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if tmp_path is not None:
        for private_database in Path(tmp_path).rglob("airflow.db"):
            home = private_database.parent
            hits += TOKEN_SCAN.database_hits(private_database, _home_decrypt(home))
            hits += TOKEN_SCAN.file_hits(home, SCANNED_FILE_PATTERNS)
    return hits


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Fail a test whose logs, output, exception, XComs, rendered fields, trigger arguments or
    task logs contain a token this run used, saying where without showing it."""
    report = yield
    if not TOKEN_SCAN.tokens:
        TOKEN_SCAN.consumed.clear()
        return report
    hits = list(dict.fromkeys(_produced_hits(item, report)))
    report.sections = [(title, TOKEN_SCAN.redact(text)) for title, text in report.sections]
    if hits:
        before = TOKEN_SCAN.redact(report.longreprtext) + "\n\n" if report.failed else ""
        report.outcome = "failed"
        report.longrepr = (
            before
            + "A Vapor Cloud token appeared in what this test produced:\n"
            + ("\n".join(f"  - {hit}" for hit in hits))
        )
    return report
