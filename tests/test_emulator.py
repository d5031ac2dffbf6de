"""The Vapor Cloud emulator, exercised over real HTTP and websocket connections on loopback."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from airflow_provider_vapor.emulator import VaporEmulator
from airflow_provider_vapor.emulator import pytest_plugin as vapor_pytest_plugin
from airflow_provider_vapor.protocol import channel_url

pytest_plugins = ["pytester"]

TOKEN = "emulator-token"
STEP = 0.02
WEB = "/v2/apps/replicas/my-app/production/web"
# The test's own channel client; at DEBUG, websockets would log its Authorization header.
RAW_CLIENT_LOG = logging.getLogger("tests.raw_channel_client")
RAW_CLIENT_LOG.setLevel(logging.INFO)


@pytest.fixture
def emulator() -> Iterator[VaporEmulator]:
    with VaporEmulator(token=TOKEN, step_seconds=STEP) as running:
        yield running


@pytest.fixture
def api(emulator: VaporEmulator) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        yield session


def scale(api: requests.Session, emulator: VaporEmulator, replicas: int) -> int:
    response = api.patch(f"{emulator.url}{WEB}/scale", json={"replicas": replicas}, timeout=5)
    response.raise_for_status()
    return response.json()["deployment"]["id"]


def follow(
    emulator: VaporEmulator, deployment_id: int, token: str = TOKEN
) -> tuple[list[str | bytes], ConnectionClosed]:
    """Read a deployment's channel to its end: every frame, and how the connection closed."""
    frames: list[str | bytes] = []
    url = channel_url(emulator.url, deployment_id)
    headers = {"Authorization": f"Bearer {token}"}
    with connect(url, additional_headers=headers, logger=RAW_CLIENT_LOG) as channel:
        try:
            while True:
                frames.append(channel.recv(timeout=5))
        except ConnectionClosed as closed:
            return frames, closed


