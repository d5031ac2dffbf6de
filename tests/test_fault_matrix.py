"""What the provider does under every fault the emulator can inject, one row per fault.

Each row states four things: the final state (a result, or an error of the right class whose
message names the call), how many changes reached the service, that the call returned within its
deadline, and that nothing outlived it: no open channel, no pending asyncio task in the loop it
ran in, no client socket and no extra thread.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import importlib
import ipaddress
import itertools
import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from airflow.sdk import DAG

from airflow_provider_vapor.channel import NOT_FOUND_CONFIRMATIONS
from airflow_provider_vapor.emulator import VaporEmulator
from airflow_provider_vapor.exceptions import (
    VaporApiError,
    VaporConfigurationError,
    VaporNotFoundError,
    VaporOutcomeUnknownError,
    VaporProtocolError,
    VaporUnavailableError,
)
from airflow_provider_vapor.hooks.vapor import VaporHook
from airflow_provider_vapor.operators.replica import (
    VaporRebootReplicaOperator,
    VaporResizeReplicaOperator,
    VaporScaleReplicaOperator,
)
from airflow_provider_vapor.sensors.deployment import VaporDeploymentSensor
from airflow_provider_vapor.triggers.deployment import VaporDeploymentTrigger

pytest_plugins = ["pytester"]

APP, ENV, WEB = "my-app", "production", "web"
MATRIX_CONNECTION = "vapor_matrix"
MATRIX_SETTINGS = {
    "read_timeout": 10,
    "connect_timeout": 5,
    "retry_backoff": 0.01,
    "max_retry_wait": 3,
    "max_retries": 4,
}
SHORT_READ = {"read_timeout": 0.5}
SHORT_CONNECT = {"connect_timeout": 0.5}
ATTEMPTS = MATRIX_SETTINGS["max_retries"] + 1
SLACK_SECONDS = 5.0
LONGEST_ERROR_TEXT = 1000
_dag_ids = itertools.count()
# The first dag.test() of a process starts Airflow's in-process execution API, for good.
PROCESS_WIDE_THREADS = frozenset({"InProcessExecutionAPI-loop"})


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def nowhere(emulator) -> SimpleNamespace:
    """Where a connection points to reach a closed port, with the emulator's token."""
    return SimpleNamespace(url=f"http://127.0.0.1:{closed_port()}", token=emulator.token)


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that completes the TCP handshake and then never says anything."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def client_sockets(port: int) -> list[Any]:
    """This process's open TCP connections to ``port`` on loopback."""
    return [
        connection
        for connection in psutil.Process().net_connections(kind="tcp")
        if connection.raddr
        and connection.raddr.port == port
        and connection.status == psutil.CONN_ESTABLISHED
    ]


