from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from airflow_provider_vapor.exceptions import (
    VaporAuthenticationError,
    VaporConfigurationError,
    VaporNotFoundError,
    VaporOutcomeUnknownError,
    VaporRejectedError,
    VaporUnavailableError,
)
from airflow_provider_vapor.hooks.vapor import VaporHook

APP, ENV, WEB = "my-app", "production", "web"


def patches(emulator, suffix):
    return [r for r in emulator.requests if r.method == "PATCH" and r.raw_path.endswith(suffix)]


def test_get_replica_returns_the_seed_replica(emulator):
    replica = VaporHook().get_replica(APP, ENV, WEB)

    assert replica["name"] == "web"
    assert replica["id"] == 19
    assert replica["replicas"] == 1
    assert replica["plan"]["slug"] == "small"


def test_scale_returns_replica_and_waiting_deployment_in_the_seed_shape(emulator):
    response = VaporHook().scale_replica(APP, ENV, WEB, 3)

    assert set(response) == {"replica", "deployment"}
    deployment = response["deployment"]
    assert deployment["status"] == "waiting"
    assert deployment["type"] == "replica"
    assert deployment["meta"]["action"] == "scale"
    assert isinstance(deployment["id"], int)
    assert patches(emulator, "/scale")[0].body == {"replicas": 3}


def test_resize_sends_the_plan_and_the_replica_reaches_it_after_the_deployment(emulator):
    response = VaporHook().resize_replica(APP, ENV, WEB, "tiny")

    assert response["deployment"]["meta"]["action"] == "resize"
    assert emulator.wait_for_deployment(response["deployment"]["id"]) == "success"
    assert VaporHook().get_replica(APP, ENV, WEB)["plan"]["slug"] == "tiny"


def test_reboot_starts_a_reboot_deployment(emulator):
    response = VaporHook().reboot_replica(APP, ENV, WEB)

    assert response["deployment"]["meta"]["action"] == "reboot"
    assert len(emulator.mutations(action="reboot")) == 1


def test_get_pods_lists_running_pods(emulator):
    pods = VaporHook().get_pods(APP, ENV, WEB)

    assert len(pods) == 1
    assert pods[0]["status"] == "Running"
    assert {"token", "status", "restartCount", "node"} <= set(pods[0])


def test_get_pod_logs_returns_the_pods_output_as_text(emulator):
    hook = VaporHook()
    pod = hook.get_pods(APP, ENV, WEB)[0]["token"]

    logs = hook.get_pod_logs(APP, ENV, WEB, pod, lines=5)

    assert isinstance(logs, str)
    assert logs.strip()


def test_channel_url_comes_from_the_connection_template_with_the_deployment_id(emulator):
    hook = VaporHook()
    response = hook.scale_replica(APP, ENV, WEB, 2)

    url = hook.deployment_channel_url(response)

    port = emulator.port
    assert url == f"ws://127.0.0.1:{port}/v2/activity/channel/{response['deployment']['id']}"


@pytest.mark.vapor_emulator(response_shape="activity")
def test_channel_url_is_the_tracking_url_when_the_response_has_one(emulator):
    hook = VaporHook()
    response = hook.scale_replica(APP, ENV, WEB, 2)

    url = hook.deployment_channel_url(response)

    assert response["activity"]["trackingURL"].startswith("http://")
    assert url == "ws://" + response["activity"]["trackingURL"].removeprefix("http://")


def test_channel_path_template_is_a_connection_setting(emulator, use_connection):
    conn_id = use_connection(
        "vapor_custom", emulator, channel_path="/ws/deployments/{deployment_id}"
    )

    url = VaporHook(conn_id).deployment_channel_url({"deployment": {"id": 7, "status": "waiting"}})

    assert url.endswith("/ws/deployments/7")


def test_wrong_token_raises_authentication_error_without_retry(emulator, use_connection):
    conn_id = use_connection("vapor_bad", emulator, token="not-the-token")

    with pytest.raises(VaporAuthenticationError) as raised:
        VaporHook(conn_id).get_replica(APP, ENV, WEB)

    assert "401" in str(raised.value)
    assert len(emulator.requests) == 1


