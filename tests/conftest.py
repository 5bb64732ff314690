"""Shared fixtures: real peers (Orthanc) in pytest's tmp_path, on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import ORTHANC_BIN, Orthanc, OrthancFactory


def _require_orthanc() -> None:
    if not ORTHANC_BIN.exists():
        pytest.fail(f"{ORTHANC_BIN} is absent (make peers installs orthanc and orthanc-dicomweb)")


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[OrthancFactory]:
    """Start Orthancs on demand: factory(**Orthanc kwargs) -> started Orthanc.

    Each gets its own directory under tmp_path; all are stopped (by PID) at
    teardown, even if the test failed.
    """
    _require_orthanc()
    started: list[Orthanc] = []

    def factory(**kwargs: Any) -> Orthanc:
        work_dir = tmp_path / f"orthanc-{len(started)}"
        server = Orthanc(work_dir, **kwargs)
        started.append(server)
        return server.start()

    try:
        yield factory
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def orthanc(orthanc_factory: OrthancFactory) -> Orthanc:
    """A started Orthanc (AET "ORTHANC"), stopped after the test."""
    return orthanc_factory()
