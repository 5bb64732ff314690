"""The SC fallback: reading our SR and SEG back, outline pictures and summary pages for NM, CT, US."""

from __future__ import annotations

import copy
from typing import Any
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.encode import builders, ct_builders, us_builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.integration.sr_read import walk
from tests.encode.dicom_tools import dciodvfy_errors, from_bytes, to_bytes, write
from workers.encode import codes as thy
from workers.encode.fallback_read import FallbackInputError, FindingGroup, read_findings, read_seg
from workers.encode.sc_fallback import (
    OUTLINE_SERIES_NUMBER,
    PALETTE,
    SUMMARY_SERIES_NUMBER,
    OutlineEntry,
    encode_outline_scs,
    encode_summary_scs,
    placement,
    render_outlines,
    render_summary,
)
from workers.encode.seg import encode_ct_seg
from workers.encode.seg_us import encode_us_segs
from workers.encode.sr import encode_nm_sr
from workers.encode.sr_ct import encode_ct_sr
from workers.encode.sr_us import encode_us_sr

DISCLAIMER = "DEMO - not for clinical use"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
FINDING_SITE = "363698007"  # (363698007, SCT, "Finding Site")
KW: dict[str, Any] = {"content_datetime": CONTENT_DATETIME, "software_version": SOFTWARE_VERSION}

Outbox = tuple[list[pydicom.Dataset], list[pydicom.Dataset], pydicom.Dataset]


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    return from_bytes(to_bytes(ds))  # what the outbox holds


@pytest.fixture(scope="module")
def us_outbox() -> Outbox:
    sources = us_builders.study()
    results = us_builders.results(sources)
    segs = [_roundtrip(s) for s in encode_us_segs(results, sources, **KW)]
    return sources, segs, _roundtrip(encode_us_sr(results, sources, segs, **KW))


@pytest.fixture(scope="module")
def ct_outbox() -> Outbox:
    sources = ct_builders.ct_series()
    results = ct_builders.results(sources)
    seg = _roundtrip(encode_ct_seg(results, sources, **KW))
    return sources, [seg], _roundtrip(encode_ct_sr(results, sources, seg, **KW))


def _by_code(group: FindingGroup) -> dict[str, str]:
    return {r.concept[0]: r.value for r in group.rows}


def _labels(group: FindingGroup) -> dict[str, str]:
    return {r.concept[0]: r.label for r in group.rows}


def _by_uid(sources: list[pydicom.Dataset]) -> dict[str, pydicom.Dataset]:
    return {str(d.SOPInstanceUID): d for d in sources}


def _valid(sc: pydicom.Dataset, tmp_path: Path) -> pydicom.Dataset:
    data = to_bytes(sc)
    path = write(tmp_path, f"{sc.SOPInstanceUID}.dcm", data)
    assert dciodvfy_errors(path) == []
    back = from_bytes(data)
    assert back.SOPClassUID == SC_CLASS and back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert back.BurnedInAnnotation == "NO" and back.ConversionType == "WSD"
    return back


def _ring_in_source(sc: pydicom.Dataset, rows: int, cols: int, number: int) -> np.ndarray:
    """Segment ``number``'s outline pixels, mapped back to source (row, col)."""
    place = placement(rows, cols, demo="DEMO" in str(sc.SeriesDescription))
    picture = sc.pixel_array[place.top : place.top + place.height, place.left : place.left + place.width]
    rr, cc = np.nonzero(np.all(picture == np.asarray(PALETTE[number - 1], np.uint8), axis=-1))
    return np.column_stack([rr / place.scale, cc / place.scale])


def _near(points: np.ndarray, mask: np.ndarray, tolerance: float) -> None:
    rows, cols = np.nonzero(mask)
    assert len(points) > 20
    assert abs(points[:, 0].mean() - rows.mean()) <= tolerance and abs(points[:, 1].mean() - cols.mean()) <= tolerance
    assert points[:, 0].min() >= rows.min() - tolerance and points[:, 0].max() <= rows.max() + tolerance + 1
    assert points[:, 1].min() >= cols.min() - tolerance and points[:, 1].max() <= cols.max() + tolerance + 1


# --- reading ---------------------------------------------------------------------------------


def test_reads_us_findings_by_concept(us_outbox: Outbox) -> None:
    _, _, sr = us_outbox
    findings = read_findings(sr)
    assert [g.title for g in findings.groups if g.title.startswith("Nodule")] == [f"Nodule {n}" for n in (1, 2, 3, 4)]
    rows = _by_code(findings.groups[0])
    assert rows[thy.LONG_AXIS.value].endswith(" mm") and rows[thy.AREA.value].endswith(" mm2")
    assert rows[thy.PROBABILITY_MALIGNANCY.value] == "0.812 (81.2 %)"
    assert rows[thy.MALIGNANT.value] == "Yes"
    assert findings.disclaimer == DISCLAIMER
    assert "us_calcified_nodule 0.1.0-demo" in findings.algorithms
    assert all(r.label != "Disclaimer" and not r.label.startswith("Algorithm") for g in findings.groups for r in g.rows)
    # the uncalibrated image's nodule reports pixels
    assert any(r.value.endswith(" px") for g in findings.groups for r in g.rows)


