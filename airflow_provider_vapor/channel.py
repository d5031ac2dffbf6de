"""Following a deployment on its websocket channel, from an event loop.

The triggerer runs :func:`follow_deployment` as it is; a worker runs the same coroutine with
``asyncio.run``. What the frames mean is decided in :mod:`airflow_provider_vapor.protocol`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from airflow_provider_vapor.exceptions import (
    VaporAuthenticationError,
    VaporConfigurationError,
    VaporNotFoundError,
    VaporUnavailableError,
)
from airflow_provider_vapor.hooks.vapor import VaporConnectionSettings
from airflow_provider_vapor.protocol import FAILED, SUCCESS, TIMEOUT, DeploymentProgress

PING_TIMEOUT = 20.0
MAX_RECONNECT_WAIT = 30.0
SHORTEST_RECONNECT_WAIT = 0.1
MAX_FRAME_BYTES = 1 << 20
READ_STATUS_ATTEMPTS = 3
NOT_FOUND_CONFIRMATIONS = 3

log = logging.getLogger(__name__)


class _HideAuthorization(logging.Filter):
    """Keeps the bearer token out of the websockets library's handshake debug lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() == "authorization":
            record.args = (args[0], "***")
        return True


_protocol_log = logging.getLogger(f"{__name__}.websockets")
_protocol_log.addFilter(_HideAuthorization())


@dataclass(frozen=True)
class DeploymentOutcome:
    """How a wait for a deployment ended.

    :param deployment_id: the deployment waited for.
    :param status: ``success``, ``failed``, ``timeout``, or ``waiting``/``running`` for a
        single look at a deployment that is still going.
    :param message: the service's message for a failure, or why the wait stopped.
    :param judged_from: ``channel`` or, when the channel was gone, ``rest``.
    """

    deployment_id: int | str
    status: str
    message: str | None = None
    judged_from: str = "channel"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


JudgeFromRest = Callable[[], Awaitable[DeploymentOutcome]]
LogSink = Callable[[str], None]


async def follow_deployment(
    settings: VaporConnectionSettings,
    deployment_id: int | str,
    url: str,
    deadline: float,
    on_log: LogSink,
    judge_from_rest: JudgeFromRest | None = None,
    max_reconnect_wait: float = MAX_RECONNECT_WAIT,
) -> DeploymentOutcome:
    """Wait on the channel until the deployment succeeds or fails, or the deadline passes.

    A channel that closes before a terminal status is opened again with capped exponential
    backoff; on reconnect the server's first frame says whether the deployment already ended.
    Where the channel is gone (404), ``judge_from_rest`` decides from the REST view: a replica
    that already has its target is a success at once; one that does not is called failed only
    after the channel has answered 404 :data:`NOT_FOUND_CONFIRMATIONS` times in a row, so a
    channel that is not there yet cannot fail a deployment that is still running.

    :param settings: the connection's settings (token, TLS, timeouts).
    :param deployment_id: the deployment to follow.
    :param url: the channel's websocket URL.
    :param deadline: the wall-clock time (seconds since the epoch) at which to give up.
    :param on_log: called with each line of the deployment's output as it arrives.
    :param judge_from_rest: decides the outcome from REST when the channel is gone.
    :param max_reconnect_wait: the longest wait between two connection attempts.
    """
    progress = DeploymentProgress(deployment_id)
    failures = 0
    not_found = 0
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            return _timed_out(deployment_id, deadline, progress)
        try:
            await asyncio.wait_for(_listen(settings, url, progress, on_log), remaining)
        except asyncio.TimeoutError:
            return _timed_out(deployment_id, deadline, progress)
        except VaporNotFoundError:
            if judge_from_rest is None:
                raise
            not_found += 1
            log.warning(
                "Channel of deployment %s is gone; judging it from the REST API", deployment_id
            )
            outcome = await judge_from_rest()
            if outcome.status == SUCCESS or not_found >= NOT_FOUND_CONFIRMATIONS:
                return outcome
            problem = f"404, and the REST view says: {outcome.message}"
        except (OSError, _ChannelClosed) as error:
            not_found = 0
            problem = str(error)
        else:
            return DeploymentOutcome(deployment_id, progress.status or FAILED, progress.message)
        failures += 1
        wait = _reconnect_wait(failures, max_reconnect_wait)
        log.warning(
            "Channel of deployment %s closed before it finished (%s); reconnecting in %.1f s",
            deployment_id,
            problem,
            wait,
        )
        await asyncio.sleep(min(wait, max(0.0, deadline - time.time())))


