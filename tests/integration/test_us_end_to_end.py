"""US end to end: dcmtk storescu -> node -> Redis -> Celery worker -> Orthanc, against phantom truth.

Phantom thyroid ultrasound studies (speckle B-mode, hypoechoic nodules of known outline, the
vendor's text burned in beside a calibrated B-mode region) go through the real path. Every
figure is measured on what Orthanc holds afterwards: each SEG frame's pixels are placed on its
source image (frame) from the SEG's own references and compared with the phantom's outline.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from model_zoo.phantoms.us import us_phantom
from model_zoo.phantoms.us_dicom import USInstanceTruth, USPhantomStudy, write_us_study
from tests.integration.conftest import NodeProcess
from tests.encode.sr_structure import assert_complete
from tests.integration.sr_read import referenced_sop_instances, text_values, viewer_measurements, walk
from tests.peers import Orthanc, dciodvfy_errors, storescu, wait_until

pytestmark = pytest.mark.integration

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# storescu proposes one compressed transfer syntax per association, named by an option
STORESCU_TS_OPTION = {str(JPEGBaseline8Bit): "-xy", str(ExplicitVRLittleEndian): "-xe"}


@dataclass(frozen=True)
class SegFrame:
    """One frame of a SEG read back: its segment, label and full-size mask on its source frame."""

    segment: int
    label: str
    tracking_uid: str
    source: tuple[str, int]  # (SOP Instance UID, frame number or 0)
    mask: np.ndarray


def _seg_frames(seg: Dataset) -> list[SegFrame]:
    """Every frame of a SEG, placed by its own per-frame references (not by our encoder's logic)."""
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    out = []
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        # a macro is per frame, or shared by every frame
        identification = frame.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        derivation = frame.get("DerivationImageSequence") or shared.DerivationImageSequence
        number = int(identification[0].ReferencedSegmentNumber)
        (src,) = derivation[0].SourceImageSequence
        frame_number = int(src.ReferencedFrameNumber) if "ReferencedFrameNumber" in src else 0
        segment = segments[number]
        out.append(SegFrame(number, str(segment.SegmentLabel), str(segment.get("TrackingUID", "")),
                            (str(src.ReferencedSOPInstanceUID), frame_number), pixels[i] > 0))
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _truth_mask(inst: USInstanceTruth, nodule_index: int) -> np.ndarray:
    """The phantom's outline on the full frame."""
    rows, cols = int(inst.region[2] + 0), int(inst.region[3] + 0)
    frame = dcmread(inst.path, stop_before_pixels=True)
    full = np.zeros((int(frame.Rows), int(frame.Columns)), bool)
    r0, c0 = inst.region[0], inst.region[1]
    mask = inst.phantom.nodules[nodule_index].mask
    full[r0 : r0 + mask.shape[0], c0 : c0 + mask.shape[1]] = mask
    assert rows <= full.shape[0] and cols <= full.shape[1]
    return full


def _kind(sop_class: str) -> str | None:
    if sop_class.startswith(SR_PREFIX):
        return "SR"
    return {SC_CLASS: "SC", SEG_CLASS: "SEG"}.get(sop_class)


def _results(orthanc: Orthanc, study_uid: str) -> dict[str, list[Dataset]]:
    out: dict[str, list[Dataset]] = {"SR": [], "SC": [], "SEG": []}
    for inst in orthanc.study_instances(study_uid):
        kind = _kind(orthanc.instance_metadata(inst["ID"]).get("SopClassUid", ""))
        if kind:
            ds = dcmread(io.BytesIO(orthanc.get_instance_file(inst["ID"])))
            if kind != "SEG" or ds.get("Manufacturer") == "Thyroid AI Node":  # not the site's own SEG
                out[kind].append(ds)
    return out


def _wait(orthanc: Orthanc, node: NodeProcess, study: USPhantomStudy, n_nodules: int, timeout: float = 420) -> dict[str, list[Dataset]]:
    def ready() -> dict[str, list[Dataset]] | None:
        node.alive()
        res = _results(orthanc, study.study_instance_uid)
        if not res["SR"] or len(res["SC"]) < n_nodules:
            return None
        return res

    try:
        return wait_until(ready, timeout=timeout, interval=2.0, what="SR + SCs in Orthanc")
    except TimeoutError:
        pytest.fail(f"no results in Orthanc in {timeout} s\n{node.logs()}")


def _valid(ds: Dataset, tmp_path: Path) -> None:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == [], f"dciodvfy errors in {ds.Modality} {ds.SeriesDescription}"


@dataclass(frozen=True)
class Group:
    """One SR measurement group: tracking UID -> sizes, unit, decisions, texts."""

    numbers: dict[str, tuple[float, str]]  # concept meaning -> (value, unit code)
    codes: dict[str, str]  # concept meaning -> code meaning
    texts: list[str]


def _groups(sr: Dataset) -> dict[str, Group]:
    out = {}
    for item in walk(sr):
        content = item.get("ContentSequence", [])
        uid = next((str(c.UID) for c in content if c.get("ValueType") == "UIDREF"), None)
        if item.get("ValueType") != "CONTAINER" or uid is None:
            continue
        numbers = {}
        codes = {}
        texts = []
        for c in walk(item):
            meaning = str(c.ConceptNameCodeSequence[0].CodeMeaning) if "ConceptNameCodeSequence" in c else ""
            if c.get("ValueType") == "NUM":
                mv = c.MeasuredValueSequence[0]
                unit = mv.MeasurementUnitsCodeSequence[0]
                numbers[meaning] = (float(mv.NumericValue), str(unit.get("CodeValue", unit.get("LongCodeValue", unit))))
            elif c.get("ValueType") == "CODE":
                codes[meaning] = str(c.ConceptCodeSequence[0].CodeMeaning)
            elif c.get("ValueType") == "TEXT":
                texts.append(str(c.TextValue))
        out[uid] = Group(numbers, codes, texts)
    return out


def _check_study(res: dict[str, list[Dataset]], study: USPhantomStudy, tmp_path: Path, *,
                 site_masks: dict[str, np.ndarray] | None = None) -> list[tuple[bool, bool | None]]:
    """The issue's figures for one study; returns (truth malignant, reported malignant) per nodule."""
    (sr,) = res["SR"]
    for ds in [sr, *res["SEG"], *res["SC"]]:
        assert ds.StudyInstanceUID == study.study_instance_uid
        _valid(ds, tmp_path)
        assert "DEMO" in ds.SeriesDescription
    frames = [f for seg in res["SEG"] for f in _seg_frames(seg)]
    groups = _groups(sr)
    assert_complete(sr, procedure=("25010-0", "LN"), segs=res["SEG"])
    drawn = viewer_measurements(sr)  # what OHIF loads: one Bidirectional per nodule
    refs = referenced_sop_instances(sr)
    decisions = []
    n_truth = 0
    for inst in study.instances:
        key = (inst.sop_instance_uid, inst.middle_frame or 0)
        assert inst.sop_instance_uid in refs  # every analysed image is in the SR's evidence
        on_image = [f for f in frames if f.source == key]
        for n, truth in enumerate(inst.phantom.nodules):
            n_truth += 1
            expected = _truth_mask(inst, n)
            best = max(on_image, key=lambda f: _dice(f.mask, expected), default=None)
            assert best is not None, f"no SEG frame on {key}"
            if site_masks is not None:  # the site's outline took precedence over the model's
                assert np.array_equal(best.mask, site_masks[inst.sop_instance_uid])
            else:
                assert _dice(best.mask, expected) >= 0.8, f"Dice {_dice(best.mask, expected):.3f} on {key}"
            group = groups[best.tracking_uid]
            assert drawn[best.tracking_uid][0] == "Bidirectional"
            scale = inst.spacing_mm[0] if inst.spacing_mm else 1.0
            unit = "mm" if inst.spacing_mm else "{pixels}"
            (long_value, long_unit), (short_value, short_unit) = group.numbers["Long Axis"], group.numbers["Short Axis"]
            assert long_unit == unit and short_unit == unit
            if site_masks is None:
                assert abs(long_value - truth.long_axis_px * scale) <= 0.1 * truth.long_axis_px * scale, (long_value, truth)
                assert abs(short_value - truth.short_axis_px * scale) <= 0.1 * truth.short_axis_px * scale, (short_value, truth)
            if not inst.spacing_mm:
                assert any("pixels" in t for t in group.texts)
            assert 0.0 <= group.numbers["Probability of malignancy"][0] <= 1.0
            assert 0.0 <= group.numbers["Probability of large-volume lymph node metastasis"][0] <= 1.0
            malignant = group.codes.get("Malignant")
            decisions.append((truth.malignant, None if malignant is None else malignant == "Yes"))
    # no false positives: one SEG frame per true nodule, one heatmap SC per nodule
    assert len(frames) == n_truth, f"{len(frames)} segments for {n_truth} nodules"
    assert len(res["SC"]) == n_truth
    sources = {i.sop_instance_uid for i in study.instances}
    for sc in res["SC"]:
        assert {str(r.ReferencedSOPInstanceUID) for r in sc.SourceImageSequence} <= sources
    for seg in res["SEG"]:
        assert str(seg.SOPInstanceUID) in refs
    return decisions


def _send(node: NodeProcess, paths: list[Path]) -> None:
    by_syntax: dict[str, list[Path]] = {}
    for path in paths:
        by_syntax.setdefault(str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID), []).append(path)
    for syntax, files in sorted(by_syntax.items()):  # one association per transfer syntax
        sent = storescu(files, node.port, called_aet=node.ae_title, timeout=120,
                        extra_args=[STORESCU_TS_OPTION[syntax]], verbose=False)
        assert sent.returncode == 0, sent.stdout[-2000:] + sent.stderr[-2000:]


