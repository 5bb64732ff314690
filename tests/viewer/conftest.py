"""Fixtures of the OHIF viewer test: the node's fixtures (tests/integration) and the viewer's tools."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# the node as a real process: the integration tests' own fixture
from tests.integration.conftest import node_factory, redis_url  # noqa: F401  (a Redis database claimed per test)
from tests.peers import Orthanc
from tests.viewer.ohif import missing_viewer_parts
from tests.viewer.serve import ViewerServer


@pytest.fixture(scope="session")
def viewer_tools() -> None:
    """Chromium, node, OHIF and playwright-core are installed (make viewer installs them)."""
    missing = missing_viewer_parts()
    if missing:
        pytest.fail("missing for the viewer test: " + "; ".join(missing) + " (make viewer / deploy/ensure-viewer.sh installs them)")


@pytest.fixture
def viewer(orthanc: Orthanc, viewer_tools: None) -> Iterator[ViewerServer]:
    """OHIF and a DICOMweb proxy to the test's Orthanc, on one 127.0.0.1 origin."""
    with ViewerServer(orthanc.url) as server:
        yield server
