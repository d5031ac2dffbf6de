"""The Vapor Cloud hook: the connection's settings and the replica REST calls."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_provider_vapor.api import (
    DEFAULT_CONN_ID,
    FORBIDDEN_CHARACTERS,
    ApiCall,
    ReplicaRef,
    RetrySettings,
    check_identifier,
    read_response,
    retry_policy,
    transport_failure,
)
from airflow_provider_vapor.exceptions import (
    VaporApiError,
    VaporAuthenticationError,
    VaporConfigurationError,
    VaporError,
    VaporNotFoundError,
    VaporUnavailableError,
)
from airflow_provider_vapor.protocol import (
    DEFAULT_CHANNEL_PATH,
    channel_url,
    deployment_from_response,
)

if TYPE_CHECKING:
    import httpx
    import requests

DEFAULT_HOST = "api-new.v2.vapor.cloud"
DEFAULT_DASHBOARD_URL = "https://dashboard.vapor.cloud/apps/{application}/{environment}/{replica}"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_PING_INTERVAL = 30.0
USER_AGENT = "airflow-provider-vapor"


@dataclass(frozen=True)
class VaporConnectionSettings:
    """Everything a Vapor Cloud connection configures, read once from the Airflow connection.

    :param conn_id: the Airflow connection id the settings came from.
    :param base_url: the API's base URL, scheme included.
    :param token: the bearer token; never shown in a repr, log or error.
    :param channel_path: the deployment channel's path, ``{deployment_id}`` marking the id.
    :param verify_ssl: whether TLS certificates are verified (REST and websocket).
    :param ca_bundle: a CA bundle file to verify against instead of the system's.
    :param connect_timeout: seconds to wait for a connection.
    :param read_timeout: seconds to wait for an answer.
    :param ping_interval: seconds between keepalive pings on a deployment channel; 0 turns
        them off.
    :param retry: how failed calls are retried.
    :param dashboard_url: the replica's dashboard page, with ``{application}``,
        ``{environment}`` and ``{replica}`` placeholders.
    """

    conn_id: str
    base_url: str
    token: str = field(repr=False)
    channel_path: str = DEFAULT_CHANNEL_PATH
    verify_ssl: bool = True
    ca_bundle: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    ping_interval: float = DEFAULT_PING_INTERVAL
    retry: RetrySettings = field(default_factory=RetrySettings)
    dashboard_url: str = DEFAULT_DASHBOARD_URL

    def __post_init__(self) -> None:
        if not self.token:
            raise VaporConfigurationError(
                f"connection {self.conn_id!r} has no token: put the Vapor Cloud token in its "
                "password field"
            )
        if FORBIDDEN_CHARACTERS.intersection(self.token) or self.token != self.token.strip():
            raise VaporConfigurationError(
                f"the token of connection {self.conn_id!r} contains line breaks, NUL characters "
                "or surrounding spaces; copy the token again"
            )
        if "{deployment_id}" not in self.channel_path:
            raise VaporConfigurationError(
                f"channel_path of connection {self.conn_id!r} is {self.channel_path!r}; it must "
                "contain {deployment_id}"
            )

    @classmethod
    def from_connection(cls, connection: Any) -> VaporConnectionSettings:
        """Read the settings from an Airflow connection of type ``vapor``."""
        extra: Mapping[str, Any] = connection.extra_dejson or {}
        conn_id = connection.conn_id
        return cls(
            conn_id=conn_id,
            base_url=_base_url(connection.host, connection.port, connection.schema),
            token=connection.password or "",
            channel_path=extra.get("channel_path") or DEFAULT_CHANNEL_PATH,
            verify_ssl=_boolean(conn_id, "verify_ssl", extra.get("verify_ssl", True)),
            ca_bundle=extra.get("ca_bundle") or None,
            connect_timeout=_seconds(conn_id, "connect_timeout", extra, DEFAULT_CONNECT_TIMEOUT),
            read_timeout=_seconds(conn_id, "read_timeout", extra, DEFAULT_READ_TIMEOUT),
            ping_interval=_seconds(conn_id, "ping_interval", extra, DEFAULT_PING_INTERVAL),
            retry=RetrySettings(
                max_retries=int(_seconds(conn_id, "max_retries", extra, 5)),
                backoff=_seconds(conn_id, "retry_backoff", extra, 1.0),
                max_wait=_seconds(conn_id, "max_retry_wait", extra, 60.0),
            ),
            dashboard_url=extra.get("dashboard_url") or DEFAULT_DASHBOARD_URL,
        )

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "User-Agent": USER_AGENT}

    @property
    def requests_verify(self) -> bool | str:
        """The ``verify`` argument for requests."""
        if not self.verify_ssl:
            return False
        return self.ca_bundle or True

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS context that verifies as the connection says, for httpx and websockets."""
        context = ssl.create_default_context(cafile=self.ca_bundle)
        if not self.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def redact(self, text: str) -> str:
        """Replace the token wherever it appears in ``text``."""
        return text.replace(self.token, "***")

    def deployment_channel_url(
        self, deployment_id: int | str, tracking_url: str | None = None
    ) -> str:
        """The websocket URL of a deployment's channel."""
        return channel_url(self.base_url, deployment_id, self.channel_path, tracking_url)

    def dashboard_link(self, replica: ReplicaRef) -> str:
        """The replica's page in the Vapor Cloud dashboard."""
        return self.dashboard_url.format(
            application=replica.application,
            environment=replica.environment,
            replica=replica.replica,
        )


