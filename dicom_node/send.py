"""Sending results back: a C-STORE SCU that checks every returned status."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association

from config.settings import Destination
from dicom_node import status
from dicom_node.receive import set_nodelay

log = logging.getLogger(__name__)


class TransientSendError(Exception):
    """The destination could not be reached or refused for now: retry later.

    ``stored`` holds the SOP Instance UIDs that did reach the destination.
    """

    def __init__(self, message: str, stored: set[str] | None = None) -> None:
        super().__init__(message)
        self.stored = set(stored or ())


class PermanentSendError(Exception):
    """The destination refuses these objects for good (e.g. SOP class not supported)."""


@dataclass(frozen=True)
class Outgoing:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def guard_reactor_race(assoc: Association) -> None:
    """Keep C-STORE responses away from the association's reactor thread (pynetdicom 3.0.4).

    ``send_c_store()`` pauses the reactor with ``_reactor_checkpoint.clear(); while not
    _is_paused: sleep``, but ``_is_paused`` can still read True from the reactor's previous
    pass after it went through the checkpoint; the reactor then takes a fast peer's
    C-STORE-RSP off the queue ("Received unexpected C-STORE service message") and
    ``send_c_store()`` waits for the DIMSE timeout (seen here about once in 25 runs of
    4 x 75 files). A pure SCU expects no requests from its peer, so the reactor's
    non-blocking polls are made to see an empty queue; the blocking get of
    ``send_c_store()`` still receives every response.
    """
    dimse = assoc.dimse
    real_get_msg = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        return real_get_msg(block) if block else (None, None)

    dimse.get_msg = get_msg  # type: ignore[method-assign]


def describe(path: Path) -> Outgoing:
    ds = dcmread(path, stop_before_pixels=True)
    return Outgoing(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID))


@dataclass(frozen=True)
class SendResult:
    """What one association achieved: the SOP Instance UIDs stored at the destination (those
    already there included) and the SOP classes it refused in the negotiation."""

    stored: frozenset[str]
    refused_classes: frozenset[str]


def store(
    destination: Destination,
    files: list[Outgoing],
    *,
    calling_ae: str,
    already_sent: set[str] | None = None,
    also_propose: tuple[str, ...] = (),
    timeout_s: float = 60,
) -> SendResult:
    """C-STORE ``files`` to ``destination``; report what was stored and which SOP classes it refused.

    Files whose UID is in ``already_sent`` are skipped (no association when none is left).
    ``also_propose``: SOP classes proposed besides those of the files (the negotiation then
    tells whether the destination takes them, and an association whose files are all of
    refused classes is still accepted by a peer that takes one of these). Objects of a refused
    class are not sent and not an error here: the caller decides. Raises TransientSendError
    when the association fails or some object was not stored (the caller retries the rest).
    """
    done = set(already_sent or ())
    todo = [f for f in files if f.sop_instance_uid not in done]
    if not todo:
        return SendResult(frozenset(done), frozenset())
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in sorted({f.sop_class_uid for f in todo} | set(also_propose)):
        syntaxes = sorted({f.transfer_syntax_uid for f in todo if f.sop_class_uid == sop_class})
        for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if ts not in syntaxes:
                syntaxes.append(ts)
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate(
        destination.host, destination.port, ae_title=destination.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)]
    )
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not reachable"
        raise TransientSendError(f"{destination.name}: association {why}", done)
    guard_reactor_race(assoc)
    failures: list[str] = []
    refused_classes: set[str] = set()
    sent = 0
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        refused_classes = {c for c in {f.sop_class_uid for f in todo} | set(also_propose) if c not in accepted}
        for item in todo:
            if item.sop_class_uid not in accepted:
                continue
            try:
                rsp = assoc.send_c_store(item.path)
            except (RuntimeError, OSError, ValueError) as exc:  # the peer dropped the association, an unreadable file
                failures.append(type(exc).__name__)
                break
            code = getattr(rsp, "Status", None)
            if code in status.STORED_STATUSES:
                done.add(item.sop_instance_uid)
                sent += 1
            else:
                failures.append("no response" if code is None else f"0x{int(code):04X}")
                if not assoc.is_established:
                    break
    finally:
        if assoc.is_established:
            assoc.release()
    if failures:
        raise TransientSendError(
            f"{destination.name}: {len(failures)} object(s) not stored ({', '.join(sorted(set(failures)))})", done
        )
    log.info("sent %d object(s) to %s", sent, destination.name)
    return SendResult(frozenset(done), frozenset(refused_classes))


def send_files(
    destination: Destination,
    files: list[Outgoing],
    *,
    calling_ae: str,
    already_sent: set[str] | None = None,
    timeout_s: float = 60,
) -> set[str]:
    """C-STORE ``files`` to ``destination``; return the SOP Instance UIDs it stored.

    As :func:`store`, and PermanentSendError when the peer refuses the SOP class of some
    object (after the objects of the other classes were sent).
    """
    result = store(destination, files, calling_ae=calling_ae, already_sent=already_sent, timeout_s=timeout_s)
    if result.refused_classes:
        raise PermanentSendError(
            f"{destination.name}: refuses SOP class(es) {', '.join(sorted(result.refused_classes))}"
        )
    return set(result.stored)
