"""Fixtures of the OHIF viewer test: the node's fixtures (tests/integration) and the viewer's tools."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

# the node as a real process: the integration tests' own fixture
from tests.integration.conftest import node_factory  # noqa: F401
from tests.peers import Orthanc
from tests.viewer.ohif import missing_viewer_parts
from tests.viewer.serve import ViewerServer


# A Redis database of its own: the integration tests use 11, and a worker of theirs running at the
# same time would take this test's jobs (and fail them: the job is not in its spool), or the reverse.
VIEWER_REDIS_URL = "redis://127.0.0.1:6379/12"


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(VIEWER_REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail("no Redis on 127.0.0.1:6379 (make peers starts one)")
    client.flushdb()  # our own database number: leftovers of an earlier run only
    yield VIEWER_REDIS_URL
    client.flushdb()


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