def _move_scoords(sr: pydicom.Dataset) -> int:
    """Move each group's SCOORDs to the other layout: from the group under its first NUM, or
    from under the NUMs up to the group. Returns how many moved."""
    moved = 0
    for group in walk(sr):
        if group.get("ValueType") != "CONTAINER" or group.ConceptNameCodeSequence[0].CodeValue != "125007":
            continue
        children = list(group.get("ContentSequence", []))
        nums = [c for c in children if c.ValueType == "NUM"]
        at_group = [c for c in children if c.ValueType == "SCOORD"]
        if nums and at_group:
            group.ContentSequence = [c for c in children if c.ValueType != "SCOORD"]
            nums[0].ContentSequence = [*nums[0].get("ContentSequence", []), *at_group]
            moved += len(at_group)
            continue
        for num in nums:
            under = [c for c in num.get("ContentSequence", []) if c.ValueType == "SCOORD"]
            if under:
                num.ContentSequence = [c for c in num.ContentSequence if c.ValueType != "SCOORD"]
                group.ContentSequence = [*group.ContentSequence, *under]
                moved += len(under)
    return moved


def test_reading_survives_scoords_moving_between_group_and_measurement(us_outbox: Outbox) -> None:
    """The SR layout is changing (SCOORDs becoming children of the NUMs): rows and images stay."""
    sources, _, _ = us_outbox
    results = us_builders.results(sources)
    sr = _roundtrip(encode_us_sr(results, sources, [], **KW))  # outlines as SCOORDs
    before = read_findings(sr)
    moved = copy.deepcopy(sr)
    assert _move_scoords(moved) >= 3
    after = read_findings(moved)
    assert [(g.title, g.rows, set(g.images)) for g in after.groups] == [(g.title, g.rows, set(g.images)) for g in before.groups]
    assert sum(len(g.images) for g in after.groups) >= 4


def test_reads_ct_seg_frames_on_their_source_slices(ct_outbox: Outbox) -> None:
    sources, (seg,), _ = ct_outbox
    outlines = read_seg(seg)
    truth = ct_builders.lesion_masks()
    uids = [str(d.SOPInstanceUID) for d in sources]
    assert {s.label for s in outlines.segments.values()} == {"Lesion 1", "Lesion 2"}
    for image in outlines.images:
        k = uids.index(image.source.sop_instance_uid)
        for number, mask in image.masks.items():
            assert np.array_equal(mask, truth[number - 1][k])
    assert sum(len(i.masks) for i in outlines.images) == sum(int(m.any(axis=(1, 2)).sum()) for m in truth)


def test_rejects_what_is_not_ours(nm_source: pydicom.Dataset) -> None:
    with pytest.raises(FallbackInputError):
        read_findings(nm_source)
    with pytest.raises(FallbackInputError):
        read_seg(nm_source)


# --- rendering -------------------------------------------------------------------------------


def test_render_outlines_puts_each_outline_on_its_pixels() -> None:
    grey = np.full((60, 80), 90, np.uint8)
    a = np.zeros((60, 80), bool)
    a[10:20, 10:30] = True
    b = np.zeros((60, 80), bool)
    b[40:55, 50:70] = True
    pixels = render_outlines(grey, [OutlineEntry(1, "Lesion 1", a), OutlineEntry(2, "Lesion 2", b)],
                             source_line="Source", models_line="Models", disclaimer=DISCLAIMER)
    place = placement(60, 80, demo=True)
    assert tuple(pixels[5, 5]) == (200, 0, 0)  # the DEMO band
    picture = pixels[place.top : place.top + place.height, place.left : place.left + place.width]
    for number, mask in ((1, a), (2, b)):
        rr, cc = np.nonzero(np.all(picture == np.asarray(PALETTE[number - 1], np.uint8), axis=-1))
        _near(np.column_stack([rr / place.scale, cc / place.scale]), mask, 1.0)
    with pytest.raises(ValueError):
        render_outlines(grey, [OutlineEntry(1, "x", a[:10])], source_line="", models_line="", disclaimer=None)
    with pytest.raises(ValueError):
        render_outlines(grey, [], source_line="", models_line="", disclaimer=None)


def test_summary_paginates_long_tables(us_outbox: Outbox) -> None:
    _, _, sr = us_outbox
    findings = read_findings(sr)
    many = findings.__class__(**{**findings.__dict__, "groups": findings.groups * 6})
    pages = render_summary(many, {})
    assert len(pages) > 1 and all(p.shape[1] == 1024 for p in pages)
    assert all(p.shape[0] <= 1600 for p in pages)