def refusal(emulator: VaporEmulator, deployment_id: int | str, token: str | None = TOKEN) -> int:
    """The HTTP status a channel handshake is refused with."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(
            channel_url(emulator.url, deployment_id),
            additional_headers=headers,
            logger=RAW_CLIENT_LOG,
        ),
    ):
        pass
    return refused.value.response.status_code


def statuses(frames: list[str | bytes]) -> list[str]:
    return [json.loads(frame)["status"] for frame in frames if str(frame).startswith("{")]


def test_replica_view_has_the_seed_shape_with_plan_and_region(api, emulator):
    response = api.get(f"{emulator.url}{WEB}", timeout=5)

    assert response.status_code == 200
    assert response.json() == {
        "status": "created",
        "name": "web",
        "replicas": 1,
        "environmentID": "8D0F0E6A-583F-4CAA-9FAC-91AADDC828CD",
        "version": "7815792",
        "id": 19,
        "plan": {
            "productID": 2,
            "slug": "small",
            "id": 5,
            "description": "",
            "details": {"memory": 256},
            "price": "0",
            "name": "Dev - Small",
        },
        "region": {
            "id": 1,
            "description": "Digital Ocean - New York City",
            "country": "United States",
            "providerRegion": "nyc1",
            "provider": "Digital Ocean",
            "name": "do-nyc1",
        },
    }


def test_seed_holds_fleet_replicas_and_the_plan_catalog(emulator):
    replicas = emulator.state.replicas()

    assert {
        ("my-app", "production", "web"),
        ("my-app", "production", "worker"),
        ("my-app", "staging", "web"),
        ("shop", "production", "web"),
        ("billing", "production", "web"),
        ("search", "production", "web"),
    } <= set(replicas)
    assert list(emulator.state.plans) == ["free", "dev-free", "tiny", "small", "medium", "large"]
    assert emulator.state.plans["medium"]["details"]["memory"] == 512


def test_scale_answers_with_the_replica_and_a_waiting_deployment_as_in_the_seed(api, emulator):
    response = api.patch(f"{emulator.url}{WEB}/scale", json={"replicas": 3}, timeout=5)

    assert response.status_code == 200
    assert response.json() == {
        "replica": {
            "status": "created",
            "name": "web",
            "replicas": 1,
            "environmentID": "8D0F0E6A-583F-4CAA-9FAC-91AADDC828CD",
            "version": "7815792",
            "id": 19,
        },
        "deployment": {
            "status": "waiting",
            "environmentID": "8D0F0E6A-583F-4CAA-9FAC-91AADDC828CD",
            "meta": {"id": "19", "gitHash": "", "action": "scale", "shortGitHash": ""},
            "regionID": "1",
            "type": "replica",
            "id": 239,
            "userID": "ACBCCDC5-BBF2-414A-BB0E-5C27C4B4ED04",
        },
    }


def test_resize_answer_shows_plan_and_region_and_deployment_ids_increase(api, emulator):
    first = scale(api, emulator, 2)

    response = api.patch(f"{emulator.url}{WEB}/resize", json={"plan": "medium"}, timeout=5)

    body = response.json()
    assert body["replica"]["plan"]["slug"] == "small"
    assert body["replica"]["region"]["name"] == "do-nyc1"
    assert body["deployment"]["meta"]["action"] == "resize"
    assert body["deployment"]["id"] == first + 1


def test_activity_shape_answers_with_an_activity_and_its_tracking_url():
    with VaporEmulator(token=TOKEN, step_seconds=STEP, response_shape="activity") as emulator:
        headers = {"Authorization": f"Bearer {TOKEN}"}

        response = requests.patch(f"{emulator.url}{WEB}/reboot", headers=headers, timeout=5)

        body = response.json()
        assert set(body) == {"replica", "activity"}
        assert body["activity"] == {
            "id": 239,
            "trackingURL": f"{emulator.url}/v2/activity/channel/239",
        }


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", TOKEN, "Basic abc"])
def test_requests_without_the_bearer_token_are_refused_with_401(emulator, authorization):
    headers = {"Authorization": authorization} if authorization else {}

    response = requests.patch(
        f"{emulator.url}{WEB}/scale", json={"replicas": 2}, headers=headers, timeout=5
    )

    assert response.status_code == 401
    assert response.json()["error"] is True
    assert response.json()["reason"]
    assert emulator.requests[-1].authorized is False
    assert emulator.mutations() == []


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("/v2/apps/replicas/nope/production/web", "application 'nope'"),
        ("/v2/apps/replicas/my-app/qa/web", "environment 'qa'"),
        ("/v2/apps/replicas/my-app/production/api/scale", "replica 'api'"),
        ("/v2/apps/replicas/my-app/production/web/abc123/logs", "pod 'abc123'"),
        ("/v2/apps/replicas/my-app/production/web/explode", "no such endpoint"),
    ],
)
def test_unknown_resources_are_answered_with_404_naming_them(api, emulator, path, named):
    response = api.request("PATCH" if path.endswith("/scale") else "GET", emulator.url + path)

    assert response.status_code == 404
    assert response.json()["error"] is True
    assert named in response.json()["reason"]


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("scale", b"{not json"),
        ("scale", b"[3]"),
        ("scale", b"{}"),
        ("scale", b'{"replicas": "3"}'),
        ("scale", b'{"replicas": -1}'),
        ("scale", b'{"replicas": true}'),
        ("scale", b'{"replicas": 1.5}'),
        ("resize", b'{"plan": 5}'),
        ("resize", b""),
    ],
)
def test_malformed_change_bodies_are_rejected_with_400_and_change_nothing(
    api, emulator, action, body
):
    headers = {"Content-Type": "application/json"}

    response = api.patch(f"{emulator.url}{WEB}/{action}", data=body, headers=headers, timeout=5)

    assert response.status_code == 400
    assert response.json()["error"] is True
    assert emulator.state.deployments() == []


def test_unknown_plan_is_rejected_with_422_listing_the_known_plans(api, emulator):
    response = api.patch(f"{emulator.url}{WEB}/resize", json={"plan": "huge"}, timeout=5)

    assert response.status_code == 422
    assert "'huge'" in response.json()["reason"]
    assert "medium" in response.json()["reason"]
    assert emulator.mutations() == []


def test_a_deployment_streams_status_and_log_frames_and_closes_with_1000(api, emulator):
    deployment_id = scale(api, emulator, 3)

    frames, closed = follow(emulator, deployment_id)

    assert statuses(frames) == ["waiting", "running", "success"]
    assert frames[0] == '{"status": "waiting"}'
    assert frames[-1] == '{"status": "success"}'
    log_frames = [frame for frame in frames if not str(frame).startswith("{")]
    assert log_frames[0] == "Scaling web in my-app/production from 1 to 3 replicas"
    assert len(log_frames[1].splitlines()) == 2
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1000


def test_the_replica_changes_only_when_its_deployment_succeeds(api, emulator):
    emulator.hold()
    deployment_id = scale(api, emulator, 3)
    while emulator.deployment(deployment_id).status != "running":
        time.sleep(STEP)

    during = api.get(f"{emulator.url}{WEB}", timeout=5).json()
    emulator.hold(False)
    final = emulator.wait_for_deployment(deployment_id)
    after = api.get(f"{emulator.url}{WEB}", timeout=5).json()

    assert during["replicas"] == 1
    assert during["status"] == "updating"
    assert final == "success"
    assert after["replicas"] == 3
    assert after["status"] == "created"
    assert len(api.get(f"{emulator.url}{WEB}/status", timeout=5).json()) == 3


def test_resize_changes_the_plan_and_reboot_replaces_pods_and_version(api, emulator):
    before = api.get(f"{emulator.url}{WEB}/status", timeout=5).json()

    resized = api.patch(f"{emulator.url}{WEB}/resize", json={"plan": "large"}, timeout=5).json()
    emulator.wait_for_deployment(resized["deployment"]["id"])
    after_resize = emulator.replica("my-app", "production", "web")
    rebooted = api.patch(f"{emulator.url}{WEB}/reboot", timeout=5).json()
    emulator.wait_for_deployment(rebooted["deployment"]["id"])
    after_reboot = emulator.replica("my-app", "production", "web")
    pods = api.get(f"{emulator.url}{WEB}/status", timeout=5).json()

    assert after_resize["plan"]["slug"] == "large"
    assert after_reboot["version"] != after_resize["version"] != "7815792"
    assert len(pods) == 1
    assert pods[0]["token"] != before[0]["token"]
    assert pods[0]["status"] == "Running"


def test_pod_status_lists_pods_and_logs_are_plain_text_per_pod(api, emulator):
    pods = api.get(f"{emulator.url}{WEB}/status", timeout=5).json()

    token = pods[0]["token"]
    logs = api.get(f"{emulator.url}{WEB}/{token}/logs", params={"lines": 2, "timestamps": "false"})
    stamped = api.get(f"{emulator.url}{WEB}/{token}/logs", params={"timestamps": "true"})

    assert set(pods[0]) == {"token", "status", "restartCount", "node"}
    assert pods[0]["restartCount"] == 0
    assert logs.headers["content-type"].startswith("text/plain")
    assert logs.text.splitlines() == ["Plan small: 256 MB", "Server started on http://0.0.0.0:8080"]
    assert stamped.text.splitlines()[0][:4].isdigit()


def test_a_late_channel_connects_to_the_terminal_status_and_1000_at_once(api, emulator):
    deployment_id = scale(api, emulator, 2)
    emulator.wait_for_deployment(deployment_id)

    started = time.monotonic()
    frames, closed = follow(emulator, deployment_id)

    assert frames == ['{"status": "success"}']
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1000
    assert time.monotonic() - started < STEP * 5


def test_several_clients_on_one_deployment_each_get_the_stream(api, emulator):
    emulator.hold()
    deployment_id = scale(api, emulator, 2)
    results: list[list[str | bytes]] = []
    readers = [
        threading.Thread(target=lambda: results.append(follow(emulator, deployment_id)[0]))
        for _ in range(3)
    ]

    for reader in readers:
        reader.start()
    while len(emulator.channel_requests) < 3:
        time.sleep(STEP)
    emulator.hold(False)
    for reader in readers:
        reader.join(5)

    assert len(results) == 3
    assert all(statuses(frames)[-1] == "success" for frames in results)


def test_a_failed_outcome_ends_with_its_message_and_leaves_the_replica(api, emulator):
    emulator.faults.deployment_outcome("failed", message="image pull failed")
    failing = scale(api, emulator, 4)
    succeeding = scale(api, emulator, 2)

    frames, _ = follow(emulator, failing)
    emulator.wait_for_deployment(succeeding)

    assert json.loads(frames[-1]) == {"status": "failed", "message": "image pull failed"}
    assert emulator.deployment(failing).message == "image pull failed"
    assert emulator.deployment(succeeding).status == "success"
    assert emulator.replica("my-app", "production", "web")["replicas"] == 2


def test_the_emulator_can_fail_every_deployment():
    with VaporEmulator(token=TOKEN, step_seconds=STEP, deployment_outcome="failed") as emulator:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        response = requests.patch(f"{emulator.url}{WEB}/reboot", headers=headers, timeout=5)

        status = emulator.wait_for_deployment(response.json()["deployment"]["id"])

        assert status == "failed"


def test_finish_immediately_answers_with_a_deployment_that_already_ended(api, emulator):
    emulator.faults.finish_immediately()

    body = api.patch(f"{emulator.url}{WEB}/scale", json={"replicas": 2}, timeout=5).json()

    assert body["deployment"]["status"] == "success"
    assert body["replica"]["replicas"] == 2
    assert emulator.deployment(body["deployment"]["id"]).log[-1].endswith("running 2 replicas")


def test_channel_handshakes_are_recorded_among_the_requests(api, emulator):
    deployment_id = scale(api, emulator, 2)

    follow(emulator, deployment_id)

    handshake = emulator.requests[-1]
    assert handshake.raw_path == f"/v2/activity/channel/{deployment_id}"
    assert (handshake.method, handshake.status, handshake.websocket) == ("GET", 101, True)
    assert handshake.deployment_id == deployment_id
    assert emulator.channel_requests == [handshake]
    assert emulator.mutations() == emulator.requests[:1]


def test_a_client_that_leaves_frees_its_channel_at_once(api, emulator):
    emulator.faults.never_finish()
    deployment_id = scale(api, emulator, 2)
    url = channel_url(emulator.url, deployment_id)

    headers = {"Authorization": f"Bearer {TOKEN}"}
    with connect(url, additional_headers=headers, logger=RAW_CLIENT_LOG) as channel:
        channel.recv(timeout=5)
        opened = emulator.open_channels()
    deadline = time.monotonic() + 1
    while emulator.open_channels() and time.monotonic() < deadline:
        time.sleep(0.01)

    assert opened == 1
    assert emulator.open_channels() == 0


def test_channel_handshake_without_the_token_is_refused_with_401(api, emulator):
    deployment_id = scale(api, emulator, 2)

    missing = refusal(emulator, deployment_id, token=None)
    wrong = refusal(emulator, deployment_id, token="wrong-token")

    assert (missing, wrong) == (401, 401)
    assert [request.status for request in emulator.channel_requests] == [401, 401]


@pytest.mark.parametrize("deployment_id", ["999", "abc", "..%2F239"])
def test_channel_of_an_unknown_deployment_is_refused_with_404(emulator, deployment_id):
    status = refusal(emulator, deployment_id)

    assert status == 404


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("../admin", "..%2Fadmin"),
        ("a/b c?x#1", "a%2Fb%20c%3Fx%231"),
        ("..", "%2E%2E"),
        ("café", "caf%C3%A9"),
        ("web%20", "web%2520"),
    ],
)
def test_encoded_path_segments_arrive_as_one_decoded_segment(emulator, name, encoded):
    connection = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=5)

    connection.request(
        "GET",
        f"/v2/apps/replicas/{encoded}/production/web",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    response = connection.getresponse()
    reason = json.loads(response.read())["reason"]
    connection.close()

    recorded = emulator.requests[-1]
    assert response.status == 404
    assert f"unknown application {name!r}" in reason
    assert recorded.raw_path == f"/v2/apps/replicas/{encoded}/production/web"
    assert recorded.segments == ("v2", "apps", "replicas", name, "production", "web")
    assert recorded.application == name


def test_a_replica_added_for_a_test_is_served_under_its_encoded_name(api, emulator):
    emulator.state.add_replica("a/b", "prod env", "../web", replicas=2, plan="tiny")
    path = "/".join(quote(part, safe="") for part in ("a/b", "prod env", "../web"))

    response = api.patch(
        f"{emulator.url}/v2/apps/replicas/{path}/scale", json={"replicas": 0}, timeout=5
    )

    assert response.status_code == 200
    assert emulator.wait_for_deployment(response.json()["deployment"]["id"]) == "success"
    assert emulator.replica("a/b", "prod env", "../web")["replicas"] == 0
    assert [m.replica for m in emulator.mutations(action="scale")] == ["../web"]


def test_fail_next_answers_matching_requests_with_the_status_without_applying(api, emulator):
    emulator.faults.fail_next(2, 429, retry_after=3, method="PATCH", path_suffix="/scale")

    view = api.get(f"{emulator.url}{WEB}", timeout=5)
    first = api.patch(f"{emulator.url}{WEB}/scale", json={"replicas": 2}, timeout=5)
    second = api.patch(f"{emulator.url}{WEB}/scale", json={"replicas": 2}, timeout=5)
    third = api.patch(f"{emulator.url}{WEB}/scale", json={"replicas": 2}, timeout=5)

    assert view.status_code == 200
    assert [first.status_code, second.status_code, third.status_code] == [429, 429, 200]
    assert first.headers["Retry-After"] == "3"
    assert first.json()["error"] is True
    assert [r.status for r in emulator.requests] == [200, 429, 429, 200]
    assert len(emulator.mutations(action="scale")) == 1


def test_fail_next_sends_the_given_body_content_type_and_http_date(api, emulator):
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    emulator.faults.fail_next(1, 503, retry_after=date, body="down", content_type="text/plain")

    response = api.get(f"{emulator.url}{WEB}", timeout=5)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == date
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "down"


def test_delay_with_apply_changes_the_replica_even_when_the_client_gives_up(api, emulator):
    emulator.faults.delay_next(1, 1.0, path_suffix="/reboot")

    with pytest.raises(requests.ReadTimeout):
        api.patch(f"{emulator.url}{WEB}/reboot", timeout=0.2)

    reboots = emulator.mutations(action="reboot")
    assert len(reboots) == 1
    assert emulator.wait_for_deployment(reboots[0].deployment_id) == "success"


def test_delay_without_apply_answers_late_and_applies_then(api, emulator):
    emulator.faults.delay_next(1, 0.3, path_suffix="/scale", apply=False)
    started = time.monotonic()

    response = api.patch(f"{emulator.url}{WEB}/scale", json={"replicas": 2}, timeout=5)

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3
    assert emulator.requests[-1].at - started < 0.1


def test_a_hung_request_never_answers_and_stop_still_returns_quickly():
    emulator = VaporEmulator(token=TOKEN, step_seconds=STEP).start()
    emulator.faults.hang_next(1)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    with pytest.raises(requests.ReadTimeout):
        requests.get(f"{emulator.url}{WEB}", headers=headers, timeout=0.3)
    started = time.monotonic()
    emulator.stop()

    assert time.monotonic() - started < 0.5
    assert emulator.requests[0].status == 0


@pytest.mark.parametrize(
    ("kind", "status", "content_type"),
    [("json", 200, "application/json"), ("html", 502, "text/html"), ("large", 500, None)],
)
def test_malformed_answers_are_broken_as_asked(api, emulator, kind, status, content_type):
    emulator.faults.malformed_next(1, kind)

    response = api.get(f"{emulator.url}{WEB}", timeout=5)

    assert response.status_code == status
    if content_type:
        assert response.headers["content-type"].startswith(content_type)
    if kind == "json":
        with pytest.raises(ValueError):
            response.json()
    if kind == "large":
        assert len(response.content) >= 5 * 1024 * 1024 - 100


def test_never_finish_keeps_a_deployment_running(api, emulator):
    emulator.faults.never_finish()
    deployment_id = scale(api, emulator, 2)

    with pytest.raises(TimeoutError):
        emulator.wait_for_deployment(deployment_id, timeout=STEP * 10)

    assert emulator.deployment(deployment_id).status == "running"
    assert emulator.replica("my-app", "production", "web")["replicas"] == 1


def test_held_deployments_finish_when_released(api, emulator):
    emulator.faults.hold_deployments()
    first = scale(api, emulator, 2)
    second = api.patch(f"{emulator.url}{WEB}/reboot", timeout=5).json()["deployment"]["id"]

    time.sleep(STEP * 8)
    held = [emulator.deployment(first).status, emulator.deployment(second).status]
    emulator.faults.release_deployments()

    assert held == ["running", "running"]
    assert emulator.wait_for_deployment(first) == "success"
    assert emulator.wait_for_deployment(second) == "success"


def test_a_dropped_channel_ends_without_a_close_frame(api, emulator):
    emulator.faults.drop_channel_after(2)
    deployment_id = scale(api, emulator, 2)

    frames, closed = follow(emulator, deployment_id)

    assert len(frames) == 2
    assert isinstance(closed, ConnectionClosedError)
    assert closed.rcvd is None


@pytest.mark.parametrize("code", [1000, 1001, 1011])
def test_a_channel_can_close_with_a_code_before_the_terminal_status(api, emulator, code):
    emulator.faults.close_channel_without_status(code=code, after_frames=1)
    deployment_id = scale(api, emulator, 2)

    frames, closed = follow(emulator, deployment_id)
    again, _ = follow(emulator, deployment_id)

    assert frames == ['{"status": "waiting"}']
    assert closed.rcvd is not None
    assert closed.rcvd.code == code
    assert statuses(again)[-1] == "success"


def test_injected_frames_come_first_on_the_next_connection(api, emulator):
    injected = [b"\x00\x01", "{not json", '{"status": "exploded"}']
    emulator.faults.send_channel_frames(injected)
    deployment_id = scale(api, emulator, 2)

    frames, closed = follow(emulator, deployment_id)

    assert frames[:3] == injected
    assert frames[3] == '{"status": "waiting"}'
    assert statuses(frames[3:])[-1] == "success"
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1000


def test_channel_not_found_refuses_the_next_handshake_only(api, emulator):
    emulator.faults.channel_not_found()
    deployment_id = scale(api, emulator, 2)

    refused = refusal(emulator, deployment_id)
    frames, _ = follow(emulator, deployment_id)

    assert refused == 404
    assert statuses(frames)[-1] == "success"


def test_reset_disarms_every_fault(api, emulator):
    emulator.faults.fail_next(5, 500)
    emulator.faults.channel_not_found(3)
    emulator.faults.hold_deployments()

    emulator.faults.reset()
    deployment_id = scale(api, emulator, 2)

    frames, _ = follow(emulator, deployment_id)
    assert statuses(frames)[-1] == "success"


def test_start_and_stop_are_quick_and_leave_no_thread_behind():
    threads_before = set(threading.enumerate())
    started = time.monotonic()

    emulator = VaporEmulator(token=TOKEN, step_seconds=STEP).start()
    port = emulator.port
    emulator.stop()
    emulator.stop()

    assert time.monotonic() - started < 0.5
    assert port > 0
    assert emulator.url == f"http://127.0.0.1:{port}"
    assert set(threading.enumerate()) == threads_before
    with pytest.raises(requests.ConnectionError):
        requests.get(emulator.url, timeout=1)


def test_stop_ends_open_channels_and_running_deployments(api, emulator):
    emulator.faults.never_finish()
    deployment_id = scale(api, emulator, 2)
    outcome: list[ConnectionClosed] = []
    reader = threading.Thread(target=lambda: outcome.append(follow(emulator, deployment_id)[1]))
    reader.start()
    while not emulator.channel_requests:
        time.sleep(STEP)

    started = time.monotonic()
    emulator.stop()
    reader.join(5)

    assert time.monotonic() - started < 0.5
    assert outcome
    assert outcome[0].rcvd is None or outcome[0].rcvd.code != 1000


def test_connection_uri_points_an_airflow_connection_at_the_emulator(emulator):
    document = json.loads(emulator.connection_uri)

    assert document == {"conn_type": "vapor", "host": emulator.url, "password": TOKEN}


def test_the_token_never_appears_in_the_emulators_logs(api, emulator, caplog):
    caplog.set_level(logging.DEBUG)

    deployment_id = scale(api, emulator, 2)
    follow(emulator, deployment_id)
    refusal(emulator, deployment_id, token="not-the-token")
    requests.get(f"{emulator.url}{WEB}", headers={"Authorization": "Bearer x"}, timeout=5)

    emulator_lines = [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(("airflow_provider_vapor", "uvicorn"))
    ]
    assert any("deployment 239" in line for line in emulator_lines)
    assert not any(TOKEN in line for line in emulator_lines)


def test_https_serves_rest_and_channel_with_a_certificate(tmp_path):
    certfile, keyfile = _self_signed_certificate(tmp_path)

    with VaporEmulator(
        token=TOKEN, step_seconds=STEP, ssl_certfile=certfile, ssl_keyfile=keyfile
    ) as emulator:
        response = requests.patch(
            f"{emulator.url}{WEB}/scale",
            json={"replicas": 2},
            headers={"Authorization": f"Bearer {TOKEN}"},
            verify=certfile,
            timeout=5,
        )

        assert emulator.url.startswith("https://")
        assert response.status_code == 200


def test_the_pytest_fixture_sets_the_connection_and_reads_the_marker(pytester, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_VAPOR_DEFAULT", raising=False)
    pytester.makepyfile(
        """
        import json, os
        import pytest

        @pytest.mark.vapor_emulator(step_seconds=0.01, response_shape="activity", token="t")
        def test_marked(vapor_emulator):
            conn = json.loads(os.environ["AIRFLOW_CONN_VAPOR_DEFAULT"])
            assert conn["host"] == vapor_emulator.url
            assert conn["password"] == "t"
            assert vapor_emulator.step_seconds == 0.01
            assert vapor_emulator.response_shape == "activity"

        def test_plain(vapor_emulator):
            assert vapor_emulator.step_seconds == 0.05
            assert vapor_emulator.token == "emulator-token"
        """
    )

    result = pytester.runpytest_inprocess(
        "-p", "no:vapor_emulator", "--strict-markers", plugins=[vapor_pytest_plugin]
    )

    result.assert_outcomes(passed=2)
    assert "AIRFLOW_CONN_VAPOR_DEFAULT" not in os.environ


def test_the_command_line_prints_the_url_and_export_line_and_stops_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_vapor.emulator", "--token", "cli-token"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        banner = next(line for line in process.stdout if line.startswith("Vapor Cloud emulator"))
        url = banner.split()[-1]
        lines = [process.stdout.readline() for _ in range(2)]
        reply = requests.get(f"{url}{WEB}", headers={"Authorization": "Bearer cli-token"})
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(10)

    assert url.startswith("http://127.0.0.1:")
    assert lines[1].startswith("export AIRFLOW_CONN_VAPOR_DEFAULT='")
    assert json.loads(lines[1].split("=", 1)[1].strip().strip("'"))["host"] == url
    assert reply.status_code == 200
    assert returncode == 0


def _self_signed_certificate(directory: Path) -> tuple[str, str]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    issued = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued - timedelta(minutes=1))
        .not_valid_after(issued + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certfile = directory / "cert.pem"
    keyfile = directory / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(certfile), str(keyfile)
