"""The spool: durable writes, replacement, recovery after a restart, atomic state moves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_node.spool import InstanceMeta, Spool, StudyManifest


def _meta(sop: str, series: str = "1.2.3.1", study: str = "1.2.3") -> InstanceMeta:
    return InstanceMeta(study, series, sop, "1.2.840.10008.5.1.4.1.1.20", "NM", "THYROID", "ANT")


def test_store_writes_bytes_and_manifest(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.store(b"first", _meta("1.2.3.1.1"), "PACS", now=100.0)
    assert path == tmp_path / "incoming" / "1.2.3" / "1.2.3.1" / "1.2.3.1.1.dcm"
    assert path.read_bytes() == b"first"
    spool.store(b"second", _meta("1.2.3.1.1"), "PACS", now=101.0)  # same SOP UID: replaced
    assert path.read_bytes() == b"second"
    (m,) = spool.incoming()
    assert m.instance_count == 1 and (m.first_received, m.last_received) == (100.0, 101.0)
    assert not list((tmp_path / "tmp").iterdir())  # no partial file left behind


def test_invalid_uid_never_becomes_a_path(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(ValueError):
        spool.store(b"x", _meta("../../etc/passwd"), "PACS")
    assert not list((tmp_path / "incoming").iterdir())


def test_manifest_survives_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.store(b"a", _meta("1.2.3.1.1"), "PACS", now=100.0)
    spool.flush()
    spool.store(b"b", _meta("1.2.3.1.2"), "PACS", now=105.0)  # not flushed: a crash now
    restarted = Spool(tmp_path)
    (m,) = restarted.incoming()
    assert m.calling_ae == "PACS" and m.first_received == 100.0
    # the unflushed instance is recovered from its file (header unreadable here: b"b" is no DICOM)
    assert sorted(m.series["1.2.3.1"].instances) == ["1.2.3.1.1"]
    assert m.last_received >= 100.0


def test_restart_mid_study_recovers_unflushed_instances_from_files(tmp_path: Path) -> None:
    from io import BytesIO

    from pydicom import dcmread, dcmwrite
    from pydicom.data import get_testdata_file

    def encoded(series: str, sop: str) -> tuple[bytes, InstanceMeta]:
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3", series, sop
        buf = BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        return buf.getvalue(), InstanceMeta("1.2.3", series, sop, str(ds.SOPClassUID), "CT")

    spool = Spool(tmp_path)
    spool.store(*encoded("1.2.3.1", "1.2.3.1.1"), "PACS", now=100.0)
    spool.flush()
    spool.store(*encoded("1.2.3.2", "1.2.3.2.1"), "PACS", now=101.0)  # a second series, never flushed
    restarted = Spool(tmp_path)  # the node died; the PACS sends one more instance of series 1
    restarted.store(*encoded("1.2.3.1", "1.2.3.1.2"), "PACS", now=200.0)
    (m,) = restarted.incoming()
    assert {uid: sorted(s.instances) for uid, s in m.series.items()} == {
        "1.2.3.1": ["1.2.3.1.1", "1.2.3.1.2"],
        "1.2.3.2": ["1.2.3.2.1"],
    }
    assert m.calling_ae == "PACS" and m.first_received == 100.0 and m.last_received >= 200.0


def test_close_route_publish_finish(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.store(b"a", _meta("1.2.3.1.1"), "PACS", now=100.0)
    job = spool.close_study("1.2.3", now=110.0)
    assert not (tmp_path / "incoming" / "1.2.3").exists()
    assert spool.job_manifest(job).instance_count == 1
    assert [p.name for p in spool.job_instances(job)] == ["1.2.3.1.1.dcm"]
    spool.write_json(job, "routes.json", [{"name": "nm", "pipeline": "p", "queue": "nm", "series": ["1.2.3.1"]}])
    spool.publish_outputs(job, "nm", {"9.9.dcm": b"sr", "fingerprint": b"f"})
    assert spool.outputs_complete(job, "nm") and [p.name for p in spool.outputs(job, "nm")] == ["9.9.dcm"]
    assert [p.name for p in spool.job_instances(job)] == ["1.2.3.1.1.dcm"]  # outputs are not inputs
    assert not spool.finish_if_exported(job)
    spool.mark_sent(job, "nm", "pacs", {"9.9"})
    assert spool.sent_to(job, "nm", "pacs") == {"9.9"}
    spool.mark_exported(job, "nm")
    assert spool.finish_if_exported(job)
    assert spool.job_dir(job) == tmp_path / "done" / job


def test_late_instance_starts_a_new_study(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.store(b"a", _meta("1.2.3.1.1"), "PACS", now=100.0)
    spool.close_study("1.2.3", now=110.0)
    spool.store(b"b", _meta("1.2.3.1.2"), "PACS", now=111.0)
    (m,) = spool.incoming()
    assert m.instance_count == 1 and m.first_received == 111.0


def test_ignored_keeps_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.store(b"a", _meta("1.2.3.1.1"), "PACS", now=100.0)
    job = spool.close_study("1.2.3", now=110.0)
    spool.move_job(job, "ignored", "reason.json", {"reason": "no rule"})
    assert json.loads((tmp_path / "ignored" / job / "reason.json").read_text())["reason"] == "no rule"


@pytest.mark.parametrize("bad", ["../x", "123", "123-../../../etc", "1-ABCDEFABCDEF"])
def test_job_ids_are_checked(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        Spool(tmp_path).job_dir(bad)


def test_manifest_json_round_trip() -> None:
    m = StudyManifest("1.2", "A", 1.0, 2.0)
    assert StudyManifest.from_json(m.to_json()) == m