def _site_seg(inst: USInstanceTruth, out: Path) -> tuple[Path, np.ndarray]:
    """A SEG a site drew on the image: a rectangle inside the true nodule (not what the model finds)."""
    source = dcmread(inst.path)
    truth = _truth_mask(inst, 0)
    rows, cols = np.nonzero(truth)
    r_mid, c_mid = int(rows.mean()), int(cols.mean())
    half_r, half_c = max((rows.max() - rows.min()) // 4, 4), max((cols.max() - cols.min()) // 4, 4)
    mask = np.zeros_like(truth)
    mask[r_mid - half_r : r_mid + half_r, c_mid - half_c : c_mid + half_c] = True
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label="radiologist ROI",
            segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically abnormal structure"),
            segmented_property_type=hd.sr.CodedConcept("27925004", "SCT", "Nodule"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )],
        series_instance_uid=hd.UID(), series_number=40, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="Site PACS", manufacturer_model_name="ROI tool", software_versions="1",
        device_serial_number="1", transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    path = out / "site-seg.dcm"
    seg.save_as(path)
    return path, mask


def test_us_studies_through_redis_and_a_real_worker(
    orthanc: Orthanc, redis_url: str, node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    node = node_factory(orthanc, redis_url)
    # two images in JPEG baseline (YBR_FULL_422, as vendors send): a malignant and a benign nodule
    jpeg = write_us_study(tmp_path / "jpeg", 8101, transfer_syntax="jpeg_baseline", phantoms=[
        us_phantom(8101, malignant=True, diameter_mm=16.0),
        us_phantom(8102, malignant=False, calcification="macro", diameter_mm=12.0),
    ])
    # a cine clip with a colour-flow box beside the B-mode image
    cine = write_us_study(tmp_path / "cine", 8103, multiframe=True, frames=6, doppler=True,
                          phantoms=[us_phantom(8103, malignant=True, diameter_mm=11.0)])
    # no calibrated region: sizes in pixels, and the SR says so
    uncalibrated = write_us_study(tmp_path / "uncal", 8104, calibrated=False, photometric="MONOCHROME2",
                                  phantoms=[us_phantom(8104, malignant=False, diameter_mm=14.0)])
    # the site sends its own outline as a SEG: it takes precedence over the model's
    site = write_us_study(tmp_path / "site", 8105, phantoms=[us_phantom(8105, malignant=True, diameter_mm=18.0)])
    site_path, site_mask = _site_seg(site.instances[0], tmp_path / "site")

    studies = (jpeg, cine, uncalibrated, site)
    _send(node, [i.path for s in studies for i in s.instances] + [site_path])

    decisions = []
    for study in (jpeg, cine, uncalibrated):
        n = sum(len(i.phantom.nodules) for i in study.instances)
        decisions += _check_study(_wait(orthanc, node, study, n), study, tmp_path)
    res = _wait(orthanc, node, site, 1)
    _check_study(res, site, tmp_path, site_masks={site.instances[0].sop_instance_uid: site_mask})
    assert any("site" in t.lower() for t in text_values(res["SR"][0]))
    # seed 004 on the phantoms' convention (micro-calcified irregular = malignant)
    correct = sum(truth == reported for truth, reported in decisions)
    assert correct >= 0.75 * len(decisions), f"malignant right for {correct}/{len(decisions)}: {decisions}"
