"""Thin Celery tasks: unpack IDs, call a plain function, map typed errors to retry or fail.

Every task touches its route's lease marker (``Spool.heartbeat``) when it starts: the sweeper
dispatches a route again only when no task has shown a sign of life for ``task_lease_s``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from dicom_node.send import PermanentSendError, TransientSendError
from dicom_node.spool import Spool
from workers.celery_app import EXPORT_TASK, INFER_TASK

log = logging.getLogger(__name__)

INFER_MAX_RETRIES = 3


def register(app: Celery) -> None:
    """Register the node's tasks on ``app`` (their names are what the listener sends)."""

    @app.task(name=INFER_TASK, bind=True, max_retries=INFER_MAX_RETRIES, acks_late=True)
    def infer(self: Task, job_id: str, route_name: str) -> None:
        from workers.infer import process_route  # imports torch: only in workers

        settings = self.app.node_settings
        spool = Spool(settings.spool_dir)
        spool.heartbeat(job_id, route_name)
        try:
            needs_export = process_route(spool, settings, job_id, route_name)
        except OSError as exc:  # a shared volume hiccup, or unreadable input: a few tries, then failed
            if self.request.retries < INFER_MAX_RETRIES:
                raise self.retry(exc=exc, countdown=10 * (self.request.retries + 1))
            _fail(spool, job_id, route_name, "infer", f"gave up after {self.request.retries} retries: {exc!r}")
            return
        except Exception as exc:
            log.exception("job %s route %s failed", job_id, route_name)
            _fail(spool, job_id, route_name, "infer", repr(exc))
            return
        if needs_export:
            self.app.send_task(EXPORT_TASK, args=[job_id, route_name], queue="export")

    @app.task(name=EXPORT_TASK, bind=True, acks_late=True)
    def export(self: Task, job_id: str, route_name: str) -> None:
        from workers.export import export_route

        settings = self.app.node_settings
        spool = Spool(settings.spool_dir)
        spool.heartbeat(job_id, route_name)
        try:
            export_route(spool, settings, job_id, route_name)
        except PermanentSendError as exc:
            _fail(spool, job_id, route_name, "export", str(exc))
        except Exception as exc:  # TransientSendError, and anything else a peer or a file may cause
            if not isinstance(exc, TransientSendError):
                log.exception("job %s route %s: export error", job_id, route_name)
            if self.request.retries >= settings.export_max_retries:
                _fail(spool, job_id, route_name, "export", f"gave up after {self.request.retries} retries: {exc}")
                return
            delay = min(settings.export_backoff_s * 2 ** self.request.retries, settings.export_backoff_max_s)
            log.warning("job %s route %s: %s; retry %d in %.0f s", job_id, route_name, exc, self.request.retries + 1, delay)
            raise self.retry(exc=exc, countdown=delay, max_retries=None)


def _fail(spool: Spool, job_id: str, route_name: str, stage: str, error: str) -> None:
    log.error("job %s route %s: %s failed for good: %s", job_id, route_name, stage, error)
    record: dict[str, Any] = {"route": route_name, "stage": stage, "error": error}
    try:
        spool.move_job(job_id, "failed", "error.json", record)
    except FileNotFoundError:  # already moved by another route's task
        log.info("job %s had already left jobs/", job_id)
