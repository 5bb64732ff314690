"""Real DICOM peers for tests and benchmarks: Orthanc, dcmtk's SCUs, dciodvfy.

Plain helpers with no pytest dependency, so benchmarks can import them too.
Everything listens on or talks to 127.0.0.1 on free ports; every wait is
bounded; every process started here is stopped by its own PID.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

LOCALHOST = "127.0.0.1"
ORTHANC_BIN = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


# --------------------------------------------------------------------------
# ports, waiting, processes
# --------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Return `count` distinct free ports (all held open until all are chosen)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOCALHOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll `predicate` until it returns a truthy value; return that value.

    Raises TimeoutError naming `what` (and the last exception the predicate
    raised, if any) once `timeout` seconds have passed. Exceptions other than
    OSError/ValueError/LookupError propagate at once, so a predicate can abort
    the wait (e.g. when the process being waited for has died).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    max_polls = max(1, int(timeout / max(interval, 0.001)) + 2)
    for _ in range(max_polls):
        try:
            result = predicate()
            if result:
                return result
            last_error = None
        except (OSError, ValueError, LookupError) as exc:
            last_error = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int | None:
    """Terminate `proc` (by its PID), wait, kill on timeout; return its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d ignored SIGTERM for %.0fs; killing", proc.pid, timeout)
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


def log_tail(path: Path, max_chars: int = 4000) -> str:
    """Return the end of a log file (empty string if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return text[-max_chars:]


# --------------------------------------------------------------------------
# Orthanc
# --------------------------------------------------------------------------


class OrthancError(RuntimeError):
    """Orthanc failed to start or answered an HTTP request with an error."""


class Orthanc:
    """An Orthanc PACS in a temporary directory, on free ports.

    Use as a context manager (or call start()/stop()). HTTP is local only
    (RemoteAccessAllowed false); Orthanc's DICOM port binds all interfaces,
    which Orthanc cannot change, but the ports are random and tests only
    talk to 127.0.0.1.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        aet: str = "ORTHANC",
        name: str = "test-pacs",
        stable_age: int = 1,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        startup_timeout: float = 60.0,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.aet = aet
        self.name = name
        self.stable_age = stable_age
        self.modalities = dict(modalities or {})
        self.startup_timeout = startup_timeout
        self.extra_config = dict(extra_config or {})
        self.http_port, self.dicom_port = free_ports(2)
        self.host = LOCALHOST
        self.url = f"http://{LOCALHOST}:{self.http_port}"
        self.config_path = self.work_dir / "orthanc.json"
        self.log_path = self.work_dir / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration this instance runs with."""
        storage = str(self.work_dir / "db")
        config: dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "OverwriteInstances": True,
            "StableAge": self.stable_age,
            "SaveJobs": False,
            "DicomModalities": {
                name: {"AET": aet, "Host": host, "Port": port} for name, (aet, host, port) in self.modalities.items()
            },
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        config.update(self.extra_config)
        return config

    def start(self) -> Self:
        """Write the config, start Orthanc, and wait until GET /system answers."""
        if self._proc is not None:
            raise OrthancError("Orthanc already started")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [str(ORTHANC_BIN), str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.work_dir,
            )
        try:
            wait_until(self._is_up, self.startup_timeout, what=f"Orthanc on {self.url}")
        except BaseException:
            self.stop()
            raise
        logger.info("Orthanc pid %d: http %d dicom %d", self._proc.pid, self.http_port, self.dicom_port)
        return self

    def _is_up(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise OrthancError(
                f"Orthanc exited with {self._proc.returncode}; log {self.log_path}:\n" + log_tail(self.log_path)
            )
        self.get_json("/system", timeout=2.0)
        return True

    def stop(self) -> None:
        """Stop Orthanc by its PID (idempotent)."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- HTTP --------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 60.0,
    ) -> bytes:
        """Send one HTTP request to Orthanc and return the raw response body."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                data: bytes = resp.read()
                return data
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise OrthancError(f"{method} {path} -> HTTP {exc.code}: {detail}") from exc

    def get_json(self, path: str, timeout: float = 60.0) -> Any:
        return json.loads(self.request("GET", path, timeout=timeout))

    def post_json(self, path: str, payload: Any, timeout: float = 120.0) -> Any:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return _json_or_none(self.request("POST", path, body, timeout=timeout))

    def put_json(self, path: str, payload: Any) -> Any:
        return _json_or_none(self.request("PUT", path, json.dumps(payload).encode()))

    # -- REST helpers ------------------------------------------------------

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare a DICOM peer (PUT /modalities/NAME), no restart needed."""
        self.put_json(f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port})

    def lookup_study(self, study_uid: str) -> str | None:
        """Orthanc's ID of the study with this StudyInstanceUID, or None."""
        matches = self.post_json("/tools/lookup", study_uid.encode()) or []
        for match in matches:
            if match.get("Type") == "Study":
                return str(match["ID"])
        return None

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Instances of a study (empty if unknown), each with its series.

        Each dict is Orthanc's expanded instance (ID, MainDicomTags,
        ParentSeries, ...) plus "Series": the parent series' MainDicomTags
        (Modality, SeriesInstanceUID, SeriesNumber, ...).
        """
        study_id = self.lookup_study(study_uid)
        if study_id is None:
            return []
        series_tags = {
            series["ID"]: series.get("MainDicomTags", {}) for series in self.get_json(f"/studies/{study_id}/series")
        }
        instances: list[dict[str, Any]] = self.get_json(f"/studies/{study_id}/instances")
        for instance in instances:
            instance["Series"] = series_tags.get(instance.get("ParentSeries"), {})
        return instances

    def instance_metadata(self, instance_id: str) -> dict[str, str]:
        """Orthanc's metadata of an instance: SopClassUid, TransferSyntax, RemoteAET..."""
        result: dict[str, str] = self.get_json(f"/instances/{instance_id}/metadata?expand")
        return result

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """All tags of an instance as Orthanc's simplified JSON (keyword -> value)."""
        result: dict[str, Any] = self.get_json(f"/instances/{instance_id}/simplified-tags")
        return result

    def instance_count(self) -> int:
        return int(self.get_json("/statistics")["CountInstances"])

    def get_instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file (GET /instances/{id}/file)."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def upload(self, path: Path) -> dict[str, Any]:
        """POST a DICOM file to /instances; returns Orthanc's answer (ID, Status...)."""
        answer = self.post_json("/instances", Path(path).read_bytes())
        return dict(answer or {})

    def push_to(self, modality: str, resources: list[str], timeout: float = 300.0) -> Any:
        """Make Orthanc C-STORE resources (any level's IDs) to a declared modality."""
        payload = {"Resources": list(resources), "Synchronous": True}
        return self.post_json(f"/modalities/{modality}/store", payload, timeout=timeout)


