"""Sending by what each destination takes: negotiation, declared kinds, the SC fallback, retries.

Real associations on 127.0.0.1 with pynetdicom SCPs that accept chosen SOP classes; a real
spool job holding a US outbox (SR, SEGs, heatmap SCs made by the encoders from the test
builders) and its source images.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from config.settings import Destination, Settings, load_settings
from dicom_node.send import Outgoing, PermanentSendError, TransientSendError, describe, send_files, store
from dicom_node.spool import Spool
from tests.encode import us_builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.encode.dicom_tools import to_bytes
from tests.peers import free_port
from workers.encode.sc_fallback import OUTLINE_SERIES_NUMBER, SUMMARY_SERIES_NUMBER
from workers.encode.sc_us import encode_nodule_sc
from workers.encode.seg_us import encode_us_segs
from workers.encode.sr_us import encode_us_sr
from workers.export import declared, export_route, kind_of, replaced_kinds

SC = "1.2.840.10008.5.1.4.1.1.7"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
US = "1.2.840.10008.5.1.4.1.1.6.1"
US_MF = "1.2.840.10008.5.1.4.1.1.3.1"
ROUTE = "us-thyroid"
JOB = "1700000000000-0123456789ab"


@dataclass
class SCP:
    """A pynetdicom storage SCP on a free port that accepts only ``classes``."""

    classes: tuple[str, ...]
    port: int = field(default_factory=free_port)
    received: list[tuple[str, str, int]] = field(default_factory=list)  # (class, uid, series number)
    _server: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "SCP":
        ae = AE(ae_title="TESTSCP")
        ae.add_supported_context(Verification)
        for uid in self.classes:
            ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        with self._lock:
            self.received.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID), int(ds.get("SeriesNumber", 0) or 0)))
        return 0x0000

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def destination(self, name: str, accepts: list[str] | None = None) -> dict[str, Any]:
        return {"name": name, "ae_title": "TESTSCP", "host": "127.0.0.1", "port": self.port, "accepts": accepts}


@pytest.fixture
def scps() -> Iterator[list[SCP]]:
    started: list[SCP] = []
    yield started
    for scp in started:
        scp.stop()


def _scp(scps: list[SCP], *classes: str) -> SCP:
    scp = SCP(tuple(classes)).start()
    scps.append(scp)
    return scp


@pytest.fixture(scope="module")
def outbox() -> tuple[list[pydicom.Dataset], dict[str, bytes]]:
    kw: dict[str, Any] = {"content_datetime": CONTENT_DATETIME, "software_version": SOFTWARE_VERSION}
    sources = us_builders.study()
    results = us_builders.results(sources)
    segs = encode_us_segs(results, sources, **kw)
    objects = [*segs, encode_us_sr(results, sources, segs, **kw)]
    objects += [encode_nodule_sc(n, results, sources, **kw) for n in results.nodules if n.malignancy is not None]
    return sources, {f"{o.SOPInstanceUID}.dcm": to_bytes(o) for o in objects}


def _job(tmp_path: Path, outbox: tuple[list[pydicom.Dataset], dict[str, bytes]]) -> Spool:
    sources, files = outbox
    spool = Spool(tmp_path / "spool")
    job = spool.root / "jobs" / JOB
    for ds in sources:
        folder = job / str(ds.SeriesInstanceUID)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(to_bytes(ds))
    spool.write_json(JOB, "routes.json", [{"name": ROUTE, "pipeline": "us_thyroid_nodule", "series": []}])
    spool.publish_outputs(JOB, ROUTE, {**files, "fingerprint": b"f" * 64})
    return spool


def _settings(tmp_path: Path, *destinations: dict[str, Any]) -> Settings:
    return load_settings(data_dir=str(tmp_path), destinations=list(destinations))


def _outgoing(spool: Spool) -> list[Outgoing]:
    return [describe(p) for p in spool.outputs(JOB, ROUTE)]


# --- pure decisions --------------------------------------------------------------------------


def _files(*classes: str) -> list[Outgoing]:
    return [Outgoing(Path(f"{i}.dcm"), c, f"1.2.3.{i}", ExplicitVRLittleEndian) for i, c in enumerate(classes)]


@pytest.mark.parametrize("sop_class, kind", [
    (SR, "sr"), ("1.2.840.10008.5.1.4.1.1.88.22", "sr"), (SEG, "seg"), (SC, "sc"),
    ("1.2.840.10008.5.1.4.1.1.7.4", "sc"), (US, "other"), ("1.2.840.10008.5.1.4.1.1.77", "other"),
])
def test_kind_of(sop_class: str, kind: str) -> None:
    assert kind_of(sop_class) == kind


@pytest.mark.parametrize("classes, accepts, refused, expected", [
    ((SR, SEG, SC), None, (), set()),                       # takes everything: nothing replaced
    ((SR, SEG, SC), None, (SEG,), {"seg"}),                 # negotiation refuses SEG
    ((SR, SEG, SC), None, (SR, SEG), {"sr", "seg"}),
    ((SR, SEG, SC), ["sc"], (), {"sr", "seg"}),              # declared: SC only
    ((SR, SEG, SC), ["sr", "sc"], (), {"seg"}),
    ((SR, SEG, SC), ["sr", "seg", "sc"], (SR,), {"sr"}),     # declared, yet refused: still replaced
    ((SR, SC), ["sc"], (), {"sr"}),                          # NM: no SEG to replace
    ((SR, SEG, SC), None, (SC,), set()),                     # SC refused: no fallback can help (caller fails)
])
def test_replaced_kinds(classes: tuple[str, ...], accepts: list[str] | None, refused: tuple[str, ...], expected: set[str]) -> None:
    assert replaced_kinds(_files(*classes), accepts, refused) == expected


def test_declared_filters_kinds() -> None:
    files = _files(SR, SEG, SC)
    dest = Destination(name="d", ae_title="D", host="h", port=1, accepts=["sc"])
    assert [f.sop_class_uid for f in declared(dest, files)] == [SC]
    assert declared(Destination(name="d", ae_title="D", host="h", port=1), files) == files


# --- store(): what the negotiation says ---------------------------------------------------------


def test_store_reports_refused_classes_and_sends_the_rest(scps: list[SCP], tmp_path: Path, outbox: Any) -> None:
    spool = _job(tmp_path, outbox)
    scp = _scp(scps, SC, US)
    dest = Destination(name="v", ae_title="TESTSCP", host="127.0.0.1", port=scp.port)
    files = _outgoing(spool)
    result = store(dest, files, calling_ae="NODE")
    assert result.refused_classes == {SR, SEG}
    assert result.stored == {f.sop_instance_uid for f in files if f.sop_class_uid == SC}
    assert sorted(uid for _, uid, _ in scp.received) == sorted(result.stored)
    # only refused objects left: the extra SC context keeps the association, and says SC is taken
    left = [f for f in files if f.sop_class_uid != SC]
    again = store(dest, left, calling_ae="NODE", also_propose=(SC,))
    assert again.stored == frozenset() and again.refused_classes == {SR, SEG}
    with pytest.raises(PermanentSendError, match="refuses SOP class"):
        send_files(dest, files, calling_ae="NODE")


def test_store_skips_what_is_there_without_an_association(tmp_path: Path, outbox: Any) -> None:
    spool = _job(tmp_path, outbox)
    files = _outgoing(spool)
    dest = Destination(name="down", ae_title="X", host="127.0.0.1", port=free_port())  # nobody listens
    everything = {f.sop_instance_uid for f in files}
    assert store(dest, files, calling_ae="NODE", already_sent=everything).stored == everything
    with pytest.raises(TransientSendError):
        store(dest, files, calling_ae="NODE")


# --- export_route: per destination ---------------------------------------------------------------


def test_export_sends_fallback_only_where_needed(scps: list[SCP], tmp_path: Path, outbox: Any) -> None:
    spool = _job(tmp_path, outbox)
    full = _scp(scps, SR, SEG, SC, US, US_MF)
    refusing = _scp(scps, SC, US, US_MF)
    declaring = _scp(scps, SR, SEG, SC)
    settings = _settings(tmp_path, full.destination("pacs"), refusing.destination("viewer"),
                         declaring.destination("oldpacs", accepts=["sc"]))
    outbox_uids = {f.sop_instance_uid for f in _outgoing(spool)}
    heatmaps = {f.sop_instance_uid for f in _outgoing(spool) if f.sop_class_uid == SC}
    export_route(spool, settings, JOB, ROUTE)

    assert {uid for _, uid, _ in full.received} == outbox_uids and len(full.received) == len(outbox_uids)
    for scp in (refusing, declaring):
        classes = {c for c, _, _ in scp.received}
        assert classes == {SC}, classes
        series = sorted({s for _, _, s in scp.received})
        assert series == [9902, OUTLINE_SERIES_NUMBER, SUMMARY_SERIES_NUMBER]
        assert heatmaps <= {uid for _, uid, _ in scp.received}
        assert sum(s == OUTLINE_SERIES_NUMBER for _, _, s in scp.received) == 3  # three images carry nodules
    # the same fallback objects at both: destination-independent
    assert sorted(refusing.received) == sorted(declaring.received)
    assert JOB in list(spool.jobs("done"))
    assert spool.ledger_get("f" * 64) is not None
    sent = json.loads((spool.out_dir(JOB, ROUTE) / "sent-viewer.json").read_text())
    assert set(sent) == {uid for _, uid, _ in refusing.received}

    # a repeated export (a re-delivered task) sends nothing again
    counts = [len(s.received) for s in (full, refusing, declaring)]
    export_route(spool, settings, JOB, ROUTE)
    assert [len(s.received) for s in (full, refusing, declaring)] == counts


def test_fallback_survives_a_transient_failure_and_is_made_once(scps: list[SCP], tmp_path: Path, outbox: Any) -> None:
    spool = _job(tmp_path, outbox)
    refusing = _scp(scps, SC, US, US_MF)
    port = free_port()
    settings = _settings(tmp_path, refusing.destination("viewer"),
                         {"name": "later", "ae_title": "TESTSCP", "host": "127.0.0.1", "port": port, "accepts": ["sc"]})
    with pytest.raises(TransientSendError):
        export_route(spool, settings, JOB, ROUTE)  # "later" is down
    first = len(refusing.received)
    folder = spool.fallback_dir(JOB, ROUTE)
    made = {p.name: p.read_bytes() for p in folder.glob("*.dcm")}
    assert made and (folder / ".complete").exists()
    later = SCP((SC,), port=port).start()
    scps.append(later)
    export_route(spool, settings, JOB, ROUTE)  # the retry
    assert len(refusing.received) == first  # nothing sent twice to the one that had it all
    folder = spool.fallback_dir(JOB, ROUTE)  # the job has moved to done/
    assert JOB in list(spool.jobs("done"))
    assert {p.name: p.read_bytes() for p in folder.glob("*.dcm")} == made
    assert sorted(uid for _, uid, _ in later.received) == sorted(uid for _, uid, _ in refusing.received)


def test_destination_refusing_sc_too_fails_for_good(scps: list[SCP], tmp_path: Path, outbox: Any) -> None:
    spool = _job(tmp_path, outbox)
    images_only = _scp(scps, US, US_MF)
    settings = _settings(tmp_path, images_only.destination("modality"))
    with pytest.raises((PermanentSendError, TransientSendError)) as info:
        export_route(spool, settings, JOB, ROUTE)
    # the association is refused outright (nothing we propose is taken), or SC is named as refused
    assert "modality" in str(info.value)
    assert images_only.received == []
