"""Seed 001 end to end: dcmtk storescu -> node -> Redis -> Celery worker -> Orthanc.

Two Graves' phantom studies (one cured, one not, both clear cases: label not flipped by the
phantom's label noise, gland area far from the cure cutoff) go through the NM route with seed 001
configured; the SR read back from Orthanc carries seed 001's probability of cure with its
algorithm identification and the yes/no decision the phantom's label says, and each study gets
two Grad-CAM SCs (seed 003's and seed 001's), all dciodvfy clean.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import pytest
from pydicom import Dataset, dcmread

from model_zoo.phantoms.nm_graves import CURE_AREA_CUTOFF_MM2, graves_case, write_graves_study
from tests.integration.conftest import NodeProcess
from tests.encode.sr_structure import assert_complete
from tests.integration.sr_read import findings, numeric_values, referenced_sop_instances, viewer_measurements, walk
from tests.peers import Orthanc, dciodvfy_errors, storescu, wait_until

pytestmark = pytest.mark.integration

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
GRAVES_CODE = "353295004"  # seed 003's Graves' disease (SCT)
CURE_ROW = "Probability of cure after I-131 therapy"
YES, NO = "373066001", "373067005"
MODELS = {name: "demo" for name in ("nm_thyroid_dx", "ct_lung_met_rai", "us_nodule_seg", "us_calcified_nodule",
                                    "us_lvlnm", "nm_graves_i131")}


def _results(orthanc: Orthanc, study_uid: str) -> dict[str, list[Dataset]]:
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
        return res if len(res["SR"]) == 1 and len(res["SC"]) == 2 else None

    try:
        res = wait_until(ready, timeout=timeout, interval=1.0, what="SR and 2 SCs in Orthanc")
    except TimeoutError:
        pytest.fail(f"no results in Orthanc in {timeout} s\n{node.logs()}")
    assert res is not None
    return res


def _cure_row(sr: Dataset) -> Dataset:
    (row,) = [i for i in walk(sr) if i.get("ValueType") == "NUM" and i.ConceptNameCodeSequence[0].CodeMeaning == CURE_ROW]
    return row


def _decision(sr: Dataset) -> str:
    (row,) = [i for i in walk(sr) if i.get("ValueType") == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "I131-CURE"]
    return str(row.ConceptCodeSequence[0].CodeValue)


def test_cured_and_not_cured_graves_studies(
    orthanc: Orthanc, redis_url: str, node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    node = node_factory(orthanc, redis_url, models=MODELS)  # nm.graves_i131: the default, if_graves
    studies = {}
    for cured in (True, False):
        case = graves_case(9300, cured)
        assert not case.noisy and abs(case.gland_area_mm2 - CURE_AREA_CUTOFF_MM2) > 500  # a clear case
        path = write_graves_study(tmp_path / "in" / str(cured), 9300, cured)
        orthanc.upload(path)
        studies[cured] = path
    sent = storescu(list(studies.values()), node.port, called_aet=node.ae_title)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    for cured, path in studies.items():
        source = dcmread(path)
        res = _wait_results(orthanc, node, source.StudyInstanceUID)
        (sr,) = res["SR"]
        for ds in (sr, *res["SC"]):
            assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
            assert "DEMO" in ds.SeriesDescription
            out = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(out, enforce_file_format=True)
            assert dciodvfy_errors(out) == [], f"dciodvfy errors in {ds.Modality} {ds.SeriesDescription}"
        # seed 003 called it Graves' disease; seed 001's row, with its algorithm identification
        assert findings(sr) == [GRAVES_CODE]
        assert_complete(sr, procedure=("30695-1", "LN"), sources=[source])
        assert sorted(tool for tool, _ in viewer_measurements(sr).values()) == ["ArrowAnnotate"] * 2
        row = _cure_row(sr)
        algorithm = {str(i.ConceptNameCodeSequence[0].CodeMeaning): str(i.TextValue)
                     for i in row.ContentSequence if i.get("ValueType") == "TEXT"}
        assert algorithm["Algorithm Name"] == "nm_graves_i131"
        assert algorithm["Algorithm Version"] == "0.1.0-demo"
        probability = numeric_values(sr)[CURE_ROW]
        assert 0.0 <= probability <= 1.0
        assert _decision(sr) == (YES if cured else NO)
        assert source.SOPInstanceUID in referenced_sop_instances(sr)
        # both models named as processing equipment; two heatmaps, one per model
        names = [e.ManufacturerModelName for e in sr.ContributingEquipmentSequence if e.Manufacturer == "Thyroid AI Node"]
        assert names == ["nm_thyroid_dx", "nm_graves_i131"]
        by_series = {int(sc.SeriesNumber): sc for sc in res["SC"]}
        assert sorted(by_series) == [9902, 9904]
        assert by_series[9902].ManufacturerModelName == "nm_thyroid_dx"
        assert by_series[9904].ManufacturerModelName == "nm_graves_i131"
        for sc in res["SC"]:
            assert [str(r.ReferencedSOPInstanceUID) for r in sc.SourceImageSequence] == [source.SOPInstanceUID]
