"""Faults a test can inject into the emulator: failing, slow or broken answers and channels.

Each call arms a fault for the next ``count`` matching requests, deployments or channel
connections; a fault is used up as it is applied. All methods are safe to call from any thread
while the emulator runs, and :meth:`Faults.reset` disarms everything.

Matching of REST faults is deliberately simple: a fault matches a request when ``method`` is
``None`` or equal to the request's method (case-insensitive), and ``path_suffix`` is ``None`` or
the end of the request's raw path as sent (without the query string), e.g. ``"/scale"``,
``"/reboot"``, ``"/status"`` or ``"/logs"``. Armed REST faults are tried in the order they were
armed, and a request takes the first one that matches. REST faults apply to any REST request,
before the token is checked, as a proxy in front of the service would; channel handshakes never
match them.

Channel faults apply to the next connections that pass the handshake (valid token, known
deployment), each kind counted on its own, so one connection can take several kinds at once.
A channel fault that cuts a stream after some frames has no effect on a stream that ends first.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from airflow_provider_vapor.protocol import FAILED, SUCCESS, TERMINAL_STATUSES

MALFORMED_KINDS = ("json", "html", "large")
_CLOSE_CODES_NOT_SENDABLE = frozenset({1004, 1005, 1006, 1015})


@dataclass(frozen=True)
class RequestFault:
    """A fault armed for REST requests, as the server applies it.

    :param kind: ``fail``, ``delay``, ``hang`` or ``malformed``.
    :param remaining: how many more requests it applies to, this one included.
    :param method: the method it matches, or ``None`` for any.
    :param path_suffix: the raw path ending it matches, or ``None`` for any.
    :param status: the status a ``fail`` answers with.
    :param retry_after: the ``Retry-After`` header a ``fail`` sends.
    :param body: the body a ``fail`` sends.
    :param content_type: the ``Content-Type`` a ``fail`` sends.
    :param seconds: how long a ``delay`` waits.
    :param apply: whether a ``delay`` or ``malformed`` request is still carried out.
    :param malformed: the kind of a ``malformed`` answer: ``json``, ``html`` or ``large``.
    """

    kind: str
    remaining: int
    method: str | None = None
    path_suffix: str | None = None
    status: int = 503
    retry_after: int | str | None = None
    body: Any = None
    content_type: str = "application/json"
    seconds: float = 0.0
    apply: bool = True
    malformed: str = "json"

    def matches(self, method: str, raw_path: str) -> bool:
        """Whether this fault applies to a request with this method and raw path."""
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path_suffix is None or raw_path.endswith(self.path_suffix)


@dataclass(frozen=True)
class DeploymentOutcome:
    """How one deployment ends.

    :param status: its terminal status, ``success`` or ``failed``.
    :param message: a failure's message.
    :param never_finish: it stays ``running`` until the emulator stops.
    :param immediate: it has already ended when the REST response is sent.
    """

    status: str
    message: str | None = None
    never_finish: bool = False
    immediate: bool = False


@dataclass(frozen=True)
class ChannelFaults:
    """What one channel connection does differently from the plain protocol.

    :param frames_first: raw frames sent before the first status frame.
    :param drop_after: close the TCP connection without a close frame after this many frames.
    :param close_after: close with ``close_code`` after this many frames, without the terminal
        status.
    :param close_code: the close code of ``close_after``.
    """

    frames_first: tuple[str | bytes, ...] = ()
    drop_after: int | None = None
    close_after: int | None = None
    close_code: int = 1011

    @property
    def stop_after(self) -> int | None:
        """After how many frames the connection ends early, if it does."""
        limits = [limit for limit in (self.drop_after, self.close_after) if limit is not None]
        return min(limits) if limits else None


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")


class Faults:
    """The faults armed on one emulator; reach it as ``emulator.faults``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RequestFault] = []
        self._outcomes: list[list[Any]] = []
        self._never_finish = 0
        self._immediate = 0
        self._holding = False
        self._frames_first: list[list[Any]] = []
        self._drops: list[list[int]] = []
        self._closes: list[list[int]] = []
        self._not_found = 0

    def reset(self) -> None:
        """Disarm every fault and release held deployments."""
        with self._lock:
            self._requests.clear()
            self._outcomes.clear()
            self._never_finish = 0
            self._immediate = 0
            self._holding = False
            self._frames_first.clear()
            self._drops.clear()
            self._closes.clear()
            self._not_found = 0

    def fail_next(
        self,
        count: int,
        status: int,
        retry_after: int | str | None = None,
        body: Any = None,
        method: str | None = None,
        path_suffix: str | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Answer the next matching requests with an error, without carrying them out.

        :param count: how many requests.
        :param status: the HTTP status to answer with.
        :param retry_after: a ``Retry-After`` header: seconds, or a string such as an HTTP date.
        :param body: the body: text or bytes as they are, anything else as JSON; by default
            ``{"error": true, "reason": "..."}``.
        :param method: only requests with this method.
        :param path_suffix: only requests whose raw path ends with this.
        :param content_type: the ``Content-Type`` of the answer.
        """
        _check_count(count)
        if not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {status!r}")
        self._arm(
            RequestFault(
                "fail",
                count,
                method,
                path_suffix,
                status=status,
                retry_after=retry_after,
                body=body,
                content_type=content_type,
            )
        )

    def delay_next(
        self,
        count: int,
        seconds: float,
        method: str | None = None,
        path_suffix: str | None = None,
        apply: bool = True,
    ) -> None:
        """Answer the next matching requests late.

        :param count: how many requests.
        :param seconds: how long to wait before answering.
        :param method: only requests with this method.
        :param path_suffix: only requests whose raw path ends with this.
        :param apply: carry the request out before waiting, so a client that gives up on the
            answer still changed the replica; when false, wait first and then carry it out.
        """
        _check_count(count)
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, got {seconds!r}")
        self._arm(RequestFault("delay", count, method, path_suffix, seconds=seconds, apply=apply))

    def hang_next(
        self, count: int, *, method: str | None = None, path_suffix: str | None = None
    ) -> None:
        """Accept the next matching requests and never answer them; the emulator's stop ends
        their connections.

        :param count: how many requests.
        :param method: only requests with this method.
        :param path_suffix: only requests whose raw path ends with this.
        """
        _check_count(count)
        self._arm(RequestFault("hang", count, method, path_suffix, apply=False))

    def malformed_next(
        self,
        count: int,
        kind: str,
        *,
        method: str | None = None,
        path_suffix: str | None = None,
        apply: bool = False,
    ) -> None:
        """Answer the next matching requests with a broken body.

        :param count: how many requests.
        :param kind: ``json`` (a truncated JSON body with status 200), ``html`` (an HTML error
            page with status 502) or ``large`` (a 5 MB body with status 500).
        :param method: only requests with this method.
        :param path_suffix: only requests whose raw path ends with this.
        :param apply: carry the request out anyway, so a client that cannot read the answer
            still changed the replica.
        """
        _check_count(count)
        if kind not in MALFORMED_KINDS:
            raise ValueError(f"kind must be one of {', '.join(MALFORMED_KINDS)}, got {kind!r}")
        self._arm(
            RequestFault("malformed", count, method, path_suffix, apply=apply, malformed=kind)
        )

    def deployment_outcome(
        self, status: str = FAILED, message: str | None = None, count: int = 1
    ) -> None:
        """Decide how the next deployments end.

        :param status: ``failed`` or ``success``.
        :param message: the ``message`` of a failed deployment's last status frame.
        :param count: how many deployments.
        """
        _check_count(count)
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be {SUCCESS!r} or {FAILED!r}, got {status!r}")
        with self._lock:
            self._outcomes.append([status, message, count])

    def never_finish(self, count: int = 1) -> None:
        """Keep the next deployments running until the emulator stops.

        :param count: how many deployments.
        """
        _check_count(count)
        with self._lock:
            self._never_finish += count

    def finish_immediately(self, count: int = 1) -> None:
        """End the next deployments before their REST response is sent.

        The response then shows the deployment's terminal status (and the replica already
        changed, on success), so a client has no reason to open the channel. The outcome is
        ``success`` unless :meth:`deployment_outcome` says otherwise.

        :param count: how many deployments.
        """
        _check_count(count)
        with self._lock:
            self._immediate += count

    def hold_deployments(self) -> None:
        """Keep every deployment from ending until :meth:`release_deployments`.

        Held deployments go on to ``running`` and write their log, then wait before their
        terminal status.
        """
        with self._lock:
            self._holding = True

    def release_deployments(self) -> None:
        """Let held deployments end, each after one more step."""
        with self._lock:
            self._holding = False

    @property
    def holding(self) -> bool:
        """Whether deployments are being held open."""
        with self._lock:
            return self._holding

    def drop_channel_after(self, frames: int, count: int = 1) -> None:
        """Cut the next channel connections after ``frames`` frames, without a close frame.

        The TCP connection is aborted, so the client sees the connection lost (close code 1006)
        rather than a close frame. The emulator finds the connection's transport among the
        server's open connections; should it ever not find it, it closes with 1011 instead.

        :param frames: how many frames to send first, injected frames and the first status
            frame included.
        :param count: how many connections.
        """
        _check_count(count)
        if frames < 0:
            raise ValueError(f"frames must not be negative, got {frames!r}")
        with self._lock:
            self._drops.append([frames, count])

    def close_channel_without_status(
        self, code: int = 1011, after_frames: int = 0, count: int = 1
    ) -> None:
        """Close the next channel connections with ``code`` before the terminal status.

        :param code: the close code, e.g. 1000, 1001 or 1011.
        :param after_frames: how many frames to send first, injected frames and the first
            status frame included; 0 closes right after the handshake.
        :param count: how many connections.
        """
        _check_count(count)
        if not 1000 <= code <= 4999 or code in _CLOSE_CODES_NOT_SENDABLE:
            raise ValueError(f"code must be a close code a server may send, got {code!r}")
        if after_frames < 0:
            raise ValueError(f"after_frames must not be negative, got {after_frames!r}")
        with self._lock:
            self._closes.append([after_frames, code, count])

    def send_channel_frames(self, frames: Sequence[str | bytes], count: int = 1) -> None:
        """Send these frames first on the next channel connections, before the status frame.

        ``str`` frames go out as text frames, ``bytes`` as binary frames.

        :param frames: the raw frames, e.g. bad JSON or an unknown status word.
        :param count: how many connections.
        """
        _check_count(count)
        if isinstance(frames, (str, bytes)):
            raise TypeError("frames must be a sequence of frames, not a single frame")
        with self._lock:
            self._frames_first.append([tuple(frames), count])

    def channel_not_found(self, count: int = 1) -> None:
        """Refuse the next channel handshakes with 404, as if the deployment did not exist.

        :param count: how many handshakes (with a valid token).
        """
        _check_count(count)
        with self._lock:
            self._not_found += count

    def _arm(self, fault: RequestFault) -> None:
        with self._lock:
            self._requests.append(fault)

    def take_request_fault(self, method: str, raw_path: str) -> RequestFault | None:
        """Use up the first armed REST fault matching this request, if there is one."""
        with self._lock:
            for index, fault in enumerate(self._requests):
                if fault.matches(method, raw_path):
                    if fault.remaining == 1:
                        del self._requests[index]
                    else:
                        self._requests[index] = replace(fault, remaining=fault.remaining - 1)
                    return fault
            return None

    def take_deployment_outcome(self, default: str = SUCCESS) -> DeploymentOutcome:
        """Use up what is armed for the next deployment; it ends with ``default`` otherwise.

        A deployment that never finishes uses up nothing else.
        """
        with self._lock:
            if self._never_finish:
                self._never_finish -= 1
                return DeploymentOutcome(default, never_finish=True)
            immediate = self._immediate > 0
            self._immediate -= immediate
            armed = _take(self._outcomes)
            if armed is None:
                return DeploymentOutcome(default, immediate=immediate)
            return DeploymentOutcome(armed[0], armed[1], immediate=immediate)

    def take_channel_not_found(self) -> bool:
        """Use up one armed ``channel_not_found``; whether there was one."""
        with self._lock:
            if not self._not_found:
                return False
            self._not_found -= 1
            return True

    def take_channel_faults(self) -> ChannelFaults:
        """Use up the channel faults armed for the next connection."""
        with self._lock:
            frames_first = _take(self._frames_first)
            drop = _take(self._drops)
            close = _take(self._closes)
        return ChannelFaults(
            frames_first=frames_first[0] if frames_first else (),
            drop_after=drop[0] if drop else None,
            close_after=close[0] if close else None,
            close_code=close[1] if close else 1011,
        )


def _take(armed: list[list[Any]]) -> list[Any] | None:
    if not armed:
        return None
    entry = armed[0]
    entry[-1] -= 1
    if not entry[-1]:
        armed.pop(0)
    return entry