async def read_deployment_status(
    settings: VaporConnectionSettings,
    deployment_id: int | str,
    url: str,
    attempts: int = READ_STATUS_ATTEMPTS,
) -> DeploymentOutcome:
    """Open the channel, read the status the server sends first, and close it again.

    A channel that closes, or cannot be opened, before it sends that status is opened again, up
    to ``attempts`` times in all; after that the error says what went wrong.

    :param settings: the connection's settings (token, TLS, timeouts).
    :param deployment_id: the deployment to look at.
    :param url: the channel's websocket URL.
    :param attempts: how many times to open the channel at most.
    """
    progress = DeploymentProgress(deployment_id)
    problem = "no attempt was made"
    for attempt in range(1, attempts + 1):
        try:
            await asyncio.wait_for(
                _listen(settings, url, progress, on_log=lambda line: None, first_status=True),
                settings.connect_timeout + settings.read_timeout,
            )
            if progress.status is not None:
                return DeploymentOutcome(deployment_id, progress.status, progress.message)
        except (OSError, asyncio.TimeoutError, _ChannelClosed) as error:
            problem = str(error) or type(error).__name__
        if attempt < attempts:
            wait = _reconnect_wait(attempt, MAX_RECONNECT_WAIT)
            log.warning(
                "Channel of deployment %s closed before its status (%s); reconnecting in %.1f s",
                deployment_id,
                problem,
                wait,
            )
            await asyncio.sleep(wait)
    raise VaporUnavailableError(
        f"could not read the status of deployment {deployment_id} from its channel {url} "
        f"in {attempts} attempts; the last one ended with: {problem}",
        call=f"read the status of deployment {deployment_id}",
    )


class _ChannelClosed(Exception):
    """The channel closed, or could not be opened, before the deployment finished."""


def _reconnect_wait(failures: int, longest: float) -> float:
    return max(
        SHORTEST_RECONNECT_WAIT, min(longest, 0.5 * 2 ** min(failures, 10))
    ) * random.uniform(0.5, 1)


async def _listen(
    settings: VaporConnectionSettings,
    url: str,
    progress: DeploymentProgress,
    on_log: LogSink,
    first_status: bool = False,
) -> None:
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    try:
        async with _connect(settings, url) as websocket:
            async for frame in websocket:
                for line in progress.receive(frame):
                    on_log(line)
                if progress.is_finished or (first_status and progress.status is not None):
                    return
    except ConnectionClosed as closed:
        raise _ChannelClosed(f"close code {closed.rcvd.code if closed.rcvd else 'none'}") from None
    except InvalidHandshake as error:
        raise _ChannelClosed(type(error).__name__) from None
    except asyncio.TimeoutError:
        # Only the opening handshake times out in here; the caller's deadline cancels instead.
        raise _ChannelClosed(f"no handshake within {settings.connect_timeout} s") from None
    raise _ChannelClosed("closed without a final status")


class _connect:
    """Opens the channel with the connection's token and TLS settings."""

    def __init__(self, settings: VaporConnectionSettings, url: str):
        self.settings = settings
        self.url = url

    async def __aenter__(self) -> Any:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        settings = self.settings
        opening = connect(
            self.url,
            additional_headers=settings.headers,
            user_agent_header=None,
            ssl=settings.ssl_context() if self.url.startswith("wss:") else None,
            open_timeout=settings.connect_timeout,
            ping_interval=settings.ping_interval or None,
            ping_timeout=PING_TIMEOUT,
            compression=None,
            close_timeout=1,
            max_size=MAX_FRAME_BYTES,
            max_queue=4,
            logger=_protocol_log,
        )
        try:
            # Only the open connection is kept; the opener and its arguments are freed, about a
            # kilobyte for each of the thousands of channels one triggerer may hold.
            self._websocket = await opening
        except ssl.SSLCertVerificationError as error:
            raise VaporConfigurationError(
                f"TLS verification of the deployment channel {self.url} failed "
                f"({error.verify_message}). Set ca_bundle in the extras of connection "
                f"{settings.conn_id!r} to the service's CA, or verify_ssl to false."
            ) from None
        except InvalidStatus as error:
            status = error.response.status_code
            if status in (401, 403):
                raise VaporAuthenticationError(
                    f"the deployment channel {self.url} refused the token ({status}); check the "
                    f"password of connection {settings.conn_id!r}",
                    http_status=status,
                ) from None
            if status == 404:
                raise VaporNotFoundError(
                    f"the deployment channel {self.url} does not exist (404): the deployment is "
                    "unknown or has expired",
                    http_status=status,
                ) from None
            raise
        return self._websocket

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._websocket.__aexit__(*exc_info)


def _timed_out(
    deployment_id: int | str, deadline: float, progress: DeploymentProgress
) -> DeploymentOutcome:
    last = progress.status or "unknown"
    return DeploymentOutcome(
        deployment_id,
        TIMEOUT,
        f"deployment {deployment_id} did not finish by the deadline "
        f"({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(deadline))}); last status: {last}",
    )


def judge_replica(
    deployment_id: int | str,
    replica: dict[str, Any],
    pods: list[dict[str, Any]],
    replicas: int | None = None,
    plan: str | None = None,
) -> DeploymentOutcome:
    """Decide a deployment's outcome from the replica's REST view once its channel is gone.

    It succeeded when the replica has the target count or plan and every pod is ``Running``.
    """
    problems = []
    if replicas is not None and replica.get("replicas") != replicas:
        problems.append(f"the replica has {replica.get('replicas')} replicas, not {replicas}")
    current_plan = (replica.get("plan") or {}).get("slug")
    if plan is not None and current_plan != plan:
        problems.append(f"the replica is on plan {current_plan!r}, not {plan!r}")
    not_running = [pod.get("token") for pod in pods if pod.get("status") != "Running"]
    if not_running:
        problems.append(f"pods not running: {', '.join(map(str, not_running))}")
    if problems:
        return DeploymentOutcome(deployment_id, FAILED, "; ".join(problems), judged_from="rest")
    return DeploymentOutcome(deployment_id, SUCCESS, None, judged_from="rest")
