"""The business-hours DAG, run by a real Airflow: API server, scheduler, DAG processor, triggerer.

Each component is its own process with a private ``AIRFLOW_HOME`` and SQLite metadata database,
and the tasks run under the LocalExecutor, which Airflow 3 accepts on SQLite (it is what
``airflow standalone`` uses). Workers reach the database only through the Execution API of the
API server. The emulator runs in the test process; it holds the deployment open before its
terminal status, so the test sees the task deferred and the triggerer following the deployment
before letting it finish.

The channel carries live output only: a client that connects late gets the current status, not
the lines before it. The emulator's steps are therefore slower than the time the triggerer takes
to pick up a new trigger, so that every line of the deployment reaches the task log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pendulum
import pytest

from airflow_provider_vapor.emulator import VaporEmulator

ROOT = Path(__file__).resolve().parent.parent
BUSINESS_HOURS = ROOT / "example_dags" / "vapor_business_hours.py"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "vapor_business_hours_morning"
TASK_ID = "scale_up"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
RUN_BUDGET_SECONDS = 180
SLOT_GRACE = 150
STOP_GRACE_SECONDS = 20
DEPLOYMENT_STEP_SECONDS = 3.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class AirflowDeployment:
    """A private Airflow installation: its home, environment and running components."""

    home: Path
    env: dict[str, str]
    api_url: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def database(self) -> Path:
        return self.home / "airflow.db"

    def log_file(self, component: str) -> Path:
        return self.home / f"{component}.out"

    def cli(self, *arguments: str, timeout: float = 120) -> str:
        """Run an ``airflow`` command against this installation; return its output."""
        completed = subprocess.run(
            [AIRFLOW, *arguments],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert completed.returncode == 0, (
            f"airflow {' '.join(arguments)} failed:\n{completed.stdout}\n{completed.stderr}"
        )
        return completed.stdout

    def start(self, component: str, *arguments: str) -> None:
        with self.log_file(component).open("wb") as output:
            self.processes[component] = subprocess.Popen(
                [AIRFLOW, component, *arguments],
                env=self.env,
                cwd=self.home,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_running(self) -> None:
        for component, process in self.processes.items():
            assert process.poll() is None, (
                f"airflow {component} exited with {process.returncode}:\n"
                + self.log_file(component).read_text(errors="replace")[-5000:]
            )

    def query(self, sql: str, *parameters: object) -> list[tuple]:
        """Read the metadata database without holding it: one short read-only connection."""
        connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
        try:
            return connection.execute(sql, parameters).fetchall()
        finally:
            connection.close()

    def stop(self) -> list[str]:
        """Stop every component's whole process group; return the groups that outlived it."""
        for process in self.processes.values():
            signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline and any(map(group_alive, self.pids())):
            time.sleep(0.2)
        for pid in self.pids():
            signal_group(pid, signal.SIGKILL)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        time.sleep(0.5)
        return [name for name, process in self.processes.items() if group_alive(process.pid)]

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes.values()]

    def component_logs(self) -> str:
        parts = []
        for component in COMPONENTS:
            path = self.log_file(component)
            if path.exists():
                text = path.read_text(errors="replace")
                parts.append(f"===== airflow {component} (last 8000 characters) =====\n")
                parts.append(text[-8000:])
        return "\n".join(parts)


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running; zombies do not count."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            return True
    return False


def wait_for(what: str, check, deployment: AirflowDeployment, timeout: float, interval=0.2):
    """Poll ``check`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment.check_running()
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_and_trigger(deployment: AirflowDeployment, components, dag_id: str) -> None:
    """Start the components, wait until the DAG is parsed, switch it on and trigger one run."""
    for component in components:
        deployment.start(component)
    wait_for("the API server", lambda: api_server_healthy(deployment), deployment, 180)
    wait_for(
        f"{dag_id} to be parsed",
        lambda: deployment.query("SELECT 1 FROM dag WHERE dag_id = ?", dag_id),
        deployment,
        60,
    )
    deployment.cli("dags", "unpause", dag_id)
    deployment.cli("dags", "trigger", dag_id)


def seconds_until_clear_of_scheduled_runs(now: pendulum.DateTime) -> float:
    """Seconds to wait so that no 08:00-weekday or 19:00 Amsterdam slot falls in the test's run.

    A slot that passed moments before the DAG is parsed still gets its scheduled run, so the
    window reaches past each slot as well as before it.
    """
    local = now.in_tz("Europe/Amsterdam")
    for day in (-1, 0, 1):
        date = local.add(days=day)
        slots = [date.replace(hour=19, minute=0, second=0, microsecond=0)]
        if date.day_of_week < 5:
            slots.append(date.replace(hour=8, minute=0, second=0, microsecond=0))
        for slot in slots:
            if slot.subtract(seconds=RUN_BUDGET_SECONDS) <= local <= slot.add(seconds=SLOT_GRACE):
                return (slot.add(seconds=SLOT_GRACE) - local).total_seconds()
    return 0.0


@pytest.fixture
def emulator_for_airflow() -> Iterator[VaporEmulator]:
    with VaporEmulator(step_seconds=DEPLOYMENT_STEP_SECONDS) as emulator:
        yield emulator


@pytest.fixture
def airflow_deployment(tmp_path, emulator_for_airflow) -> Iterator[AirflowDeployment]:
    """A migrated Airflow home with the business-hours DAG; components start in the test."""
    home = tmp_path / "airflow"
    dags = home / "dags"
    dags.mkdir(parents=True)
    shutil.copy(BUSINESS_HOURS, dags / BUSINESS_HOURS.name)
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": api_url,
            "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(32).hex(),
            "AIRFLOW__API__SECRET_KEY": os.urandom(32).hex(),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW_CONN_VAPOR_DEFAULT": emulator_for_airflow.connection_uri,
        }
    )
    deployment = AirflowDeployment(home=home, env=env, api_url=api_url)
    deployment.cli("db", "migrate", timeout=300)
    try:
        yield deployment
    finally:
        survivors = deployment.stop()
        assert survivors == [], f"components still running after stop: {survivors}"


def api_server_healthy(deployment: AirflowDeployment) -> bool:
    try:
        with urllib.request.urlopen(f"{deployment.api_url}/api/v2/monitor/health", timeout=2):
            return True
    except OSError:
        return False


def task_instance(deployment: AirflowDeployment) -> tuple[str, str, int] | None:
    """The run id, state and try number of the DAG's task, once it has a run."""
    rows = deployment.query(
        "SELECT run_id, state, try_number FROM task_instance WHERE dag_id = ? AND task_id = ?",
        DAG_ID,
        TASK_ID,
    )
    assert len(rows) <= 1, f"expected one run of {DAG_ID}, found {rows}"
    return rows[0] if rows else None


