"""Run the Vapor Cloud emulator in the foreground until Ctrl-C or SIGTERM.

``python -m airflow_provider_vapor.emulator --port 8080`` prints the base URL, the token and an
``export AIRFLOW_CONN_VAPOR_DEFAULT=...`` line to copy into the shell that runs Airflow.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import shlex
import signal
import sys
import threading
from collections.abc import Sequence

from airflow_provider_vapor.emulator.app import RESPONSE_SHAPES, VaporEmulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_vapor.emulator",
        description="Serve a local Vapor Cloud replica API and deployment channel.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--token", help="bearer token to accept; a random one if not given")
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=0.2,
        help="time between two steps of a deployment",
    )
    parser.add_argument(
        "--response-shape",
        choices=RESPONSE_SHAPES,
        default="deployment",
        help="answer changes with a 'deployment' object or an 'activity' with a trackingURL",
    )
    parser.add_argument("--ssl-certfile", help="PEM certificate; serve HTTPS and WSS")
    parser.add_argument("--ssl-keyfile", help="private key of --ssl-certfile")
    parser.add_argument(
        "--no-seed", action="store_true", help="start without the sample applications"
    )
    parser.add_argument(
        "--deployment-outcome",
        choices=("success", "failed"),
        default="success",
        help="how every deployment ends",
    )
    return parser


def _log_to_stderr() -> None:
    """Send the emulator's own log to stderr, so that stdout carries only what to copy."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    package_log = logging.getLogger("airflow_provider_vapor.emulator")
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    package_log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until interrupted; returns the process exit status.

    :param argv: the command line arguments, ``sys.argv[1:]`` when not given.
    """
    arguments = _parser().parse_args(argv)
    _log_to_stderr()
    token = arguments.token or secrets.token_urlsafe(24)
    emulator = VaporEmulator(
        token=token,
        port=arguments.port,
        step_seconds=arguments.step_seconds,
        response_shape=arguments.response_shape,
        host=arguments.host,
        ssl_certfile=arguments.ssl_certfile,
        ssl_keyfile=arguments.ssl_keyfile,
        seed=not arguments.no_seed,
        deployment_outcome=arguments.deployment_outcome,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    emulator.start()
    try:
        print(f"Vapor Cloud emulator listening on {emulator.url}", flush=True)
        print(f"token: {token}", flush=True)
        print(
            f"export AIRFLOW_CONN_VAPOR_DEFAULT={shlex.quote(emulator.connection_uri)}",
            flush=True,
        )
        print("Press Ctrl-C to stop.", flush=True)
        while not stop.wait(1):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
