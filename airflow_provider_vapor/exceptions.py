"""The errors this provider raises, one small hierarchy under :class:`VaporError`."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException


class VaporError(AirflowException):
    """Base of every error raised by the Vapor Cloud provider."""


class VaporConfigurationError(VaporError, ValueError):
    """A parameter, rendered template value or connection setting is not valid."""


class VaporApiError(VaporError):
    """A Vapor Cloud REST call did not succeed.

    :param call: what was being done, e.g. ``scale web in my-app/production``.
    :param http_status: the HTTP status of the last response, if there was one.
    """

    def __init__(self, message: str, *, call: str = "", http_status: int | None = None):
        super().__init__(message)
        self.call = call
        self.http_status = http_status


class VaporAuthenticationError(VaporApiError):
    """The service refused the token (401 or 403)."""


class VaporNotFoundError(VaporApiError):
    """The application, environment, replica or deployment does not exist (404)."""


class VaporRejectedError(VaporApiError):
    """The service rejected the request (a 4xx other than 401, 403, 404 and 429)."""


class VaporUnavailableError(VaporApiError):
    """The service could not be reached, or kept failing, after every retry.

    :param retry_after: the seconds the service asked to wait before trying again, if it did.
    """

    def __init__(
        self,
        message: str,
        *,
        call: str = "",
        http_status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, call=call, http_status=http_status)
        self.retry_after = retry_after


class VaporOutcomeUnknownError(VaporApiError):
    """A change that must not be repeated may or may not have reached the service."""


class VaporProtocolError(VaporError):
    """The service sent something that is not what the API or channel protocol says."""


class VaporDeploymentFailedError(VaporError):
    """A deployment ended in the ``failed`` state."""


class VaporDeploymentTimeoutError(VaporError):
    """A deployment did not finish before the deadline."""
