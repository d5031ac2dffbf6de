from __future__ import annotations

import asyncio
import importlib
import json
import time

import pytest

from airflow_provider_vapor.hooks.vapor import VaporHook
from airflow_provider_vapor.triggers.deployment import VaporDeploymentTrigger

APP, ENV, WEB = "my-app", "production", "web"


def start_scale(emulator, replicas=3):
    hook = VaporHook()
    response = hook.scale_replica(APP, ENV, WEB, replicas)
    return response["deployment"]["id"], hook.deployment_channel_url(response)


def trigger_for(deployment_id, url, seconds=10.0, **kwargs):
    return VaporDeploymentTrigger(
        deployment_id=deployment_id,
        channel_url=url,
        deadline=time.time() + seconds,
        max_reconnect_wait=0.2,
        **kwargs,
    )


def run_to_end(trigger, limit=20.0):
    async def collect():
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), limit))


def test_serialize_round_trips_every_argument_as_json_primitives():
    trigger = VaporDeploymentTrigger(
        deployment_id=239,
        channel_url="wss://api.example/v2/activity/channel/239",
        deadline=1_900_000_000.5,
        vapor_conn_id="vapor_prod",
        application=APP,
        environment=ENV,
        replica=WEB,
        replicas=3,
        plan=None,
        max_reconnect_wait=7.0,
    )

    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))

    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["deadline"] == 1_900_000_000.5
    assert kwargs["vapor_conn_id"] == "vapor_prod"


def test_token_is_in_neither_kwargs_nor_repr(emulator):
    deployment_id, url = start_scale(emulator)
    trigger = trigger_for(deployment_id, url)

    _, kwargs = trigger.serialize()

    assert emulator.token not in json.dumps(kwargs)
    assert emulator.token not in repr(trigger)


def test_yields_one_success_event_and_logs_the_deployments_output(emulator, all_logs):
    deployment_id, url = start_scale(emulator)

    events = run_to_end(trigger_for(deployment_id, url))

    assert len(events) == 1
    assert events[0]["status"] == "success"
    assert events[0]["deployment_id"] == deployment_id
    for line in emulator.deployment(deployment_id).log:
        assert line in all_logs()
    assert emulator.token not in all_logs()


def test_failed_deployment_yields_failed_with_the_services_message(emulator):
    emulator.faults.deployment_outcome(status="failed", message="image pull failed")
    deployment_id, url = start_scale(emulator)

    events = run_to_end(trigger_for(deployment_id, url))

    assert [e["status"] for e in events] == ["failed"]
    assert events[0]["message"] == "image pull failed"


def test_deployment_that_never_finishes_yields_timeout_at_the_deadline(emulator):
    emulator.faults.never_finish()
    deployment_id, url = start_scale(emulator)
    started = time.monotonic()

    events = run_to_end(trigger_for(deployment_id, url, seconds=1.0))

    assert [e["status"] for e in events] == ["timeout"]
    assert "did not finish by the deadline" in events[0]["message"]
    assert 0.9 <= time.monotonic() - started < 3.0


def test_channel_dropped_mid_stream_reconnects_and_sees_the_final_status_once(emulator):
    emulator.faults.drop_channel_after(frames=2)
    deployment_id, url = start_scale(emulator)

    events = run_to_end(trigger_for(deployment_id, url))

    assert [e["status"] for e in events] == ["success"]
    assert emulator.deployment(deployment_id).status == "success"


@pytest.mark.parametrize("code", [1000, 1001, 1011])
def test_close_without_a_final_status_is_not_success(emulator, code):
    emulator.faults.close_channel_without_status(code=code, count=1)
    deployment_id, url = start_scale(emulator)

    events = run_to_end(trigger_for(deployment_id, url))

    assert [e["status"] for e in events] == ["success"]
    channel_requests = [r for r in emulator.requests if "/activity/channel/" in r.raw_path]
    assert len(channel_requests) >= 2


def test_gone_channel_is_judged_from_the_rest_view(emulator):
    deployment_id, url = start_scale(emulator, replicas=2)
    emulator.wait_for_deployment(deployment_id)
    emulator.faults.channel_not_found(count=1)

    events = run_to_end(
        trigger_for(deployment_id, url, application=APP, environment=ENV, replica=WEB, replicas=2)
    )

    assert events == [
        {
            "deployment_id": deployment_id,
            "status": "success",
            "message": None,
            "judged_from": "rest",
            "channel_url": url,
        }
    ]


def test_gone_channel_without_a_replica_to_judge_is_an_error(emulator):
    deployment_id, url = start_scale(emulator)
    emulator.faults.channel_not_found(count=1)

    events = run_to_end(trigger_for(deployment_id, url))

    assert [e["status"] for e in events] == ["error"]
    assert "404" in events[0]["message"]


def test_wrong_token_on_the_channel_is_an_error_naming_the_connection(emulator, use_connection):
    deployment_id, url = start_scale(emulator)
    conn_id = use_connection("vapor_bad", emulator, token="wrong")

    events = run_to_end(trigger_for(deployment_id, url, vapor_conn_id=conn_id))

    assert [e["status"] for e in events] == ["error"]
    assert "refused the token" in events[0]["message"]
    assert "vapor_bad" in events[0]["message"]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [(b"\x00\x01", "binary frame"), ('{"status": "exploded"}', "'exploded'")],
)
def test_frame_outside_the_protocol_is_an_error_naming_it(emulator, frame, expected):
    emulator.faults.send_channel_frames([frame])
    deployment_id, url = start_scale(emulator)

    events = run_to_end(trigger_for(deployment_id, url))

    assert [e["status"] for e in events] == ["error"]
    assert expected in events[0]["message"]


def test_cancellation_closes_the_socket_within_a_second_and_changes_nothing(emulator):
    emulator.faults.never_finish()
    deployment_id, url = start_scale(emulator)
    trigger = trigger_for(deployment_id, url, seconds=60)

    async def cancel_while_waiting():
        task = asyncio.ensure_future(anext(trigger.run()))
        while emulator.open_channels() == 0:
            await asyncio.sleep(0.02)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while emulator.open_channels() > 0:
            await asyncio.sleep(0.01)
        return time.monotonic() - started

    closed_after = asyncio.run(asyncio.wait_for(cancel_while_waiting(), 5))

    assert closed_after < 1.0
    assert len(emulator.mutations()) == 1


def test_channel_missing_while_the_deployment_still_runs_does_not_fail_it(emulator):
    deployment_id, url = start_scale(emulator, replicas=2)
    emulator.faults.channel_not_found(count=1)

    events = run_to_end(
        trigger_for(deployment_id, url, application=APP, environment=ENV, replica=WEB, replicas=2)
    )

    assert [(e["status"], e["judged_from"]) for e in events] == [("success", "channel")]
    assert len(emulator.mutations()) == 1
