"""Export: send a route's outputs from the on-disk outbox to every destination."""

from __future__ import annotations

import logging
import time

from config.settings import Settings
from dicom_node.send import TransientSendError, describe, send_files
from dicom_node.spool import Spool

log = logging.getLogger(__name__)


def export_route(spool: Spool, settings: Settings, job_id: str, route_name: str) -> None:
    """Send what is not yet at each destination; record progress so a retry sends only the rest.

    Raises TransientSendError / PermanentSendError from :func:`dicom_node.send.send_files`.
    """
    files = [describe(p) for p in spool.outputs(job_id, route_name)]
    if not settings.destinations:
        # Nothing to send to: the results stay in the spool (done/<job>/out/), and no ledger
        # entry is written, so the study is processed and sent again once a PACS is configured.
        spool.mark_exported(job_id, route_name)
        if spool.finish_if_exported(job_id):
            log.warning("job %s done: no destination configured, %d object(s) kept in the spool", job_id, len(files))
        return
    for dest in settings.destinations:
        before = spool.sent_to(job_id, route_name, dest.name)
        try:
            sent = send_files(dest, files, calling_ae=settings.ae_title, already_sent=before)
        except TransientSendError as exc:
            spool.mark_sent(job_id, route_name, dest.name, before | exc.stored)
            raise
        spool.mark_sent(job_id, route_name, dest.name, sent)
    spool.mark_exported(job_id, route_name)
    fingerprint_path = spool.out_dir(job_id, route_name) / "fingerprint"
    if fingerprint_path.exists():
        spool.ledger_put(
            fingerprint_path.read_text().strip(),
            {"job": job_id, "route": route_name, "objects": len(files), "at": time.time()},
        )
    if spool.finish_if_exported(job_id):
        log.info("job %s done: %d object(s) to %d destination(s)", job_id, len(files), len(settings.destinations))
