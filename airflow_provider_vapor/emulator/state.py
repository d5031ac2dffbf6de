"""The emulator's in-memory Vapor Cloud: applications, replicas, plans, pods and deployments.

Everything here is plain data behind one lock, so the server thread can change it while a test in
another thread reads it. Reads return snapshots (dicts shaped like the REST responses, or frozen
dataclasses) that never change under the reader.
"""

from __future__ import annotations

import copy
import itertools
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from airflow_provider_vapor.protocol import (
    FAILED,
    RUNNING,
    SUCCESS,
    TERMINAL_STATUSES,
    WAITING,
    status_frame,
)

FIRST_DEPLOYMENT_ID = 239
USER_ID = "ACBCCDC5-BBF2-414A-BB0E-5C27C4B4ED04"
REGION: dict[str, Any] = {
    "id": 1,
    "description": "Digital Ocean - New York City",
    "country": "United States",
    "providerRegion": "nyc1",
    "provider": "Digital Ocean",
    "name": "do-nyc1",
}
ACTIONS = ("scale", "resize", "reboot")
IDLE = "created"
UPDATING = "updating"
DEFAULT_FAILURE_MESSAGE = "pods did not become ready"


def _plan(product_id: int, plan_id: int, slug: str, name: str, memory: int, price: str) -> dict:
    return {
        "productID": product_id,
        "slug": slug,
        "id": plan_id,
        "description": "",
        "details": {"memory": memory},
        "price": price,
        "name": name,
    }


PLANS: dict[str, dict[str, Any]] = {
    plan["slug"]: plan
    for plan in (
        _plan(1, 1, "free", "Free", 128, "0"),
        _plan(2, 3, "dev-free", "Dev - Free", 128, "0"),
        _plan(2, 4, "tiny", "Dev - Tiny", 192, "0"),
        _plan(2, 5, "small", "Dev - Small", 256, "0"),
        _plan(3, 6, "medium", "Standard - Medium", 512, "15"),
        _plan(3, 7, "large", "Standard - Large", 1024, "30"),
    )
}

_SEED_ENVIRONMENT_IDS = {
    ("my-app", "production"): "8D0F0E6A-583F-4CAA-9FAC-91AADDC828CD",
    ("my-app", "staging"): "CC3A273A-4BCC-4A6D-9C17-5FD011726294",
}
_SEED_REPLICAS = (
    ("my-app", "production", "web", 19, 1, "small", "7815792"),
    ("my-app", "staging", "web", 3, 1, "small", "267d7e7"),
    ("my-app", "production", "worker", 20, 2, "tiny", "5c1e0a9"),
    ("shop", "production", "web", 21, 2, "small", "a41f2c7"),
    ("billing", "production", "web", 22, 1, "medium", "0be93d4"),
    ("search", "production", "web", 23, 3, "large", "e7d2b16"),
)
_NODES = ("node-1", "node-2", "node-3")