def eventually(check: Callable[[], bool], seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def leftover_check(emulator) -> Callable[..., None]:
    """Take note of the threads alive now; the returned check fails on anything left later.

    The check waits briefly for the emulator's channel count and the thread list to settle, and,
    given a port, for this process's connections to it to close.
    """
    from asgiref.sync import sync_to_async

    # Connection lookups use asgiref's one process-wide thread; start it before counting.
    asyncio.run(sync_to_async(lambda: None)())
    threads_before = set(threading.enumerate())

    def new_threads() -> set[threading.Thread]:
        return {
            thread
            for thread in set(threading.enumerate()) - threads_before
            if thread.name not in PROCESS_WIDE_THREADS
        }

    def check(client_port: int | None = None) -> None:
        assert eventually(lambda: emulator.open_channels() == 0), "a channel is still open"
        assert eventually(lambda: not new_threads()), f"threads left running: {new_threads()}"
        if client_port is not None:
            assert eventually(lambda: not client_sockets(client_port)), (
                f"client sockets still open: {client_sockets(client_port)}"
            )

    return check


@pytest.fixture
def nothing_left_behind(emulator) -> Callable[..., None]:
    """Call it after a scenario: no channel open, no thread and no client socket left."""
    return leftover_check(emulator)


def run_in_new_loop(make_coroutine: Callable[[], Any], limit: float) -> tuple[Any, list[Any]]:
    """Run a coroutine in a new event loop; return its result and the tasks it left pending."""

    async def main() -> tuple[Any, list[Any]]:
        result = await asyncio.wait_for(make_coroutine(), limit)
        await asyncio.sleep(0)
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        return result, pending

    return asyncio.run(main())


@pytest.fixture
def matrix_connection(emulator, use_connection) -> str:
    """A connection to the emulator with fast retries and five attempts per call."""
    return use_connection(MATRIX_CONNECTION, emulator, **MATRIX_SETTINGS)


def longest_call(settings: dict[str, float]) -> float:
    """The longest a call may take with these settings: every attempt timing out, and every
    wait between them as long as allowed."""
    settings = {**MATRIX_SETTINGS, **settings}
    attempts = settings["max_retries"] + 1
    per_attempt = settings["connect_timeout"] + settings["read_timeout"]
    return attempts * per_attempt + settings["max_retries"] * settings["max_retry_wait"]


def rest_statuses(emulator) -> list[int]:
    return [request.status for request in emulator.requests if not request.websocket]


def check_error_text(error: BaseException, emulator, call_description: str) -> None:
    text = str(error)
    assert call_description in text
    assert len(text) < LONGEST_ERROR_TEXT, f"{len(text)} characters"
    assert "\n" not in text and "\r" not in text
    assert emulator.token not in text


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@dataclass(frozen=True)
class RestFault:
    """One REST fault and what must follow from it.

    :param arm: arms the fault on the emulator's faults.
    :param call: ``scale``, ``reboot``, ``view`` (requests) or ``view-async`` (httpx).
    :param raises: the exact error class, or ``None`` for success.
    :param message: a pattern the error's text must contain.
    :param statuses: the statuses the emulator answered, in order (0: never answered).
    :param mutations: the changes that reached the replica.
    :param waits_at_least: the least time the call must have taken, e.g. for ``Retry-After``.
    :param closed_port: point the connection at a port nobody listens on.
    :param settings: connection extras that differ from ``MATRIX_SETTINGS``.
    """

    arm: Callable[[Any], None]
    call: str
    raises: type[Exception] | None
    message: str | None
    statuses: tuple[int, ...]
    mutations: int
    waits_at_least: float = 0.0
    closed_port: bool = False
    settings: dict[str, float] = field(default_factory=dict)


def _burst(*statuses: int, method: str) -> Callable[[Any], None]:
    def arm(faults) -> None:
        for status in statuses:
            faults.fail_next(1, status=status, method=method)

    return arm


REST_FAULTS = [
    pytest.param(
        RestFault(
            lambda faults: faults.fail_next(1, status=429, retry_after=1, method="PATCH"),
            "scale",
            None,
            None,
            (429, 200),
            1,
            waits_at_least=0.9,
        ),
        id="429-retry-after-seconds-scale-waits-and-applies-once",
    ),
    pytest.param(
        RestFault(
            lambda faults: faults.fail_next(
                1, status=429, retry_after=http_date(2), method="PATCH"
            ),
            "scale",
            None,
            None,
            (429, 200),
            1,
            waits_at_least=0.8,
        ),
        id="429-retry-after-http-date-scale-waits-and-applies-once",
    ),
    pytest.param(
        RestFault(
            _burst(500, 502, 503, 504, method="PATCH"),
            "scale",
            None,
            None,
            (500, 502, 503, 504, 200),
            1,
        ),
        id="5xx-burst-scale-retried-one-change",
    ),
    pytest.param(
        RestFault(
            _burst(500, 502, 503, 504, method="GET"),
            "view-async",
            None,
            None,
            (500, 502, 503, 504, 200),
            0,
        ),
        id="5xx-burst-view-async-retried",
    ),
    pytest.param(
        RestFault(
            lambda faults: faults.fail_next(1, status=429, retry_after=0, method="PATCH"),
            "reboot",
            None,
            None,
            (429, 200),
            1,
        ),
        id="429-reboot-resent-service-did-not-act",
    ),
    pytest.param(
        RestFault(_burst(503, method="PATCH"), "reboot", None, None, (503, 200), 1),
        id="503-reboot-resent-service-did-not-act",
    ),
    *(
        pytest.param(
            RestFault(
                _burst(status, method="PATCH"),
                "reboot",
                VaporOutcomeUnknownError,
                f"answered {status}.*may have carried it out",
                (status,),
                0,
            ),
            id=f"{status}-reboot-not-resent",
        )
        for status in (500, 502, 504)
    ),
    pytest.param(
        RestFault(
            lambda faults: faults.hang_next(1, method="GET"),
            "view",
            None,
            None,
            (0, 200),
            0,
            waits_at_least=0.45,
            settings=SHORT_READ,
        ),
        id="never-answered-view-read-timeout-retried",
    ),
    pytest.param(
        RestFault(
            lambda faults: faults.hang_next(1, method="GET"),
            "view-async",
            None,
            None,
            (0, 200),
            0,
            waits_at_least=0.45,
            settings=SHORT_READ,
        ),
        id="never-answered-view-async-read-timeout-retried",
    ),
    pytest.param(
        RestFault(
            lambda faults: faults.hang_next(1, method="PATCH"),
            "scale",
            None,
            None,
            (0, 200),
            1,
            waits_at_least=0.45,
            settings=SHORT_READ,
        ),
        id="never-answered-scale-resent-same-target",
    ),
    pytest.param(
        RestFault(
            lambda faults: faults.hang_next(1, method="PATCH"),
            "reboot",
            VaporOutcomeUnknownError,
            r"no answer within 0\.5 s after the request was sent",
            (0,),
            0,
            waits_at_least=0.45,
            settings=SHORT_READ,
        ),
        id="never-answered-reboot-not-resent",
    ),
    *(
        pytest.param(
            RestFault(
                lambda faults: None,
                call,
                VaporUnavailableError,
                rf"connection to http://127\.0\.0\.1:\d+ failed .*after {ATTEMPTS} attempts",
                (),
                0,
                closed_port=True,
            ),
            id=f"connection-refused-{call}-retried-then-unavailable",
        )
        for call in ("view", "view-async", "reboot")
    ),
    pytest.param(
        RestFault(
            lambda faults: faults.malformed_next(1, "json", method="GET"),
            "view",
            VaporProtocolError,
            "answered 200 with a body that is not JSON",
            (200,),
            0,
        ),
        id="malformed-json-200-view-protocol-error",
    ),
    pytest.param(
        RestFault(
            lambda faults: faults.malformed_next(1, "json", method="PATCH", apply=True),
            "scale",
            VaporProtocolError,
            "answered 200 with a body that is not JSON",
            (200,),
            1,
        ),
        id="malformed-json-200-scale-applied-not-resent",
    ),
    pytest.param(
        RestFault(
            lambda faults: faults.malformed_next(1, "html", method="PATCH"),
            "scale",
            None,
            None,
            (502, 200),
            1,
        ),
        id="html-502-page-scale-retried-one-change",
    ),
    pytest.param(
        RestFault(
            lambda faults: faults.malformed_next(1, "html", method="PATCH"),
            "reboot",
            VaporOutcomeUnknownError,
            "answered 502 .*502 Bad Gateway",
            (502,),
            0,
        ),
        id="html-502-page-reboot-not-resent-one-line-error",
    ),
    pytest.param(
        RestFault(
            lambda faults: faults.malformed_next(ATTEMPTS, "large", method="GET"),
            "view",
            VaporUnavailableError,
            rf"answered 500: x{{10}}.*\(\d{{7}} characters\).*gave up after {ATTEMPTS} attempts",
            (500,) * ATTEMPTS,
            0,
        ),
        id="5mb-500-view-retried-error-truncated",
    ),
    pytest.param(
        RestFault(
            lambda faults: faults.malformed_next(1, "large", method="PATCH"),
            "reboot",
            VaporOutcomeUnknownError,
            r"answered 500 \(x{10}.*\(\d{7} characters\)",
            (500,),
            0,
        ),
        id="5mb-500-reboot-not-resent-error-truncated",
    ),
]

CALL_DESCRIPTIONS = {
    "scale": "scale web in my-app/production",
    "reboot": "reboot web in my-app/production",
    "view": "view web in my-app/production",
    "view-async": "view web in my-app/production",
}


def call_the_service(call: str, conn_id: str) -> tuple[Any, list[Any]]:
    """Make one call through the hook; return its result or error, and pending asyncio tasks."""
    hook = VaporHook(conn_id)
    if call == "view-async":

        async def view() -> Any:
            try:
                return await hook.aget_replica(APP, ENV, WEB)
            except Exception as error:
                return error
            finally:
                await hook.aclose()

        return run_in_new_loop(view, limit=60)
    try:
        if call == "scale":
            return hook.scale_replica(APP, ENV, WEB, 3), []
        if call == "reboot":
            return hook.reboot_replica(APP, ENV, WEB), []
        return hook.get_replica(APP, ENV, WEB), []
    except Exception as error:
        return error, []


@pytest.mark.parametrize("fault", REST_FAULTS)
def test_rest_fault(emulator, use_connection, nothing_left_behind, fault: RestFault):
    target = nowhere(emulator) if fault.closed_port else emulator
    conn_id = use_connection(MATRIX_CONNECTION, target, **{**MATRIX_SETTINGS, **fault.settings})
    fault.arm(emulator.faults)
    started = time.monotonic()

    outcome, pending = call_the_service(fault.call, conn_id)

    elapsed = time.monotonic() - started
    if fault.raises is None:
        assert not isinstance(outcome, Exception), f"{type(outcome).__name__}: {outcome}"
    else:
        assert type(outcome) is fault.raises, f"{type(outcome).__name__}: {outcome}"
        assert re.search(fault.message, str(outcome)), str(outcome)
        check_error_text(outcome, emulator, CALL_DESCRIPTIONS[fault.call])
    assert rest_statuses(emulator) == list(fault.statuses)
    assert len(emulator.mutations()) == fault.mutations
    assert fault.waits_at_least <= elapsed < longest_call(fault.settings) + SLACK_SECONDS
    assert pending == []
    nothing_left_behind()


@dataclass(frozen=True)
class ChannelFault:
    """One deployment channel fault and the trigger's single event that must follow from it.

    :param arm: arms the fault on the emulator.
    :param status: the event's status.
    :param message: a pattern the event's message must contain.
    :param judged_from: ``channel`` or ``rest``.
    :param handshakes: the least and the most channel handshakes the emulator may see.
    :param seconds: the trigger's deadline, from now.
    :param knows_replica: give the trigger the replica, so that it can judge from REST.
    :param finished_first: let the deployment end before the wait starts.
    :param channel: ``emulator``, ``closed`` (a closed port) or ``silent`` (a port that never
        answers the handshake).
    :param logged: a line that must reach the task log as deployment output.
    :param outcome: how the deployment ends.
    :param settings: connection extras that differ from ``MATRIX_SETTINGS``.
    :param token: the token the trigger's connection sends, if not the emulator's.
    :param rest_after: the statuses of the REST calls the wait made, in order.
    """

    arm: Callable[[Any], None]
    status: str
    message: str | None = None
    judged_from: str = "channel"
    handshakes: tuple[int, int] = (1, 1)
    seconds: float = 10.0
    knows_replica: bool = False
    finished_first: bool = False
    channel: str = "emulator"
    logged: str | None = None
    outcome: str = "success"
    settings: dict[str, float] = field(default_factory=dict)
    token: str | None = None
    rest_after: tuple[int, ...] = ()


def _frames(*frames: str | bytes) -> Callable[[Any], None]:
    return lambda emulator: emulator.faults.send_channel_frames(list(frames))


def _nothing(emulator) -> None:
    return None


RECONNECTS = (2, 20)
CHANNEL_FAULTS = [
    *(
        pytest.param(
            ChannelFault(
                lambda emulator, frames=frames: emulator.faults.drop_channel_after(frames),
                "success",
                handshakes=RECONNECTS,
            ),
            id=f"dropped-after-{frames}-frames-reconnects-success",
        )
        for frames in (0, 1, 3)
    ),
    pytest.param(
        ChannelFault(
            lambda emulator: emulator.faults.drop_channel_after(0, count=1000),
            "timeout",
            r"did not finish by the deadline .*last status: unknown",
            handshakes=RECONNECTS,
            seconds=1.5,
        ),
        id="dropped-before-any-status-every-time-is-timeout-not-success",
    ),
    *(
        pytest.param(
            ChannelFault(
                lambda emulator, code=code, after=after: (
                    emulator.faults.close_channel_without_status(code=code, after_frames=after)
                ),
                "success",
                handshakes=RECONNECTS,
            ),
            id=f"closed-{code}-after-{after}-frames-without-status-reconnects",
        )
        for code, after in ((1000, 0), (1000, 2), (1001, 1), (1011, 0), (1011, 3))
    ),
    *(
        pytest.param(
            ChannelFault(
                lambda emulator, code=code: emulator.faults.close_channel_without_status(
                    code=code, after_frames=0, count=1000
                ),
                "timeout",
                r"did not finish by the deadline .*last status: unknown",
                handshakes=RECONNECTS,
                seconds=1.5,
            ),
            id=f"closed-{code}-before-any-status-every-time-is-timeout-not-success",
        )
        for code in (1000, 1001, 1011)
    ),
    pytest.param(
        ChannelFault(_frames(b"\x00\x01"), "error", "binary frame of 2 bytes"),
        id="binary-frame-protocol-error",
    ),
    *(
        pytest.param(
            ChannelFault(_frames(frame), "error", f"sent status {re.escape(shown)}, which is not"),
            id=f"status-{name}-protocol-error",
        )
        for name, frame, shown in (
            ("unknown-word", '{"status": "exploded"}', "'exploded'"),
            ("upper-case", '{"status": "SUCCESS"}', "'SUCCESS'"),
            ("null", '{"status": null}', "None"),
            ("list", '{"status": ["success"]}', "['success']"),
            ("object", '{"status": {"state": "success"}}', "{'state': 'success'}"),
            ("number", '{"status": 1}', "1"),
        )
    ),
    *(
        pytest.param(
            ChannelFault(_frames(frame), "success", logged=frame),
            id=f"{name}-is-log-output",
        )
        for name, frame in (
            ("json-array", '["status", "success"]'),
            ("json-string", '"success"'),
            ("json-number", "42"),
            ("truncated-json", '{"status": "succ'),
            ("object-without-status", '{"state": "failed"}'),
        )
    ),
    pytest.param(
        ChannelFault(_frames("x" * (2 << 20)), "success", handshakes=RECONNECTS),
        id="frame-over-1mib-closes-and-reconnects",
    ),
    pytest.param(
        ChannelFault(
            lambda emulator: emulator.faults.channel_not_found(),
            "success",
            judged_from="rest",
            knows_replica=True,
            finished_first=True,
            rest_after=(200, 200),
        ),
        id="404-expired-after-success-judged-from-rest",
    ),
    pytest.param(
        ChannelFault(
            lambda emulator: emulator.faults.channel_not_found(count=NOT_FOUND_CONFIRMATIONS),
            "failed",
            "the replica has 1 replicas, not 3",
            judged_from="rest",
            knows_replica=True,
            finished_first=True,
            outcome="failed",
            rest_after=(200, 200) * NOT_FOUND_CONFIRMATIONS,
            handshakes=(NOT_FOUND_CONFIRMATIONS, NOT_FOUND_CONFIRMATIONS),
        ),
        id="404-expired-after-failure-judged-from-rest-once-confirmed",
    ),
    pytest.param(
        ChannelFault(
            lambda emulator: emulator.faults.channel_not_found(),
            "error",
            r"does not exist \(404\): the deployment is unknown or has expired",
        ),
        id="404-unknown-without-replica-is-error",
    ),
    pytest.param(
        ChannelFault(
            lambda emulator: (
                emulator.faults.channel_not_found(),
                emulator.faults.fail_next(ATTEMPTS, status=503, method="GET"),
            ),
            "error",
            f"view web in my-app/production: .*answered 503.*gave up after {ATTEMPTS} attempts",
            knows_replica=True,
            rest_after=(503,) * ATTEMPTS,
        ),
        id="404-with-replica-but-rest-unavailable-is-error",
    ),
    pytest.param(
        ChannelFault(
            _nothing,
            "error",
            r"refused the token \(401\); check the password of connection 'vapor_matrix_trigger'",
            token="not-the-emulator-token",
            knows_replica=True,
        ),
        id="wrong-token-on-handshake-is-error-without-reconnecting",
    ),
    pytest.param(
        ChannelFault(
            _nothing,
            "timeout",
            r"did not finish by the deadline .*last status: unknown",
            handshakes=(0, 0),
            seconds=1.5,
            channel="closed",
        ),
        id="channel-port-closed-retried-until-deadline",
    ),
    pytest.param(
        ChannelFault(
            _nothing,
            "timeout",
            r"did not finish by the deadline .*last status: unknown",
            handshakes=(0, 0),
            seconds=1.5,
            channel="silent",
            settings=SHORT_CONNECT,
        ),
        id="handshake-never-answered-retried-until-deadline",
    ),
]


def start_scale(conn_id: str, replicas: int = 3) -> tuple[int, str]:
    """Start a scale through the hook; return its deployment and channel URL."""
    hook = VaporHook(conn_id)
    response = hook.scale_replica(APP, ENV, WEB, replicas)
    hook.session.close()
    return response["deployment"]["id"], hook.deployment_channel_url(response)


def wait_in_trigger(trigger: VaporDeploymentTrigger, limit: float) -> tuple[list[dict], list]:
    """Run the trigger to its end in a new event loop; its events and the tasks it left."""

    async def events() -> list[dict]:
        return [event.payload async for event in trigger.run()]

    return run_in_new_loop(events, limit)


@pytest.mark.parametrize("fault", CHANNEL_FAULTS)
def test_channel_fault(
    emulator, use_connection, nothing_left_behind, all_logs, silent_listener, fault
):
    conn_id = use_connection(MATRIX_CONNECTION, emulator, **{**MATRIX_SETTINGS, **fault.settings})
    emulator.faults.deployment_outcome(fault.outcome)
    deployment_id, url = start_scale(conn_id)
    if fault.finished_first:
        emulator.wait_for_deployment(deployment_id)
    if fault.channel == "closed":
        url = f"ws://127.0.0.1:{closed_port()}/v2/activity/channel/{deployment_id}"
    if fault.channel == "silent":
        url = f"ws://127.0.0.1:{silent_listener}/v2/activity/channel/{deployment_id}"
    if fault.token is not None:
        conn_id = use_connection(
            "vapor_matrix_trigger", emulator, fault.token, **{**MATRIX_SETTINGS, **fault.settings}
        )
    fault.arm(emulator)
    replica = {"application": APP, "environment": ENV, "replica": WEB, "replicas": 3}
    trigger = VaporDeploymentTrigger(
        deployment_id=deployment_id,
        channel_url=url,
        deadline=time.time() + fault.seconds,
        vapor_conn_id=conn_id,
        max_reconnect_wait=0.2,
        **(replica if fault.knows_replica else {}),
    )
    started = time.monotonic()

    events, pending = wait_in_trigger(trigger, limit=fault.seconds + SLACK_SECONDS)

    elapsed = time.monotonic() - started
    [event] = events
    assert event["status"] == fault.status, event
    assert event["judged_from"] == fault.judged_from
    assert event["deployment_id"] == deployment_id
    if fault.message is None:
        assert event["message"] is None
    else:
        assert re.search(fault.message, event["message"]), event["message"]
        assert len(event["message"]) < LONGEST_ERROR_TEXT
    assert json.loads(json.dumps(event)) == event
    least, most = fault.handshakes
    assert least <= len(emulator.channel_requests) <= most
    assert rest_statuses(emulator) == [200, *fault.rest_after]
    assert len(emulator.mutations()) == 1
    if fault.status == "timeout":
        assert fault.seconds - 0.2 <= elapsed
    assert elapsed < fault.seconds + SLACK_SECONDS
    assert pending == []
    logs = all_logs()
    if fault.logged is not None:
        assert fault.logged in logs
    assert emulator.token not in logs + json.dumps(event)
    nothing_left_behind(client_port=emulator.port)


def issue_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1; return CA, certificate, key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {
        "not_valid_before": now - datetime.timedelta(minutes=5),
        "not_valid_after": now + datetime.timedelta(days=1),
    }
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Vapor test CA")])
    ca = (
        x509.CertificateBuilder(
            subject_name=ca_name,
            issuer_name=ca_name,
            public_key=ca_key.public_key(),
            serial_number=x509.random_serial_number(),
            **valid,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder(
            subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]),
            issuer_name=ca_name,
            public_key=server_key.public_key(),
            serial_number=x509.random_serial_number(),
            **valid,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_emulator(tmp_path, monkeypatch) -> Iterator[tuple[VaporEmulator, Path]]:
    """An emulator serving HTTPS and WSS with a certificate from a CA of its own, on a worker
    whose environment points requests at the public CA bundle; yields it and the CA file."""
    import certifi

    ca, certificate, key = issue_certificates(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    with VaporEmulator(
        step_seconds=0.05, ssl_certfile=str(certificate), ssl_keyfile=str(key)
    ) as emulator:
        yield emulator, ca


def view_from_event_loop(conn_id: str) -> tuple[Any, list[Any]]:
    return call_the_service("view-async", conn_id)


def test_self_signed_tls_is_refused_by_default_on_rest_and_channel_naming_the_settings(
    tls_emulator, use_connection, all_logs
):
    emulator, ca = tls_emulator
    check_leftovers = leftover_check(emulator)
    trusted = use_connection("vapor_tls_trusted", emulator, ca_bundle=str(ca), **MATRIX_SETTINGS)
    deployment_id, url = start_scale(trusted)
    conn_id = use_connection("vapor_tls_default", emulator, **MATRIX_SETTINGS)
    trigger = VaporDeploymentTrigger(
        deployment_id=deployment_id,
        channel_url=url,
        deadline=time.time() + 10,
        vapor_conn_id=conn_id,
    )
    started = time.monotonic()

    scale_error, _ = call_the_service("scale", conn_id)
    view_error, pending_after_view = view_from_event_loop(conn_id)
    events, pending_after_wait = wait_in_trigger(trigger, limit=10)

    elapsed = time.monotonic() - started
    assert url.startswith("wss://")
    for error, call in ((scale_error, "scale"), (view_error, "view-async")):
        assert type(error) is VaporApiError, f"{type(error).__name__}: {error}"
        assert re.search("TLS verification of https://127.0.0.1:.* failed", str(error))
        assert "ca_bundle" in str(error) and "verify_ssl" in str(error)
        assert "'vapor_tls_default'" in str(error)
        check_error_text(error, emulator, CALL_DESCRIPTIONS[call])
    [event] = events
    assert event["status"] == "error"
    assert "TLS verification of the deployment channel" in event["message"]
    assert "ca_bundle" in event["message"] and "verify_ssl" in event["message"]
    assert [request.status for request in emulator.channel_requests] == []
    assert len(emulator.mutations()) == 1
    assert "retry 1 of" not in all_logs()
    assert elapsed < 3
    assert pending_after_view == pending_after_wait == []
    check_leftovers(client_port=emulator.port)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize(
    "extra",
    [{"ca_bundle": "CA"}, {"verify_ssl": False}, {"verify_ssl": "false"}],
    ids=["ca-bundle-extra", "verify-ssl-false", "verify-ssl-false-as-text"],
)
def test_self_signed_tls_is_accepted_on_rest_and_channel_as_the_connection_says(
    tls_emulator, use_connection, extra
):
    emulator, ca = tls_emulator
    check_leftovers = leftover_check(emulator)
    extra = {name: str(ca) if value == "CA" else value for name, value in extra.items()}
    conn_id = use_connection("vapor_tls", emulator, **extra, **MATRIX_SETTINGS)

    deployment_id, url = start_scale(conn_id)
    replica, pending_after_view = view_from_event_loop(conn_id)
    events, pending_after_wait = wait_in_trigger(
        VaporDeploymentTrigger(
            deployment_id=deployment_id,
            channel_url=url,
            deadline=time.time() + 10,
            vapor_conn_id=conn_id,
        ),
        limit=15,
    )

    assert url.startswith("wss://")
    assert replica["name"] == WEB
    assert [event["status"] for event in events] == ["success"]
    assert [request.status for request in emulator.channel_requests] == [101]
    assert len(emulator.mutations()) == 1
    assert emulator.replica(APP, ENV, WEB)["replicas"] == 3
    assert pending_after_view == pending_after_wait == []
    check_leftovers(client_port=emulator.port)


def new_triggerer() -> Any:
    from airflow.jobs.triggerer_job_runner import TriggerRunner

    return TriggerRunner()


def run_in_triggerer(runner: Any, trigger_id: int, trigger: VaporDeploymentTrigger):
    """Start the trigger the way the triggerer does; return the asyncio task running it."""
    runner.triggers[trigger_id] = {
        "task": None,
        "is_watcher": False,
        "name": f"ID {trigger_id}",
        "events": 0,
    }
    task = asyncio.create_task(runner.run_trigger(trigger_id, trigger))
    runner.triggers[trigger_id]["task"] = task
    return task


def rebuilt_by_a_new_triggerer(trigger: VaporDeploymentTrigger) -> VaporDeploymentTrigger:
    """The trigger as another triggerer builds it from the database: encrypted, then decoded."""
    from airflow.models.trigger import Trigger
    from airflow.serialization.decoders import smart_decode_trigger_kwargs

    classpath, kwargs = trigger.serialize()
    stored = Trigger.encrypt_kwargs(kwargs)
    loaded = {k: smart_decode_trigger_kwargs(v) for k, v in Trigger._decrypt_kwargs(stored).items()}
    module, name = classpath.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**loaded)


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def test_triggerer_restarted_mid_wait_keeps_the_deadline_and_yields_one_event(
    emulator, matrix_connection, nothing_left_behind
):
    emulator.hold()
    deployment_id, url = start_scale(matrix_connection)
    deadline = time.time() + 20
    trigger = VaporDeploymentTrigger(
        deployment_id=deployment_id,
        channel_url=url,
        deadline=deadline,
        vapor_conn_id=matrix_connection,
        application=APP,
        environment=ENV,
        replica=WEB,
        replicas=3,
        max_reconnect_wait=0.2,
    )

    async def first_triggerer_dies() -> list:
        runner = new_triggerer()
        task = run_in_triggerer(runner, 1, trigger)
        await until(lambda: emulator.open_channels() == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return list(runner.events)

    events_before_restart, pending_after_first = run_in_new_loop(first_triggerer_dies, 10)
    rebuilt = rebuilt_by_a_new_triggerer(trigger)
    assert eventually(lambda: emulator.open_channels() == 0)
    emulator.hold(False)

    async def second_triggerer_finishes() -> list:
        runner = new_triggerer()
        await run_in_triggerer(runner, 1, rebuilt)
        return [entry.event.payload for entry in runner.events]

    events_after_restart, pending_after_second = run_in_new_loop(second_triggerer_finishes, 20)

    assert events_before_restart == []
    assert rebuilt.deadline == deadline
    assert rebuilt.serialize() == trigger.serialize()
    [event] = events_after_restart
    assert event["status"] == "success"
    assert event["judged_from"] == "channel"
    assert [request.status for request in emulator.channel_requests] == [101, 101]
    assert len(emulator.mutations()) == 1
    assert pending_after_first == pending_after_second == []
    nothing_left_behind(client_port=emulator.port)


def test_task_cleared_while_deferred_closes_the_channel_at_once_and_changes_nothing(
    emulator, matrix_connection, nothing_left_behind
):
    emulator.faults.never_finish()
    deployment_id, url = start_scale(matrix_connection)
    trigger = VaporDeploymentTrigger(
        deployment_id=deployment_id,
        channel_url=url,
        deadline=time.time() + 60,
        vapor_conn_id=matrix_connection,
        application=APP,
        environment=ENV,
        replica=WEB,
        replicas=3,
    )

    async def clear_while_deferred() -> tuple[float, list]:
        runner = new_triggerer()
        task = run_in_triggerer(runner, 7, trigger)
        await until(lambda: emulator.open_channels() == 1)
        await until(lambda: emulator.deployment(deployment_id).status == "running")
        started = time.monotonic()
        runner.to_cancel.append(7)
        await runner.cancel_triggers()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: emulator.open_channels() == 0)
        return time.monotonic() - started, list(runner.events)

    requests_before = len(emulator.requests)
    (closed_after, events), pending = run_in_new_loop(clear_while_deferred, 10)

    assert events == []
    assert closed_after < 1.0
    assert len(emulator.requests) == requests_before + 1
    assert emulator.requests[-1].websocket
    assert len(emulator.mutations()) == 1
    assert emulator.deployment(deployment_id).status == "running"
    assert pending == []
    nothing_left_behind(client_port=emulator.port)


LINE_BREAK_TOKEN = "abc\r\nX-Evil: 1"


def test_token_with_a_line_break_ends_the_trigger_before_the_channel_is_opened(
    emulator, matrix_connection, use_connection, nothing_left_behind
):
    deployment_id, url = start_scale(matrix_connection)
    conn_id = use_connection("vapor_line_break", emulator, token=LINE_BREAK_TOKEN)
    trigger = VaporDeploymentTrigger(
        deployment_id=deployment_id,
        channel_url=url,
        deadline=time.time() + 10,
        vapor_conn_id=conn_id,
    )

    events, pending = wait_in_trigger(trigger, limit=10)

    [event] = events
    assert event["status"] == "error"
    assert "the token of connection 'vapor_line_break' contains line breaks" in event["message"]
    assert "X-Evil" not in json.dumps(event)
    assert emulator.channel_requests == []
    assert len(emulator.mutations()) == 1
    assert pending == []
    nothing_left_behind(client_port=emulator.port)


def one_dag(*operators_of: Callable[[], Any], **params: Any) -> DAG:
    with DAG(
        f"vapor_matrix_{next(_dag_ids)}",
        schedule=None,
        start_date=datetime.datetime(2026, 1, 1),
        params=params,
    ) as dag:
        for make in operators_of:
            make()
    return dag


TARGET = {"application": APP, "environment": ENV, "replica": WEB, "timeout": 20}
BAD_RENDERED_VALUES = {
    "line_break": "my-app\r\nX-Evil: 1",
    "traversal": "production/../staging",
    "dots": "..",
    "dot_slash": "./web",
}
REFUSALS = {
    "application_line_break": (
        lambda: VaporScaleReplicaOperator(
            task_id="application_line_break",
            replicas=2,
            **{**TARGET, "application": "{{ params.line_break }}"},
        ),
        "application must not contain line breaks or NUL characters, got 'my-app\\r\\nX-Evil: 1'",
    ),
    "environment_traversal": (
        lambda: VaporResizeReplicaOperator(
            task_id="environment_traversal",
            plan="tiny",
            **{**TARGET, "environment": "{{ params.traversal }}"},
        ),
        "environment must be a single name without '/' and not '.' or '..', "
        "got 'production/../staging'",
    ),
    "replica_dots": (
        lambda: VaporRebootReplicaOperator(
            task_id="replica_dots", **{**TARGET, "replica": "{{ params.dots }}"}
        ),
        "replica must not be '..'",
    ),
    "replica_dot_slash": (
        lambda: VaporRebootReplicaOperator(
            task_id="replica_dot_slash", **{**TARGET, "replica": "{{ params.dot_slash }}"}
        ),
        "replica must be a single name without '/' and not '.' or '..', got './web'",
    ),
    "plan_line_break": (
        lambda: VaporResizeReplicaOperator(
            task_id="plan_line_break", plan="{{ params.line_break }}", **TARGET
        ),
        "plan must not contain line breaks or NUL characters",
    ),
    "deployment_traversal": (
        lambda: VaporDeploymentSensor(
            task_id="deployment_traversal",
            deployment_id="{{ params.traversal }}",
            timeout=5,
        ),
        "deployment_id must not contain '/', got 'production/../staging'",
    ),
    "deployment_line_break": (
        lambda: VaporDeploymentSensor(
            task_id="deployment_line_break",
            deployment_id="{{ params.line_break }}",
            timeout=5,
            deferrable=True,
        ),
        "deployment_id must not contain line breaks or NUL characters",
    ),
    "token_line_break_worker": (
        lambda: VaporScaleReplicaOperator(
            task_id="token_line_break_worker",
            replicas=2,
            vapor_conn_id="vapor_line_break",
            **TARGET,
        ),
        "the token of connection 'vapor_line_break' contains line breaks",
    ),
    "token_line_break_deferred": (
        lambda: VaporRebootReplicaOperator(
            task_id="token_line_break_deferred",
            vapor_conn_id="vapor_line_break",
            deferrable=True,
            **TARGET,
        ),
        "the token of connection 'vapor_line_break' contains line breaks",
    ),
}


def test_line_breaks_and_path_steps_fail_each_task_naming_the_field_before_any_request(
    emulator, use_connection, run_dag, capfd
):
    use_connection("vapor_line_break", emulator, token=LINE_BREAK_TOKEN)
    dag = one_dag(*(make for make, _ in REFUSALS.values()), **BAD_RENDERED_VALUES)

    outcomes = run_dag(dag)

    output = capfd.readouterr()
    text = output.out + output.err
    assert {task: outcome.state for task, outcome in outcomes.items()} == dict.fromkeys(
        REFUSALS, "failed"
    )
    for task_id, (_, message) in REFUSALS.items():
        assert message in text, task_id
    assert "\nX-Evil" not in text
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("application", "../admin"),
        ("environment", "production/../staging"),
        ("replica", ".."),
        ("replica", "web/."),
        ("replica", "./web"),
        ("plan", "../free"),
    ],
)
def test_path_steps_in_literal_values_are_refused_when_the_dag_is_parsed(field, value):
    operator_class = VaporResizeReplicaOperator if field == "plan" else VaporScaleReplicaOperator
    arguments = {"task_id": "t", **TARGET, "plan": "tiny", "replicas": 2, field: value}
    if operator_class is VaporResizeReplicaOperator:
        del arguments["replicas"]
    else:
        del arguments["plan"]

    with pytest.raises(VaporConfigurationError, match=f"^{field} must") as refused:
        operator_class(**arguments)

    assert repr(value) in str(refused.value)


