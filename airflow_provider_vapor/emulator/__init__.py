"""A local Vapor Cloud for tests and demos: the replica REST API and the deployment channel.

Start one with :class:`VaporEmulator` (or the ``vapor_emulator`` pytest fixture, or
``python -m airflow_provider_vapor.emulator``), point the ``vapor_default`` connection at
:attr:`VaporEmulator.connection_uri`, and inspect what the code under test did through
:attr:`VaporEmulator.requests`, :meth:`VaporEmulator.mutations` and :meth:`VaporEmulator.replica`.
Inject failures through :attr:`VaporEmulator.faults`.

The names below load on first use, so importing this package (as the pytest plugin does) stays
cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_vapor.emulator.app import VaporEmulator
    from airflow_provider_vapor.emulator.faults import Faults
    from airflow_provider_vapor.emulator.state import (
        EmulatedDeployment,
        EmulatorState,
        RecordedRequest,
        UnknownResourceError,
    )

__all__ = [
    "EmulatedDeployment",
    "EmulatorState",
    "Faults",
    "RecordedRequest",
    "UnknownResourceError",
    "VaporEmulator",
]

_HOMES = {
    "VaporEmulator": "app",
    "Faults": "faults",
    "EmulatedDeployment": "state",
    "EmulatorState": "state",
    "RecordedRequest": "state",
    "UnknownResourceError": "state",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
