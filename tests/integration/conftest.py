"""The node as a real process (thyroid-node serve, plus Celery workers), beside real peers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.peers import Orthanc, echoscu, free_port, log_tail, stop_process, wait_until

REDIS_BASE = "redis://127.0.0.1:6379"
REDIS_DBS = range(11, 16)  # databases of our own; a test claims a free one, so two test runs never share queues
CLAIM_KEY = "thyroid-node-tests:claimed-by"


class NodeProcess:
    """``thyroid-node serve`` (and, with a broker, ``thyroid-node worker``) in a temp folder."""

    def __init__(self, work: Path, orthanc: Orthanc | None, broker_url: str | None, **overrides: Any) -> None:
        self.work = work
        self.port = free_port()
        self.ae_title = "THYROID_AI"
        config: dict[str, Any] = {
            "ae_title": self.ae_title,
            "bind_address": "127.0.0.1",
            "port": self.port,
            "data_dir": str(work / "var"),
            "allowed_callers": [{"ae_title": "STORESCU"}, {"ae_title": "ORTHANC"}],
            "completeness": {"quiet_period_s": 2, "forced_limit_s": 120, "sweep_interval_s": 0.5},
            "broker_url": broker_url,
            "destinations": (
                [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}] if orthanc else []
            ),
            "models": {name: "demo" for name in
                       ("nm_thyroid_dx", "ct_lung_met_rai", "us_nodule_seg", "us_calcified_nodule", "us_lvlnm")},
            "export_backoff_s": 1,
            "export_backoff_max_s": 4,
            "log_level": "INFO",
        }
        config.update(overrides)
        self.config_path = work / "node.yaml"
        work.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config))
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.broker_url = broker_url

    def _spawn(self, *args: str) -> None:
        log_path = self.work / f"{args[0]}-{len(self.procs)}.log"
        log = open(log_path, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("THYROID_NODE_")}
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "dicom_node.cli", *args, "--config", str(self.config_path)]
        self.procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.work), log_path))

    def start(self) -> "NodeProcess":
        self._spawn("serve")
        if self.broker_url:
            self._spawn("worker", "--queues", "nm,ct,us")
            self._spawn("worker", "--queues", "export")
        wait_until(lambda: self.alive() and echoscu(self.port, called_aet=self.ae_title, calling_aet="STORESCU").returncode == 0,
                   timeout=60, what="node answering C-ECHO")
        return self

    def alive(self) -> bool:
        dead = [(p, log) for p, log in self.procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"node process exited ({dead[0][0].returncode}):\n{log_tail(dead[0][1])}")
        return True

    def logs(self) -> str:
        return "\n".join(f"== {log.name}\n{log_tail(log)}" for _, log in self.procs)

    def spool_jobs(self, state: str) -> list[Path]:
        root = self.work / "var" / "spool" / state
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def stop(self) -> None:
        for proc, _ in reversed(self.procs):
            stop_process(proc, timeout=30)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """An empty Redis database claimed for this test (another test run on the machine uses another)."""
    for db in REDIS_DBS:
        client = redis.Redis.from_url(f"{REDIS_BASE}/{db}", socket_timeout=2)
        try:
            claimed = client.set(CLAIM_KEY, os.getpid(), nx=True, ex=3600)
        except redis.exceptions.ConnectionError:
            pytest.fail("no Redis on 127.0.0.1:6379 (make peers starts one)")
        if claimed:
            break
    else:
        pytest.fail(f"every test Redis database {REDIS_DBS.start}-{REDIS_DBS.stop - 1} is claimed by another run")
    client.flushdb()  # leftovers of an earlier run only
    client.set(CLAIM_KEY, os.getpid(), ex=3600)
    yield f"{REDIS_BASE}/{db}"
    client.flushdb()


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    started: list[NodeProcess] = []

    def factory(orthanc: Orthanc | None, broker_url: str | None, **overrides: Any) -> NodeProcess:
        node = NodeProcess(tmp_path / f"node-{len(started)}", orthanc, broker_url, **overrides)
        started.append(node)
        return node.start()

    yield factory
    for node in started:
        node.stop()


@pytest.fixture(scope="session", autouse=True)
def _demo_bundle_built() -> None:
    """Build the demo weights once before any node needs them (cached across runs)."""
    from model_zoo.demo import DEMO_RECIPES, ensure_demo_bundle

    for name in DEMO_RECIPES:
        ensure_demo_bundle(name)


def require_tools() -> None:
    for tool in ("dciodvfy",):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing (make peers installs it)")
