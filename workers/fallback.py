"""The SC fallback of a route's outbox: made once, at export time, kept beside the outbox.

Why at export time: only the export knows what a destination refuses (its config and the
association negotiation), and most destinations take SR and SEG, so nothing is rendered for
them. The pictures are rendered from what the outbox already holds (our SEG and SR, read back
by :mod:`workers.encode.fallback_read`) and the source images still in the job's spool folder,
so any pipeline's outbox gets a fallback without the pipelines knowing about it, and the export
worker needs no model and no torch.

The objects are written once per route into ``out/<route>/fallback/`` (staged under the
spool's ``tmp/`` and renamed into place, with a ``.complete`` marker), named ``seg-<uid>.dcm``
(outlines, in place of the SEG) and ``sr-<uid>.dcm`` (summary pages, in place of the SR).
They are the same for every destination and every retry (UIDs and time stamps derive from the
SEG and SR), so the export's sent-ledger and a re-send treat them as any other object.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from dicom_node.send import PermanentSendError
from dicom_node.spool import Spool
from workers.infer import encode_files

log = logging.getLogger(__name__)

#: file name prefix of each kind's fallback objects: the kind they stand in for
PREFIXES: Final[tuple[str, ...]] = ("seg", "sr")
_DEFAULT_SOFTWARE: Final[str] = "thyroid-ai-node"


class FallbackError(PermanentSendError):
    """The fallback for a refused kind could not be made (our own objects unreadable)."""


def _read_all(paths: list[Path]) -> dict[str, Path]:
    """SOP Instance UID -> path of the job's received instances (headers only)."""
    out = {}
    for path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except (InvalidDicomError, OSError, ValueError) as exc:
            log.warning("fallback: a received instance cannot be read (%s)", type(exc).__name__)
            continue
        out[str(ds.SOPInstanceUID)] = path
    return out


def render(spool: Spool, job_id: str, route: str) -> dict[str, bytes]:
    """Render the route's fallback objects: file name -> bytes (``seg-*.dcm``, ``sr-*.dcm``).

    A SEG or SR that cannot be rendered is logged and left out (the other kind is still made).
    """
    from workers.encode.fallback_read import (
        SEG_SOP_CLASS,
        SR_SOP_CLASS_PREFIX,
        FallbackInputError,
        Findings,
        SegOutlines,
        read_findings,
        read_seg,
    )
    from workers.encode.sc_fallback import encode_outline_scs, encode_summary_scs

    findings: list[Findings] = []
    outlines: list[SegOutlines] = []
    software = _DEFAULT_SOFTWARE
    readable = (FallbackInputError, InvalidDicomError, AttributeError, KeyError, IndexError, TypeError, ValueError)
    for path in spool.outputs(job_id, route):
        try:
            ds = dcmread(path)
            sop_class = str(ds.get("SOPClassUID", ""))
            if sop_class.startswith(SR_SOP_CLASS_PREFIX):
                findings.append(read_findings(ds))
                software = str(ds.get("SoftwareVersions", software))
            elif sop_class == SEG_SOP_CLASS:
                outlines.append(read_seg(ds))
        except readable as exc:
            log.error("job %s route %s: fallback cannot read %s: %s", job_id, route, path.name, exc)
    index = _read_all(spool.job_instances(job_id))
    cache: dict[str, Dataset] = {}

    def sources(uids: set[str]) -> dict[str, Dataset]:
        for uid in uids - cache.keys():
            if uid in index:
                cache[uid] = dcmread(index[uid])
        return {uid: cache[uid] for uid in uids if uid in cache}

    files: dict[str, bytes] = {}
    if outlines:
        wanted = {i.source.sop_instance_uid for o in outlines for i in o.images}
        finding = findings[0] if len(findings) == 1 else None
        try:
            scs = encode_outline_scs(outlines, sources(wanted), finding, software_version=software)
            files.update(encode_files(list(scs), "seg-"))
        except readable as exc:
            log.error("job %s route %s: outline SCs not made: %s", job_id, route, exc)
    for report in findings:
        wanted = {r.sop_instance_uid for r in report.images()}
        try:
            pages = encode_summary_scs(report, sources(wanted), software_version=software)
            files.update(encode_files(list(pages), "sr-"))
        except readable as exc:
            log.error("job %s route %s: summary page not made: %s", job_id, route, exc)
    return files


def fallback_files(spool: Spool, job_id: str, route: str, kinds: set[str]) -> list[Path]:
    """The fallback objects standing in for ``kinds`` (``"seg"``, ``"sr"``), made on first use.

    Raises
    ------
    FallbackError
        When a kind is asked for and none of its fallback objects could be made.
    """
    folder = spool.fallback_dir(job_id, route)
    if not (folder / ".complete").exists():
        files = render(spool, job_id, route)
        spool.publish_fallback(job_id, route, files)
        log.info("job %s route %s: %d fallback SC(s) made", job_id, route, len(files))
    out = []
    for kind in sorted(kinds):
        if kind not in PREFIXES:
            raise ValueError(f"no fallback for {kind!r}")
        found = sorted(folder.glob(f"{kind}-*.dcm"))
        if not found:
            raise FallbackError(f"no {kind.upper()} fallback could be made for route {route} (see the export log)")
        out.extend(found)
    return out