def run_state(deployment: AirflowDeployment, run_id: str) -> str | None:
    rows = deployment.query(
        "SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id
    )
    return rows[0][0] if rows else None


def test_deferred_scale_runs_through_the_triggerer_of_a_real_airflow(
    airflow_deployment, emulator_for_airflow
):
    deployment, emulator = airflow_deployment, emulator_for_airflow
    # Only the DAG under test is switched on; a scheduled run of it would make a second scale.
    time.sleep(seconds_until_clear_of_scheduled_runs(pendulum.now("UTC")))
    emulator.hold()
    states_seen: list[str | None] = []

    def task_state() -> str | None:
        current = task_instance(deployment)
        state = current[1] if current else None
        if not states_seen or states_seen[-1] != state:
            states_seen.append(state)
        return state

    try:
        start_and_trigger(deployment, COMPONENTS, DAG_ID)
        wait_for(f"{TASK_ID} to be deferred", lambda: task_state() == "deferred", deployment, 90)
        wait_for(
            "the triggerer to open the deployment's channel",
            lambda: any(request.status == 101 for request in emulator.channel_requests),
            deployment,
            30,
        )
        emulator.hold(False)
        wait_for(
            f"{TASK_ID} to finish",
            lambda: task_state() in ("success", "failed"),
            deployment,
            60,
        )
        run_id, _, try_number = task_instance(deployment)
        wait_for(
            "the scheduler to end the run",
            lambda: run_state(deployment, run_id) in ("success", "failed"),
            deployment,
            30,
        )

        assert states_seen[-1] == "success", f"task states seen: {states_seen}"
        assert "deferred" in states_seen[: states_seen.index("success")]
        assert try_number == 1
        assert run_state(deployment, run_id) == "success"
        [scale] = emulator.mutations(action="scale")
        assert (scale.application, scale.environment, scale.replica) == (
            "my-app",
            "production",
            "web",
        )
        assert scale.body == {"replicas": 3}
        assert emulator.replica("my-app", "production", "web")["replicas"] == 3
        logs = deployment.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
        logs = logs / f"task_id={TASK_ID}"
        worker_log = (logs / "attempt=1.log").read_text()
        [(triggerer_job,)] = deployment.query("SELECT id FROM job WHERE job_type = 'TriggererJob'")
        trigger_log_file = logs / f"attempt=1.log.trigger.{triggerer_job}.log"
        trigger_log = trigger_log_file.read_text()
        assert "Pausing task as DEFERRED" in worker_log
        assert "Trigger fired event" in trigger_log
        assert (
            f"deployment {scale.deployment_id} (scale web in my-app/production) finished: success"
            in worker_log
        )
        deployment_log = emulator.deployment(scale.deployment_id).log
        assert len(deployment_log) >= 3
        connected = min(
            request.at - emulator.deployment(scale.deployment_id).created_at
            for request in emulator.channel_requests
            if request.status == 101
        )
        for line in deployment_log:
            assert line in trigger_log, (
                f"{line!r} missing from {trigger_log_file}; the triggerer connected "
                f"{connected:.1f} s after the deployment started"
            )
        assert emulator.token not in worker_log + trigger_log
    except BaseException:
        print(f"task states seen: {states_seen}")
        print(deployment.component_logs())
        for path in sorted(deployment.home.glob("logs/dag_id=*/**/*.log*")):
            print(f"===== {path} =====\n{path.read_text(errors='replace')[-8000:]}")
        raise
