"""The Vapor emulator in a process of its own, driven by the benchmarks over a pipe.

Run as ``python -m benchmarks.emulator_process --token=T --step-seconds=S``: it prints one JSON
line with the emulator's URL, then answers one JSON command per line on stdin with one JSON line
on stdout. Deployments are created straight in the emulator's state and left ``running``, so
thousands of them can be held open without a task per deployment, and finished together or one
at a time on command:

- ``{"command": "hold", "count": N}``: start ``N`` deployments and hold them; answers their ids.
- ``{"command": "open_channels"}``: how many channel connections are open.
- ``{"command": "finish", "ids": [...], "gap": S}``: finish them, ``S`` seconds apart (0: at
  once); answers once the last one has finished.
- ``{"command": "finished_at", "ids": [...]}``: each one's ``time.monotonic()`` at its terminal
  status.
- ``{"command": "rss"}``: this process's resident memory in bytes.
- ``{"command": "cpu"}``: this process's CPU time so far, in seconds.
- ``{"command": "stop"}``: stop the emulator and exit.

:class:`EmulatorProcess` starts one and sends the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from benchmarks.common import resident_bytes

APPLICATION, ENVIRONMENT, REPLICA = "bench", "production", "web"


class HeldDeployments:
    """Deployments started in an emulator's state and held open until finished on command.

    The emulator's own :meth:`~airflow_provider_vapor.emulator.Faults.hold_deployments` keeps a
    task per deployment that looks every 20 ms whether the hold is lifted; at ten thousand
    deployments that alone saturates the emulator's event loop. These deployments have no task:
    finishing one changes its state and wakes the channels that follow it, in the server's loop.
    The emulator has no public call for that last step, so this class reaches its server loop
    and channel wake-up (``_loop``, ``_service._notify``) directly.

    :param emulator: a started emulator.
    """

    def __init__(self, emulator: Any):
        self.emulator = emulator
        self.state = emulator.state
        emulator.state.add_replica(APPLICATION, ENVIRONMENT, REPLICA, replicas=1)

    def hold(self, count: int) -> list[int]:
        """Start ``count`` deployments, each already ``running``; return their ids."""
        ids = []
        for _ in range(count):
            _, deployment = self.state.create_deployment(
                APPLICATION, ENVIRONMENT, REPLICA, "scale", 1
            )
            self.state.start_deployment(deployment["id"])
            ids.append(deployment["id"])
        return ids

    def finish(self, ids: Sequence[int], gap: float) -> None:
        """Finish the deployments in the server's loop, ``gap`` seconds apart; blocks until done."""
        asyncio.run_coroutine_threadsafe(self._finish(ids, gap), self.emulator._loop).result()

    async def _finish(self, ids: Sequence[int], gap: float) -> None:
        for position, deployment_id in enumerate(ids):
            if gap and position:
                await asyncio.sleep(gap)
            self.state.finish_deployment(deployment_id)
            self.emulator._service._notify(deployment_id)

    def finished_at(self, ids: Sequence[int]) -> list[float | None]:
        """Each deployment's ``time.monotonic()`` when it reached its terminal status."""
        return [self.state.deployment(deployment_id).finished_at for deployment_id in ids]


def serve(token: str, step_seconds: float, commands: IO[str], answers: IO[str]) -> None:
    """Start an emulator and answer commands until ``stop`` or the end of ``commands``."""
    from airflow_provider_vapor.emulator import VaporEmulator

    emulator = VaporEmulator(token=token, step_seconds=step_seconds).start()
    held = HeldDeployments(emulator)

    def answer(document: dict[str, Any]) -> None:
        answers.write(json.dumps(document) + "\n")
        answers.flush()

    answer({"url": emulator.url, "pid": os.getpid()})
    try:
        for line in commands:
            request = json.loads(line)
            command = request["command"]
            if command == "hold":
                answer({"ids": held.hold(int(request["count"]))})
            elif command == "open_channels":
                answer({"open": emulator.open_channels()})
            elif command == "finish":
                held.finish(request["ids"], float(request.get("gap", 0.0)))
                answer({"finished": len(request["ids"])})
            elif command == "finished_at":
                answer({"finished_at": held.finished_at(request["ids"])})
            elif command == "rss":
                answer({"rss": resident_bytes()})
            elif command == "cpu":
                answer({"cpu": time.process_time()})
            elif command == "stop":
                break
            else:
                answer({"error": f"unknown command {command!r}"})
    finally:
        emulator.stop()
    answer({"stopped": True})


