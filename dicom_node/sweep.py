"""The completeness sweeper: closes quiet studies, routes them, hands them to the queue."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from config.settings import Settings
from dicom_node import metrics
from dicom_node.complete import CompletenessPolicy, completion_reason, is_complete
from dicom_node.route import Route, explain_no_route, route
from dicom_node.spool import Spool
from dicom_node.uids import study_key

log = logging.getLogger(__name__)

Dispatch = Callable[[str, Route], None]


class Sweeper:
    """Runs one ``tick`` every ``sweep_interval_s`` in a thread of the listener process."""

    def __init__(self, spool: Spool, settings: Settings, dispatch: Dispatch) -> None:
        self.spool = spool
        self.settings = settings
        self.dispatch = dispatch
        self.policy = CompletenessPolicy(settings.completeness.quiet_period_s, settings.completeness.forced_limit_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self, now: float | None = None) -> list[str]:
        """One pass: persist manifests, close complete studies, (re)dispatch routed jobs."""
        now = time.time() if now is None else now
        self.spool.flush()
        closed = []
        pending = self.spool.incoming()
        metrics.INCOMING.set(len(pending))
        for manifest in pending:
            if is_complete(manifest, now, self.policy):
                reason = completion_reason(manifest, now, self.policy)
                job_id = self.spool.close_study(manifest.study_instance_uid, now)
                log.info(
                    "study %s complete (%s, %d instances): job %s",
                    study_key(manifest.study_instance_uid), reason, manifest.instance_count, job_id,
                )
                metrics.STUDIES_COMPLETED.inc()
                self.route_job(job_id)
                closed.append(job_id)
        self.redispatch(now)
        return closed

    def route_job(self, job_id: str) -> None:
        manifest = self.spool.job_manifest(job_id)
        routes = route(manifest, self.settings.routes)
        if not routes:
            why = explain_no_route(manifest, self.settings.routes)
            self.spool.move_job(job_id, "ignored", "reason.json", {"reason": why, "at": time.time()})
            metrics.STUDIES_IGNORED.inc()
            log.info("job %s ignored: %s", job_id, why)
            return
        self.spool.write_json(job_id, "routes.json", [r.as_dict() for r in routes])

    def redispatch(self, now: float | None = None) -> None:
        """Hand each routed job's routes to the queue; hand them again when their lease runs out.

        A job closed but not yet routed (a crash in between) is routed now. A route whose
        marker has not been touched for ``task_lease_s`` (the task was lost with a worker or
        the embedded broker) and that is not exported is dispatched again: tasks are
        idempotent, so a re-run re-uses published outputs and sends only what is missing.
        """
        now = time.time() if now is None else now
        lease = self.settings.task_lease_s
        for job_id in self.spool.jobs("jobs"):
            job_dir = self.spool.job_dir(job_id)
            if not (job_dir / "routes.json").exists():
                self.route_job(job_id)
                if not (job_dir / "routes.json").exists():
                    continue  # ignored
            for raw in self.spool.read_json(job_id, "routes.json"):
                marker = self.spool.dispatch_marker(job_id, raw["name"])
                if marker.exists():
                    if now - marker.stat().st_mtime < lease or self.spool.is_exported(job_id, raw["name"]):
                        continue
                    log.warning("job %s route %s: no sign of its task for %.0f s; dispatching again",
                                job_id, raw["name"], lease)
                r = Route(raw["name"], raw["pipeline"], raw["queue"], tuple(raw["series"]))
                try:
                    self.dispatch(job_id, r)
                except Exception as exc:  # broker down: keep the job, try again next tick
                    metrics.DISPATCH_ERRORS.inc()
                    log.error("job %s route %s not dispatched (%s); will retry", job_id, r.name, exc)
                    return
                marker.touch()
                log.info("job %s route %s -> queue %s (%s)", job_id, r.name, r.queue, r.pipeline)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.completeness.sweep_interval_s):
            try:
                self.tick()
            except Exception:  # the sweeper must outlive one bad study
                log.exception("sweep failed; next sweep in %.1f s", self.settings.completeness.sweep_interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.spool.flush()
