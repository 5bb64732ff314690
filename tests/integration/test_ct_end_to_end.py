"""CT end to end: dcmtk storescu -> node -> Redis -> Celery worker -> Orthanc, against phantom truth.

Every figure is measured on what Orthanc holds afterwards: the SEG's voxels placed in patient
coordinates from its own geometry, compared with the phantom's spheres rasterised on the CT's
own voxels (voxel centre inside the sphere).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from model_zoo.phantoms.ct import CTPhantomStudy, PhantomNodule
from model_zoo.phantoms.ct_dicom import write_ct_study
from tests.integration.conftest import NodeProcess
from tests.integration.seg_read import dice, equivalent_diameter, segments, sphere_voxels
from tests.encode.sr_structure import assert_complete
from tests.integration.sr_read import referenced_sop_instances, text_values, viewer_measurements, walk
from tests.peers import Orthanc, dciodvfy_errors, storescu, wait_until

pytestmark = pytest.mark.integration

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
PIXEL_MM, SLICE_MM = 0.8, 1.25
# storescu proposes one compressed transfer syntax per association, named by an option
STORESCU_TS_OPTION = {RLELossless: "-xr", JPEGLSLossless: "-xt", JPEG2000Lossless: "-xv", ExplicitVRLittleEndian: "-xe"}

# Known lesions (LPS mm; the phantom's lungs lie either side of x = 0): 5 to 16 mm, both lungs, both labels.
NODULES = (
    PhantomNodule(centre_mm=(-45.0, 5.0, 12.0), diameter_mm=12.0, refractory=True, side="right"),
    PhantomNodule(centre_mm=(50.0, 10.0, -15.0), diameter_mm=8.0, refractory=False, side="left"),
    PhantomNodule(centre_mm=(-50.0, -8.0, -22.0), diameter_mm=5.5, refractory=False, side="right"),
    PhantomNodule(centre_mm=(42.0, 15.0, 22.0), diameter_mm=16.0, refractory=True, side="left"),
)


def _kind(sop_class: str) -> str | None:
    if sop_class.startswith(SR_PREFIX):
        return "SR"
    return {SC_CLASS: "SC", SEG_CLASS: "SEG"}.get(sop_class)


def _results(orthanc: Orthanc, study_uid: str) -> dict[str, list[Dataset]]:
    out: dict[str, list[Dataset]] = {"SR": [], "SC": [], "SEG": []}
    for inst in orthanc.study_instances(study_uid):
        kind = _kind(orthanc.instance_metadata(inst["ID"]).get("SopClassUid", ""))
        if kind:
            out[kind].append(dcmread(io.BytesIO(orthanc.get_instance_file(inst["ID"]))))
    return out


def _wait(orthanc: Orthanc, node: NodeProcess, study_uid: str, kinds: tuple[str, ...], timeout: float = 420) -> dict[str, list[Dataset]]:
    def ready() -> dict[str, list[Dataset]] | None:
        node.alive()
        res = _results(orthanc, study_uid)
        if not all(res[k] for k in kinds):
            return None
        if res["SEG"] and len(res["SC"]) < len(res["SEG"][0].SegmentSequence):  # one SC per lesion
            return None
        return res

    try:
        return wait_until(ready, timeout=timeout, interval=2.0, what=f"{'+'.join(kinds)} in Orthanc")
    except TimeoutError:
        pytest.fail(f"no {kinds} in Orthanc in {timeout} s\n{node.logs()}")


def _valid(ds: Dataset, tmp_path: Path) -> None:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == [], f"dciodvfy errors in {ds.Modality} {ds.SeriesDescription}"


def _main_slices(study: CTPhantomStudy) -> list[Dataset]:
    out = []
    for p in study.paths:
        ds = dcmread(p, stop_before_pixels=True)
        if ds.SeriesInstanceUID == study.series_instance_uid:
            out.append(ds)
    return out


def _check_study(res: dict[str, list[Dataset]], study: CTPhantomStudy, tmp_path: Path) -> list[tuple[float, float]]:
    """All the figures of the issue for one study; returns (truth, measured) diameters per lesion."""
    (seg,) = res["SEG"]
    (sr,) = res["SR"]
    for ds in [seg, sr, *res["SC"]]:
        assert ds.StudyInstanceUID == study.study_instance_uid
        _valid(ds, tmp_path)
        assert "DEMO" in ds.SeriesDescription
    slices = _main_slices(study)
    slice_uids = {str(ds.SOPInstanceUID) for ds in slices}
    # the SEG lies on the analysed series' own slices
    for frame in seg.PerFrameFunctionalGroupsSequence:
        for derivation in frame.get("DerivationImageSequence", []):
            for src in derivation.SourceImageSequence:
                assert str(src.ReferencedSOPInstanceUID) in slice_uids
    segs = segments(seg)
    voxel_mm3 = PIXEL_MM * PIXEL_MM * SLICE_MM
    matched: dict[int, int] = {}
    diameters = []
    for i, nodule in enumerate(study.nodules):
        truth = sphere_voxels(slices, nodule.centre_mm, nodule.diameter_mm)
        best = max(segs.values(), key=lambda s: dice(s.points_mm, truth), default=None)
        if nodule.diameter_mm < 5.0:
            continue
        assert best is not None and dice(best.points_mm, truth) >= 0.7, (
            f"nodule {nodule}: best Dice {dice(best.points_mm, truth) if best else 0:.2f}"
        )
        matched[best.number] = i
        centre = best.points_mm.mean(axis=0)
        assert np.linalg.norm(centre - np.asarray(nodule.centre_mm)) <= 2.0, f"centre {centre} vs {nodule.centre_mm}"
        measured = equivalent_diameter(best, voxel_mm3)
        assert abs(measured - nodule.diameter_mm) <= 1.5, f"diameter {measured:.2f} vs {nodule.diameter_mm}"
        diameters.append((nodule.diameter_mm, measured))
    assert len(matched) == sum(n.diameter_mm >= 5.0 for n in study.nodules)  # sensitivity 1.0 on >= 5 mm
    assert len(segs) == len(matched), f"{len(segs) - len(matched)} false positive segment(s)"

    # SR: one group per lesion, sharing tracking UIDs with the SEG; sizes and the RAI evaluation
    groups = [i for i in walk(sr) if i.get("ValueType") == "CONTAINER" and any(
        c.get("ValueType") == "UIDREF" for c in i.get("ContentSequence", []))]
    tracking = {str(c.UID) for g in groups for c in g.ContentSequence if c.get("ValueType") == "UIDREF"}
    assert {s.tracking_uid for s in segs.values()} <= tracking
    assert_complete(sr, procedure=("24627-2", "LN"), segs=[seg])
    drawn = viewer_measurements(sr)  # what OHIF loads: each lesion's in-plane axes, one Bidirectional
    assert {drawn[s.tracking_uid][0] for s in segs.values()} == {"Bidirectional"}
    refs = referenced_sop_instances(sr)
    assert seg.SOPInstanceUID in refs
    assert slice_uids & refs
    assert any(study.series_instance_uid in t or "slices" in t for t in text_values(sr))
    assert len(res["SC"]) == len(segs)
    for sc in res["SC"]:
        assert {str(r.ReferencedSOPInstanceUID) for r in sc.SourceImageSequence} <= slice_uids
    # classification: the phantom's refractory (dense) lesions vs iodine-avid ones
    evaluations = _rai_evaluations(sr)
    correct = 0
    for number, i in matched.items():
        uid = segs[number].tracking_uid
        correct += evaluations.get(uid) == study.nodules[i].refractory
    assert correct >= 0.75 * len(matched), f"RAI-refractory right for {correct}/{len(matched)}"
    return diameters


def _rai_evaluations(sr: Dataset) -> dict[str, bool]:
    """Tracking UID -> the yes/no RAI-refractory evaluation of its group."""
    out = {}
    for group in walk(sr):
        items = group.get("ContentSequence", [])
        uid = next((str(c.UID) for c in items if c.get("ValueType") == "UIDREF"), None)
        if uid is None:
            continue
        for c in items:
            if c.get("ValueType") == "CODE" and "RAI" in str(c.ConceptNameCodeSequence[0].CodeMeaning).upper():
                out[uid] = str(c.ConceptCodeSequence[0].CodeValue) == "373066001"
    return out


def _not_analysable_reason(res: dict[str, list[Dataset]]) -> str:
    (sr,) = res["SR"]
    assert res["SEG"] == [] and res["SC"] == []
    assert_complete(sr, procedure=("24627-2", "LN"))
    return " ".join(text_values(sr)).lower()


def test_ct_studies_through_redis_and_a_real_worker(
    orthanc: Orthanc, redis_url: str, node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    node = node_factory(orthanc, redis_url)
    common = dict(rows=256, slices=80, pixel_mm=PIXEL_MM, slice_mm=SLICE_MM, nodules=NODULES)
    plain = write_ct_study(tmp_path / "plain", 7001, order="shuffled", extra_series=("localizer", "thick"), **common)
    # the same anatomy written as a feet-first scanner would, arriving in reverse order, each slice
    # in another lossless compressed transfer syntax
    feet_first = write_ct_study(
        tmp_path / "ff", 7001, feet_first=True, order="descending",
        transfer_syntaxes=(RLELossless, JPEGLSLossless, JPEG2000Lossless), **common,
    )
    tilted = write_ct_study(tmp_path / "tilt", 7003, gantry_tilt_deg=12.0, rows=128, slices=40, pixel_mm=1.6, slice_mm=2.5)
    abdomen = write_ct_study(tmp_path / "abd", 7004, kind="abdomen", body_part="ABDOMEN", rows=128, slices=40,
                             pixel_mm=1.6, slice_mm=2.5, nodules=0)
    by_syntax: dict[str, list[Path]] = {}
    for path in (p for s in (plain, feet_first, tilted, abdomen) for p in s.paths):
        by_syntax.setdefault(str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID), []).append(path)
    assert len(by_syntax) == 4
    for syntax, files in sorted(by_syntax.items()):  # one association per transfer syntax
        sent = storescu(files, node.port, called_aet=node.ae_title, timeout=300,
                        extra_args=[STORESCU_TS_OPTION[syntax]], verbose=False)
        assert sent.returncode == 0, sent.stdout[-2000:] + sent.stderr[-2000:]

    # gantry tilt and a non-chest series: an explicit "not analysable" SR each, nothing else
    reason = _not_analysable_reason(_wait(orthanc, node, tilted.study_instance_uid, ("SR",)))
    assert "tilt" in reason
    reason = _not_analysable_reason(_wait(orthanc, node, abdomen.study_instance_uid, ("SR",)))
    assert "chest" in reason or "lung" in reason

    d_plain = _check_study(_wait(orthanc, node, plain.study_instance_uid, ("SEG", "SR", "SC")), plain, tmp_path)
    d_ff = _check_study(_wait(orthanc, node, feet_first.study_instance_uid, ("SEG", "SR", "SC")), feet_first, tmp_path)
    # the same findings whatever the order, orientation and transfer syntax
    assert len(d_plain) == len(d_ff)
    for (t1, m1), (t2, m2) in zip(d_plain, d_ff):
        assert t1 == t2 and abs(m1 - m2) <= 1.0


def test_enhanced_ct_through_the_node(
    orthanc: Orthanc, redis_url: str, node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """One Enhanced CT multi-frame instance: the SEG references its frames and matches the spheres."""
    node = node_factory(orthanc, redis_url)
    study = write_ct_study(tmp_path / "enh", 7005, enhanced=True, rows=256, slices=80, pixel_mm=PIXEL_MM,
                           slice_mm=SLICE_MM, nodules=NODULES[:2])
    assert len(study.paths) == 1
    sent = storescu(study.paths, node.port, called_aet=node.ae_title, timeout=120)
    assert sent.returncode == 0, sent.stdout[-2000:] + sent.stderr[-2000:]
    res = _wait(orthanc, node, study.study_instance_uid, ("SEG", "SR", "SC"))
    diameters = _check_study(res, study, tmp_path)
    assert len(diameters) == 2
    (seg,) = res["SEG"]
    frames = {int(src.ReferencedFrameNumber) for f in seg.PerFrameFunctionalGroupsSequence
              for d in f.DerivationImageSequence for src in d.SourceImageSequence}
    assert frames and max(frames) <= 80