OrthancFactory = Callable[..., Orthanc]
"""Type of the `orthanc_factory` fixture: factory(**Orthanc kwargs) -> started Orthanc."""


def _json_or_none(data: bytes) -> Any:
    return json.loads(data) if data.strip() else None


# --------------------------------------------------------------------------
# dcmtk SCUs
# --------------------------------------------------------------------------


def native_tool(name: str) -> str:
    """Absolute path of a compiled tool (dcmtk, dicom3tools).

    pynetdicom installs Python apps with the same names (storescu, echoscu,
    storescp) into the venv's bin, which comes first on PATH: skip scripts.
    DCMTK_BIN_DIR, if set, is searched first.
    """
    dirs = [os.environ.get("DCMTK_BIN_DIR", ""), "/usr/bin", "/usr/local/bin"]
    dirs += os.environ.get("PATH", "").split(os.pathsep)
    for directory in filter(None, dirs):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK) and not _is_script(candidate):
            return str(candidate)
    raise FileNotFoundError(f"no compiled {name!r} found (apt-get install dcmtk dicom3tools)")


def _is_script(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"#!"


def storescu(
    files: Sequence[Path],
    port: int,
    *,
    called_aet: str,
    calling_aet: str = "STORESCU",
    host: str = LOCALHOST,
    timeout: float = 60.0,
    extra_args: Iterable[str] = (),
    verbose: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Send files over one association with dcmtk's storescu -R.

    -R proposes only the SOP classes (and transfer syntaxes) of the files sent;
    storescu's fixed default list lacks some classes (Segmentation). With
    `verbose` (-v) the output holds one "Received Store Response (STATUS)" line
    per file: see store_statuses(). Raises subprocess.TimeoutExpired (after
    killing storescu) past `timeout`. `env` adds variables, e.g.
    {"TCP_NODELAY": "1"}.
    """
    cmd = [native_tool("storescu"), "-R", "-aet", calling_aet, "-aec", called_aet]
    cmd += ["-v"] if verbose else []
    cmd += [*extra_args, host, str(port), *map(str, files)]
    return _run_tool(cmd, timeout, env)


def echoscu(
    port: int,
    *,
    called_aet: str,
    calling_aet: str = "ECHOSCU",
    host: str = LOCALHOST,
    timeout: float = 10.0,
    extra_args: Iterable[str] = (),
) -> subprocess.CompletedProcess[str]:
    """One C-ECHO with dcmtk's echoscu; returncode 0 means the peer answered."""
    seconds = str(max(1, int(timeout)))
    cmd = [native_tool("echoscu"), "-aet", calling_aet, "-aec", called_aet, "-to", seconds, "-ta", seconds]
    cmd += ["-td", seconds, *extra_args, host, str(port)]
    return _run_tool(cmd, timeout + 5, None)


def store_statuses(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The status words of each C-STORE response in storescu -v output.

    E.g. ["Success", "Success"]; a failure reads like "Out of Resources" or
    "Error: ..." as dcmtk prints it.
    """
    marker = "Received Store Response ("
    statuses = []
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        start = line.find(marker)
        if start >= 0:
            rest = line[start + len(marker) :]
            statuses.append(rest[: rest.rfind(")")] if ")" in rest else rest)
    return statuses


def _run_tool(cmd: list[str], timeout: float, env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env} if env else None
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------
# dciodvfy
# --------------------------------------------------------------------------


def dciodvfy_lines(path: Path, timeout: float = 120.0) -> list[str]:
    """All output lines of dicom3tools' dciodvfy on one file (it writes to stderr)."""
    result = _run_tool([native_tool("dciodvfy"), str(path)], timeout, None)
    return (result.stderr + "\n" + result.stdout).splitlines()


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error - ..." lines dciodvfy reports for a file (empty: no violation)."""
    return [line.strip() for line in dciodvfy_lines(path) if line.strip().startswith("Error")]


def dciodvfy_warnings(path: Path) -> list[str]:
    """The "Warning - ..." lines dciodvfy reports for a file."""
    return [line.strip() for line in dciodvfy_lines(path) if line.strip().startswith("Warning")]
