"""Apache Airflow provider for Vapor Cloud replicas."""

from __future__ import annotations

__version__ = "0.1.0"

_TEXT = {"type": ["string", "null"]}


def get_provider_info() -> dict:
    """Describe the provider to Airflow's providers manager."""
    return {
        "package-name": "airflow-provider-vapor",
        "name": "Vapor Cloud",
        "description": "Scale, resize and reboot Vapor Cloud replicas and wait for their "
        "deployments, in a worker or deferred to the triggerer.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Vapor Cloud",
                "external-doc-url": "https://docs.vapor.cloud",
                "tags": ["service"],
            }
        ],
        "operators": [
            {
                "integration-name": "Vapor Cloud",
                "python-modules": ["airflow_provider_vapor.operators.replica"],
            }
        ],
        "sensors": [
            {
                "integration-name": "Vapor Cloud",
                "python-modules": ["airflow_provider_vapor.sensors.deployment"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Vapor Cloud",
                "python-modules": ["airflow_provider_vapor.hooks.vapor"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Vapor Cloud",
                "python-modules": ["airflow_provider_vapor.triggers.deployment"],
            }
        ],
        "extra-links": ["airflow_provider_vapor.links.VaporReplicaLink"],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_vapor.hooks.vapor.VaporHook",
                "hook-name": "Vapor Cloud",
                "connection-type": "vapor",
                "conn-fields": {
                    "channel_path": {
                        "label": "Deployment channel path",
                        "description": "Websocket path of a deployment's channel; "
                        "{deployment_id} marks the id. Used when a response has no trackingURL.",
                        "schema": {**_TEXT, "default": "/v2/activity/channel/{deployment_id}"},
                    },
                    "verify_ssl": {
                        "label": "Verify TLS certificates",
                        "description": "Applies to REST and the websocket channel alike.",
                        "schema": {"type": ["boolean", "null"], "default": True},
                    },
                    "ca_bundle": {
                        "label": "CA bundle path",
                        "description": "A PEM file to verify the service's certificate against.",
                        "schema": _TEXT,
                    },
                    "connect_timeout": {
                        "label": "Connect timeout (seconds)",
                        "schema": {"type": ["number", "null"], "default": 10},
                    },
                    "read_timeout": {
                        "label": "Read timeout (seconds)",
                        "schema": {"type": ["number", "null"], "default": 30},
                    },
                    "ping_interval": {
                        "label": "Channel keepalive ping interval (seconds)",
                        "description": "0 turns pings off. Keep it below any proxy's idle timeout.",
                        "schema": {"type": ["number", "null"], "default": 30},
                    },
                    "max_retries": {
                        "label": "Retries of a failed call",
                        "schema": {"type": ["integer", "null"], "default": 5},
                    },
                    "retry_backoff": {
                        "label": "Retry backoff base (seconds)",
                        "schema": {"type": ["number", "null"], "default": 1},
                    },
                    "max_retry_wait": {
                        "label": "Longest wait between retries (seconds)",
                        "description": "Also caps a Retry-After the service asks for.",
                        "schema": {"type": ["number", "null"], "default": 60},
                    },
                    "dashboard_url": {
                        "label": "Dashboard URL of a replica",
                        "description": "With {application}, {environment} and {replica}.",
                        "schema": {
                            **_TEXT,
                            "default": "https://dashboard.vapor.cloud/apps/{application}/"
                            "{environment}/{replica}",
                        },
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"password": "API token", "host": "API URL"},
                    "placeholders": {
                        "host": "https://api-new.v2.vapor.cloud",
                        "password": "Vapor Cloud user token",
                    },
                },
            }
        ],
    }