def test_unknown_replica_raises_not_found_naming_it_without_retry(emulator):
    with pytest.raises(VaporNotFoundError) as raised:
        VaporHook().get_replica(APP, ENV, "nope")

    assert "nope in my-app/production" in str(raised.value)
    assert len(emulator.requests) == 1


def test_unknown_plan_is_rejected_with_the_services_message_without_retry(emulator):
    with pytest.raises(VaporRejectedError) as raised:
        VaporHook().resize_replica(APP, ENV, WEB, "gigantic")

    assert "422" in str(raised.value)
    assert "gigantic" in str(raised.value)
    assert len(emulator.requests) == 1


def test_bad_request_is_not_retried(emulator):
    emulator.faults.fail_next(1, status=400, body={"error": True, "reason": "bad body"})

    with pytest.raises(VaporRejectedError, match="bad body"):
        VaporHook().scale_replica(APP, ENV, WEB, 2)

    assert len(emulator.requests) == 1
    assert emulator.mutations() == []


def test_negative_replicas_are_refused_before_any_request(emulator):
    with pytest.raises(VaporConfigurationError, match=r"replicas .* got -1"):
        VaporHook().scale_replica(APP, ENV, WEB, -1)

    assert emulator.requests == []


def test_429_is_retried_after_the_retry_after_seconds(emulator):
    emulator.faults.fail_next(2, status=429, retry_after=1)

    VaporHook().scale_replica(APP, ENV, WEB, 2)

    sent = patches(emulator, "/scale")
    assert [r.status for r in sent] == [429, 429, 200]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(sent)]
    assert all(0.9 <= gap < 1.8 for gap in gaps), gaps
    assert len(emulator.mutations(action="scale")) == 1


def test_retry_after_longer_than_the_cap_waits_only_the_cap(emulator, use_connection):
    conn_id = use_connection("vapor_capped", emulator, max_retry_wait=0.2)
    emulator.faults.fail_next(1, status=429, retry_after=3600)

    VaporHook(conn_id).get_replica(APP, ENV, WEB)

    first, second = emulator.requests
    assert second.at - first.at < 1.0


def test_503_is_retried_until_it_succeeds(emulator):
    emulator.faults.fail_next(3, status=503)

    response = VaporHook().scale_replica(APP, ENV, WEB, 2)

    assert response["deployment"]["status"] == "waiting"
    assert [r.status for r in patches(emulator, "/scale")] == [503, 503, 503, 200]


def test_persistent_503_gives_up_after_the_configured_retries(emulator, use_connection):
    conn_id = use_connection("vapor_two_retries", emulator, max_retries=2)
    emulator.faults.fail_next(10, status=503)

    with pytest.raises(VaporUnavailableError, match="gave up after 3 attempts"):
        VaporHook(conn_id).get_replica(APP, ENV, WEB)

    assert len(emulator.requests) == 3


def test_reboot_is_not_sent_again_after_a_read_timeout(emulator, use_connection):
    conn_id = use_connection("vapor_impatient", emulator, read_timeout=0.3)
    emulator.faults.delay_next(1, seconds=1.5, apply=True)

    with pytest.raises(VaporOutcomeUnknownError, match="may have carried it out"):
        VaporHook(conn_id).reboot_replica(APP, ENV, WEB)

    assert len(patches(emulator, "/reboot")) == 1
    assert len(emulator.mutations(action="reboot")) == 1


def test_reboot_answered_502_is_not_sent_again(emulator):
    emulator.faults.fail_next(1, status=502)

    with pytest.raises(VaporOutcomeUnknownError):
        VaporHook().reboot_replica(APP, ENV, WEB)

    assert len(patches(emulator, "/reboot")) == 1


def test_reboot_refused_with_429_is_sent_again(emulator):
    emulator.faults.fail_next(1, status=429, retry_after=0)

    VaporHook().reboot_replica(APP, ENV, WEB)

    assert [r.status for r in patches(emulator, "/reboot")] == [429, 200]
    assert len(emulator.mutations(action="reboot")) == 1