@pytest.mark.parametrize(
    ("field", "value", "raw"),
    [
        ("replica", "../../shop/production/web", "..%2F..%2Fshop%2Fproduction%2Fweb"),
        ("environment", "..%2fstaging", "..%252fstaging"),
        ("application", "..\\admin", "..%5Cadmin"),
        ("replica", "web;replicas=9", "web%3Breplicas%3D9"),
    ],
)
def test_a_change_sends_each_identifier_as_one_encoded_segment(
    emulator, nothing_left_behind, field, value, raw
):
    names = {"application": APP, "environment": ENV, "replica": WEB, field: value}

    with pytest.raises(VaporNotFoundError, match=re.escape(value)):
        VaporHook().scale_replica(names["application"], names["environment"], names["replica"], 5)

    [request] = emulator.requests
    assert raw in request.raw_path
    assert request.raw_path.endswith("/scale")
    assert request.segments[3:6] == (names["application"], names["environment"], names["replica"])
    assert emulator.mutations() == []
    assert emulator.replica("shop", "production", "web")["replicas"] == 2
    nothing_left_behind()


def test_pod_name_with_path_steps_is_one_encoded_segment(emulator):
    with pytest.raises(VaporNotFoundError):
        VaporHook().get_pod_logs(APP, ENV, WEB, "../../worker")

    [request] = emulator.requests
    assert request.raw_path == "/v2/apps/replicas/my-app/production/web/..%2F..%2Fworker/logs"


