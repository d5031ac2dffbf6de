"""The ``vapor_emulator`` pytest fixture: a running Vapor Cloud emulator per test.

The fixture starts a :class:`~airflow_provider_vapor.emulator.VaporEmulator`, points the
``vapor_default`` Airflow connection at it (``AIRFLOW_CONN_VAPOR_DEFAULT``) for the test, and
stops it afterwards. Options go through a marker, with the keywords ``VaporEmulator`` takes:

.. code-block:: python

    @pytest.mark.vapor_emulator(step_seconds=0.01, response_shape="activity")
    def test_scale(vapor_emulator):
        ...

This module is loaded into every pytest session of an environment with the provider installed,
so it imports only pytest and the standard library; the emulator loads when the fixture runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from airflow_provider_vapor.emulator import VaporEmulator

FIXTURE_STEP_SECONDS = 0.05


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``vapor_emulator`` marker."""
    config.addinivalue_line(
        "markers",
        "vapor_emulator(**options): keyword arguments of VaporEmulator for the vapor_emulator "
        "fixture, e.g. step_seconds=0.01 or response_shape='activity'",
    )


@pytest.fixture
def vapor_emulator(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[VaporEmulator]:
    """A running Vapor Cloud emulator that the ``vapor_default`` connection points at.

    Deployments step every 0.05 s unless the ``vapor_emulator`` marker says otherwise.
    """
    from airflow_provider_vapor.emulator import VaporEmulator

    options: dict[str, Any] = {"step_seconds": FIXTURE_STEP_SECONDS}
    marker = request.node.get_closest_marker("vapor_emulator")
    if marker is not None:
        if marker.args:
            raise pytest.UsageError("the vapor_emulator marker takes keyword arguments only")
        options.update(marker.kwargs)

    with VaporEmulator(**options) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_VAPOR_DEFAULT", emulator.connection_uri)
        yield emulator
