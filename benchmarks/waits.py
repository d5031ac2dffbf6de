"""Many deployments waited for at once: memory, idle CPU, event-loop lag and setup time.

``async`` runs real :class:`~airflow_provider_vapor.triggers.deployment.VaporDeploymentTrigger`
instances in one event loop, each in its own task as Airflow's triggerer runs them. ``threads``
follows the same channels with websocket-client, one blocking thread per wait, reading the frames
with the same :class:`~airflow_provider_vapor.protocol.DeploymentProgress`.

A worker (``python -m benchmarks.waits --mode async --count 1000 --out FILE``) starts its own
emulator, holds ``count`` deployments open there, starts the waits, and once every channel is
open measures for ``--hold-seconds``: the process's CPU time, the loop's lag (``async``), and its
resident memory before and after. With the default 20 s, the window is one keepalive period of
the trigger's channel and of the emulator's server, so each connection is pinged once each way
in it. Then the emulator finishes every deployment at once and the worker times how long until
every wait has ended.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.common import (
    KIB,
    LOGS,
    GcPauses,
    LoopLag,
    new_token,
    resident_bytes,
    run_worker,
    summary_ms,
    write_result,
)
from benchmarks.emulator_process import EmulatorProcess

MODES = ("async", "threads")
WARM_UP_WAITS = 5
SETTLE_SECONDS = 1.0
OPEN_POLL_SECONDS = 0.05
ASYNC_SETUP_TIMEOUT = 120.0
THREAD_SETUP_TIMEOUT = 60.0
THREAD_FINISH_ALLOWANCE = 60.0
THREAD_STALL_SECONDS = 30.0


class Waits:
    """The waits of one worker and what they ended with.

    :param emulator: the emulator that holds the deployments.
    """

    def __init__(self, emulator: EmulatorProcess):
        self.emulator = emulator
        self.events: dict[int, dict[str, Any]] = {}
        self.failures: Counter[str] = Counter()

    def statuses(self, ids: Sequence[int]) -> dict[str, int]:
        """How many of these waits ended with each status; ``missing`` for none."""
        counts = Counter(self.events.get(i, {}).get("status", "missing") for i in ids)
        return dict(counts)


class TriggerWaits(Waits):
    """Real deployment triggers in this process's event loop, one task each."""

    def __init__(self, emulator: EmulatorProcess):
        super().__init__(emulator)
        from airflow_provider_vapor.protocol import channel_url

        self._channel_url = channel_url
        self._deadline = time.time() + 3600
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, deployment_id: int) -> None:
        """Create the deployment's trigger and run it in a task of its own."""
        from airflow_provider_vapor.triggers.deployment import VaporDeploymentTrigger

        trigger = VaporDeploymentTrigger(
            deployment_id=deployment_id,
            channel_url=self._channel_url(self.emulator.url, deployment_id),
            deadline=self._deadline,
        )
        self.tasks.append(asyncio.get_running_loop().create_task(self._run(trigger)))

    async def _run(self, trigger: Any) -> None:
        try:
            async for event in trigger.run():
                self.events[trigger.deployment_id] = {
                    **event.payload,
                    "at": time.monotonic(),
                }
        except Exception as error:
            self.failures[type(error).__name__] += 1

    async def wait_all(self) -> None:
        """Wait until every started trigger has ended."""
        await asyncio.gather(*self.tasks)
        self.tasks.clear()