def test_token_scan_names_where_a_planted_token_appears_without_showing_it(token_scan):
    scan = type(token_scan)()
    planted = "planted-token-5f2c9e"
    scan.remember(planted)
    scan.remember("short")

    hits = scan.hits_in(f"Authorization: Bearer {planted}\nshort", "captured log call")

    assert hits == ["captured log call: a 20-character token at character 22"]
    assert scan.redact(f"x {planted} y") == "x *** y"


def test_token_scan_finds_a_token_in_an_xcom_of_a_metadata_database(token_scan, tmp_path):
    scan = type(token_scan)()
    planted = "planted-token-5f2c9e"
    scan.remember(planted)
    database = tmp_path / "airflow.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE xcom (value JSON)")
        connection.execute("INSERT INTO xcom VALUES (?)", (json.dumps({"echo": planted}),))
    connection.close()

    first = scan.database_hits(database, decrypt=lambda text: text)
    again = scan.database_hits(database, decrypt=lambda text: text)

    assert first == [f"xcom.value of row 1 in {database}: a 20-character token at character 10"]
    assert again == []


def test_a_test_that_logs_a_token_fails_saying_where_without_printing_it(pytester):
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makepyfile(
        """
        import logging

        def test_leaks(vapor_emulator):
            logging.getLogger("leak").warning("token %s", vapor_emulator.token)

        def test_keeps_it(vapor_emulator):
            logging.getLogger("clean").warning("nothing secret here")
        """
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1, failed=1)
    output = result.stdout.str()
    assert "A Vapor Cloud token appeared in what this test produced" in output
    assert "captured log call: a 14-character token" in output
    assert "emulator-token" not in output


