"""The spool: folders as queues. This module alone builds spool paths and moves studies.

Layout under ``<data_dir>/spool``::

    tmp/                         partial writes (never read)
    incoming/<study_uid>/        a study being received
        manifest.json            what arrived, from whom, when (see StudyManifest)
        <series_uid>/<sop_uid>.dcm   the bytes exactly as received
    jobs/<job_id>/               a complete study, handed to routing and the workers
        manifest.json, <series>/<sop>.dcm   (moved from incoming/)
        routes.json              the routes it took
        out/<route>/*.dcm        the objects a pipeline produced for one route
        out/<route>/.complete    marker: outputs written in full
        out/<route>/sent-<destination>.json   SOP Instance UIDs stored at that destination
        out/<route>/.exported    marker: every destination has every object
    done/<job_id>/               every route exported
    ignored/<job_id>/reason.json no rule took it (kept with the reason)
    failed/<job_id>/error.json   a pipeline or export failed for good (kept with the error)
    ledger/<fingerprint>.json    input fingerprints already processed and sent (no double sends)

Every state change is one atomic rename. Files inside a study are written to
``tmp/``, fsynced, then renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from dicom_node.uids import is_valid_uid, study_key

log = logging.getLogger(__name__)

STATES = ("incoming", "jobs", "done", "ignored", "failed")


@dataclass
class SeriesInfo:
    """What routing needs to know of one series."""

    modality: str = ""
    sop_class_uid: str = ""
    body_part: str = ""
    series_description: str = ""
    instances: list[str] = field(default_factory=list)  # SOP Instance UIDs


@dataclass
class StudyManifest:
    """What the node knows of one study; travels with the study through the spool."""

    study_instance_uid: str
    calling_ae: str = ""
    first_received: float = 0.0  # wall clock, seconds since the epoch
    last_received: float = 0.0
    series: dict[str, SeriesInfo] = field(default_factory=dict)
    closed_local: str = ""  # YYYYMMDDHHMMSS, the listener's local time when the study was closed

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series.values())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StudyManifest":
        raw = json.loads(text)
        series = {uid: SeriesInfo(**info) for uid, info in raw.pop("series", {}).items()}
        return cls(series=series, **raw)


@dataclass(frozen=True)
class InstanceMeta:
    """The header values the listener reads from each instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str = ""
    body_part: str = ""
    series_description: str = ""