# --- DICOM, per modality ----------------------------------------------------------------------


def test_nm_summary_page(nm_source: pydicom.Dataset, tmp_path: Path) -> None:
    sr = _roundtrip(encode_nm_sr(builders.results(nm_source), [nm_source], **KW))
    findings = read_findings(sr)
    assert len(findings.groups) == 1
    units = [r.value for r in findings.groups[0].rows if r.value_type == "NUM"]
    assert len(units) == 4 and all(v.endswith(" %)") for v in units)  # one probability per class
    (page,) = encode_summary_scs(findings, _by_uid([nm_source]), software_version=SOFTWARE_VERSION)
    back = _valid(page, tmp_path)
    assert back.SeriesNumber == SUMMARY_SERIES_NUMBER and back.InstanceNumber == 1
    assert back.SeriesDescription.startswith(DISCLAIMER) and "SR fallback" in back.SeriesDescription
    assert back.StudyInstanceUID == nm_source.StudyInstanceUID and back.PatientID == nm_source.PatientID
    assert [r.ReferencedSOPInstanceUID for r in back.SourceImageSequence] == [nm_source.SOPInstanceUID]
    assert "1 finding(s)" in back.DerivationDescription
    assert any(e.ManufacturerModelName == "nm_thyroid_dx" for e in back.ContributingEquipmentSequence)
    assert back.ContentDate == "20250314" and back.ContentTime.startswith("092653")


def test_nm_without_demo_weights_has_no_demo_band(nm_source: pydicom.Dataset) -> None:
    model = builders.model_info(demo=False, version="1.0.0")
    sr = _roundtrip(encode_nm_sr(builders.results(nm_source, model=model), [nm_source], **KW))
    findings = read_findings(sr)
    assert findings.disclaimer is None
    (page,) = encode_summary_scs(findings, _by_uid([nm_source]), software_version=SOFTWARE_VERSION)
    assert "DEMO" not in page.SeriesDescription and tuple(page.pixel_array[5, 5]) != (200, 0, 0)


def test_ct_outlines_and_summary(ct_outbox: Outbox, tmp_path: Path) -> None:
    sources, (seg,), sr = ct_outbox
    findings = read_findings(sr)
    scs = encode_outline_scs([read_seg(seg)], _by_uid(sources), findings, software_version=SOFTWARE_VERSION)
    truth = ct_builders.lesion_masks()
    uids = [str(d.SOPInstanceUID) for d in sources]
    slices_with_lesion = {k for m in truth for k in np.nonzero(m.any(axis=(1, 2)))[0]}
    assert len(scs) == len(slices_with_lesion)
    assert [int(s.InstanceNumber) for s in scs] == list(range(1, len(scs) + 1))
    assert len({s.SeriesInstanceUID for s in scs}) == 1
    for sc in scs:
        back = _valid(sc, tmp_path)
        assert back.SeriesNumber == OUTLINE_SERIES_NUMBER and "SEG fallback" in back.SeriesDescription
        (ref,) = back.SourceImageSequence
        k = uids.index(str(ref.ReferencedSOPInstanceUID))
        assert back.BodyPartExamined == sources[k].BodyPartExamined
        for number, mask in enumerate(truth, start=1):
            if mask[k].any():
                _near(_ring_in_source(back, *mask[k].shape, number), mask[k], 1.5)
    pages = encode_summary_scs(findings, _by_uid(sources), software_version=SOFTWARE_VERSION)
    (page,) = pages
    back = _valid(page, tmp_path)
    assert "2 finding(s)" in back.DerivationDescription
    rows = _by_code(findings.groups[0])
    assert rows[thy.DIAMETER.value].endswith(" mm") and "maximum" in _labels(findings.groups[0])[thy.DIAMETER.value]
    assert rows[thy.VOLUME.value].endswith(" mm3")
    assert rows[thy.RAI_REFRACTORY.value] in ("Yes", "No") and rows[FINDING_SITE].startswith("Lung (")


