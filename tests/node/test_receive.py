"""The listener over real sockets: dcmtk and pynetdicom as peers, statuses checked."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from config.settings import load_settings
from dicom_node import status
from dicom_node.receive import build_ae
from dicom_node.spool import Spool
from tests.peers import free_port, storescu

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[int, Spool]]:
    port = free_port()
    settings = load_settings(
        None, port=port, data_dir=tmp_path / "var", allowed_callers=[{"ae_title": "STORESCU"}, {"ae_title": "PYSCU"}]
    )
    spool = Spool(settings.spool_dir)
    ae, handlers = build_ae(settings, spool)
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        yield port, spool
    finally:
        server.shutdown()


def _send(port: int, ds_or_path: Dataset | Path, calling: str = "PYSCU") -> int | None:
    ae = AE(ae_title=calling)
    ds = dcmread(ds_or_path) if isinstance(ds_or_path, Path) else ds_or_path
    ae.add_requested_context(str(ds.file_meta.MediaStorageSOPClassUID), [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title="THYROID_AI")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(ds_or_path)
        return int(rsp.Status) if "Status" in rsp else None
    finally:
        assoc.release()


def _stored(spool: Spool) -> list[Path]:
    return sorted((spool.root / "incoming").glob("*/*/*.dcm"))


def test_storescu_store_keeps_bytes(node: tuple[int, Spool], tmp_path: Path) -> None:
    port, spool = node
    proc = storescu([CT_SMALL], port, called_aet="THYROID_AI", calling_aet="STORESCU")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = _stored(spool)
    sent, got = dcmread(CT_SMALL), dcmread(path)
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.PixelData == sent.PixelData and got.PatientName == sent.PatientName


def test_compressed_transfer_syntax_stored_as_received(node: tuple[int, Spool], tmp_path: Path) -> None:
    port, spool = node
    ds = dcmread(CT_SMALL)
    ds.compress(RLELossless)
    src = tmp_path / "rle.dcm"
    ds.save_as(src, enforce_file_format=True)
    assert _send(port, src) == status.SUCCESS
    (path,) = _stored(spool)
    got = dcmread(path)
    assert got.file_meta.TransferSyntaxUID == RLELossless
    assert got.PixelData == ds.PixelData  # the compressed bytes, not re-encoded


def test_disallowed_calling_ae_is_rejected(node: tuple[int, Spool]) -> None:
    port, spool = node
    proc = storescu([CT_SMALL], port, called_aet="THYROID_AI", calling_aet="INTRUDER")
    assert proc.returncode != 0
    assert "reject" in (proc.stdout + proc.stderr).lower()
    assert _stored(spool) == []


def test_missing_sop_instance_uid_fails_and_node_goes_on(
    node: tuple[int, Spool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, spool = node
    # send files as they are on disk (pynetdicom then takes the UIDs from the file meta only)
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    refused_before = REGISTRY.get_sample_value("thyroid_node_cstore_total", {"status": "0xC000"}) or 0.0
    ds = dcmread(CT_SMALL)
    bad = copy.deepcopy(ds)
    del bad.SOPInstanceUID  # file meta still names it, so the C-STORE request carries one
    bad_path = tmp_path / "no-sop-uid.dcm"
    bad.save_as(bad_path, enforce_file_format=False)
    assert _send(port, bad_path) == status.CANNOT_UNDERSTAND
    hostile = copy.deepcopy(ds)
    hostile.StudyInstanceUID = "1.2.3/../../../tmp/x"
    assert _send(port, hostile) == status.CANNOT_UNDERSTAND
    assert _stored(spool) == []
    assert REGISTRY.get_sample_value("thyroid_node_cstore_total", {"status": "0xC000"}) == refused_before + 2
    assert _send(port, ds) == status.SUCCESS  # the node still serves
    assert len(_stored(spool)) == 1


def test_disk_watermark_gives_out_of_resources(tmp_path: Path) -> None:
    port = free_port()
    settings = load_settings(None, port=port, data_dir=tmp_path / "var", min_free_disk_mb=10**9)
    spool = Spool(settings.spool_dir)
    ae, handlers = build_ae(settings, spool)
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        assert _send(port, dcmread(CT_SMALL)) == status.OUT_OF_RESOURCES
    finally:
        server.shutdown()
    assert _stored(spool) == []


def test_allowed_title_from_another_host_is_aborted(tmp_path: Path) -> None:
    port = free_port()
    settings = load_settings(
        None, port=port, data_dir=tmp_path / "var",
        allowed_callers=[{"ae_title": "PACS", "host": "10.255.255.1"}, {"ae_title": "LOCAL", "host": "127.0.0.1"}],
    )
    spool = Spool(settings.spool_dir)
    ae, handlers = build_ae(settings, spool)
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        ds = dcmread(CT_SMALL)
        scu = AE(ae_title="PACS")
        scu.add_requested_context(str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)])
        assoc = scu.associate("127.0.0.1", port, ae_title="THYROID_AI")
        if assoc.is_established:  # accepted, then aborted by the host check
            rsp = assoc.send_c_store(ds)
            assert "Status" not in rsp
            assoc.abort()
        assert _stored(spool) == []
        assert _send(port, ds, calling="LOCAL") == status.SUCCESS  # the right host gets through
    finally:
        server.shutdown()