class UnknownResourceError(LookupError):
    """An application, environment, replica, pod or deployment that the emulator does not hold.

    :param kind: what is unknown: ``application``, ``environment``, ``replica``, ``pod`` or
        ``deployment``.
    :param value: the name or id that was asked for.
    :param message: the sentence the REST error body carries.
    """

    def __init__(self, kind: str, value: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.value = value
        self.message = message


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator received, as a test can inspect it afterwards.

    :param method: the HTTP method (``GET`` for a channel handshake).
    :param raw_path: the path as sent, percent-encoding kept, without the query string.
    :param segments: the path's segments, each percent-decoded on its own.
    :param status: the HTTP status answered; 101 for an accepted channel, 0 for a request the
        emulator was told to leave unanswered.
    :param at: ``time.monotonic()`` when the request arrived.
    :param body: the parsed JSON body, or ``None`` when there was none or it was not JSON.
    :param authorized: whether the request carried the emulator's bearer token.
    :param query: the raw query string.
    :param application: the application segment, when the path is a replica path.
    :param environment: the environment segment, when the path is a replica path.
    :param replica: the replica segment, when the path is a replica path.
    :param action: ``view``, ``scale``, ``resize``, ``reboot``, ``status``, ``logs`` or
        ``channel``; ``None`` for a path the API does not have.
    :param deployment_id: the deployment the request created (or, for a channel, followed).
    :param websocket: whether this was a channel handshake rather than a REST call.
    """

    method: str
    raw_path: str
    segments: tuple[str, ...]
    status: int
    at: float
    body: Any = None
    authorized: bool = False
    query: str = ""
    application: str | None = None
    environment: str | None = None
    replica: str | None = None
    action: str | None = None
    deployment_id: int | None = None
    websocket: bool = False


@dataclass(frozen=True)
class EmulatedDeployment:
    """A snapshot of one deployment.

    :param id: the deployment id, as the REST response gives it.
    :param action: ``scale``, ``resize`` or ``reboot``.
    :param status: ``waiting``, ``running``, ``success`` or ``failed``.
    :param message: why a failed deployment failed.
    :param target: the replica count of a scale, the plan slug of a resize, ``None`` for a reboot.
    :param application: the application's slug.
    :param environment: the environment's name.
    :param replica: the replica's name.
    :param log: every log line the deployment has written so far.
    :param frames: every channel frame the deployment has published so far, in order.
    :param created_at: ``time.monotonic()`` when the deployment was created.
    :param finished_at: ``time.monotonic()`` when it reached a terminal status.
    """

    id: int
    action: str
    status: str
    message: str | None
    target: int | str | None
    application: str
    environment: str
    replica: str
    log: tuple[str, ...]
    frames: tuple[str, ...]
    created_at: float
    finished_at: float | None

    @property
    def is_finished(self) -> bool:
        """Whether the deployment reached ``success`` or ``failed``."""
        return self.status in TERMINAL_STATUSES


@dataclass
class _Pod:
    token: str
    node: str
    log: list[tuple[str, str]] = field(default_factory=list)
    status: str = "Running"
    restart_count: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "status": self.status,
            "restartCount": self.restart_count,
            "node": self.node,
        }


@dataclass
class _Replica:
    id: int
    name: str
    application: str
    environment: str
    environment_id: str
    plan: str
    version: str
    pods: list[_Pod]
    active_deployments: int = 0

    @property
    def where(self) -> str:
        return f"{self.name} in {self.application}/{self.environment}"

    def view(self, with_plan: bool = True) -> dict[str, Any]:
        document: dict[str, Any] = {
            "status": UPDATING if self.active_deployments else IDLE,
            "name": self.name,
            "replicas": len(self.pods),
            "environmentID": self.environment_id,
            "version": self.version,
            "id": self.id,
        }
        if with_plan:
            document["plan"] = copy.deepcopy(PLANS[self.plan])
            document["region"] = dict(REGION)
        return document


@dataclass
class _Deployment:
    id: int
    action: str
    target: int | str | None
    replica: _Replica
    outcome: str
    failure_message: str | None
    script: list[str]
    new_pods: list[_Pod]
    created_at: float
    status: str = WAITING
    message: str | None = None
    log: list[str] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)
    finished_at: float | None = None

    def snapshot(self) -> EmulatedDeployment:
        return EmulatedDeployment(
            id=self.id,
            action=self.action,
            status=self.status,
            message=self.message,
            target=self.target,
            application=self.replica.application,
            environment=self.replica.environment,
            replica=self.replica.name,
            log=tuple(self.log),
            frames=tuple(self.frames),
            created_at=self.created_at,
            finished_at=self.finished_at,
        )

    def view(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "environmentID": self.replica.environment_id,
            "meta": {
                "id": str(self.replica.id),
                "gitHash": "",
                "action": self.action,
                "shortGitHash": "",
            },
            "regionID": str(REGION["id"]),
            "type": "replica",
            "id": self.id,
            "userID": USER_ID,
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _version() -> str:
    return secrets.token_hex(4)[:7]


class EmulatorState:
    """The emulated service's data, safe to read from any thread.

    Tests read it through :class:`~airflow_provider_vapor.emulator.VaporEmulator` or directly;
    the server changes it through the deployment methods below.

    :param seed: add the sample applications (``my-app``, ``shop``, ``billing``, ``search``).
    """

    def __init__(self, seed: bool = True):
        self._lock = threading.RLock()
        self._finished = threading.Condition(self._lock)
        self._replicas: dict[tuple[str, str, str], _Replica] = {}
        self._environment_ids: dict[tuple[str, str], str] = {}
        self._deployments: dict[int, _Deployment] = {}
        self._deployment_ids = itertools.count(FIRST_DEPLOYMENT_ID)
        self._requests: list[RecordedRequest] = []
        self._node_cycle = itertools.cycle(_NODES)
        if seed:
            self._environment_ids.update(_SEED_ENVIRONMENT_IDS)
            for application, environment, name, replica_id, count, plan, version in _SEED_REPLICAS:
                self._add(application, environment, name, count, plan, replica_id, version)

    @property
    def plans(self) -> dict[str, dict[str, Any]]:
        """The plan catalog by slug, each shaped like a replica's ``plan``."""
        return copy.deepcopy(PLANS)

    def add_replica(
        self,
        application: str,
        environment: str,
        replica: str,
        replicas: int = 1,
        plan: str = "small",
    ) -> dict[str, Any]:
        """Add a replica, creating its application and environment when they are new.

        :param application: the application's slug.
        :param environment: the environment's name.
        :param replica: the replica's name.
        :param replicas: how many pods it runs.
        :param plan: its plan's slug, one of :attr:`plans`.
        :return: the replica as ``GET`` returns it.
        """
        if plan not in PLANS:
            raise ValueError(f"unknown plan {plan!r}; known plans: {', '.join(PLANS)}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ValueError(f"replicas must be a non-negative integer, got {replicas!r}")
        with self._lock:
            if (application, environment, replica) in self._replicas:
                raise ValueError(f"replica {replica} in {application}/{environment} exists")
            replica_id = max((r.id for r in self._replicas.values()), default=0) + 1
            return self._add(application, environment, replica, replicas, plan, replica_id).view()

    def _add(
        self,
        application: str,
        environment: str,
        name: str,
        count: int,
        plan: str,
        replica_id: int,
        version: str | None = None,
    ) -> _Replica:
        environment_id = self._environment_ids.setdefault(
            (application, environment),
            str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"vapor-emulator/{application}/{environment}")
            ).upper(),
        )
        replica = _Replica(
            id=replica_id,
            name=name,
            application=application,
            environment=environment,
            environment_id=environment_id,
            plan=plan,
            version=version or _version(),
            pods=[],
        )
        replica.pods = [self._new_pod(replica) for _ in range(count)]
        self._replicas[(application, environment, name)] = replica
        return replica

    def _new_pod(self, replica: _Replica) -> _Pod:
        pod = _Pod(token=secrets.token_hex(6), node=next(self._node_cycle))
        started = _now()
        pod.log.extend(
            [
                (started, f"Starting {replica.name} {replica.version} on {pod.node}"),
                (started, f"Plan {replica.plan}: {PLANS[replica.plan]['details']['memory']} MB"),
                (started, "Server started on http://0.0.0.0:8080"),
            ]
        )
        return pod

    def _find(self, application: str, environment: str, name: str) -> _Replica:
        replica = self._replicas.get((application, environment, name))
        if replica is not None:
            return replica
        if not any(key[0] == application for key in self._replicas):
            raise UnknownResourceError(
                "application", application, f"unknown application {application!r}"
            )
        if not any(key[:2] == (application, environment) for key in self._replicas):
            raise UnknownResourceError(
                "environment",
                environment,
                f"unknown environment {environment!r} in application {application!r}",
            )
        raise UnknownResourceError(
            "replica", name, f"unknown replica {name!r} in {application}/{environment}"
        )

    def replica(
        self, application: str, environment: str, replica: str, with_plan: bool = True
    ) -> dict[str, Any]:
        """The replica as ``GET .../APPLICATION/ENVIRONMENT/REPLICA`` returns it.

        :param application: the application's slug.
        :param environment: the environment's name.
        :param replica: the replica's name.
        :param with_plan: include ``plan`` and ``region``, as ``GET`` and ``resize`` do.
        :raises UnknownResourceError: when any of the three is unknown.
        """
        with self._lock:
            return self._find(application, environment, replica).view(with_plan)

    def replicas(self) -> list[tuple[str, str, str]]:
        """Every replica's ``(application, environment, replica)``, sorted."""
        with self._lock:
            return sorted(self._replicas)

    def pods(self, application: str, environment: str, replica: str) -> list[dict[str, Any]]:
        """The replica's pods as ``GET .../status`` returns them."""
        with self._lock:
            return [pod.view() for pod in self._find(application, environment, replica).pods]

    def pod_log(
        self,
        application: str,
        environment: str,
        replica: str,
        pod: str,
        lines: int,
        timestamps: bool,
    ) -> list[str]:
        """The last ``lines`` lines of one pod's log.

        :param pod: the pod's token.
        :param lines: how many lines, counted from the end.
        :param timestamps: prefix each line with its ISO 8601 time.
        :raises UnknownResourceError: when the replica or the pod is unknown.
        """
        with self._lock:
            found = self._find(application, environment, replica)
            for candidate in found.pods:
                if candidate.token == pod:
                    entries = candidate.log[-lines:] if lines else []
                    return [f"{at} {line}" if timestamps else line for at, line in entries]
            raise UnknownResourceError("pod", pod, f"unknown pod {pod!r} of {found.where}")

    def create_deployment(
        self,
        application: str,
        environment: str,
        replica: str,
        action: str,
        target: int | str | None,
        outcome: str = SUCCESS,
        message: str | None = None,
        immediate: bool = False,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start a change of a replica: the deployment is ``waiting`` and nothing is applied yet.

        :param action: ``scale``, ``resize`` or ``reboot``.
        :param target: the replica count of a scale, the plan slug of a resize.
        :param outcome: the terminal status it will reach, ``success`` or ``failed``.
        :param message: the message of a ``failed`` outcome.
        :param immediate: run the whole deployment now, so that it has already ended (and a
            successful change is applied) when this returns.
        :return: the replica (shaped as the action's response shows it) and the deployment.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        with self._lock:
            found = self._find(application, environment, replica)
            deployment = _Deployment(
                id=next(self._deployment_ids),
                action=action,
                target=target,
                replica=found,
                outcome=outcome,
                failure_message=message or DEFAULT_FAILURE_MESSAGE,
                script=[],
                new_pods=[],
                created_at=time.monotonic(),
            )
            deployment.frames.append(status_frame(WAITING))
            self._write_script(deployment)
            self._deployments[deployment.id] = deployment
            if immediate:
                self.start_deployment(deployment.id)
                for text in deployment.script:
                    self.append_log(deployment.id, text)
                self.finish_deployment(deployment.id)
            return found.view(with_plan=action == "resize"), deployment.view()

    def _write_script(self, deployment: _Deployment) -> None:
        replica = deployment.replica
        current = len(replica.pods)
        if deployment.action == "scale":
            target = int(deployment.target or 0)
            deployment.new_pods = [self._new_pod(replica) for _ in range(max(0, target - current))]
            stopped = replica.pods[target:]
            first = f"Scaling {replica.where} from {current} to {target} replicas"
            done = f"{replica.where} is running {target} replicas"
        elif deployment.action == "resize":
            deployment.new_pods = [self._new_pod(replica) for _ in range(current)]
            stopped = list(replica.pods)
            memory = PLANS[str(deployment.target)]["details"]["memory"]
            first = (
                f"Resizing {replica.where} from plan {replica.plan} to {deployment.target} "
                f"({memory} MB)"
            )
            done = f"{replica.where} is running on plan {deployment.target}"
        else:
            deployment.new_pods = [self._new_pod(replica) for _ in range(current)]
            stopped = list(replica.pods)
            first = f"Rebooting {current} pods of {replica.where}"
            done = f"{replica.where} rebooted"
        changes = [f"Pod {pod.token} started on {pod.node}" for pod in deployment.new_pods]
        changes += [f"Pod {pod.token} stopped" for pod in stopped]
        if deployment.outcome == FAILED:
            done = f"Rolling back {replica.where}: {deployment.failure_message}"
        deployment.script = [
            first,
            "\n".join(changes) or f"No pods of {replica.where} change",
            done,
        ]

    def script(self, deployment_id: int) -> list[str]:
        """The log frames the deployment will publish, one per step, in order."""
        with self._lock:
            return list(self._deployment(deployment_id).script)

    def start_deployment(self, deployment_id: int) -> str:
        """Move a waiting deployment to ``running``; returns the status frame to publish."""
        with self._lock:
            deployment = self._deployment(deployment_id)
            deployment.status = RUNNING
            deployment.replica.active_deployments += 1
            deployment.frames.append(status_frame(RUNNING))
            return deployment.frames[-1]

    def append_log(self, deployment_id: int, text: str) -> str:
        """Add output to a deployment; returns the log frame to publish."""
        with self._lock:
            deployment = self._deployment(deployment_id)
            deployment.log.extend(text.splitlines())
            deployment.frames.append(text)
            return text

    def finish_deployment(self, deployment_id: int) -> str:
        """End a deployment with its planned outcome, applying the change on success.

        :return: the terminal status frame to publish.
        """
        with self._lock:
            deployment = self._deployment(deployment_id)
            replica = deployment.replica
            if deployment.status == RUNNING:
                replica.active_deployments -= 1
            deployment.status = deployment.outcome
            if deployment.outcome == SUCCESS:
                self._apply(deployment)
            else:
                deployment.message = deployment.failure_message
            deployment.finished_at = time.monotonic()
            deployment.frames.append(status_frame(deployment.status, deployment.message))
            self._finished.notify_all()
            return deployment.frames[-1]

    def _apply(self, deployment: _Deployment) -> None:
        replica = deployment.replica
        if deployment.action == "scale":
            target = int(deployment.target or 0)
            pods = replica.pods[:target] + deployment.new_pods
            while len(pods) < target:
                pods.append(self._new_pod(replica))
            replica.pods = pods[:target]
        else:
            if deployment.action == "resize":
                replica.plan = str(deployment.target)
            replica.version = _version()
            count = len(replica.pods)
            pods = deployment.new_pods[:count]
            while len(pods) < count:
                pods.append(self._new_pod(replica))
            replica.pods = pods

    def frames_since(self, deployment_id: int, index: int) -> tuple[list[str], bool]:
        """The frames published from ``index`` on, and whether the deployment has ended."""
        with self._lock:
            deployment = self._deployment(deployment_id)
            return deployment.frames[index:], deployment.status in TERMINAL_STATUSES

    def current_frame(self, deployment_id: int) -> tuple[str, int, bool]:
        """The deployment's current status frame, how many frames exist, and whether it ended."""
        with self._lock:
            deployment = self._deployment(deployment_id)
            frame = status_frame(deployment.status, deployment.message)
            return frame, len(deployment.frames), deployment.status in TERMINAL_STATUSES

    def _deployment(self, deployment_id: int) -> _Deployment:
        try:
            return self._deployments[deployment_id]
        except KeyError:
            raise UnknownResourceError(
                "deployment", str(deployment_id), f"unknown deployment {deployment_id}"
            ) from None

    def deployment(self, deployment_id: int) -> EmulatedDeployment:
        """A snapshot of one deployment.

        :raises UnknownResourceError: when there is no such deployment.
        """
        with self._lock:
            return self._deployment(deployment_id).snapshot()

    def has_deployment(self, deployment_id: int) -> bool:
        """Whether a deployment with this id exists."""
        with self._lock:
            return deployment_id in self._deployments

    def deployments(self) -> list[EmulatedDeployment]:
        """Snapshots of every deployment, oldest first."""
        with self._lock:
            return [deployment.snapshot() for deployment in self._deployments.values()]

    def wait_for_deployment(self, deployment_id: int, timeout: float = 10) -> str:
        """Block until a deployment ends and return its terminal status.

        :param deployment_id: the deployment to wait for.
        :param timeout: seconds to wait at most.
        :raises TimeoutError: when it has not ended in time.
        """
        deadline = time.monotonic() + timeout
        with self._finished:
            while True:
                deployment = self._deployment(deployment_id)
                if deployment.status in TERMINAL_STATUSES:
                    return deployment.status
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"deployment {deployment_id} is still {deployment.status} after {timeout} s"
                    )
                self._finished.wait(remaining)

    def record(self, request: RecordedRequest) -> None:
        """Keep a request or channel handshake for tests to inspect."""
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request and channel handshake received, in the order they were answered."""
        with self._lock:
            return list(self._requests)

    @property
    def channel_requests(self) -> list[RecordedRequest]:
        """Only the channel handshakes among :attr:`requests`."""
        return [request for request in self.requests if request.websocket]

    def mutations(
        self,
        action: str | None = None,
        application: str | None = None,
        environment: str | None = None,
        replica: str | None = None,
    ) -> list[RecordedRequest]:
        """The scale, resize and reboot requests that were applied, i.e. created a deployment.

        Each argument given narrows the list to requests with that value.
        """
        wanted = {
            "action": action,
            "application": application,
            "environment": environment,
            "replica": replica,
        }
        return [
            request
            for request in self.requests
            if request.deployment_id is not None
            and request.action in ACTIONS
            and all(
                value is None or getattr(request, name) == value for name, value in wanted.items()
            )
        ]