def test_scale_is_sent_again_after_a_read_timeout_because_the_target_is_the_same(
    emulator, use_connection
):
    conn_id = use_connection("vapor_impatient", emulator, read_timeout=0.3)
    emulator.faults.delay_next(1, seconds=1.5, apply=True)

    VaporHook(conn_id).scale_replica(APP, ENV, WEB, 4)

    assert [m.body for m in emulator.mutations(action="scale")] == [{"replicas": 4}] * 2


@pytest.mark.parametrize(
    ("application", "expected_raw"),
    [("../admin", "..%2Fadmin"), ("a/b c?x#1", "a%2Fb%20c%3Fx%231"), ("é", "%C3%A9")],
)
def test_identifiers_arrive_as_one_encoded_segment(emulator, application, expected_raw):
    with pytest.raises(VaporNotFoundError):
        VaporHook().get_replica(application, ENV, WEB)

    request = emulator.requests[-1]
    assert request.raw_path == f"/v2/apps/replicas/{expected_raw}/production/web"
    assert request.segments[-3:] == (application, "production", "web")


@pytest.mark.parametrize("bad", ["web\r\nX-Evil: 1", "..", ".", ""])
@pytest.mark.parametrize("field", ["application", "environment", "replica"])
def test_identifiers_that_cannot_be_one_segment_are_refused_before_any_request(
    emulator, field, bad
):
    names = {"application": APP, "environment": ENV, "replica": WEB, field: bad}

    with pytest.raises(VaporConfigurationError, match=field):
        VaporHook().get_replica(names["application"], names["environment"], names["replica"])

    assert emulator.requests == []


def test_token_with_a_line_break_is_refused_before_any_request(emulator, use_connection):
    conn_id = use_connection("vapor_crlf", emulator, token="abc\r\nX-Evil: 1")

    with pytest.raises(VaporConfigurationError, match="vapor_crlf") as raised:
        VaporHook(conn_id).get_replica(APP, ENV, WEB)

    assert "abc" not in str(raised.value)
    assert emulator.requests == []


def test_token_appears_in_no_log_line_and_no_error(emulator, all_logs):
    hook = VaporHook()
    hook.scale_replica(APP, ENV, WEB, 2)
    emulator.faults.fail_next(2, status=503, body={"reason": f"echo {emulator.token}"})
    errors = []
    for call in (
        lambda: hook.get_replica(APP, ENV, "missing"),
        lambda: VaporHook("vapor_default").reboot_replica(APP, ENV, "missing"),
    ):
        try:
            call()
        except Exception as error:
            errors.append(f"{error!r} {error}")

    assert len(errors) == 2
    assert emulator.token not in all_logs()
    assert all(emulator.token not in text for text in errors)
    assert "***" in all_logs()


def test_test_connection_reports_success_for_a_good_token(emulator):
    ok, message = VaporHook().test_connection()

    assert ok, message
    assert emulator.url in message


def test_test_connection_reports_a_refused_token(emulator, use_connection):
    conn_id = use_connection("vapor_bad", emulator, token="wrong")

    ok, message = VaporHook(conn_id).test_connection()

    assert not ok
    assert "refused the token" in message


def test_async_side_reads_replica_and_pods_and_retries_503(emulator):
    emulator.faults.fail_next(1, status=503)
    hook = VaporHook()

    async def read():
        try:
            return await hook.aget_replica(APP, ENV, WEB), await hook.aget_pods(APP, ENV, WEB)
        finally:
            await hook.aclose()

    replica, pods = asyncio.run(read())

    assert replica["name"] == "web"
    assert pods[0]["status"] == "Running"
    assert [r.status for r in emulator.requests] == [503, 200, 200]


@pytest.fixture
def not_vapor_server():
    """A plain HTTP server on loopback that answers 404 to everything, token or not."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_test_connection_reports_a_server_that_does_not_ask_for_a_token(
    not_vapor_server, monkeypatch
):
    monkeypatch.setenv(
        "AIRFLOW_CONN_VAPOR_ELSEWHERE",
        json.dumps({"conn_type": "vapor", "host": not_vapor_server, "password": "a-long-token"}),
    )

    ok, message = VaporHook("vapor_elsewhere").test_connection()

    assert not ok
    assert "does not look like the Vapor Cloud API" in message
