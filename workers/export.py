"""Export: send a route's outputs from the on-disk outbox to every destination.

Per destination, what it takes decides what it gets (:func:`replaced_kinds`): the kinds its
``accepts`` lists (all when it lists none) and whose SOP classes its association negotiation
accepts. An SR or SEG it does not take is replaced by the route's Secondary Capture fallback
(:mod:`workers.fallback`): outlines over the source images for the SEG, a findings summary
page for the SR. A destination that takes everything gets exactly the outbox, nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Final

from config.settings import Destination, Settings
from dicom_node.send import Outgoing, PermanentSendError, TransientSendError, describe, store
from dicom_node.spool import Spool

log = logging.getLogger(__name__)

SC_SOP_CLASS: Final[str] = "1.2.840.10008.5.1.4.1.1.7"
SEG_SOP_CLASS: Final[str] = "1.2.840.10008.5.1.4.1.1.66.4"
SR_SOP_CLASS_PREFIX: Final[str] = "1.2.840.10008.5.1.4.1.1.88."
SC_SOP_CLASS_PREFIX: Final[str] = "1.2.840.10008.5.1.4.1.1.7"
#: the kinds the SC fallback can stand in for
REPLACEABLE: Final[frozenset[str]] = frozenset({"sr", "seg"})


def kind_of(sop_class_uid: str) -> str:
    """``sr``, ``seg``, ``sc`` or ``other`` (as a destination's ``accepts`` names them)."""
    if sop_class_uid.startswith(SR_SOP_CLASS_PREFIX):
        return "sr"
    if sop_class_uid == SEG_SOP_CLASS:
        return "seg"
    if sop_class_uid == SC_SOP_CLASS or sop_class_uid.startswith(SC_SOP_CLASS_PREFIX + "."):
        return "sc"
    return "other"


def declared(dest: Destination, files: Iterable[Outgoing]) -> list[Outgoing]:
    """The files of the kinds a destination declares it takes (all when it declares none)."""
    if dest.accepts is None:
        return list(files)
    return [f for f in files if kind_of(f.sop_class_uid) in dest.accepts or kind_of(f.sop_class_uid) == "other"]


def replaced_kinds(files: Iterable[Outgoing], accepts: Iterable[str] | None, refused_classes: Iterable[str]) -> set[str]:
    """The kinds among ``files`` that must be replaced by the SC fallback at one destination.

    Parameters
    ----------
    files : Iterable[Outgoing]
        The route's outbox.
    accepts : Iterable[str], optional
        The destination's declared kinds; None: every kind.
    refused_classes : Iterable[str]
        SOP classes the destination's association negotiation refused.

    Returns
    -------
    set of str
        ``sr`` and/or ``seg``: present in the outbox, and left out by ``accepts`` or of a
        refused SOP class.
    """
    allowed = None if accepts is None else set(accepts)
    refused = set(refused_classes)
    out = set()
    for f in files:
        kind = kind_of(f.sop_class_uid)
        if kind in REPLACEABLE and ((allowed is not None and kind not in allowed) or f.sop_class_uid in refused):
            out.add(kind)
    return out


def send_to(spool: Spool, settings: Settings, dest: Destination, job_id: str, route_name: str, files: list[Outgoing]) -> int:
    """Send the route's outbox to one destination, with the SC fallback where it needs one.

    Records every stored object in the sent-ledger, also when a transient error interrupts;
    returns how many fallback objects the destination got (or has). Raises
    TransientSendError (retry) or PermanentSendError (a SOP class refused that no fallback
    can replace, the SC class among them).
    """
    from workers.fallback import fallback_files

    before = spool.sent_to(job_id, route_name, dest.name)
    wanted = declared(dest, files)
    # SC proposed too: the negotiation then says whether the fallback can go, and an association
    # left with only refused SR/SEG objects is still accepted by a peer that takes SC
    also = (SC_SOP_CLASS,) if any(kind_of(f.sop_class_uid) in REPLACEABLE for f in files) else ()
    try:
        result = store(dest, wanted, calling_ae=settings.ae_title, already_sent=before, also_propose=also)
    except TransientSendError as exc:
        spool.mark_sent(job_id, route_name, dest.name, before | exc.stored)
        raise
    done = set(result.stored)
    spool.mark_sent(job_id, route_name, dest.name, done)
    wanted_classes = {f.sop_class_uid for f in wanted}
    refused = set(result.refused_classes) & wanted_classes
    replace = replaced_kinds(files, dest.accepts, refused)
    lost = {c for c in refused if kind_of(c) not in REPLACEABLE}
    if replace and (SC_SOP_CLASS in result.refused_classes or (dest.accepts is not None and "sc" not in dest.accepts)):
        lost.add(SC_SOP_CLASS)
    if lost:
        raise PermanentSendError(f"{dest.name}: refuses SOP class(es) {', '.join(sorted(lost))}")
    if not replace:
        return 0
    extra = [describe(p) for p in fallback_files(spool, job_id, route_name, replace)]
    log.info("job %s route %s: %s takes no %s: %d SC(s) in their place",
             job_id, route_name, dest.name, " or ".join(sorted(k.upper() for k in replace)), len(extra))
    try:
        result = store(dest, extra, calling_ae=settings.ae_title, already_sent=done)
    except TransientSendError as exc:
        spool.mark_sent(job_id, route_name, dest.name, done | exc.stored)
        raise
    spool.mark_sent(job_id, route_name, dest.name, set(result.stored))
    if result.refused_classes:
        raise PermanentSendError(f"{dest.name}: refuses SOP class(es) {', '.join(sorted(result.refused_classes))}")
    return len(extra)


def export_route(spool: Spool, settings: Settings, job_id: str, route_name: str) -> None:
    """Send what is not yet at each destination; record progress so a retry sends only the rest.

    Raises TransientSendError / PermanentSendError from :func:`send_to`.
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
        send_to(spool, settings, dest, job_id, route_name, files)
    spool.mark_exported(job_id, route_name)
    fingerprint_path = spool.out_dir(job_id, route_name) / "fingerprint"
    if fingerprint_path.exists():
        spool.ledger_put(
            fingerprint_path.read_text().strip(),
            {"job": job_id, "route": route_name, "objects": len(files), "at": time.time()},
        )
    if spool.finish_if_exported(job_id):
        log.info("job %s done: %d object(s) to %d destination(s)", job_id, len(files), len(settings.destinations))
