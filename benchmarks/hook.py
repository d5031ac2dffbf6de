"""Scale calls per second through :class:`~airflow_provider_vapor.hooks.vapor.VaporHook`,
against the same PATCH requests through a bare :class:`requests.Session`.

Both go to one emulator, in alternating rounds, so that anything the emulator does over the run
weighs on both alike; besides the ratio of the totals, the median of the ratios of two adjacent
rounds is kept, which a slow stretch of the machine moves less. The emulator's deployments take
an hour per step, so none of them moves on while the calls are measured, and its garbage
collector is off, so that a full collection over those pending deployments does not land in
one side's round. The hook logs one line
per call at INFO, as it does in a task; the worker's output goes to its log file. Besides calls
per second, the worker reports the CPU time per call of this process and of the emulator's,
which shows how much of a call each side spends.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from benchmarks.common import LOGS, new_token, run_worker, write_result
from benchmarks.emulator_process import APPLICATION, ENVIRONMENT, REPLICA, EmulatorProcess

REPLICAS = 1
WARM_UP_CALLS = 50
ROUNDS = 20


def pin_apart(emulator_pid: int) -> bool:
    """Run this process and the emulator on two different CPUs, where there are two.

    Otherwise the scheduler sometimes puts both on one CPU for a while, and calls per second
    swing by half from run to run; pinned, each side has a CPU and the runs agree.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return False
    os.sched_setaffinity(0, {cpus[0]})
    os.sched_setaffinity(emulator_pid, {cpus[1]})
    return True


def hook_calls(emulator: EmulatorProcess) -> Callable[[], Any]:
    """One scale through the hook, as an operator makes it."""
    from airflow_provider_vapor.hooks.vapor import VaporHook

    hook = VaporHook()

    def call() -> Any:
        return hook.scale_replica(APPLICATION, ENVIRONMENT, REPLICA, REPLICAS)

    return call


def bare_calls(emulator: EmulatorProcess) -> Callable[[], Any]:
    """The same PATCH through a bare requests session: send, check the status, parse JSON."""
    import requests

    session = requests.Session()
    session.headers.update(
        {"Authorization": f"Bearer {emulator.token}", "User-Agent": "airflow-provider-vapor"}
    )
    path = "/".join(quote(part, safe="") for part in (APPLICATION, ENVIRONMENT, REPLICA))
    url = f"{emulator.url}/v2/apps/replicas/{path}/scale"

    def call() -> Any:
        response = session.patch(
            url, json={"replicas": REPLICAS}, timeout=(10.0, 30.0), allow_redirects=False
        )
        response.raise_for_status()
        return response.json()

    return call


def measure(calls: int, rounds: int) -> dict[str, Any]:
    """Make ``calls`` scale calls each way, in ``rounds`` alternating rounds."""
    log = LOGS / "hook-emulator.log"
    with EmulatorProcess(new_token(), log=log, collect_garbage=False) as emulator:
        os.environ["AIRFLOW_CONN_VAPOR_DEFAULT"] = emulator.connection()
        pinned = pin_apart(emulator.pid)
        ways = {"hook": hook_calls(emulator), "bare": bare_calls(emulator)}
        totals = {name: {"wall": 0.0, "cpu": 0.0, "emulator_cpu": 0.0} for name in ways}
        round_walls: dict[str, list[float]] = {name: [] for name in ways}
        for call in ways.values():
            for _ in range(WARM_UP_CALLS):
                call()
        per_round = calls // rounds
        for index in range(rounds):
            order = list(ways) if index % 2 == 0 else list(reversed(ways))
            for name in order:
                call = ways[name]
                emulator_before = emulator.cpu_seconds()
                cpu_before, wall_before = time.process_time(), time.perf_counter()
                for _ in range(per_round):
                    call()
                wall = time.perf_counter() - wall_before
                totals[name]["wall"] += wall
                round_walls[name].append(wall)
                totals[name]["cpu"] += time.process_time() - cpu_before
                totals[name]["emulator_cpu"] += emulator.cpu_seconds() - emulator_before
    made = per_round * rounds
    result: dict[str, Any] = {"calls": made, "rounds": rounds, "pinned_cpus": pinned}
    for name, total in totals.items():
        result[name] = {
            "calls_per_s": made / total["wall"],
            "client_cpu_us_per_call": 1e6 * total["cpu"] / made,
            "emulator_cpu_us_per_call": 1e6 * total["emulator_cpu"] / made,
        }
    result["ratio"] = result["hook"]["calls_per_s"] / result["bare"]["calls_per_s"]
    paired = [
        bare / hook for hook, bare in zip(round_walls["hook"], round_walls["bare"], strict=True)
    ]
    result["ratio_median_of_rounds"] = statistics.median(paired)
    result["round_walls_s"] = round_walls
    return result


def run(calls: int, rounds: int) -> dict[str, Any]:
    """Measure in a fresh worker process."""
    print(f"  hook: {calls} scale calls through VaporHook and through requests ...", flush=True)
    return run_worker("hook", ["--calls", str(calls), "--rounds", str(rounds)], "hook.log")


def main(argv: Sequence[str] | None = None) -> None:
    """The worker: measure and write the result to ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hook")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--out", required=True)
    arguments = parser.parse_args(argv)
    write_result(arguments.out, measure(arguments.calls, arguments.rounds))


if __name__ == "__main__":
    main()