@dataclass(frozen=True)
class PokeFault:
    """A channel fault met by a sensor poking in a worker, and how the sensor task ends.

    :param arm: arms the fault on the emulator once the deployment has started.
    :param state: the sensor task's final state.
    :param message: text the task's log must contain.
    """

    arm: Callable[[Any], None]
    state: str
    message: str | None = None


POKE_FAULTS = [
    pytest.param(
        PokeFault(lambda faults: faults.close_channel_without_status(code=1011), "success"),
        id="closed-1011-before-status-once-poke-reconnects",
    ),
    pytest.param(
        PokeFault(lambda faults: faults.drop_channel_after(0), "success"),
        id="dropped-before-status-once-poke-reconnects",
    ),
    pytest.param(
        PokeFault(
            lambda faults: faults.close_channel_without_status(code=1001, count=1000),
            "failed",
            "could not read the status of deployment 239 from its channel",
        ),
        id="closed-1001-before-status-every-time-fails-naming-the-deployment",
    ),
    pytest.param(
        PokeFault(lambda faults: faults.send_channel_frames([b"\x00"]), "failed", "binary frame"),
        id="binary-frame-fails-the-poke",
    ),
]


@pytest.mark.parametrize("fault", POKE_FAULTS)
def test_channel_fault_during_a_sensor_poke(emulator, run_dag, capfd, nothing_left_behind, fault):
    deployment_id = VaporHook().scale_replica(APP, ENV, WEB, 3)["deployment"]["id"]
    fault.arm(emulator.faults)
    dag = one_dag(
        lambda: VaporDeploymentSensor(
            task_id="sense", deployment_id=deployment_id, poke_interval=0.2, timeout=20
        )
    )
    started = time.monotonic()

    outcome = run_dag(dag)["sense"]

    elapsed = time.monotonic() - started
    output = capfd.readouterr()
    assert outcome.state == fault.state
    if fault.message is not None:
        assert fault.message in output.out + output.err
    assert len(emulator.mutations()) == 1
    assert elapsed < 20
    nothing_left_behind()