class SpoolError(Exception):
    """A spool operation failed (disk full, permissions...)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str, tmp_dir: Path, fsync: bool = True) -> None:
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


class Spool:
    """All spool paths and state transitions. Safe to share between listener threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        for name in ("tmp", "ledger", *STATES):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._manifests: dict[str, StudyManifest] = {}
        self._dirty: set[str] = set()

    # ------------------------------------------------------------------ receive
    def store(self, encoded: bytes, meta: InstanceMeta, calling_ae: str, now: float | None = None) -> Path:
        """Write one received instance durably into ``incoming/``; return its path.

        The bytes go to ``tmp/`` first, are fsynced, and only then renamed into
        the study folder, so a crash never leaves a half-written instance where
        a reader could see it. A re-sent SOP Instance UID replaces the old file.
        """
        for uid in (meta.study_instance_uid, meta.series_instance_uid, meta.sop_instance_uid):
            if not is_valid_uid(uid):  # callers validate; this is the last guard before a path
                raise ValueError("invalid UID used as a spool path")
        tmp = self.tmp / f"{meta.sop_instance_uid}.{threading.get_ident()}.part"
        try:
            with open(tmp, "wb") as fh:
                fh.write(encoded)
                fh.flush()
                os.fsync(fh.fileno())
            with self._lock:
                study_dir = self.root / "incoming" / meta.study_instance_uid
                series_dir = study_dir / meta.series_instance_uid
                new_study = not study_dir.exists()
                new_series = not series_dir.exists()
                series_dir.mkdir(parents=True, exist_ok=True)
                target = series_dir / f"{meta.sop_instance_uid}.dcm"
                os.replace(tmp, target)
                if new_study:
                    _fsync_dir(self.root / "incoming")
                if new_series:
                    _fsync_dir(study_dir)
                _fsync_dir(series_dir)
                self._note_instance(meta, calling_ae, time.time() if now is None else now)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"could not store instance: {exc.strerror or exc}") from exc
        return target

    def _note_instance(self, meta: InstanceMeta, calling_ae: str, now: float) -> None:
        uid = meta.study_instance_uid
        manifest = self._manifests.get(uid)
        if manifest is None:
            # First instance of a study since start-up: what is already on disk (a restart
            # mid-study) is recovered from the files, the manifest alone may be stale.
            study_dir = self.root / "incoming" / uid
            others = any(p.name != f"{meta.sop_instance_uid}.dcm" for p in study_dir.glob("*/*.dcm"))
            manifest = self._recover(study_dir) if others else StudyManifest(uid, calling_ae, now, now)
            self._manifests[uid] = manifest
        manifest.last_received = max(manifest.last_received, now)
        manifest.calling_ae = manifest.calling_ae or calling_ae
        series = manifest.series.setdefault(
            meta.series_instance_uid,
            SeriesInfo(meta.modality, meta.sop_class_uid, meta.body_part, meta.series_description),
        )
        if meta.sop_instance_uid not in series.instances:
            series.instances.append(meta.sop_instance_uid)
        self._dirty.add(uid)

    def flush(self) -> None:
        """Persist the manifests of studies that changed since the last flush."""
        with self._lock:
            for uid in list(self._dirty):
                study_dir = self.root / "incoming" / uid
                if study_dir.is_dir():
                    _atomic_write_text(study_dir / "manifest.json", self._manifests[uid].to_json(), self.tmp, fsync=False)
            self._dirty.clear()

    def _load_incoming_manifest(self, uid: str) -> StudyManifest | None:
        path = self.root / "incoming" / uid / "manifest.json"
        try:
            return StudyManifest.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            return None

    # ------------------------------------------------------------ completeness
    def incoming(self) -> list[StudyManifest]:
        """Manifests of every study being received, recovered from disk after a restart."""
        with self._lock:
            for study_dir in (self.root / "incoming").iterdir():
                uid = study_dir.name
                if uid not in self._manifests and is_valid_uid(uid) and study_dir.is_dir():
                    self._manifests[uid] = self._recover(study_dir)
                    self._dirty.add(uid)
            return [m for uid, m in self._manifests.items() if (self.root / "incoming" / uid).is_dir()]

    def _recover(self, study_dir: Path) -> StudyManifest:
        """Rebuild a manifest from the files on disk (they are the truth)."""
        from dicom_node.headers import read_meta  # pydicom import kept out of the hot path

        manifest = self._load_incoming_manifest(study_dir.name) or StudyManifest(study_dir.name)
        known = {sop for s in manifest.series.values() for sop in s.instances}
        newest = manifest.last_received
        for path in study_dir.glob("*/*.dcm"):
            newest = max(newest, path.stat().st_mtime)
            if path.stem in known:
                continue
            meta = read_meta(path)
            if meta is None:
                continue
            series = manifest.series.setdefault(
                meta.series_instance_uid,
                SeriesInfo(meta.modality, meta.sop_class_uid, meta.body_part, meta.series_description),
            )
            series.instances.append(meta.sop_instance_uid)
        manifest.last_received = newest
        manifest.first_received = manifest.first_received or newest
        log.info("recovered incoming study %s (%d instances)", study_key(study_dir.name), manifest.instance_count)
        return manifest

    def close_study(self, study_instance_uid: str, now: float | None = None) -> str:
        """Move a complete study from ``incoming/`` to ``jobs/``; return the new job id.

        Instances of the same study that arrive later start a new incoming study.
        """
        with self._lock:
            manifest = self._manifests.pop(study_instance_uid)
            self._dirty.discard(study_instance_uid)
            src = self.root / "incoming" / study_instance_uid
            closed = time.time() if now is None else now
            manifest.closed_local = time.strftime("%Y%m%d%H%M%S", time.localtime(closed))
            _atomic_write_text(src / "manifest.json", manifest.to_json(), self.tmp)
            job_id = f"{int(closed * 1000)}-{study_key(study_instance_uid)}"
            os.replace(src, self.root / "jobs" / job_id)
        return job_id

    # -------------------------------------------------------------------- jobs
    def job_dir(self, job_id: str) -> Path:
        """The folder of a job in whatever state it is now."""
        _check_job_id(job_id)
        for state in ("jobs", "done", "failed", "ignored"):
            path = self.root / state / job_id
            if path.is_dir():
                return path
        raise FileNotFoundError(f"no job {job_id} in the spool")

    def job_manifest(self, job_id: str) -> StudyManifest:
        return StudyManifest.from_json((self.job_dir(job_id) / "manifest.json").read_text(encoding="utf-8"))

    def job_instances(self, job_id: str, series_uids: list[str] | None = None) -> list[Path]:
        """The received instance files of a job (optionally only some series), sorted."""
        job = self.job_dir(job_id)
        wanted = set(series_uids) if series_uids is not None else None
        return sorted(
            p for p in job.glob("*/*.dcm") if p.parent.name != "out" and (wanted is None or p.parent.name in wanted)
        )

    def write_json(self, job_id: str, name: str, data: Any) -> None:
        _atomic_write_text(self.job_dir(job_id) / name, json.dumps(data, indent=1, sort_keys=True), self.tmp)

    def read_json(self, job_id: str, name: str) -> Any:
        return json.loads((self.job_dir(job_id) / name).read_text(encoding="utf-8"))

    def out_dir(self, job_id: str, route: str) -> Path:
        return self.job_dir(job_id) / "out" / route

    def outputs_complete(self, job_id: str, route: str) -> bool:
        return (self.out_dir(job_id, route) / ".complete").exists()

    def _stage(self, tag: str, files: dict[str, bytes]) -> Path:
        """A folder in ``tmp/`` holding ``files``, fsynced, with a ``.complete`` marker."""
        staging = self.tmp / f"{tag}-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name, data in files.items():
            with open(staging / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        (staging / ".complete").touch()
        return staging

    def publish_outputs(self, job_id: str, route: str, files: dict[str, bytes]) -> Path:
        """Write a route's output objects at once: all of them appear, or none."""
        final = self.out_dir(job_id, route)
        staging = self._stage(f"out-{job_id}-{route}", files)
        final.parent.mkdir(exist_ok=True)  # never recreate a job folder that has moved on
        if final.exists():  # a re-delivered task: same bytes, replace
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(final.parent)
        return final

    def fallback_dir(self, job_id: str, route: str) -> Path:
        """Where a route's fallback Secondary Captures live (complete once it holds ``.complete``)."""
        return self.out_dir(job_id, route) / "fallback"

    def publish_fallback(self, job_id: str, route: str, files: dict[str, bytes]) -> Path:
        """Write a route's fallback objects at once; a folder another task published first is kept
        (fallback objects are deterministic: the same bytes)."""
        final = self.fallback_dir(job_id, route)
        staging = self._stage(f"fallback-{job_id}-{route}", files)
        if final.exists():
            shutil.rmtree(staging)
        else:
            os.replace(staging, final)
            _fsync_dir(final.parent)
        return final

    def outputs(self, job_id: str, route: str) -> list[Path]:
        return sorted(self.out_dir(job_id, route).glob("*.dcm"))

    def sent_to(self, job_id: str, route: str, destination: str) -> set[str]:
        path = self.out_dir(job_id, route) / f"sent-{destination}.json"
        try:
            return set(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return set()

    def mark_sent(self, job_id: str, route: str, destination: str, sop_uids: set[str]) -> None:
        path = self.out_dir(job_id, route) / f"sent-{destination}.json"
        _atomic_write_text(path, json.dumps(sorted(sop_uids)), self.tmp)

    def mark_exported(self, job_id: str, route: str) -> None:
        (self.out_dir(job_id, route) / ".exported").touch()

    def is_exported(self, job_id: str, route: str) -> bool:
        return (self.out_dir(job_id, route) / ".exported").exists()

    def dispatch_marker(self, job_id: str, route: str) -> Path:
        """Touched when a route is handed to the queue and by every task working on it (a lease)."""
        return self.job_dir(job_id) / f".dispatched-{route}"

    def heartbeat(self, job_id: str, route: str) -> None:
        try:
            self.dispatch_marker(job_id, route).touch()
        except FileNotFoundError:  # the job moved on (done, failed)
            pass

    def finish_if_exported(self, job_id: str) -> bool:
        """Move the job to ``done/`` once every route it took is exported."""
        with self._lock:
            job = self.root / "jobs" / job_id
            if not job.is_dir():
                return False
            routes = json.loads((job / "routes.json").read_text(encoding="utf-8"))
            if all((job / "out" / r["name"] / ".exported").exists() for r in routes):
                os.replace(job, self.root / "done" / job_id)
                return True
            return False

    def move_job(self, job_id: str, state: str, record_name: str, record: dict[str, Any]) -> None:
        """Move a job to ``ignored/`` or ``failed/`` with a JSON record saying why."""
        if state not in ("ignored", "failed"):
            raise ValueError(state)
        with self._lock:
            src = self.job_dir(job_id)
            _atomic_write_text(src / record_name, json.dumps(record, indent=1, sort_keys=True), self.tmp)
            dst = self.root / state / job_id
            if src != dst:
                os.replace(src, dst)

    def jobs(self, state: str = "jobs") -> Iterator[str]:
        if state not in STATES:
            raise ValueError(state)
        for path in sorted((self.root / state).iterdir()):
            if path.is_dir():
                yield path.name

    # ------------------------------------------------------------------ ledger
    def fingerprint(self, job_id: str, series_uids: list[str], salt: str) -> str:
        """A digest of a route's input bytes and the model that reads them."""
        digest = hashlib.sha256(salt.encode())
        for path in self.job_instances(job_id, series_uids):
            digest.update(path.name.encode())
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()

    def ledger_get(self, fingerprint: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / "ledger" / f"{fingerprint}.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def ledger_put(self, fingerprint: str, record: dict[str, Any]) -> None:
        _atomic_write_text(self.root / "ledger" / f"{fingerprint}.json", json.dumps(record, sort_keys=True), self.tmp)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free


def _check_job_id(job_id: str) -> None:
    # job ids are "<milliseconds>-<12 hex>", made by close_study; anything else is refused
    head, _, tail = job_id.partition("-")
    if not (head.isdigit() and len(tail) == 12 and all(c in "0123456789abcdef" for c in tail)):
        raise ValueError("not a job id")
