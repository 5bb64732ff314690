"""Infer: run one route's pipeline on a job's series and publish the encoded objects."""

from __future__ import annotations

import importlib
import io
import json
import logging
from datetime import datetime, timezone
from types import ModuleType
from typing import Any

from pydicom import Dataset, dcmread, dcmwrite

from config.settings import Destination, Settings
from dicom_node.spool import Spool
from workers.models import load_models

log = logging.getLogger(__name__)

# pipeline name (as used in routing rules) -> module with MODELS (or models_for(settings)), process()
PIPELINES = {
    "nm_thyroid_dx": "workers.pipelines.nm",
    "ct_lung_met_rai": "workers.pipelines.ct",
    "us_thyroid_nodule": "workers.pipelines.us",
}


class UnknownPipeline(ValueError):
    pass


def get_pipeline(name: str) -> ModuleType:
    try:
        return importlib.import_module(PIPELINES[name])
    except KeyError:
        raise UnknownPipeline(f"no pipeline named {name!r}; known: {', '.join(sorted(PIPELINES))}") from None


def pipeline_models(pipeline: ModuleType, settings: Settings) -> tuple[str, ...]:
    """The zoo models a pipeline needs under these settings.

    A pipeline whose models depend on its options (the NM pipeline: seed 001 only when
    ``nm.graves_i131`` is not "off") provides ``models_for(settings)``; the others list
    ``MODELS``.
    """
    models_for = getattr(pipeline, "models_for", None)
    if models_for is not None:
        return tuple(models_for(settings))
    return tuple(pipeline.MODELS)


def encode_files(objects: list[Dataset], prefix: str = "") -> dict[str, bytes]:
    """Serialise output datasets as DICOM files named ``<prefix><SOP Instance UID>.dcm``."""
    files = {}
    for ds in objects:
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        files[f"{prefix}{ds.SOPInstanceUID}.dcm"] = buf.getvalue()
    return files


def input_series(spool: Spool, job_id: str, matched: list[str], pipeline: ModuleType) -> list[str]:
    """The series a route's pipeline reads: those its rule matched, plus the study's series of the
    pipeline's companion modalities (e.g. a site's SEG holding nodule outlines for the US images)."""
    companions = {m.upper() for m in getattr(pipeline, "COMPANION_MODALITIES", ())}
    if not companions:
        return matched
    manifest = spool.job_manifest(job_id)
    extra = [uid for uid, info in sorted(manifest.series.items())
             if info.modality.upper() in companions and uid not in matched]
    return [*matched, *extra]


def job_datetime(spool: Spool, job_id: str) -> datetime:
    """When the study was closed, in the listener's local time: the content date/time of its objects.

    Recorded in the job's manifest by the listener, so a task re-delivered to any worker
    (whatever its time zone) writes byte-identical objects.
    """
    closed = spool.job_manifest(job_id).closed_local
    if closed:
        return datetime.strptime(closed, "%Y%m%d%H%M%S")
    return datetime.fromtimestamp(int(job_id.split("-", 1)[0]) / 1000.0, tz=timezone.utc).replace(tzinfo=None, microsecond=0)



def ledger_salt(pipeline: str, models: list[str], destinations: list[Destination]) -> str:
    """What, besides the input, makes a route's result the same as one already sent.

    Same input, same models, same destinations (and what each accepts): already done; a new
    PACS, a changed ``accepts`` or a new model version is processed and sent again. A
    destination without ``accepts`` keeps the key it had before ``accepts`` existed.
    """
    dests = sorted(f"{d.ae_title}@{d.host}:{d.port}" + (f"[{','.join(sorted(d.accepts))}]" if d.accepts else "")
                   for d in destinations)
    return "|".join([pipeline, *models, *dests])


def process_route(spool: Spool, settings: Settings, job_id: str, route_name: str) -> bool:
    """Run the route's pipeline unless its outputs already exist; True if there is something to export.

    Input that was already processed and sent with the same model (same bytes, a study
    pushed twice) is recorded as a duplicate and not sent again.
    """
    routes = {r["name"]: r for r in spool.read_json(job_id, "routes.json")}
    r: dict[str, Any] = routes[route_name]
    if spool.outputs_complete(job_id, route_name):
        log.info("job %s route %s: outputs already written (re-delivered task)", job_id, route_name)
        return True
    pipeline = get_pipeline(r["pipeline"])
    models = load_models(pipeline_models(pipeline, settings), settings)
    series = input_series(spool, job_id, list(r["series"]), pipeline)
    salt = ledger_salt(r["pipeline"], [f"{m.info.name}:{m.info.version}" for m in models.values()],
                       settings.destinations)
    fingerprint = spool.fingerprint(job_id, series, salt)
    prior = spool.ledger_get(fingerprint)
    if prior is not None:
        log.info("job %s route %s: same input already processed and sent by job %s; not sent again",
                 job_id, route_name, prior.get("job"))
        spool.publish_outputs(job_id, route_name, {"duplicate.json": json.dumps(prior).encode()})
        spool.mark_exported(job_id, route_name)
        spool.finish_if_exported(job_id)
        return False
    sources = [dcmread(p) for p in spool.job_instances(job_id, series)]
    objects = pipeline.process(sources, models, job_datetime(spool, job_id), settings)
    files = encode_files(objects)
    files["fingerprint"] = fingerprint.encode()
    spool.publish_outputs(job_id, route_name, files)
    log.info("job %s route %s: %d object(s) written", job_id, route_name, len(objects))
    return True
