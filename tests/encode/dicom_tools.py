"""Helpers for the encoder tests: bytes round trips and dcmtk / dicom3tools checks."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest


def to_bytes(dataset: pydicom.Dataset) -> bytes:
    """Write a dataset as a DICOM file (preamble, file meta) into bytes."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def from_bytes(data: bytes) -> pydicom.Dataset:
    """Read back what :func:`to_bytes` wrote."""
    return pydicom.dcmread(io.BytesIO(data))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    """Put bytes into a file under ``tmp_path`` for the command-line checkers."""
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not on PATH (make peers installs dcmtk and dicom3tools)")
    return path


def dciodvfy_report(path: Path) -> list[str]:
    """All lines dciodvfy prints for a file (it reports on stderr)."""
    proc = subprocess.run(
        [_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error -`` lines dciodvfy reports for a file (empty when it conforms)."""
    return [line for line in dciodvfy_report(path) if "Error -" in line]


def dsrdump(path: Path) -> str:
    """dcmtk's rendering of an SR document; fails the test if dsrdump cannot parse it."""
    proc = subprocess.run(
        [_tool("dsrdump"), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "E:" not in proc.stderr, proc.stderr
    return proc.stdout
