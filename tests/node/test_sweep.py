"""The sweeper: complete studies are closed, routed and dispatched once; broker outages are survived."""

from __future__ import annotations

from pathlib import Path

from config.settings import load_settings
from dicom_node.route import Route
from dicom_node.spool import InstanceMeta, Spool
from dicom_node.sweep import Sweeper

NM = "1.2.840.10008.5.1.4.1.1.20"


def _store(spool: Spool, study: str, modality: str, now: float) -> None:
    spool.store(b"x", InstanceMeta(study, study + ".1", study + ".1.1", NM, modality), "PACS", now=now)


def test_tick_closes_routes_dispatches_once(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path, completeness={"quiet_period_s": 10, "forced_limit_s": 60})
    spool = Spool(settings.spool_dir)
    sent: list[tuple[str, Route]] = []
    sweeper = Sweeper(spool, settings, lambda job, r: sent.append((job, r)))
    _store(spool, "1.2.3", "NM", now=100.0)
    _store(spool, "1.2.4", "MR", now=100.0)
    assert sweeper.tick(now=105.0) == []  # still quiet-waiting
    closed = sweeper.tick(now=110.0)
    assert len(closed) == 2
    assert [(r.name, r.queue, r.pipeline) for _, r in sent] == [("nm-thyroid", "nm", "nm_thyroid_dx")]
    (ignored,) = spool.jobs("ignored")
    assert "MR" in spool.read_json(ignored, "reason.json")["reason"]
    sweeper.tick(now=120.0)
    assert len(sent) == 1  # dispatched once only


def test_broker_down_keeps_the_job_and_retries(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path)
    spool = Spool(settings.spool_dir)
    calls: list[str] = []

    def flaky(job: str, r: Route) -> None:
        calls.append(job)
        if len(calls) == 1:
            raise ConnectionError("broker down")

    sweeper = Sweeper(spool, settings, flaky)
    _store(spool, "1.2.3", "NM", now=100.0)
    (job,) = sweeper.tick(now=200.0)
    assert calls == [job] and list(spool.jobs("jobs")) == [job]
    sweeper.tick(now=201.0)
    assert calls == [job, job]
    sweeper.tick(now=202.0)
    assert len(calls) == 2


def test_restart_finishes_pending_study(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path)
    spool = Spool(settings.spool_dir)
    _store(spool, "1.2.3", "NM", now=100.0)
    spool.flush()
    del spool  # the node stops with the study pending
    sent: list[str] = []
    restarted = Sweeper(Spool(settings.spool_dir), settings, lambda job, r: sent.append(job))
    assert len(restarted.tick(now=1000.0)) == 1 and len(sent) == 1


def test_closed_but_unrouted_job_is_routed_after_a_crash(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path)
    spool = Spool(settings.spool_dir)
    _store(spool, "1.2.3", "NM", now=100.0)
    job = spool.close_study("1.2.3", now=200.0)  # the node dies before routing
    sent: list[str] = []
    Sweeper(Spool(settings.spool_dir), settings, lambda j, r: sent.append(j)).tick(now=201.0)
    assert sent == [job]


def test_lost_task_is_dispatched_again_after_its_lease(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path, task_lease_s=60)
    spool = Spool(settings.spool_dir)
    sent: list[str] = []
    sweeper = Sweeper(spool, settings, lambda j, r: sent.append(j))
    _store(spool, "1.2.3", "NM", now=100.0)
    (job,) = sweeper.tick(now=200.0)
    marker = spool.dispatch_marker(job, "nm-thyroid")
    mtime = marker.stat().st_mtime
    sweeper.tick(now=mtime + 30)  # lease not run out: nothing
    assert sent == [job]
    sweeper.tick(now=mtime + 61)  # no heartbeat for longer than the lease: again
    assert sent == [job, job]
    spool.publish_outputs(job, "nm-thyroid", {"a.dcm": b"x"})
    spool.mark_exported(job, "nm-thyroid")
    sweeper.tick(now=marker.stat().st_mtime + 1000)  # exported: never again
    assert sent == [job, job]