def test_us_outlines_and_summary(us_outbox: Outbox, tmp_path: Path) -> None:
    sources, segs, sr = us_outbox
    findings = read_findings(sr)
    outlines = [read_seg(s) for s in segs]
    scs = encode_outline_scs(outlines, _by_uid(sources), findings, software_version=SOFTWARE_VERSION)
    # nodules 1 and 2 share the RGB image, 3 is on the cine's frame, 4 on the mono image
    assert len(scs) == 3
    keys = {str(builder().SOPInstanceUID): key for key, builder in
            (("rgb", us_builders.us_rgb), ("cine", us_builders.us_cine), ("mono", us_builders.us_mono))}
    found = set()
    for sc in scs:
        back = _valid(sc, tmp_path)
        (ref,) = back.SourceImageSequence
        source = _by_uid(sources)[str(ref.ReferencedSOPInstanceUID)]
        if "NumberOfFrames" in source:
            assert int(ref.ReferencedFrameNumber) == us_builders.CINE_FRAME
        on_image = [n for n, entry in enumerate(us_builders.NODULES, start=1) if entry[0] == keys[str(source.SOPInstanceUID)]]
        for n in on_image:  # each nodule in its own colour, numbered as in the SR
            _near(_ring_in_source(back, int(source.Rows), int(source.Columns), n), us_builders.nodule_mask(n), 1.5)
            found.add(n)
    assert found == {1, 2, 3, 4}
    pages = encode_summary_scs(findings, _by_uid(sources), software_version=SOFTWARE_VERSION)
    for page in pages:
        _valid(page, tmp_path)
    assert f"{len(findings.groups)} finding(s)" in pages[0].DerivationDescription


def test_same_outbox_same_objects(ct_outbox: Outbox) -> None:
    """Deterministic: UIDs and bytes depend on the SEG/SR only, not on when or for whom."""
    sources, (seg,), sr = ct_outbox
    findings = read_findings(sr)
    one = [to_bytes(s) for s in encode_outline_scs([read_seg(seg)], _by_uid(sources), findings, software_version=SOFTWARE_VERSION)]
    two = [to_bytes(s) for s in encode_outline_scs([read_seg(seg)], _by_uid(sources), findings, software_version=SOFTWARE_VERSION)]
    assert one == two
    page_a = to_bytes(encode_summary_scs(findings, _by_uid(sources), software_version=SOFTWARE_VERSION)[0])
    page_b = to_bytes(encode_summary_scs(read_findings(sr), _by_uid(sources), software_version=SOFTWARE_VERSION)[0])
    assert page_a == page_b


def test_missing_source_is_a_clear_error(ct_outbox: Outbox) -> None:
    sources, (seg,), sr = ct_outbox
    with pytest.raises(ValueError, match="source image not in the study"):
        encode_outline_scs([read_seg(seg)], {}, None, software_version=SOFTWARE_VERSION)
    with pytest.raises(ValueError, match="no source image"):
        encode_summary_scs(read_findings(sr), {}, software_version=SOFTWARE_VERSION)


def test_ct_not_analysable_still_gets_a_summary_page(tmp_path: Path) -> None:
    sources = ct_builders.ct_series()
    sr = _roundtrip(encode_ct_sr(ct_builders.not_analysable(sources, "gantry tilt"), sources, None, **KW))
    findings = read_findings(sr)
    assert len(findings.groups) == 1
    assert any("gantry tilt" in r.value for r in findings.groups[0].rows)
    (page,) = encode_summary_scs(findings, _by_uid(sources), software_version=SOFTWARE_VERSION)
    back = _valid(page, tmp_path)
    assert "1 finding(s)" in back.DerivationDescription
    assert {str(r.ReferencedSOPInstanceUID) for r in back.SourceImageSequence} <= set(_by_uid(sources))


def test_enhanced_ct_outlines_reference_their_frames(tmp_path: Path) -> None:
    sources = [ct_builders.enhanced_ct()]
    results = ct_builders.results(sources)
    seg = _roundtrip(encode_ct_seg(results, sources, **KW))
    sr = _roundtrip(encode_ct_sr(results, sources, seg, **KW))
    scs = encode_outline_scs([read_seg(seg)], _by_uid(sources), read_findings(sr), software_version=SOFTWARE_VERSION)
    truth = ct_builders.lesion_masks()
    frames = sorted(int(s.SourceImageSequence[0].ReferencedFrameNumber) for s in scs)
    assert len(frames) == len(set(frames)) == len({k for m in truth for k in np.nonzero(m.any(axis=(1, 2)))[0]})
    for sc in scs:
        k = ct_builders.N_SLICES - int(sc.SourceImageSequence[0].ReferencedFrameNumber)  # frames run down in z
        for number, mask in enumerate(truth, start=1):
            if mask[k].any():
                _near(_ring_in_source(sc, *mask[k].shape, number), mask[k], 1.5)
    for sc in scs[:2]:
        _valid(sc, tmp_path)


def test_long_values_wrap_instead_of_being_cut(us_outbox: Outbox) -> None:
    from workers.encode.fallback_read import Row

    _, _, sr = us_outbox
    findings = read_findings(sr)
    group = findings.groups[0]

    def height(value: str) -> int:
        one = findings.__class__(**{**findings.__dict__, "groups": (group.__class__(
            **{**group.__dict__, "rows": (Row("Note", value, "TEXT"),)}),)})
        (page,) = render_summary(one, {})
        return int(page.shape[0])

    assert height("word " * 400) >= height("short") + 19 * 20
