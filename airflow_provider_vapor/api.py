"""The Vapor Cloud REST calls, described and judged without any I/O.

An :class:`ApiCall` says what is being asked; :func:`read_response` and
:func:`transport_failure` turn what came back into a result or one of the provider's errors;
:func:`retry_policy` says which failures are tried again and after how long. The hook's
synchronous (requests) and asynchronous (httpx) sides both drive the same policy.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from airflow_provider_vapor.exceptions import (
    VaporApiError,
    VaporAuthenticationError,
    VaporConfigurationError,
    VaporNotFoundError,
    VaporOutcomeUnknownError,
    VaporProtocolError,
    VaporRejectedError,
    VaporUnavailableError,
)

DEFAULT_CONN_ID = "vapor_default"
REPLICAS_PATH = "/v2/apps/replicas"
BODY_EXCERPT_CHARS = 300
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# A reboot is repeated only after answers that say the service did not act on it.
NOT_PROCESSED_STATUSES = frozenset({429, 503})
FORBIDDEN_CHARACTERS = frozenset("\r\n\x00")


def check_identifier(field_name: str, value: object) -> str:
    """Return ``value`` if it can name an application, environment, replica or plan.

    :param field_name: the parameter's name, used in the error.
    :param value: what the caller passed.
    """
    if not isinstance(value, str) or not value.strip():
        raise VaporConfigurationError(f"{field_name} must be a non-empty string, got {value!r}")
    if FORBIDDEN_CHARACTERS.intersection(value):
        raise VaporConfigurationError(
            f"{field_name} must not contain line breaks or NUL characters, got {value!r}"
        )
    if value in (".", ".."):
        raise VaporConfigurationError(
            f"{field_name} must not be {value!r}: HTTP clients and proxies read it as a path step"
        )
    return value


def path_segment(value: str) -> str:
    """Percent-encode ``value`` so that it stays one path segment, whatever it contains."""
    return quote(value, safe="")


@dataclass(frozen=True)
class ReplicaRef:
    """One replica: ``application/environment/replica``."""

    application: str
    environment: str
    replica: str

    def __post_init__(self) -> None:
        check_identifier("application", self.application)
        check_identifier("environment", self.environment)
        check_identifier("replica", self.replica)

    def path(self, *suffix: str) -> str:
        segments = [self.application, self.environment, self.replica, *suffix]
        return REPLICAS_PATH + "/" + "/".join(path_segment(s) for s in segments)

    def __str__(self) -> str:
        return f"{self.replica} in {self.application}/{self.environment}"


@dataclass(frozen=True)
class ApiCall:
    """One REST call: what it does, where, and whether repeating it is harmless.

    :param description: what the call does, in words used by logs and errors.
    :param method: the HTTP method.
    :param path: the encoded path below the base URL.
    :param body: the JSON body, if any.
    :param idempotent: whether sending it twice has the same effect as sending it once.
    """

    description: str
    method: str
    path: str
    body: Any = None
    idempotent: bool = True
    params: dict[str, str] = field(default_factory=dict)


def read_response(
    call: ApiCall, status: int, headers: Any, text: str, redact: Callable[[str], str]
) -> Any:
    """Return the parsed body of a successful response, or raise the error the status means.

    :param call: the call that was answered.
    :param status: the HTTP status code.
    :param headers: the response headers (a case-insensitive mapping).
    :param text: the response body.
    :param redact: removes secrets from text quoted in errors.
    """
    if 200 <= status < 300:
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise VaporProtocolError(
                f"{call.description}: the service answered {status} with a body that is not "
                f"JSON: {_excerpt(text, redact)}"
            ) from None

    reason = _excerpt(_reason(text), redact)
    where = f"{call.description}: {call.method} {call.path} answered {status}"
    if status in (401, 403):
        raise VaporAuthenticationError(
            f"{where}: the service refused the token ({reason}). Check the password of the "
            "Vapor Cloud connection.",
            call=call.description,
            http_status=status,
        )
    if status == 404:
        raise VaporNotFoundError(
            f"{where}: not found ({reason}). Check the application, environment and replica.",
            call=call.description,
            http_status=status,
        )
    if status in RETRYABLE_STATUSES:
        error = VaporUnavailableError(
            f"{where}: {reason}", call=call.description, http_status=status
        )
        error.retry_after = parse_retry_after(headers.get("Retry-After"))
        if not call.idempotent and status not in NOT_PROCESSED_STATUSES:
            raise VaporOutcomeUnknownError(
                f"{where} ({reason}); the service may have carried it out. It is not sent again "
                "automatically: check the replica before running the task again.",
                call=call.description,
                http_status=status,
            )
        raise VaporUnavailableError(
            f"{where}: {reason}",
            call=call.description,
            http_status=status,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    if 400 <= status < 500:
        raise VaporRejectedError(
            f"{where}: rejected ({reason})", call=call.description, http_status=status
        )
    raise VaporApiError(f"{where}: {reason}", call=call.description, http_status=status)


def transport_failure(call: ApiCall, problem: str, may_have_been_sent: bool) -> VaporApiError:
    """The error for a call whose answer never arrived.

    :param call: the call that failed.
    :param problem: what the transport reported (no secrets in it).
    :param may_have_been_sent: whether the request may have reached the service.
    """
    if may_have_been_sent and not call.idempotent:
        return VaporOutcomeUnknownError(
            f"{call.description}: {problem} after the request was sent; the service may have "
            "carried it out. It is not sent again automatically: check the replica before "
            "running the task again.",
            call=call.description,
        )
    return VaporUnavailableError(f"{call.description}: {problem}", call=call.description)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header given as seconds or as an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


@dataclass(frozen=True)
class RetrySettings:
    """How hard to try: attempts after the first, backoff base and the longest wait (seconds)."""

    max_retries: int = 5
    backoff: float = 1.0
    max_wait: float = 60.0


class _WaitRetryAfterOrBackoff(wait_random_exponential):
    def __init__(self, settings: RetrySettings):
        super().__init__(multiplier=settings.backoff, max=settings.max_wait)
        self.max_wait = settings.max_wait

    def __call__(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        return super().__call__(retry_state)


def retry_policy(call: ApiCall, settings: RetrySettings, log: Any) -> dict[str, Any]:
    """Keyword arguments for tenacity's ``Retrying`` or ``AsyncRetrying`` for one call.

    Only :class:`VaporUnavailableError` is tried again: connection failures before the request
    was sent, 429, and 5xx answers. Each retry is logged at warning with its wait.
    """

    def announce(retry_state: RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.warning(
            "%s; retry %d of %d in %.2f s",
            error,
            retry_state.attempt_number,
            settings.max_retries,
            wait,
        )

    return {
        "stop": stop_after_attempt(settings.max_retries + 1),
        "wait": _WaitRetryAfterOrBackoff(settings),
        "retry": retry_if_exception(lambda error: type(error) is VaporUnavailableError),
        "before_sleep": announce,
        "reraise": True,
    }


def _reason(text: str) -> str:
    try:
        document = json.loads(text)
    except ValueError:
        return text.strip() or "no message"
    if isinstance(document, dict):
        for key in ("reason", "message", "error", "detail"):
            value = document.get(key)
            if isinstance(value, str) and value:
                return value
    return text.strip() or "no message"


def _excerpt(text: str, redact: Callable[[str], str]) -> str:
    # One line: a body quoted in an error must not be able to add lines to a log.
    text = " ".join(redact(text).split())
    if len(text) > BODY_EXCERPT_CHARS:
        return f"{text[:BODY_EXCERPT_CHARS]}... ({len(text)} characters)"
    return text