class ThreadWaits(Waits):
    """websocket-client connections, each followed by a blocking thread of its own.

    They read frames until the terminal status and nothing else: no keepalive pings of their
    own (they answer the server's), no deadline, no reconnection.
    """

    def __init__(self, emulator: EmulatorProcess):
        super().__init__(emulator)
        self.threads: list[threading.Thread] = []
        self._failures_lock = threading.Lock()

    def start(self, deployment_id: int) -> None:
        """Start a thread that follows the deployment's channel until its terminal status."""
        thread = threading.Thread(target=self._follow, args=(deployment_id,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _follow(self, deployment_id: int) -> None:
        import websocket

        from airflow_provider_vapor.protocol import DeploymentProgress, channel_url

        try:
            connection = websocket.create_connection(
                channel_url(self.emulator.url, deployment_id),
                header=[f"Authorization: Bearer {self.emulator.token}"],
                timeout=60,
            )
            connection.settimeout(None)
            progress = DeploymentProgress(deployment_id)
            while not progress.is_finished:
                progress.receive(connection.recv())
            self.events[deployment_id] = {"status": progress.status, "at": time.monotonic()}
            connection.close()
        except Exception as error:
            with self._failures_lock:
                self.failures[type(error).__name__] += 1

    def wait_all(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every started thread to end; return how many
        are still running."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        running = sum(thread.is_alive() for thread in self.threads)
        self.threads.clear()
        return running


async def until_open(emulator: EmulatorProcess, count: int, timeout: float) -> int:
    """Wait until the emulator has ``count`` channels open, or ``timeout`` seconds have passed;
    return how many are open."""
    deadline = time.monotonic() + timeout
    while True:
        open_now = await asyncio.to_thread(emulator.open_channels)
        if open_now >= count or time.monotonic() > deadline:
            return open_now
        await asyncio.sleep(OPEN_POLL_SECONDS)


async def measure_triggers(
    emulator: EmulatorProcess, count: int, hold_seconds: float, setup_timeout: float
) -> dict[str, Any]:
    """Hold ``count`` trigger waits in this loop and measure them; see the module's docstring."""
    waits = TriggerWaits(emulator)
    warm_up = await asyncio.to_thread(emulator.hold, WARM_UP_WAITS)
    for deployment_id in warm_up:
        waits.start(deployment_id)
    await until_open(emulator, WARM_UP_WAITS, setup_timeout)
    await asyncio.to_thread(emulator.finish, warm_up)
    await waits.wait_all()

    ids = await asyncio.to_thread(emulator.hold, count)
    gc.collect()
    objects_before = len(gc.get_objects())
    rss_before = resident_bytes()
    started = time.perf_counter()
    for deployment_id in ids:
        waits.start(deployment_id)
        # As the triggerer does, let the running waits go on between two new ones.
        await asyncio.sleep(0)
    opened = await until_open(emulator, count, setup_timeout)
    setup_seconds = time.perf_counter() - started
    await asyncio.sleep(SETTLE_SECONDS)
    rss_open = resident_bytes()
    objects_per_wait = (len(gc.get_objects()) - objects_before) / count

    lag = LoopLag()
    lag.start()
    with GcPauses() as collections:
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        await asyncio.sleep(hold_seconds)
        cpu_seconds = time.process_time() - cpu_before
        wall_seconds = time.perf_counter() - wall_before
    lag_samples = await lag.stop()
    rss_held = resident_bytes()

    finish_started = time.perf_counter()
    await asyncio.to_thread(emulator.finish, ids)
    await waits.wait_all()
    finish_seconds = time.perf_counter() - finish_started
    return {
        **_memory_and_cpu(count, rss_before, rss_open, rss_held, cpu_seconds, wall_seconds),
        "opened": opened,
        "setup_s": setup_seconds,
        "loop_lag": summary_ms(lag_samples),
        "gc_while_idle": collections.summary(),
        "gc_objects_per_wait": objects_per_wait,
        "finish_all_s": finish_seconds,
        "statuses": waits.statuses(ids),
        "failures": dict(waits.failures),
    }


def measure_threads(
    emulator: EmulatorProcess,
    count: int,
    hold_seconds: float,
    setup_timeout: float,
    checkpoint: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Hold ``count`` thread waits and measure them; see the module's docstring.

    What is measured before the deployments finish goes to ``checkpoint`` first: ending
    thousands of threads at once can take longer than the worker is given.
    """
    waits = ThreadWaits(emulator)
    warm_up = emulator.hold(WARM_UP_WAITS)
    for deployment_id in warm_up:
        waits.start(deployment_id)
    asyncio.run(until_open(emulator, WARM_UP_WAITS, setup_timeout))
    emulator.finish(warm_up)
    waits.wait_all(setup_timeout)

    ids = emulator.hold(count)
    gc.collect()
    rss_before = resident_bytes()
    started = time.perf_counter()
    stopped: str | None = None
    for deployment_id in ids:
        if time.perf_counter() - started > setup_timeout:
            stopped = f"only {len(waits.threads)} threads started in {setup_timeout:.0f} s"
            break
        try:
            waits.start(deployment_id)
        except RuntimeError as error:
            stopped = f"thread {len(waits.threads) + 1} could not start: {error}"
            break
    threads_started = len(waits.threads)
    opened = asyncio.run(until_open(emulator, threads_started, setup_timeout))
    setup_seconds = time.perf_counter() - started
    time.sleep(SETTLE_SECONDS)
    rss_open = resident_bytes()

    with GcPauses() as collections:
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        time.sleep(hold_seconds)
        cpu_seconds = time.process_time() - cpu_before
        wall_seconds = time.perf_counter() - wall_before
    rss_held = resident_bytes()

    result = {
        **_memory_and_cpu(count, rss_before, rss_open, rss_held, cpu_seconds, wall_seconds),
        "opened": opened,
        "threads_started": threads_started,
        "stopped": stopped,
        "open_after_hold": emulator.open_channels(),
        "setup_s": setup_seconds,
        "gc_while_idle": collections.summary(),
        "failures": dict(waits.failures),
    }
    checkpoint(result)
    finish_started = time.perf_counter()
    emulator.finish(ids)
    result["still_running"] = waits.wait_all(setup_timeout)
    result["finish_all_s"] = time.perf_counter() - finish_started
    result["statuses"] = waits.statuses(ids)
    result["failures"] = dict(waits.failures)
    return result


def _memory_and_cpu(
    count: int,
    rss_before: int,
    rss_open: int,
    rss_held: int,
    cpu_seconds: float,
    wall_seconds: float,
) -> dict[str, Any]:
    return {
        "count": count,
        "rss_before_mib": rss_before / KIB / KIB,
        "kib_per_wait": (max(rss_open, rss_held) - rss_before) / KIB / count,
        "idle_cpu_percent": 100 * cpu_seconds / wall_seconds,
        "idle_window_s": wall_seconds,
    }


def measure(
    mode: str, count: int, hold_seconds: float, setup_timeout: float, out: str
) -> dict[str, Any]:
    """Start an emulator and measure ``count`` waits of one ``mode``."""
    log = LOGS / f"waits-{mode}-{count}-emulator.log"
    with EmulatorProcess(new_token(), log=log) as emulator:
        os.environ["AIRFLOW_CONN_VAPOR_DEFAULT"] = emulator.connection()
        if mode == "async":
            result = asyncio.run(measure_triggers(emulator, count, hold_seconds, setup_timeout))
        else:

            def checkpoint(partial: dict[str, Any]) -> None:
                write_result(out, {"mode": mode, **partial, "partial": True})

            result = measure_threads(emulator, count, hold_seconds, setup_timeout, checkpoint)
        result["emulator_rss_mib"] = emulator.rss() / KIB / KIB
    return {"mode": mode, **result}


def run(sizes: Sequence[int], thread_sizes: Sequence[int], hold_seconds: float) -> dict[str, Any]:
    """Measure every size in fresh worker processes, triggers first, then threads.

    Threads stop at the first size where a wait did not open, failed or did not end, or where
    ending them all took longer than :data:`THREAD_STALL_SECONDS`.
    """
    results: dict[str, Any] = {"hold_seconds": hold_seconds, "async": [], "threads": []}
    for count in sizes:
        print(f"  waits: {count:,} triggers in one event loop ...", flush=True)
        results["async"].append(_worker("async", count, hold_seconds))
    for count in thread_sizes:
        print(f"  waits: {count:,} websocket-client threads ...", flush=True)
        outcome = _worker("threads", count, hold_seconds)
        results["threads"].append(outcome)
        stall = _thread_stall(outcome)
        if stall:
            results["threads_stopped"] = f"at {count:,}: {stall}"
            break
    return results


def _thread_stall(outcome: dict[str, Any]) -> str | None:
    """Why no larger thread count is worth trying after this one, if there is a reason."""
    if outcome.get("stopped"):
        where = f" (log: {outcome['log']})" if outcome.get("log") else ""
        return f"the worker was {outcome['stopped']} before every wait had ended{where}"
    count = outcome["count"]
    ended = outcome.get("statuses", {}).get("success", 0)
    if ended != count:
        return f"only {ended:,} of {count:,} waits ended in success"
    if outcome["finish_all_s"] > THREAD_STALL_SECONDS:
        return (
            f"ending them all at once took {outcome['finish_all_s']:.0f} s "
            f"(over {THREAD_STALL_SECONDS:g} s)"
        )
    return None


def _worker(mode: str, count: int, hold_seconds: float) -> dict[str, Any]:
    if mode == "threads":
        setup_timeout = THREAD_SETUP_TIMEOUT
        timeout = setup_timeout + hold_seconds + THREAD_FINISH_ALLOWANCE + 30
    else:
        setup_timeout = ASYNC_SETUP_TIMEOUT
        timeout = 2 * setup_timeout + hold_seconds + 90
    arguments = ["--mode", mode, "--count", str(count), "--hold-seconds", str(hold_seconds)]
    arguments += ["--setup-timeout", str(setup_timeout)]
    try:
        return run_worker("waits", arguments, f"waits-{mode}-{count}.log", timeout=timeout)
    except RuntimeError as error:
        return {"mode": mode, "count": count, "stopped": str(error)}


def main(argv: Sequence[str] | None = None) -> None:
    """The worker: measure one mode at one size and write the result to ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.waits")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--hold-seconds", type=float, default=20.0)
    parser.add_argument("--setup-timeout", type=float, default=ASYNC_SETUP_TIMEOUT)
    parser.add_argument("--out", required=True)
    arguments = parser.parse_args(argv)
    result = measure(
        arguments.mode,
        arguments.count,
        arguments.hold_seconds,
        arguments.setup_timeout,
        arguments.out,
    )
    write_result(arguments.out, result)


if __name__ == "__main__":
    main()
