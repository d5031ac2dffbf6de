"""How soon a waiting trigger learns that its deployment ended, against polling on an interval.

Completion latency runs from the moment the emulator marks a deployment finished (its
``finished_at``, ``time.monotonic()`` in the emulator process) to the moment the trigger's
``run()`` yields its event (``time.monotonic()`` in this process); on Linux both read the same
``CLOCK_MONOTONIC``. It includes everything between: the emulator sending the terminal status,
the trigger reading it, closing the channel, and building its event.

- one wait: a deployment is held, one trigger follows it, the deployment is finished; repeated.
- many waits, staggered: ``count`` triggers wait at once and the deployments finish one at a
  time, ``gap`` seconds apart, so each measures delivery to one trigger among ``count``.
- many waits, burst: ``count`` triggers wait at once and every deployment finishes together;
  the tail then is the time the emulator and the loop take to go through all of them.

For the polling side the worker measures one poke as a sensor makes it: a REST view of the
replica through :class:`~airflow_provider_vapor.hooks.vapor.VaporHook`, and the channel poke of
:class:`~airflow_provider_vapor.sensors.deployment.VaporDeploymentSensor` in ``poke`` mode. The
detection latency at an interval is then computed, not measured: a deployment ends at a uniformly
random moment between two pokes, so it is seen ``interval / 2`` later on average, ``0.99 *
interval`` at the 99th percentile, plus one poke's time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.common import (
    LOGS,
    new_token,
    run_worker,
    summary_ms,
    write_result,
)
from benchmarks.emulator_process import APPLICATION, ENVIRONMENT, REPLICA, EmulatorProcess
from benchmarks.waits import TriggerWaits, until_open

POLL_INTERVALS = (60.0, 5.0)


async def _latencies(waits: TriggerWaits, ids: Sequence[int]) -> list[float]:
    finished_at = await asyncio.to_thread(waits.emulator.finished_at, ids)
    return [waits.events[i]["at"] - at for i, at in zip(ids, finished_at, strict=True)]


async def one_at_a_time(emulator: EmulatorProcess, repeats: int) -> list[float]:
    """Latency of a single wait, ``repeats`` times over, each on a fresh deployment."""
    waits = TriggerWaits(emulator)
    latencies = []
    for _ in range(repeats + 1):
        (deployment_id,) = await asyncio.to_thread(emulator.hold, 1)
        waits.start(deployment_id)
        await until_open(emulator, 1, 30)
        await asyncio.sleep(0.01)
        await asyncio.to_thread(emulator.finish, [deployment_id])
        await waits.wait_all()
        latencies += await _latencies(waits, [deployment_id])
    # The first wait pays for imports and first connections; it is not a steady state.
    return latencies[1:]


async def many_at_once(emulator: EmulatorProcess, count: int, gap: float) -> dict[str, Any]:
    """Latency of each of ``count`` concurrent waits as their deployments finish ``gap`` apart."""
    waits = TriggerWaits(emulator)
    ids = await asyncio.to_thread(emulator.hold, count)
    for deployment_id in ids:
        waits.start(deployment_id)
        await asyncio.sleep(0)
    opened = await until_open(emulator, count, 120)
    await asyncio.sleep(1.0)
    started = time.perf_counter()
    await asyncio.to_thread(emulator.finish, ids, gap)
    await waits.wait_all()
    elapsed = time.perf_counter() - started
    return {
        **summary_ms(await _latencies(waits, ids)),
        "count": count,
        "gap_ms": gap * 1000,
        "opened": opened,
        "all_ended_s": elapsed,
        "statuses": waits.statuses(ids),
    }


def poke_times(emulator: EmulatorProcess, repeats: int) -> dict[str, float]:
    """Median time of one REST view of the replica, and of one channel poke of the sensor."""
    from airflow_provider_vapor.hooks.vapor import VaporHook
    from airflow_provider_vapor.sensors.deployment import VaporDeploymentSensor

    hook = VaporHook()
    (deployment_id,) = emulator.hold(1)
    sensor = VaporDeploymentSensor(task_id="wait", deployment_id=deployment_id)

    def median_seconds(poke: Any) -> float:
        poke()
        durations = []
        for _ in range(repeats):
            started = time.perf_counter()
            poke()
            durations.append(time.perf_counter() - started)
        return statistics.median(durations)

    return {
        "rest_view_ms": 1000
        * median_seconds(lambda: hook.get_replica(APPLICATION, ENVIRONMENT, REPLICA)),
        "channel_poke_ms": 1000 * median_seconds(lambda: sensor.poke({})),
    }


def polling(pokes: dict[str, float], concurrent: int) -> list[dict[str, Any]]:
    """The computed cost and latency of a REST polling sensor at each interval in
    :data:`POLL_INTERVALS`."""
    request_ms = pokes["rest_view_ms"]
    return [
        {
            "interval_s": interval,
            "mean_detection_ms": interval / 2 * 1000 + request_ms,
            "p99_detection_ms": 0.99 * interval * 1000 + request_ms,
            "requests_per_hour_per_wait": 3600 / interval,
            "requests_per_second_at_concurrency": concurrent / interval,
            "computed": True,
        }
        for interval in POLL_INTERVALS
    ]


async def _measure(
    emulator: EmulatorProcess, repeats: int, count: int, gap: float
) -> dict[str, Any]:
    return {
        "single": {**summary_ms(await one_at_a_time(emulator, repeats)), "count": 1},
        "staggered": await many_at_once(emulator, count, gap),
        "burst": await many_at_once(emulator, count, 0.0),
    }


def measure(repeats: int, count: int, gap: float) -> dict[str, Any]:
    """Start an emulator and measure every latency this module describes."""
    from airflow_provider_vapor.channel import PING_INTERVAL

    with EmulatorProcess(new_token(), log=LOGS / "latency-emulator.log") as emulator:
        os.environ["AIRFLOW_CONN_VAPOR_DEFAULT"] = emulator.connection()
        result = asyncio.run(_measure(emulator, repeats, count, gap))
        pokes = poke_times(emulator, repeats)
    return {
        **result,
        "pokes": pokes,
        "polling": polling(pokes, count),
        "channel_pings_per_hour_per_wait": 3600 / PING_INTERVAL,
    }


def run(repeats: int, count: int, gap: float) -> dict[str, Any]:
    """Measure in a fresh worker process."""
    print(f"  latency: 1 wait x {repeats}, {count} waits staggered and in a burst ...", flush=True)
    arguments = ["--repeats", str(repeats), "--count", str(count), "--gap", str(gap)]
    return run_worker("latency", arguments, "latency.log")


def main(argv: Sequence[str] | None = None) -> None:
    """The worker: measure and write the result to ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--gap", type=float, default=0.005)
    parser.add_argument("--out", required=True)
    arguments = parser.parse_args(argv)
    write_result(arguments.out, measure(arguments.repeats, arguments.count, arguments.gap))


if __name__ == "__main__":
    main()
