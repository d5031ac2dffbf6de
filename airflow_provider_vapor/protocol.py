"""The deployment channel protocol, read and written without any I/O.

Everything that knows what a deployment's messages mean lives here: the status words, which of
them end a deployment, how a channel frame is read, how a REST response names its deployment and
where that deployment's channel is. The worker, the triggerer and the emulator all use it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from airflow_provider_vapor.exceptions import VaporProtocolError

WAITING = "waiting"
RUNNING = "running"
SUCCESS = "success"
FAILED = "failed"
ACTIVE_STATUSES = frozenset({WAITING, RUNNING})
TERMINAL_STATUSES = frozenset({SUCCESS, FAILED})
KNOWN_STATUSES = ACTIVE_STATUSES | TERMINAL_STATUSES
# Not a service status: what a wait reports when its deadline passed first.
TIMEOUT = "timeout"

DEFAULT_CHANNEL_PATH = "/v2/activity/channel/{deployment_id}"
NORMAL_CLOSURE = 1000


@dataclass(frozen=True)
class StatusFrame:
    """A frame reporting the deployment's state; ``message`` explains a failure."""

    status: str
    message: str | None = None


@dataclass(frozen=True)
class LogFrame:
    """A frame carrying one or more lines of the deployment's output."""

    lines: tuple[str, ...]


def parse_frame(data: str | bytes, deployment_id: int | str) -> StatusFrame | LogFrame:
    """Read one channel frame.

    A text frame holding a JSON object with a ``status`` key is a status report; any other text
    frame is log output. Binary frames and unknown status words are protocol errors: an unknown
    status is never taken for success.

    :param data: the frame's payload as received.
    :param deployment_id: the deployment the channel belongs to, named in errors.
    """
    if isinstance(data, bytes):
        raise VaporProtocolError(
            f"deployment {deployment_id} sent a binary frame of {len(data)} bytes; "
            "the channel protocol sends only text frames"
        )
    document = _json_object(data)
    if document is None or "status" not in document:
        return LogFrame(tuple(data.splitlines()))
    status = document["status"]
    if not _is_known_status(status):
        raise VaporProtocolError(
            f"deployment {deployment_id} sent status {status!r}, which is not one of "
            f"{', '.join(sorted(KNOWN_STATUSES))}"
        )
    message = document.get("message")
    return StatusFrame(status, None if message is None else str(message))


def _is_known_status(status: object) -> bool:
    """Whether ``status`` is one of the service's status words; a list or object never is."""
    return isinstance(status, str) and status in KNOWN_STATUSES


def _json_object(data: str) -> dict[str, Any] | None:
    if not data.lstrip().startswith("{"):
        return None
    try:
        document = json.loads(data)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def status_frame(status: str, message: str | None = None) -> str:
    """Build the text of a status frame, as the service sends it."""
    document: dict[str, Any] = {"status": status}
    if message is not None:
        document["message"] = message
    return json.dumps(document)


@dataclass
class DeploymentProgress:
    """What the channel has said so far about one deployment.

    Feed it every frame with :meth:`receive`; it returns the log lines to show and keeps the last
    status. The deployment is over once :attr:`is_finished` is true.

    :param deployment_id: the deployment being followed.
    """

    deployment_id: int | str
    status: str | None = None
    message: str | None = None

    def receive(self, data: str | bytes) -> tuple[str, ...]:
        """Take in one frame and return the log lines it carries."""
        frame = parse_frame(data, self.deployment_id)
        if isinstance(frame, LogFrame):
            return frame.lines
        if not self.is_finished:
            self.status = frame.status
            self.message = frame.message
        return ()

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class DeploymentRef:
    """The deployment a replica change started, as the REST response describes it."""

    deployment_id: int | str
    status: str
    action: str | None = None
    tracking_url: str | None = None


def deployment_from_response(response: Mapping[str, Any], call: str) -> DeploymentRef:
    """Find the deployment in the response of a scale, resize or reboot.

    Accepts both shapes the service documents: a ``deployment`` object, and a top-level
    ``activity`` with ``id`` and ``trackingURL``. A deployment whose status the response does
    not give is taken to be waiting.

    :param response: the parsed JSON body.
    :param call: what was being done, named in errors.
    """
    deployment = response.get("deployment")
    activity = response.get("activity")
    if not isinstance(deployment, Mapping):
        deployment = None
    if not isinstance(activity, Mapping):
        activity = None
    source = deployment or activity
    if source is None or source.get("id") in (None, ""):
        raise VaporProtocolError(
            f"{call}: the response names no deployment (expected 'deployment.id' or "
            f"'activity.id'); keys were {sorted(response)}"
        )
    status = source.get("status") or WAITING
    if not _is_known_status(status):
        raise VaporProtocolError(
            f"{call}: deployment {source['id']} has status {status!r}, which is not one of "
            f"{', '.join(sorted(KNOWN_STATUSES))}"
        )
    meta = source.get("meta") if isinstance(source.get("meta"), Mapping) else {}
    tracking_url = (activity or {}).get("trackingURL") or source.get("trackingURL")
    return DeploymentRef(
        deployment_id=source["id"],
        status=status,
        action=meta.get("action") if meta else None,
        tracking_url=tracking_url or None,
    )


def websocket_url(url: str) -> str:
    """Turn an ``http(s)`` URL into the matching ``ws(s)`` URL; ``ws(s)`` URLs pass through."""
    parts = urlsplit(url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise VaporProtocolError(f"channel URL {url!r} is not an http(s) or ws(s) URL")
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


def channel_url(
    base_url: str,
    deployment_id: int | str,
    path_template: str = DEFAULT_CHANNEL_PATH,
    tracking_url: str | None = None,
) -> str:
    """The websocket URL of a deployment's channel.

    :param base_url: the API's base URL, e.g. ``https://api-new.v2.vapor.cloud``.
    :param deployment_id: the deployment to follow.
    :param path_template: the channel path, with ``{deployment_id}`` where the id goes.
    :param tracking_url: the response's ``trackingURL``; used as it is when given.
    """
    if tracking_url:
        return websocket_url(tracking_url)
    path = path_template.format(deployment_id=quote(str(deployment_id), safe=""))
    return websocket_url(base_url.rstrip("/") + "/" + path.lstrip("/"))
