"""What every benchmark shares: measurements of this process, statistics, and worker processes.

Every measurement runs in a fresh worker process (``python -m benchmarks.<section> ...``), so
that memory freed by one run cannot be reused by the next and each starts from the same imports.
A worker writes its result as JSON to the file given with ``--out``; its own output, Airflow's
log lines included, goes to a log file under ``benchmarks/results/logs``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LOGS = RESULTS / "logs"
KIB = 1024


def resident_bytes() -> int:
    """This process's resident memory (RSS), read from ``/proc/self/statm``."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values``, interpolated between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of durations given in seconds, in milliseconds."""
    return {
        "p50_ms": percentile(seconds, 0.50) * 1000,
        "p99_ms": percentile(seconds, 0.99) * 1000,
        "max_ms": max(seconds) * 1000 if seconds else math.nan,
        "samples": len(seconds),
    }


def new_token() -> str:
    """A random bearer token for one emulator."""
    return secrets.token_urlsafe(24)


class LoopLag:
    """Measures how late the event loop wakes a task that sleeps ``interval`` at a time.

    Each sample is how much longer than ``interval`` one sleep took: the time any other task
    held the loop, plus the loop's own overhead.

    :param interval: the ticker's sleep, in seconds.
    """

    def __init__(self, interval: float = 0.010):
        self.interval = interval
        self.samples: list[float] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ticking in the running loop."""
        self._running = True
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> list[float]:
        """Stop ticking; return the oversleeps in seconds."""
        self._running = False
        if self._task is not None:
            await self._task
        return self.samples

    async def _tick(self) -> None:
        clock = time.perf_counter
        while self._running:
            before = clock()
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, clock() - before - self.interval))


class GcPauses:
    """Records how long each garbage collection takes while it is active (a context manager)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def summary(self) -> dict[str, Any]:
        """Collections per generation, the longest in ms, and their total in seconds."""
        return {
            "collections": [sum(1 for g, _ in self.pauses if g == gen) for gen in range(3)],
            "max_ms": max((d for _, d in self.pauses), default=0.0) * 1000,
            "full_max_ms": max((d for g, d in self.pauses if g == 2), default=0.0) * 1000,
            "total_s": sum(d for _, d in self.pauses),
        }


@functools.cache
def _airflow_home() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="vapor-benchmarks-airflow-")


def airflow_environment() -> dict[str, str]:
    """The environment for worker processes: a throwaway AIRFLOW_HOME, no example DAGs."""
    return {
        **os.environ,
        "AIRFLOW_HOME": _airflow_home().name,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    }


def run_worker(
    module: str, arguments: Sequence[str], log_name: str, timeout: float = 600
) -> dict[str, Any]:
    """Run ``python -m benchmarks.<module> ARGUMENTS --out FILE``; return what it wrote.

    :param module: the section's module, e.g. ``waits``.
    :param arguments: the worker's command line, without ``--out``.
    :param log_name: the worker's log file, under ``benchmarks/results/logs``.
    :param timeout: seconds after which the worker is stopped. A worker that had written a
        partial result by then gives that, with ``stopped`` saying why it is partial.
    :raises RuntimeError: when the worker fails or writes no result; the message names its log.
    """
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / log_name
    with tempfile.TemporaryDirectory(prefix="vapor-benchmark-") as scratch:
        out = Path(scratch) / "result.json"
        command = [sys.executable, "-m", f"benchmarks.{module}", *arguments, "--out", str(out)]
        with open(log_path, "w") as log:
            try:
                completed = subprocess.run(
                    command,
                    cwd=ROOT,
                    env=airflow_environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                problem = f"stopped after {timeout:.0f} s"
                if out.exists():
                    log_name = str(log_path.relative_to(ROOT))
                    return {**json.loads(out.read_text()), "stopped": problem, "log": log_name}
                raise RuntimeError(
                    f"benchmarks.{module} {' '.join(arguments)} {problem}; see "
                    f"{log_path.relative_to(ROOT)}"
                ) from None
        if completed.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"benchmarks.{module} {' '.join(arguments)} failed (exit "
                f"{completed.returncode}); see {log_path.relative_to(ROOT)}"
            )
        return json.loads(out.read_text())


def write_result(path: str, result: dict[str, Any]) -> None:
    """Write a worker's result where the parent reads it."""
    Path(path).write_text(json.dumps(result, indent=2))
