"""The peer helpers themselves: Orthanc, storescu/echoscu, dciodvfy."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.peers import (
    Orthanc,
    OrthancFactory,
    dciodvfy_errors,
    dciodvfy_warnings,
    echoscu,
    free_ports,
    store_statuses,
    storescu,
    wait_until,
)

pytestmark = pytest.mark.integration


def _small_ct(tmp_path: Path) -> tuple[Path, str]:
    """A copy of pydicom's CT_small.dcm with fresh UIDs; returns (path, study UID)."""
    source = get_testdata_file("CT_small.dcm")
    assert source is not None, "pydicom's CT_small.dcm test file is missing"
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "ct_small.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.StudyInstanceUID)


def test_free_ports_are_distinct() -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3


def test_wait_until_returns_value_and_times_out() -> None:
    assert wait_until(lambda: 42, timeout=1) == 42
    with pytest.raises(TimeoutError, match="the impossible"):
        wait_until(lambda: False, timeout=0.3, interval=0.05, what="the impossible")


def test_store_find_download_validate(orthanc: Orthanc, tmp_path: Path) -> None:
    path, study_uid = _small_ct(tmp_path)

    assert echoscu(orthanc.dicom_port, called_aet=orthanc.aet).returncode == 0
    result = storescu([path], orthanc.dicom_port, called_aet=orthanc.aet)
    assert result.returncode == 0, result.stderr
    assert store_statuses(result) == ["Success"]

    assert orthanc.lookup_study(study_uid) is not None
    instances = orthanc.study_instances(study_uid)
    assert len(instances) == 1
    assert instances[0]["Series"]["Modality"] == "CT"
    assert orthanc.instance_count() == 1
    assert orthanc.instance_metadata(instances[0]["ID"])["SopClassUid"] == "1.2.840.10008.5.1.4.1.1.2"

    downloaded = tmp_path / "downloaded.dcm"
    downloaded.write_bytes(orthanc.get_instance_file(instances[0]["ID"]))
    assert pydicom.dcmread(downloaded).StudyInstanceUID == study_uid

    errors = dciodvfy_errors(downloaded)
    assert isinstance(errors, list)
    assert all(line.startswith("Error") for line in errors)
    assert isinstance(dciodvfy_warnings(downloaded), list)


def test_unknown_study_and_push(orthanc_factory: OrthancFactory, tmp_path: Path) -> None:
    source, receiver = orthanc_factory(), orthanc_factory(aet="SECOND")
    assert source.lookup_study("1.2.3.4.5.6.7.8.9") is None
    assert source.study_instances("1.2.3.4.5.6.7.8.9") == []

    path, study_uid = _small_ct(tmp_path)
    answer = source.upload(path)
    assert answer["Status"] == "Success"
    source.add_modality("SECOND", receiver.aet, receiver.host, receiver.dicom_port)
    source.push_to("SECOND", [answer["ParentStudy"]])
    assert receiver.lookup_study(study_uid) is not None


def test_restart_keeps_ports_and_data(orthanc: Orthanc, tmp_path: Path) -> None:
    path, study_uid = _small_ct(tmp_path)
    orthanc.upload(path)
    ports = (orthanc.http_port, orthanc.dicom_port)
    orthanc.stop()
    assert orthanc.pid is None
    orthanc.start()
    assert (orthanc.http_port, orthanc.dicom_port) == ports
    assert orthanc.lookup_study(study_uid) is not None
