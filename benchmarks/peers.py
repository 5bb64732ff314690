"""Receivers the benchmarks start: dcmtk's storescp and the node itself.

Both run as child processes on a free port, log into their work directory,
are waited for with a bounded C-ECHO poll, and are stopped by their PID.
`node_config` is the one place that knows the node's YAML schema.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.peers import (
    LOCALHOST,
    echoscu,
    free_port,
    log_tail,
    native_tool,
    stop_process,
    wait_until,
)

NODE_AET = "THYROID_NODE"
STORESCP_AET = "STORESCP"


def node_config(
    *,
    port: int,
    data_dir: Path,
    ae_title: str = NODE_AET,
    quiet_period_s: float = 3600.0,
    forced_limit_s: float = 7200.0,
    destinations: Sequence[dict[str, Any]] = (),
    routes: Sequence[dict[str, Any]] = (),
    models: dict[str, str] | None = None,
    broker_url: str | None = None,
    min_free_disk_mb: int = 200,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The node's config (`thyroid-node serve --config CFG`) as a plain dict.

    Adjust here when the node's schema changes; nothing else builds it.
    `extra` adds or overrides top-level keys (e.g. {"log_level": "DEBUG"}).
    """
    return {
        "ae_title": ae_title,
        "bind_address": LOCALHOST,
        "port": port,
        "data_dir": str(data_dir),
        "allowed_callers": [],
        "min_free_disk_mb": min_free_disk_mb,
        "completeness": {"quiet_period_s": quiet_period_s, "forced_limit_s": forced_limit_s},
        "broker_url": broker_url,
        "destinations": list(destinations),
        "routes": list(routes),
        "models": dict(models or {}),
        **(extra or {}),
    }


def node_executable() -> str | None:
    """The `thyroid-node` console script of this venv (or on PATH), if installed."""
    candidate = Path(sys.executable).parent / "thyroid-node"
    if candidate.exists():
        return str(candidate)
    return shutil.which("thyroid-node")


@dataclass
class Receiver:
    """A child process that accepts C-STORE on 127.0.0.1:port as `aet`."""

    name: str
    command: list[str]
    work_dir: Path
    port: int
    aet: str
    env: dict[str, str] | None = None
    startup_timeout: float = 60.0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.work_dir / f"{self.name}.log"

    def start(self) -> Self:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.work_dir,
                env={**os.environ, **self.env} if self.env else None,
            )
        try:
            wait_until(self._answers_echo, self.startup_timeout, interval=0.25, what=f"{self.name} C-ECHO")
        except BaseException:
            self.stop()
            raise
        return self

    def check_alive(self) -> None:
        """Raise RuntimeError (with the log's tail) if the process has exited."""
        assert self.proc is not None, f"{self.name} not started"
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}; log {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def _answers_echo(self) -> bool:
        self.check_alive()
        return echoscu(self.port, called_aet=self.aet, timeout=5).returncode == 0

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=30)
            self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def storescp(work_dir: Path, *, fork: bool, nodelay: bool = True, extra_args: Sequence[str] = ()) -> Receiver:
    """dcmtk's storescp writing into work_dir/data (+xa: accept all transfer syntaxes).

    dcmtk keeps Nagle's algorithm on unless TCP_NODELAY=1 is in its
    environment; `nodelay` sets it (measured here: 40 CT files over one
    association take ~1.9 s with Nagle on either side, ~0.11 s with it off
    on both).

    storescp binds all interfaces (dcmtk 3.6.7 has no bind option): the port
    is random and only 127.0.0.1 talks to it.
    """
    port = free_port()
    data_dir = work_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [native_tool("storescp"), "+xa", "-aet", STORESCP_AET, "-od", str(data_dir)]
    command += ["--fork"] if fork else []
    command += [*extra_args, str(port)]
    env = {"TCP_NODELAY": "1" if nodelay else "0"}
    return Receiver("storescp", command, work_dir, port, STORESCP_AET, env=env)


def node(work_dir: Path, executable: str, *, serve_args: Sequence[str] = (), **config: Any) -> Receiver:
    """The node (`thyroid-node serve --config CFG [serve_args]`) with node_config(**config)."""
    port = free_port()
    cfg = node_config(port=port, data_dir=work_dir / "data", **config)
    cfg_path = work_dir / "node.yaml"
    (work_dir / "data").mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(cfg, indent=2))  # JSON is valid YAML
    command = [executable, "serve", "--config", str(cfg_path), *serve_args]
    return Receiver("node", command, work_dir, port, cfg["ae_title"])


def node_worker(work_dir: Path, executable: str, queues: str) -> subprocess.Popen[bytes]:
    """`thyroid-node worker --queues QUEUES` on the config node() wrote into work_dir.

    Only needed with a broker_url (the embedded broker's `serve` starts its own
    workers). The caller stops it with tests.peers.stop_process.
    """
    log_path = work_dir / f"worker-{queues.replace(',', '-')}.log"
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [executable, "worker", "--config", str(work_dir / "node.yaml"), "--queues", queues],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=work_dir,
        )


@contextlib.contextmanager
def work_dir(prefix: str, parent: Path | None, keep: bool) -> Iterator[Path]:
    """A temporary folder for one benchmark run: kept (and named) on failure or with ``keep``."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    except BaseException:
        print(f"failed: {path} kept for its logs (remove it when done)", flush=True)
        raise
    if keep:
        print(f"kept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)
