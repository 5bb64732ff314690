"""NM end to end: dcmtk storescu -> node -> Redis -> Celery worker -> Orthanc, checked against phantom truth."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path
from typing import Any, Callable

import pytest
from pydicom import Dataset, dcmread

from model_zoo.phantoms.nm import write_nm_study
from tests.integration.conftest import NodeProcess
from tests.encode.sr_structure import assert_complete
from tests.integration.sr_read import findings, numeric_values, referenced_sop_instances, viewer_measurements
from tests.peers import Orthanc, dciodvfy_errors, storescu, wait_until

pytestmark = pytest.mark.integration

LABELS = ("graves", "subacute_thyroiditis", "thyroid_tumour", "normal")
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def _class_codes() -> dict[str, str]:
    from model_zoo.bundle import load_bundle
    from model_zoo.demo import ensure_demo_bundle

    card = load_bundle(ensure_demo_bundle("nm_thyroid_dx")).card
    return {label.key: label.code_value for label in card.labels}


def _results(orthanc: Orthanc, study_uid: str) -> dict[str, list[Dataset]]:
    """The node's objects in a study, read back from Orthanc, by kind ("SR", "SC")."""
    out: dict[str, list[Dataset]] = {"SR": [], "SC": []}
    for inst in orthanc.study_instances(study_uid):
        sop_class = orthanc.instance_metadata(inst["ID"]).get("SopClassUid", "")
        kind = "SR" if sop_class.startswith(SR_PREFIX) else "SC" if sop_class == SC_CLASS else None
        if kind:
            out[kind].append(dcmread(io.BytesIO(orthanc.get_instance_file(inst["ID"]))))
    return out


def _wait_results(orthanc: Orthanc, node: NodeProcess, study_uid: str, timeout: float = 240) -> dict[str, list[Dataset]]:
    def ready() -> dict[str, list[Dataset]] | None:
        node.alive()
        res = _results(orthanc, study_uid)
        return res if res["SR"] and res["SC"] else None

    try:
        return wait_until(ready, timeout=timeout, interval=1.0, what="SR and SC in Orthanc")
    except TimeoutError:
        pytest.fail(f"no results in Orthanc in {timeout} s\n{node.logs()}")


def _check_outputs(res: dict[str, list[Dataset]], source: Dataset, expected_code: str, tmp_path: Path) -> None:
    (sr,) = res["SR"]
    (sc,) = res["SC"]
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.PatientID == source.PatientID
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], f"dciodvfy errors in {ds.Modality}"
    assert findings(sr) == [expected_code]
    assert_complete(sr, procedure=("30695-1", "LN"), sources=[source])
    assert [tool for tool, _ in viewer_measurements(sr).values()] == ["ArrowAnnotate"]
    probabilities = [v for k, v in numeric_values(sr).items() if "robability" in k]
    assert len(probabilities) == 4 and abs(sum(probabilities) - 1.0) < 1e-3
    assert source.SOPInstanceUID in referenced_sop_instances(sr)
    assert [str(r.ReferencedSOPInstanceUID) for r in sc.SourceImageSequence] == [source.SOPInstanceUID]
    assert "DEMO" in sr.SeriesDescription and "DEMO" in sc.SeriesDescription


def test_four_classes_through_redis_and_a_real_worker(
    orthanc: Orthanc, redis_url: str, node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    codes = _class_codes()
    node = node_factory(orthanc, redis_url)
    studies = {label: write_nm_study(tmp_path / "in" / label, label, seed=9000 + i) for i, label in enumerate(LABELS)}
    for path in studies.values():  # the PACS holds the studies it sends
        orthanc.upload(path)
    sent = storescu(list(studies.values()), node.port, called_aet=node.ae_title)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    for label, path in studies.items():
        source = dcmread(path)
        res = _wait_results(orthanc, node, source.StudyInstanceUID)
        _check_outputs(res, source, codes[label], tmp_path)

    # The PACS itself pushes the same study again: nothing new arrives in Orthanc.
    count = orthanc.instance_count()
    done_before = len(node.spool_jobs("done"))
    orthanc.add_modality("NODE", node.ae_title, "127.0.0.1", node.port)
    graves_uid = dcmread(studies["graves"]).StudyInstanceUID
    orthanc.push_to("NODE", [orthanc.lookup_study(graves_uid)])
    wait_until(lambda: len(node.spool_jobs("done")) > done_before, timeout=120, what="re-sent study processed")
    assert orthanc.instance_count() == count
    # the source instance plus our SR and SC, nothing twice
    kinds = sorted(orthanc.instance_metadata(i["ID"])["SopClassUid"] for i in orthanc.study_instances(graves_uid))
    assert kinds == sorted(["1.2.840.10008.5.1.4.1.1.20", SC_CLASS, "1.2.840.10008.5.1.4.1.1.88.34"])


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_embedded_broker_without_redis(orthanc: Orthanc, node_factory: Callable[..., NodeProcess], tmp_path: Path) -> None:
    codes = _class_codes()
    node = node_factory(orthanc, None)  # no broker_url: SQLite broker, workers started by serve
    # The inference worker dies (as under the OOM killer): serve restarts it and keeps listening.
    serve_pid = node.procs[0][0].pid
    workers = wait_until(lambda: _children(serve_pid) if len(_children(serve_pid)) == 2 else None, timeout=30, what="2 workers")
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: "restarting it" in node.logs(), timeout=60, what="the dead worker restarted")
    path = write_nm_study(tmp_path / "in", "thyroid_tumour", seed=9100)
    assert storescu([path], node.port, called_aet=node.ae_title).returncode == 0
    source = dcmread(path)
    _check_outputs(_wait_results(orthanc, node, source.StudyInstanceUID), source, codes["thyroid_tumour"], tmp_path)


def test_pacs_down_then_back_gets_everything(
    orthanc_factory: Callable[..., Orthanc], redis_url: str, node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """Export retries from the outbox: a PACS that is down when results are ready still gets them."""
    pacs = orthanc_factory()
    port = pacs.dicom_port
    pacs.stop()  # down: the node's first sends fail
    node = node_factory(pacs, redis_url)
    path = write_nm_study(tmp_path / "in", "normal", seed=9200)
    assert storescu([path], node.port, called_aet=node.ae_title).returncode == 0
    wait_until(lambda: "retry" in node.logs(), timeout=180, interval=1.0, what="a failed send being retried")
    assert node.spool_jobs("done") == []
    pacs.start()  # back up on the same ports
    assert pacs.dicom_port == port
    source = dcmread(path)
    res = _wait_results(pacs, node, source.StudyInstanceUID)
    assert len(res["SR"]) == 1 and len(res["SC"]) == 1
