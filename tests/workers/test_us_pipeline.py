"""The US pipeline without the network: phantom studies in, USResults and DICOM objects out.

Uses the demo bundles (``make test`` builds them first).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian

from config.settings import load_settings
from model_zoo.phantoms.us import us_phantom
from model_zoo.phantoms.us_dicom import USInstanceTruth, write_us_study
from tests.encode.sr_structure import assert_complete
from workers.models import load_models
from workers.pipelines import us
from workers.pipelines.site_roi import is_site_seg, site_rois


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return load_models(us.MODELS, load_settings())


def _full_truth(inst: USInstanceTruth) -> np.ndarray:
    ds = dcmread(inst.path, stop_before_pixels=True)
    full = np.zeros((int(ds.Rows), int(ds.Columns)), bool)
    mask = inst.phantom.nodules[0].mask
    full[inst.region[0] : inst.region[0] + mask.shape[0], inst.region[1] : inst.region[1] + mask.shape[1]] = mask
    return full


def _seg_on(source: Dataset, mask: np.ndarray, manufacturer: str) -> Dataset:
    return hd.seg.Segmentation(
        source_images=[source], pixel_array=mask[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label="ROI",
            segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically abnormal structure"),
            segmented_property_type=hd.sr.CodedConcept("27925004", "SCT", "Nodule"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )],
        series_instance_uid=hd.UID(), series_number=40, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=manufacturer, manufacturer_model_name="ROI tool", software_versions="1",
        device_serial_number="1", transfer_syntax_uid=ExplicitVRLittleEndian,
    )


def test_nodules_found_measured_and_scored(models: dict[str, Any], tmp_path: Path) -> None:
    study = write_us_study(tmp_path, 8201, phantoms=[us_phantom(8201, malignant=True, diameter_mm=14.0),
                                                     us_phantom(8202, malignant=False, diameter_mm=10.0)])
    sources = [dcmread(i.path) for i in study.instances]
    results = us.run(sources, models, load_settings())
    assert len(results.images) == 2 and len(results.nodules) == 2 and not results.not_analysable
    for inst in study.instances:
        (nodule,) = [n for n in results.nodules if n.image.source.sop_instance_uid == inst.sop_instance_uid]
        truth = inst.phantom.nodules[0]
        full = np.zeros_like(_full_truth(inst))
        b = nodule.box
        full[b[0] : b[2], b[1] : b[3]] = nodule.mask
        expected = _full_truth(inst)
        assert 2 * (full & expected).sum() / (full.sum() + expected.sum()) >= 0.85
        assert nodule.calibrated and nodule.unit == "mm"
        assert nodule.long_axis == pytest.approx(truth.long_axis_px * 0.1, rel=0.1)
        assert nodule.heatmap.shape == nodule.mask.shape and 0.0 <= nodule.heatmap.min() <= nodule.heatmap.max() <= 1.0
        assert (nodule.malignancy >= nodule.malignancy_threshold) == truth.malignant
        assert nodule.lvlnm is not None and 0.0 <= nodule.lvlnm <= 1.0
        # the models saw the B-mode region only: the nodule lies inside it, and none of the burned-in
        # text or scale bars does
        r0, c0, r1, c1 = nodule.image.region
        assert r0 <= b[0] and c0 <= b[1] and b[2] <= r1 and b[3] <= c1
        assert inst.text_boxes
        for t0, u0, t1, u1 in inst.text_boxes:
            assert t1 <= r0 or t0 >= r1 or u1 <= c0 or u0 >= c1, f"text box {(t0, u0, t1, u1)} in region {nodule.image.region}"
    objects = us.process(sources, models, datetime(2026, 11, 23, 9, 0, 0), load_settings())
    assert sorted(str(o.Modality) for o in objects) == ["OT", "OT", "SEG", "SEG", "SR"]
    (sr,) = [o for o in objects if o.Modality == "SR"]
    segs = [o for o in objects if o.Modality == "SEG"]
    assert_complete(sr, procedure=("25010-0", "LN"), segs=segs, sources=sources)


def test_site_seg_takes_precedence_and_our_own_seg_does_not(models: dict[str, Any], tmp_path: Path) -> None:
    study = write_us_study(tmp_path, 8203, phantoms=[us_phantom(8203, malignant=True, diameter_mm=15.0)])
    (inst,) = study.instances
    source = dcmread(inst.path)
    truth = _full_truth(inst)
    rows, cols = np.nonzero(truth)
    box = np.zeros_like(truth)
    box[rows.min() + 10 : rows.max() - 10, cols.min() + 10 : cols.max() - 10] = True
    site = _seg_on(source, box, "Site PACS")
    ours = _seg_on(source, truth, "Thyroid AI Node")
    assert is_site_seg(site) and not is_site_seg(ours)
    rois = site_rois([source, site, ours])
    assert list(rois) == [(inst.sop_instance_uid, None)] and len(rois[(inst.sop_instance_uid, None)]) == 1
    results = us.run([source, site, ours], models, load_settings())
    (nodule,) = results.nodules
    assert nodule.outline_source == "site SEG"
    full = np.zeros_like(truth)
    full[nodule.box[0] : nodule.box[2], nodule.box[1] : nodule.box[3]] = nodule.mask
    assert np.array_equal(full, box)


def test_unusable_images_are_reported_not_dropped(models: dict[str, Any], tmp_path: Path) -> None:
    good = write_us_study(tmp_path / "a", 8204, phantoms=[us_phantom(8204, diameter_mm=12.0)])
    bad = dcmread(write_us_study(tmp_path / "b", 8205, study_uid=good.study_instance_uid).instances[0].path)
    for item in bad.SequenceOfUltrasoundRegions:
        item.RegionDataType = 3  # spectral (PW) Doppler only: no tissue region
    sources = [dcmread(good.instances[0].path), bad]
    results = us.run(sources, models, load_settings())
    assert len(results.nodules) == 1
    (refused,) = results.not_analysable
    assert refused.source.sop_instance_uid == str(bad.SOPInstanceUID) and "region" in refused.reason.lower()
    limited = us.run(sources, models, load_settings(us={"max_images": 1}))
    assert len(limited.images) + len(limited.not_analysable) == 2
    assert any("limit" in r.reason for r in limited.not_analysable)


def test_uncalibrated_sizes_in_pixels(models: dict[str, Any], tmp_path: Path) -> None:
    study = write_us_study(tmp_path, 8206, calibrated=False, photometric="MONOCHROME2",
                           phantoms=[us_phantom(8206, malignant=False, diameter_mm=14.0)])
    (inst,) = study.instances
    results = us.run([dcmread(inst.path)], models, load_settings())
    (nodule,) = results.nodules
    assert not nodule.calibrated and nodule.unit == "pixels" and nodule.image.spacing_mm is None
    assert nodule.long_axis == pytest.approx(inst.phantom.nodules[0].long_axis_px, rel=0.1)
