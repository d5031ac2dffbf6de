"""The emulator's server: the REST API and the deployment channel, and the thread they run in.

Requests are routed on the raw path as sent, split on ``/`` before each segment is
percent-decoded, so that an encoded ``/``, ``?``, ``#`` or ``..`` inside an application,
environment or replica name stays part of that name. Starlette's router decodes the path first,
so the application below dispatches by itself and uses Starlette only for requests, responses and
websockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from airflow_provider_vapor.emulator.faults import (
    ChannelFaults,
    DeploymentOutcome,
    Faults,
    RequestFault,
)
from airflow_provider_vapor.emulator.state import (
    ACTIONS,
    PLANS,
    EmulatedDeployment,
    EmulatorState,
    RecordedRequest,
    UnknownResourceError,
)
from airflow_provider_vapor.protocol import (
    DEFAULT_CHANNEL_PATH,
    NORMAL_CLOSURE,
    SUCCESS,
    TERMINAL_STATUSES,
)

log = logging.getLogger(__name__)

API_PREFIX = ("v2", "apps", "replicas")
RESPONSE_SHAPES = ("deployment", "activity")
GOING_AWAY = 1001
INTERNAL_ERROR = 1011
LARGE_BODY_BYTES = 5 * 1024 * 1024
_HOLD_POLL_SECONDS = 0.02
_SHUTDOWN_GRACE_SECONDS = 1.0
_READS = ("view", "status", "logs")
_HTML_ERROR_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_TRUNCATED_JSON = b'{"replica": {"status": "created", "name": "web", "replicas": 1, "environ'


@dataclass(frozen=True)
class _Route:
    action: str | None
    where: tuple[str, str, str] | None = None
    pod: str = ""

    @property
    def application(self) -> str | None:
        return self.where[0] if self.where else None

    @property
    def environment(self) -> str | None:
        return self.where[1] if self.where else None

    @property
    def replica(self) -> str | None:
        return self.where[2] if self.where else None


def split_path(raw_path: bytes) -> tuple[str, tuple[str, ...]]:
    """Split a raw request path into its text as sent and its percent-decoded segments."""
    text = raw_path.decode("utf-8", "replace")
    return text, tuple(unquote(part, errors="replace") for part in text.split("/")[1:])


def _route(segments: tuple[str, ...]) -> _Route:
    if segments[:3] != API_PREFIX or len(segments) < 6:
        return _Route(None)
    application, environment, replica, *rest = segments[3:]
    where = (application, environment, replica)
    if not rest:
        return _Route("view", where)
    if len(rest) == 1 and rest[0] in (*ACTIONS, "status"):
        return _Route(rest[0], where)
    if len(rest) == 2 and rest[1] == "logs":
        return _Route("logs", where, rest[0])
    return _Route(None)


def _channel_id(raw_path: str) -> int | None:
    prefix, _, suffix = DEFAULT_CHANNEL_PATH.partition("{deployment_id}")
    if not raw_path.startswith(prefix) or not raw_path.endswith(suffix):
        return None
    segment = raw_path[len(prefix) : len(raw_path) - len(suffix)]
    text = unquote(segment, errors="replace")
    if "/" in segment or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _error(status: int, reason: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": True, "reason": reason}, status_code=status, headers=headers)


def _json_or_none(payload: bytes) -> Any:
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.response = _error(status, reason)


class EmulatorService:
    """The emulated service's behaviour: answers REST calls, runs deployments, serves channels.

    It runs inside the server's event loop; everything a test needs is reachable from
    :class:`VaporEmulator`.

    :param state: the data it serves and changes.
    :param faults: the faults it applies.
    :param token: the bearer token every request must carry.
    :param step_seconds: the time between two steps of a deployment.
    :param response_shape: ``deployment`` or ``activity``, the shape of a change's response.
    :param deployment_outcome: how deployments end unless a fault says otherwise.
    """

    def __init__(
        self,
        state: EmulatorState,
        faults: Faults,
        token: str,
        step_seconds: float,
        response_shape: str,
        deployment_outcome: str,
    ):
        self.state = state
        self.faults = faults
        self.base_url = ""
        self.abort_connection: Callable[[Scope], bool] = lambda scope: False
        self._expected = f"Bearer {token}".encode()
        self._step_seconds = step_seconds
        self._response_shape = response_shape
        self._default_outcome = deployment_outcome
        self._waiters: dict[int, set[asyncio.Future[None]]] = {}
        self._open_channels = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = await self.rest(Request(scope, receive))
            await response(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.channel(WebSocket(scope, receive, send))

    def _authorized(self, header: str | None) -> bool:
        if header is None:
            return False
        scheme, _, credentials = header.strip().partition(" ")
        given = f"Bearer {credentials.strip()}".encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self._expected)

    async def rest(self, request: Request) -> Response:
        """Answer one REST request, applying the first matching armed fault."""
        received = time.monotonic()
        raw_path, segments = split_path(request.scope.get("raw_path") or b"/")
        method = request.method
        payload = await request.body()
        route = _route(segments)
        record = functools.partial(
            RecordedRequest,
            method=method,
            raw_path=raw_path,
            segments=segments,
            at=received,
            body=_json_or_none(payload),
            authorized=self._authorized(request.headers.get("authorization")),
            query=request.scope.get("query_string", b"").decode("latin-1"),
            application=route.application,
            environment=route.environment,
            replica=route.replica,
            action=route.action,
        )
        fault = self.faults.take_request_fault(method, raw_path)
        if fault is not None:
            return await self._answer_with_fault(fault, request, route, payload, record)

        response, deployment_id = self._answer(method, route, payload, record.keywords)
        self.state.record(record(status=response.status_code, deployment_id=deployment_id))
        return response

    async def _answer_with_fault(
        self,
        fault: RequestFault,
        request: Request,
        route: _Route,
        payload: bytes,
        record: functools.partial[RecordedRequest],
    ) -> Response:
        if fault.kind == "hang":
            self.state.record(record(status=0))
            await self._stopping.wait()
            self.abort_connection(request.scope)
            await asyncio.sleep(0)
            return Response(status_code=503)
        if fault.kind == "fail":
            response = _injected_failure(fault)
            self.state.record(record(status=response.status_code))
            return response
        if fault.kind == "malformed" and not fault.apply:
            response = _malformed(fault.malformed, None)
            self.state.record(record(status=response.status_code))
            return response
        if fault.kind == "delay" and not fault.apply:
            await self._sleep(fault.seconds)

        response, deployment_id = self._answer(request.method, route, payload, record.keywords)
        if fault.kind == "malformed":
            response = _malformed(fault.malformed, response)
        self.state.record(record(status=response.status_code, deployment_id=deployment_id))
        if fault.kind == "delay" and fault.apply:
            await self._sleep(fault.seconds)
        return response

    def _answer(
        self, method: str, route: _Route, payload: bytes, recorded: Mapping[str, Any]
    ) -> tuple[Response, int | None]:
        if not recorded["authorized"]:
            reason = "missing or invalid bearer token; send 'Authorization: Bearer <token>'"
            return _error(401, reason, {"WWW-Authenticate": "Bearer"}), None
        where = route.where
        if route.action is None or where is None:
            raw_path = recorded["raw_path"]
            return _error(404, f"no such endpoint: {method} {raw_path}"), None
        expected = "GET" if route.action in _READS else "PATCH"
        if method != expected:
            reason = f"{route.action} takes {expected}, not {method}"
            return _error(405, reason, {"Allow": expected}), None
        try:
            if route.action == "view":
                return JSONResponse(self.state.replica(*where)), None
            if route.action == "status":
                return JSONResponse(self.state.pods(*where)), None
            if route.action == "logs":
                return self._pod_log(where, route.pod, recorded["query"]), None
            self.state.replica(*where)
            target = _target(route.action, payload)
            return self._change(where, route.action, target)
        except UnknownResourceError as error:
            return _error(404, error.message), None
        except _BadRequest as error:
            return error.response, None

    def _pod_log(self, where: tuple[str, str, str], pod: str, query: str) -> Response:
        request_query = dict(parse_qsl(query, keep_blank_values=True))
        lines_text = request_query.get("lines", "100")
        if not (lines_text.isascii() and lines_text.isdigit()):
            raise _BadRequest(400, f"'lines' must be a non-negative integer, got {lines_text!r}")
        timestamps_text = request_query.get("timestamps", "false").lower()
        if timestamps_text not in ("true", "false", "1", "0"):
            raise _BadRequest(400, f"'timestamps' must be true or false, got {timestamps_text!r}")
        lines = self.state.pod_log(
            *where, pod, lines=int(lines_text), timestamps=timestamps_text in ("true", "1")
        )
        return PlainTextResponse("".join(f"{line}\n" for line in lines))

    def _change(
        self, where: tuple[str, str, str], action: str, target: int | str | None
    ) -> tuple[Response, int]:
        outcome = self.faults.take_deployment_outcome(self._default_outcome)
        replica, deployment = self.state.create_deployment(
            *where,
            action,
            target,
            outcome=outcome.status,
            message=outcome.message,
            immediate=outcome.immediate,
        )
        deployment_id = deployment["id"]
        log.info("deployment %s created: %s", deployment_id, self.state.script(deployment_id)[0])
        if outcome.immediate:
            log.info("deployment %s finished: %s", deployment_id, deployment["status"])
        else:
            task = asyncio.get_running_loop().create_task(self._run(deployment_id, outcome))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._response_shape == "activity":
            tracking_url = self.base_url + DEFAULT_CHANNEL_PATH.format(deployment_id=deployment_id)
            body = {
                "replica": replica,
                "activity": {"id": deployment_id, "trackingURL": tracking_url},
            }
        else:
            body = {"replica": replica, "deployment": deployment}
        return JSONResponse(body), deployment_id

    async def _run(self, deployment_id: int, outcome: DeploymentOutcome) -> None:
        if not await self._step():
            return
        self.state.start_deployment(deployment_id)
        self._notify(deployment_id)
        for text in self.state.script(deployment_id):
            if not await self._step():
                return
            self.state.append_log(deployment_id, text)
            self._notify(deployment_id)
        if outcome.never_finish:
            return
        while self.faults.holding:
            if not await self._sleep(_HOLD_POLL_SECONDS):
                return
        if not await self._step():
            return
        self.state.finish_deployment(deployment_id)
        self._notify(deployment_id)
        status = self.state.deployment(deployment_id).status
        log.info("deployment %s finished: %s", deployment_id, status)

    async def _step(self) -> bool:
        return await self._sleep(self._step_seconds)

    async def _sleep(self, seconds: float) -> bool:
        """Wait, ending early when the emulator stops; whether it is still running."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return not self._stopping.is_set()

    def _notify(self, deployment_id: int) -> None:
        for waiter in self._waiters.pop(deployment_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def _next_change(self, deployment_id: int, listening: asyncio.Future[Any]) -> None:
        """Wait until the deployment publishes a frame, the client speaks or leaves, or the
        emulator stops: one future per connection, woken by whichever comes first."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake(_: object) -> None:
            if not waiter.done():
                waiter.set_result(None)

        self._waiters.setdefault(deployment_id, set()).add(waiter)
        listening.add_done_callback(wake)
        try:
            await waiter
        finally:
            listening.remove_done_callback(wake)
            self._waiters.get(deployment_id, set()).discard(waiter)

    @property
    def open_channels(self) -> int:
        """How many channel connections are open right now."""
        return self._open_channels

    async def channel(self, websocket: WebSocket) -> None:
        """Serve one channel connection: refuse it, or stream its deployment's frames."""
        received = time.monotonic()
        raw_path, segments = split_path(websocket.scope.get("raw_path") or b"/")
        deployment_id = _channel_id(raw_path)
        authorized = self._authorized(websocket.headers.get("authorization"))
        record = functools.partial(
            RecordedRequest,
            method="GET",
            raw_path=raw_path,
            segments=segments,
            at=received,
            authorized=authorized,
            query=websocket.scope.get("query_string", b"").decode("latin-1"),
            action="channel" if deployment_id is not None else None,
            deployment_id=deployment_id,
            websocket=True,
        )

        if not authorized:
            self.state.record(record(status=401))
            reason = "missing or invalid bearer token; send 'Authorization: Bearer <token>'"
            await websocket.send_denial_response(_error(401, reason))
            return
        if (
            deployment_id is None
            or not self.state.has_deployment(deployment_id)
            or self.faults.take_channel_not_found()
        ):
            self.state.record(record(status=404))
            reason = f"no deployment channel at {raw_path}"
            await websocket.send_denial_response(_error(404, reason))
            return

        faults = self.faults.take_channel_faults()
        await websocket.accept()
        self.state.record(record(status=101))
        self._open_channels += 1
        try:
            await self._stream(websocket, deployment_id, _ChannelSender(websocket, faults, self))
        except WebSocketDisconnect:
            pass
        finally:
            self._open_channels -= 1

    async def _stream(
        self, websocket: WebSocket, deployment_id: int, sender: _ChannelSender
    ) -> None:
        for frame in sender.faults.frames_first:
            if not await sender.send(frame):
                return
        first, index, _ = self.state.current_frame(deployment_id)
        if not await sender.send(first):
            return
        listening = asyncio.ensure_future(websocket.receive())
        try:
            while True:
                frames, finished = self.state.frames_since(deployment_id, index)
                if frames:
                    index += len(frames)
                    for frame in frames:
                        if not await sender.send(frame):
                            return
                    continue
                if finished:
                    await websocket.close(NORMAL_CLOSURE)
                    return
                if self._stopping.is_set():
                    await websocket.close(GOING_AWAY)
                    return
                if listening.done():
                    if listening.result()["type"] == "websocket.disconnect":
                        return
                    listening = asyncio.ensure_future(websocket.receive())
                await self._next_change(deployment_id, listening)
        finally:
            listening.cancel()

    def begin_shutdown(self) -> None:
        """Stop every deployment and wake every waiting channel and request; in the loop."""
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        for deployment_id in list(self._waiters):
            self._notify(deployment_id)


class _ChannelSender:
    """Sends one connection's frames, cutting the connection where a channel fault says."""

    def __init__(self, websocket: WebSocket, faults: ChannelFaults, service: EmulatorService):
        self.websocket = websocket
        self.faults = faults
        self._service = service
        self._sent = 0

    async def send(self, frame: str | bytes) -> bool:
        """Send a frame unless the connection must end first; whether it is still open."""
        stop_after = self.faults.stop_after
        if stop_after is not None and self._sent >= stop_after:
            await self._end_early()
            return False
        if isinstance(frame, bytes):
            await self.websocket.send_bytes(frame)
        else:
            await self.websocket.send_text(frame)
        self._sent += 1
        return True

    async def _end_early(self) -> None:
        if self.faults.drop_after is not None and self.faults.drop_after == self.faults.stop_after:
            if self._service.abort_connection(self.websocket.scope):
                return
            await self.websocket.close(INTERNAL_ERROR)
            return
        await self.websocket.close(self.faults.close_code)


def _target(action: str, payload: bytes) -> int | str | None:
    if action == "reboot":
        return None
    example = '{"replicas": 1}' if action == "scale" else '{"plan": "small"}'
    try:
        body = json.loads(payload) if payload else None
    except ValueError:
        raise _BadRequest(400, f"the body is not valid JSON; send e.g. {example}") from None
    if not isinstance(body, dict):
        raise _BadRequest(400, f"the body must be a JSON object like {example}")
    if action == "scale":
        value = body.get("replicas")
        if not _is_count(value):
            shown = json.dumps(value) if "replicas" in body else "nothing"
            raise _BadRequest(400, f"'replicas' must be a non-negative integer, got {shown}")
        return value
    plan = body.get("plan")
    if not isinstance(plan, str):
        shown = json.dumps(plan) if "plan" in body else "nothing"
        raise _BadRequest(400, f"'plan' must be a plan slug string, got {shown}")
    if plan not in PLANS:
        raise _BadRequest(422, f"unknown plan {plan!r}; known plans: {', '.join(PLANS)}")
    return plan


def _injected_failure(fault: RequestFault) -> Response:
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    body = fault.body
    if body is None:
        try:
            reason = HTTPStatus(fault.status).phrase.lower()
        except ValueError:
            reason = f"status {fault.status}"
        content: bytes = json.dumps({"error": True, "reason": reason}).encode()
    elif isinstance(body, bytes):
        content = body
    elif isinstance(body, str):
        content = body.encode()
    else:
        content = json.dumps(body).encode()
    return Response(
        content, status_code=fault.status, headers=headers, media_type=fault.content_type
    )


def _malformed(kind: str, answered: Response | None) -> Response:
    if kind == "html":
        return Response(_HTML_ERROR_PAGE, status_code=502, media_type="text/html")
    if kind == "large":
        filler = "x" * (LARGE_BODY_BYTES - 40)
        body = json.dumps({"error": True, "reason": filler})
        return Response(body, status_code=500, media_type="application/json")
    content = bytes(answered.body) if answered is not None else b""
    truncated = content[: len(content) // 2] if len(content) > 2 else _TRUNCATED_JSON
    return Response(truncated, status_code=200, media_type="application/json")


class VaporEmulator:
    """A local Vapor Cloud: the replica REST API and the deployment channel on a real socket.

    It serves from a background thread with its own event loop, so a test can call it with
    blocking clients. Use it as a context manager, or call :meth:`start` and :meth:`stop`. An
    emulator runs once; make a new one to start again.

    .. code-block:: python

        with VaporEmulator() as emulator:
            os.environ["AIRFLOW_CONN_VAPOR_DEFAULT"] = emulator.connection_uri
            ...
            assert emulator.replica("my-app", "production", "web")["replicas"] == 3

    :param token: the bearer token requests must carry.
    :param port: the TCP port; 0 picks a free one, see :attr:`port`.
    :param step_seconds: the time between two steps of a deployment (``waiting`` to
        ``running``, each log frame, the terminal status).
    :param response_shape: ``deployment`` to answer changes with a ``deployment`` object as the
        seed examples do, ``activity`` to answer with ``activity.id`` and ``trackingURL``.
    :param host: the address to listen on.
    :param ssl_certfile: a PEM certificate; serve HTTPS and WSS with it.
    :param ssl_keyfile: the certificate's private key, when not in ``ssl_certfile``.
    :param seed: start with the sample applications ``my-app``, ``shop``, ``billing`` and
        ``search``; otherwise empty, see ``state.add_replica``.
    :param deployment_outcome: how deployments end, ``success`` or ``failed``, unless
        ``faults.deployment_outcome`` says otherwise for one of them.
    """

    def __init__(
        self,
        token: str = "emulator-token",
        port: int = 0,
        step_seconds: float = 0.2,
        response_shape: str = "deployment",
        host: str = "127.0.0.1",
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        *,
        seed: bool = True,
        deployment_outcome: str = SUCCESS,
    ):
        if response_shape not in RESPONSE_SHAPES:
            raise ValueError(
                f"response_shape must be one of {', '.join(RESPONSE_SHAPES)}, "
                f"got {response_shape!r}"
            )
        if deployment_outcome not in TERMINAL_STATUSES:
            raise ValueError(
                f"deployment_outcome must be one of {', '.join(sorted(TERMINAL_STATUSES))}, "
                f"got {deployment_outcome!r}"
            )
        if step_seconds < 0:
            raise ValueError(f"step_seconds must not be negative, got {step_seconds!r}")
        if not token:
            raise ValueError("token must not be empty")
        self.host = host
        self.step_seconds = step_seconds
        self.response_shape = response_shape
        self.ssl_certfile = ssl_certfile
        self.ssl_keyfile = ssl_keyfile
        self.state = EmulatorState(seed=seed)
        self.faults = Faults()
        self._token = token
        self._port = port
        self._service = EmulatorService(
            self.state, self.faults, token, step_seconds, response_shape, deployment_outcome
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._stopped = False

    def __repr__(self) -> str:
        where = self.url if self._port else f"{self.host}, not started"
        return f"<VaporEmulator {where}>"

    def __enter__(self) -> VaporEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def token(self) -> str:
        """The bearer token requests must carry."""
        return self._token

    @property
    def port(self) -> int:
        """The TCP port served; known once :meth:`start` has returned."""
        if not self._port:
            raise RuntimeError("the emulator picks its port when it starts; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8080``; ``https`` with a certificate."""
        scheme = "https" if self.ssl_certfile else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def connection_uri(self) -> str:
        """The ``vapor`` connection to this emulator, as JSON for ``AIRFLOW_CONN_...``."""
        return json.dumps({"conn_type": "vapor", "host": self.url, "password": self._token})

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in the order they were answered.

        Channel handshakes are among them, with ``websocket`` true, ``method`` ``GET`` and
        ``status`` 101 when accepted; :attr:`channel_requests` lists only those.
        """
        return self.state.requests

    @property
    def channel_requests(self) -> list[RecordedRequest]:
        """Every channel handshake received so far; ``status`` 101 means accepted."""
        return self.state.channel_requests

    def mutations(
        self,
        action: str | None = None,
        application: str | None = None,
        environment: str | None = None,
        replica: str | None = None,
    ) -> list[RecordedRequest]:
        """The scale, resize and reboot requests that were applied, i.e. created a deployment.

        Requests answered with an injected failure are not among them; a request delayed with
        ``apply=True`` is, even when its client gave up waiting.

        :param action: only ``scale``, ``resize`` or ``reboot``.
        :param application: only this application.
        :param environment: only this environment.
        :param replica: only this replica.
        """
        return self.state.mutations(action, application, environment, replica)

    def deployment(self, deployment_id: int) -> EmulatedDeployment:
        """A snapshot of one deployment.

        :raises LookupError: when there is no such deployment.
        """
        return self.state.deployment(int(deployment_id))

    def replica(self, application: str, environment: str, replica: str) -> dict[str, Any]:
        """The replica as ``GET /v2/apps/replicas/APPLICATION/ENVIRONMENT/REPLICA`` returns it.

        :raises LookupError: when the application, environment or replica is unknown.
        """
        return self.state.replica(application, environment, replica)

    def wait_for_deployment(self, deployment_id: int, timeout: float = 10) -> str:
        """Block until a deployment ends; returns ``success`` or ``failed``.

        :param deployment_id: the deployment to wait for.
        :param timeout: seconds to wait at most.
        :raises TimeoutError: when it has not ended in time.
        """
        return self.state.wait_for_deployment(int(deployment_id), timeout)

    def open_channels(self) -> int:
        """How many channel connections are open right now."""
        return self._service.open_channels

    def hold(self, held: bool = True) -> None:
        """Hold deployments open before their terminal status, or release them.

        The same as ``faults.hold_deployments()`` and ``faults.release_deployments()``.
        """
        if held:
            self.faults.hold_deployments()
        else:
            self.faults.release_deployments()

    def start(self) -> VaporEmulator:
        """Bind the socket and serve from a background thread; returns once it accepts."""
        if self._thread is not None or self._stopped:
            raise RuntimeError("this emulator was already started; make a new one")
        listener = _bind(self.host, self._port)
        self._port = listener.getsockname()[1]
        self._service.base_url = self.url
        config = uvicorn.Config(
            self._service,
            log_level="warning",
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            proxy_headers=False,
            server_header=False,
            backlog=_BACKLOG,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve_forever,
            args=(config, listener, ready),
            name=f"vapor-emulator-{self._port}",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        if self._failure is not None:
            self._thread.join()
            self._stopped = True
            raise RuntimeError(f"the Vapor emulator could not start: {self._failure}") from (
                self._failure
            )
        log.info("Vapor emulator serving at %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving: end deployments, close every connection and join the thread."""
        thread, loop, stop_requested = self._thread, self._loop, self._stop_requested
        if thread is None or self._stopped:
            return
        self._stopped = True
        if loop is not None and stop_requested is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_requested.set)
        thread.join()

    def _serve_forever(
        self, config: uvicorn.Config, listener: socket.socket, ready: threading.Event
    ) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(config, listener, ready))
        except BaseException as error:
            self._failure = error
            listener.close()
        finally:
            _cancel_remaining(loop)
            loop.close()
            ready.set()

    async def _serve(
        self, config: uvicorn.Config, listener: socket.socket, ready: threading.Event
    ) -> None:
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._service.abort_connection = functools.partial(_abort, server.server_state)
        await server.startup(sockets=[listener])
        ready.set()
        await self._stop_requested.wait()
        await self._shutdown(server)

    async def _shutdown(self, server: uvicorn.Server) -> None:
        self._service.begin_shutdown()
        for listening in server.servers:
            listening.close()
        await asyncio.sleep(0)
        for connection in list(server.server_state.connections):
            connection.shutdown()
        deadline = time.monotonic() + _SHUTDOWN_GRACE_SECONDS
        while server.server_state.tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        for task in list(server.server_state.tasks):
            task.cancel()
        await asyncio.sleep(0)


_BACKLOG = 4096


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(_BACKLOG)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


def _abort(server_state: Any, scope: Scope) -> bool:
    """Cut the TCP connection a request or channel arrived on, without any goodbye."""
    client = scope.get("client")
    if client is None:
        return False
    for connection in list(server_state.connections):
        transport = getattr(connection, "transport", None)
        if transport is not None and getattr(connection, "client", None) == tuple(client):
            transport.abort()
            return True
    return False


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