class VaporHook(BaseHook):
    """Calls the Vapor Cloud replica API with the token of an Airflow connection.

    Every call retries connection failures, 429 (honouring ``Retry-After``) and 5xx answers with
    exponential backoff and jitter. A reboot is never sent again once it may have reached the
    service: it fails with :class:`~airflow_provider_vapor.exceptions.VaporOutcomeUnknownError`.

    :param vapor_conn_id: the Airflow connection of type ``vapor`` holding the URL and token.
    """

    conn_name_attr = "vapor_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "vapor"
    hook_name = "Vapor Cloud"

    def __init__(self, vapor_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vapor_conn_id = vapor_conn_id
        self._async_settings: VaporConnectionSettings | None = None
        self._async_client: httpx.AsyncClient | None = None

    @cached_property
    def settings(self) -> VaporConnectionSettings:
        """The connection's settings, read on first use."""
        return VaporConnectionSettings.from_connection(self.get_connection(self.vapor_conn_id))

    @cached_property
    def session(self) -> requests.Session:
        """One requests session for every call this hook makes."""
        import requests

        session = requests.Session()
        session.headers.update(self.settings.headers)
        session.verify = self.settings.requests_verify
        return session

    def get_conn(self) -> requests.Session:
        """Return the requests session the hook calls the API with."""
        return self.session

    def get_replica(self, application: str, environment: str, replica: str) -> dict[str, Any]:
        """Return the replica as the service describes it."""
        return self._call(view_call(ReplicaRef(application, environment, replica)))

    def scale_replica(
        self, application: str, environment: str, replica: str, replicas: int
    ) -> dict[str, Any]:
        """Ask for ``replicas`` running copies; return the replica and its new deployment."""
        ref = ReplicaRef(application, environment, replica)
        call = scale_call(ref, replicas)
        self.log.info("Scaling %s to %d replicas", ref, replicas)
        return self._call(call)

    def resize_replica(
        self, application: str, environment: str, replica: str, plan: str
    ) -> dict[str, Any]:
        """Move the replica to ``plan``; return the replica and its new deployment."""
        ref = ReplicaRef(application, environment, replica)
        self.log.info("Resizing %s to plan %s", ref, plan)
        return self._call(resize_call(ref, plan))

    def reboot_replica(self, application: str, environment: str, replica: str) -> dict[str, Any]:
        """Reboot the replica's pods; return the replica and its new deployment.

        A reboot is sent at most once: if the answer is lost after the request left, this raises
        :class:`~airflow_provider_vapor.exceptions.VaporOutcomeUnknownError` instead of retrying.
        """
        ref = ReplicaRef(application, environment, replica)
        self.log.info("Rebooting %s", ref)
        return self._call(reboot_call(ref))

    def get_pods(self, application: str, environment: str, replica: str) -> list[dict[str, Any]]:
        """Return the replica's pods with their status."""
        return self._call(pods_call(ReplicaRef(application, environment, replica)))

    def get_pod_logs(
        self, application: str, environment: str, replica: str, pod: str, lines: int = 200
    ) -> str:
        """Return the last ``lines`` lines of one pod's output."""
        ref = ReplicaRef(application, environment, replica)
        check_identifier("pod", pod)
        call = ApiCall(
            description=f"read logs of pod {pod} of {ref}",
            method="GET",
            path=ref.path(pod, "logs"),
            params={"lines": str(lines), "timestamps": "false"},
        )
        return self._call(call, as_text=True)

    def deployment_channel_url(self, response: Mapping[str, Any]) -> str:
        """The websocket URL of the deployment a scale, resize or reboot response started.

        The response's ``trackingURL`` is used where present; otherwise the connection's
        ``channel_path`` with the deployment id.
        """
        deployment = deployment_from_response(response, "read the deployment")
        return self.settings.deployment_channel_url(
            deployment.deployment_id, deployment.tracking_url
        )

    def test_connection(self) -> tuple[bool, str]:
        """Check that the URL is the Vapor Cloud API and accepts the token, changing nothing.

        A request without the token must be refused, and the same request with it must not be:
        viewing a replica that does not exist tells both apart without touching a real one.
        """
        import requests

        settings = self.settings
        probe = view_call(ReplicaRef("airflow-connection-test", "production", "web"))
        try:
            anonymous = requests.get(
                settings.base_url + probe.path,
                timeout=(settings.connect_timeout, settings.read_timeout),
                verify=settings.requests_verify,
                allow_redirects=False,
            )
        except requests.RequestException as error:
            return False, f"{settings.base_url} did not answer ({type(error).__name__})"
        if anonymous.status_code not in (401, 403):
            return False, (
                f"{settings.base_url} answered {anonymous.status_code} to a request without a "
                "token; it does not look like the Vapor Cloud API. Check the host."
            )
        try:
            self._call(probe)
        except VaporNotFoundError:
            pass
        except VaporAuthenticationError:
            return False, f"{settings.base_url} refused the token"
        except VaporError as error:
            return False, str(error)
        return True, f"{settings.base_url} accepted the token"

    def _call(self, call: ApiCall, as_text: bool = False) -> Any:
        from tenacity import Retrying

        settings = self.settings
        retrying = Retrying(**retry_policy(call, settings.retry, self.log))
        try:
            for attempt in retrying:
                with attempt:
                    return self._send(call, settings, as_text)
        except VaporUnavailableError as error:
            raise _gave_up(error, retrying.statistics) from error
        raise AssertionError("tenacity ended without an outcome")

    def _send(self, call: ApiCall, settings: VaporConnectionSettings, as_text: bool) -> Any:
        import requests
        from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

        try:
            response = self.session.request(
                call.method,
                settings.base_url + call.path,
                json=call.body,
                params=call.params or None,
                timeout=(settings.connect_timeout, settings.read_timeout),
                allow_redirects=False,
                # Given per request, so REQUESTS_CA_BUNDLE in the environment cannot override it.
                verify=settings.requests_verify,
            )
        except requests.exceptions.SSLError as error:
            raise _tls_failure(call, settings, error) from None
        except requests.exceptions.ConnectTimeout:
            problem = f"no connection to {settings.base_url} within {settings.connect_timeout} s"
            raise transport_failure(call, problem, may_have_been_sent=False) from None
        except requests.exceptions.ReadTimeout:
            problem = f"no answer within {settings.read_timeout} s"
            raise transport_failure(call, problem, may_have_been_sent=True) from None
        except requests.exceptions.RequestException as error:
            reason = getattr(error.args[0], "reason", None) if error.args else None
            refused = isinstance(reason, (NewConnectionError, ConnectTimeoutError))
            problem = f"connection to {settings.base_url} failed ({type(reason or error).__name__})"
            raise transport_failure(call, problem, may_have_been_sent=not refused) from None
        if as_text and 200 <= response.status_code < 300:
            return response.text
        return read_response(
            call, response.status_code, response.headers, response.text, settings.redact
        )

    async def aget_settings(self) -> VaporConnectionSettings:
        """The connection's settings, read without blocking the event loop."""
        if self._async_settings is None:
            connection = await self.aget_connection(self.vapor_conn_id)
            self._async_settings = VaporConnectionSettings.from_connection(connection)
        return self._async_settings

    async def aget_replica(
        self, application: str, environment: str, replica: str
    ) -> dict[str, Any]:
        """Return the replica as the service describes it, from an event loop."""
        return await self._acall(view_call(ReplicaRef(application, environment, replica)))

    async def aget_pods(
        self, application: str, environment: str, replica: str
    ) -> list[dict[str, Any]]:
        """Return the replica's pods with their status, from an event loop."""
        return await self._acall(pods_call(ReplicaRef(application, environment, replica)))

    async def aclose(self) -> None:
        """Close the asynchronous client, if one was opened."""
        if self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None

    async def _acall(self, call: ApiCall) -> Any:
        from tenacity import AsyncRetrying

        settings = await self.aget_settings()
        retrying = AsyncRetrying(**retry_policy(call, settings.retry, self.log))
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._asend(call, settings)
        except VaporUnavailableError as error:
            raise _gave_up(error, retrying.statistics) from error
        raise AssertionError("tenacity ended without an outcome")

    async def _asend(self, call: ApiCall, settings: VaporConnectionSettings) -> Any:
        import httpx

        if self._async_client is None:
            self._async_client = httpx.AsyncClient(
                headers=settings.headers,
                verify=settings.ssl_context(),
                timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
                follow_redirects=False,
            )
        try:
            response = await self._async_client.request(
                call.method,
                settings.base_url + call.path,
                json=call.body,
                params=call.params or None,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            if _caused_by_tls(error):
                raise _tls_failure(call, settings, error) from None
            problem = f"connection to {settings.base_url} failed ({type(error).__name__})"
            raise transport_failure(call, problem, may_have_been_sent=False) from None
        except httpx.TransportError as error:
            problem = f"connection to {settings.base_url} failed ({type(error).__name__})"
            raise transport_failure(call, problem, may_have_been_sent=True) from None
        return read_response(
            call, response.status_code, response.headers, response.text, settings.redact
        )


def view_call(replica: ReplicaRef) -> ApiCall:
    return ApiCall(f"view {replica}", "GET", replica.path())


def pods_call(replica: ReplicaRef) -> ApiCall:
    return ApiCall(f"read pod status of {replica}", "GET", replica.path("status"))


def scale_call(replica: ReplicaRef, replicas: int) -> ApiCall:
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise VaporConfigurationError(
            f"replicas must be a whole number of 0 or more, got {replicas!r} for {replica}"
        )
    return ApiCall(f"scale {replica}", "PATCH", replica.path("scale"), {"replicas": replicas})


def resize_call(replica: ReplicaRef, plan: str) -> ApiCall:
    check_identifier("plan", plan)
    return ApiCall(f"resize {replica}", "PATCH", replica.path("resize"), {"plan": plan})


def reboot_call(replica: ReplicaRef) -> ApiCall:
    return ApiCall(f"reboot {replica}", "PATCH", replica.path("reboot"), idempotent=False)


def _gave_up(error: VaporUnavailableError, statistics: Mapping[str, Any]) -> VaporUnavailableError:
    attempts = statistics.get("attempt_number", 1)
    return VaporUnavailableError(
        f"{error} (gave up after {attempts} attempt{'s' if attempts != 1 else ''})",
        call=error.call,
        http_status=error.http_status,
    )


def _caused_by_tls(error: BaseException) -> bool:
    """Whether an SSL error is anywhere in the chain of causes; httpx wraps it twice."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _tls_failure(
    call: ApiCall, settings: VaporConnectionSettings, error: Exception
) -> VaporApiError:
    return VaporApiError(
        f"{call.description}: TLS verification of {settings.base_url} failed "
        f"({type(error).__name__}). Set ca_bundle in the extras of connection "
        f"{settings.conn_id!r} to the service's CA, or verify_ssl to false.",
        call=call.description,
    )


def _base_url(host: str | None, port: int | None, schema: str | None) -> str:
    host = (host or DEFAULT_HOST).strip().rstrip("/")
    if "://" not in host:
        scheme = schema if schema in ("http", "https") else "https"
        host = f"{scheme}://{host}"
    if port and host.count(":") < 2:
        host = f"{host}:{port}"
    return host


def _boolean(conn_id: str, name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise VaporConfigurationError(
        f"extra {name} of connection {conn_id!r} must be true or false, got {value!r}"
    )


def _seconds(conn_id: str, name: str, extra: Mapping[str, Any], default: float) -> float:
    value = extra.get(name)
    if value is None or value == "":
        return float(default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if number < 0:
        raise VaporConfigurationError(
            f"extra {name} of connection {conn_id!r} must be a number of 0 or more, got {value!r}"
        )
    return number
