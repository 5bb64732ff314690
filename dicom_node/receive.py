"""The C-STORE listener: validates, persists and answers. It never infers (no torch here)."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from config.settings import AllowedCaller, Settings
from dicom_node import metrics, status
from dicom_node.headers import HeaderError, meta_from_dataset
from dicom_node.spool import Spool, SpoolError
from dicom_node.uids import study_key

log = logging.getLogger(__name__)

# Storage SOP classes the node accepts (PS3.4 B.5).
STORAGE_SOP_CLASSES = {
    "CT Image": "1.2.840.10008.5.1.4.1.1.2",
    "Enhanced CT Image": "1.2.840.10008.5.1.4.1.1.2.1",
    "NM Image": "1.2.840.10008.5.1.4.1.1.20",
    "US Image": "1.2.840.10008.5.1.4.1.1.6.1",
    "US Multi-frame Image": "1.2.840.10008.5.1.4.1.1.3.1",
    "Secondary Capture Image": "1.2.840.10008.5.1.4.1.1.7",
    "Multi-frame True Color SC Image": "1.2.840.10008.5.1.4.1.1.7.4",
    "Segmentation": "1.2.840.10008.5.1.4.1.1.66.4",
    "Comprehensive SR": "1.2.840.10008.5.1.4.1.1.88.33",
    "Comprehensive 3D SR": "1.2.840.10008.5.1.4.1.1.88.34",
}

# Uncompressed first: when a peer proposes several, pynetdicom takes the first it shares.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


@dataclass(frozen=True)
class StorePolicy:
    """What the C-STORE handler checks besides the dataset itself."""

    min_free_bytes: int


def set_nodelay(event: evt.Event) -> None:
    """Disable Nagle on every association socket: small PDUs must not wait ~40 ms for an ACK."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # a socket already closed by the peer
            pass


def handle_echo(event: evt.Event) -> int:
    return status.SUCCESS


def handle_store(event: evt.Event, spool: Spool, policy: StorePolicy) -> int:
    """Persist one instance; answer success only once it is durably in the spool."""
    code = _store(event, spool, policy)
    metrics.STORES.labels(status=f"0x{code:04X}").inc()
    return code


def _store(event: evt.Event, spool: Spool, policy: StorePolicy) -> int:
    calling = event.assoc.requestor.ae_title
    try:
        ds = event.dataset
        meta = meta_from_dataset(ds)
    except HeaderError as exc:
        log.warning("C-STORE from %s refused (0x%04X): %s", calling, status.CANNOT_UNDERSTAND, exc)
        return status.CANNOT_UNDERSTAND
    except Exception as exc:  # pydicom raises many types on malformed data; none may stop the node
        log.warning("C-STORE from %s refused (0x%04X): undecodable dataset (%s)", calling, status.CANNOT_UNDERSTAND, type(exc).__name__)
        return status.CANNOT_UNDERSTAND
    try:
        if spool.free_bytes() < policy.min_free_bytes:
            log.error("C-STORE refused (0x%04X): free disk under the watermark", status.OUT_OF_RESOURCES)
            return status.OUT_OF_RESOURCES
        encoded = event.encoded_dataset()
        spool.store(encoded, meta, calling)
        metrics.BYTES_STORED.inc(len(encoded))
    except (SpoolError, OSError) as exc:
        log.error("C-STORE refused (0x%04X): %s", status.OUT_OF_RESOURCES, exc)
        return status.OUT_OF_RESOURCES
    log.debug("stored instance of study %s from %s", study_key(meta.study_instance_uid), calling)
    return status.SUCCESS


def check_caller_host(event: evt.Event, allowed: list[AllowedCaller]) -> None:
    """Abort an association whose calling AE title is allowed only from another host.

    AE titles themselves are checked during negotiation (A-ASSOCIATE-RJ,
    "calling AE title not recognised"); pynetdicom offers no per-host reject,
    so a known title from the wrong host is aborted right after negotiation.
    """
    calling = event.assoc.requestor.ae_title
    host = event.assoc.requestor.address
    hosts = {c.host for c in allowed if c.ae_title == calling}
    if None in hosts or host in hosts:
        return
    log.warning("association from %s at a host not allowed for it: aborted", calling)
    event.assoc.abort()


def build_ae(settings: Settings, spool: Spool) -> tuple[AE, list[tuple[Any, ...]]]:
    """The listening Application Entity and its event handlers."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.network_timeout = 60
    ae.dimse_timeout = 60
    ae.acse_timeout = 30
    ae.maximum_associations = 16
    ae.add_supported_context(Verification)
    for uid in STORAGE_SOP_CLASSES.values():
        ae.add_supported_context(uid, TRANSFER_SYNTAXES)
    if settings.allowed_callers:
        ae.require_calling_aet = sorted({c.ae_title for c in settings.allowed_callers})
    policy = StorePolicy(min_free_bytes=settings.min_free_disk_mb * 1024 * 1024)
    handlers: list[tuple[Any, ...]] = [
        (evt.EVT_CONN_OPEN, set_nodelay),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [spool, policy]),
    ]
    if any(c.host for c in settings.allowed_callers):
        handlers.append((evt.EVT_ESTABLISHED, check_caller_host, [list(settings.allowed_callers)]))
    return ae, handlers