class EmulatorProcess:
    """An emulator in a child process, and the commands the benchmarks send it.

    Calls block; from an event loop, run them with :func:`asyncio.to_thread`. One command is in
    flight at a time.

    :param token: the bearer token the emulator accepts.
    :param step_seconds: the emulator's step between two stages of a REST-made deployment.
    :param log: a file for the emulator's own output; none is kept when not given.
    :param collect_garbage: leave the emulator's cyclic garbage collector on. Off, the emulator
        never stops for a full collection, which takes tens of milliseconds once thousands of
        deployments are pending, at a moment no benchmark chooses.
    """

    def __init__(
        self,
        token: str,
        step_seconds: float = 3600.0,
        log: Path | None = None,
        collect_garbage: bool = True,
    ):
        self.token = token
        self._lock = threading.Lock()
        command = [sys.executable, "-m", "benchmarks.emulator_process"]
        command += [f"--token={token}", f"--step-seconds={step_seconds}"]
        if not collect_garbage:
            command.append("--no-gc")
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
        with open(log or os.devnull, "w") as output:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=output,
                text=True,
                bufsize=1,
            )
        started = self._read()
        self.url: str = started["url"]
        self.pid: int = started["pid"]

    def connection(self, **extra: Any) -> str:
        """The ``vapor`` connection to this emulator, as ``AIRFLOW_CONN_...`` takes it."""
        document = {"conn_type": "vapor", "host": self.url, "password": self.token}
        return json.dumps({**document, "extra": extra} if extra else document)

    def call(self, command: str, **arguments: Any) -> dict[str, Any]:
        """Send one command and return the emulator's answer."""
        with self._lock:
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps({"command": command, **arguments}) + "\n")
            self._process.stdin.flush()
            return self._read()

    def hold(self, count: int) -> list[int]:
        """Start ``count`` deployments and hold them open; return their ids."""
        return self.call("hold", count=count)["ids"]

    def open_channels(self) -> int:
        """How many channel connections the emulator has open."""
        return self.call("open_channels")["open"]

    def finish(self, ids: Sequence[int], gap: float = 0.0) -> None:
        """Finish the deployments, ``gap`` seconds apart; returns once all have finished."""
        self.call("finish", ids=list(ids), gap=gap)

    def finished_at(self, ids: Sequence[int]) -> list[float]:
        """Each deployment's ``time.monotonic()`` at its terminal status, in the emulator."""
        return self.call("finished_at", ids=list(ids))["finished_at"]

    def rss(self) -> int:
        """The emulator process's resident memory in bytes."""
        return self.call("rss")["rss"]

    def cpu_seconds(self) -> float:
        """The emulator process's CPU time so far, all its threads together."""
        return self.call("cpu")["cpu"]

    def stop(self) -> None:
        """Stop the emulator and wait for its process to end."""
        if self._process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.call("stop")
            self._process.wait(timeout=30)

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the emulator process ended (exit {self._process.wait()})")
        return json.loads(line)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until ``stop``; the command line takes ``--token`` and ``--step-seconds``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.emulator_process")
    parser.add_argument("--token", required=True)
    parser.add_argument("--step-seconds", type=float, default=3600.0)
    parser.add_argument("--no-gc", action="store_true", help="turn the cyclic collector off")
    arguments = parser.parse_args(argv)
    if arguments.no_gc:
        gc.disable()
    # Whatever the emulator or Airflow print goes to stderr; stdout carries only the answers.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.getLogger("airflow_provider_vapor.emulator").setLevel(logging.WARNING)
    serve(arguments.token, arguments.step_seconds, sys.stdin, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
