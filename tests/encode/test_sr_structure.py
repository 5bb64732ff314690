"""Every kind of SR the node emits has the TID 1500 rows it must always write (sr_structure).

One case per document the encoders make: NM with and without seed 001, NM not analysable
(an image and a non-image instance), CT with lesions (single-frame and Enhanced CT), CT
analysed without lesion, CT not analysable, US with nodules referencing their SEGs (one
outline from a site SEG), US outlines as polylines, US images without nodule and a refused
image, US with no nodule at all.  Then the checker is shown to fail on broken SRs.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from tests.encode import builders, ct_builders, us_builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.encode.dicom_tools import dciodvfy_errors, dsrdump, from_bytes, to_bytes, write
from tests.encode.sr_structure import Concept, assert_complete, children, concept, problems, walk
from tests.encode.test_sr_graves import outcome, with_graves
from workers.encode.seg import encode_ct_seg
from workers.encode.seg_us import encode_us_segs
from workers.encode.sr import encode_nm_sr
from workers.encode.sr_ct import encode_ct_sr
from workers.encode.sr_us import encode_us_sr

NM: Concept = ("30695-1", "LN")
CT: Concept = ("24627-2", "LN")
US: Concept = ("25010-0", "LN")

Case = tuple[pydicom.Dataset, Concept, list[pydicom.Dataset], list[pydicom.Dataset]]


def _read(sr: pydicom.Dataset) -> pydicom.Dataset:
    return from_bytes(to_bytes(sr))


def _nm(sources: list[pydicom.Dataset], results: object) -> pydicom.Dataset:
    return _read(encode_nm_sr(results, sources, content_datetime=CONTENT_DATETIME,  # type: ignore[arg-type]
                              software_version=SOFTWARE_VERSION))


def _ct(kind: str, *, lesions: bool = True, refused: bool = False) -> Case:
    sources = ct_builders.ct_series() if kind == "single-frame" else [ct_builders.enhanced_ct()]
    if refused:
        results = ct_builders.not_analysable(sources, "gantry tilt 12 degrees")
    else:
        results = ct_builders.results(sources, lesions=None if lesions else ())
    seg = encode_ct_seg(results, sources, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION)
    segs = [] if seg is None else [_read(seg)]
    sr = encode_ct_sr(results, sources, segs[0] if segs else None, content_datetime=CONTENT_DATETIME,
                      software_version=SOFTWARE_VERSION)
    return _read(sr), CT, segs, sources


def _us(nodules: tuple[int, ...] | None = None, *, with_segs: bool = True) -> Case:
    sources = us_builders.study()
    results = (us_builders.results(sources) if nodules is None
               else us_builders.results(sources, nodules=nodules))
    segs = []
    if with_segs and results.nodules:
        segs = [_read(s) for s in encode_us_segs(results, sources, content_datetime=CONTENT_DATETIME,
                                                  software_version=SOFTWARE_VERSION)]
    sr = encode_us_sr(results, sources, segs, content_datetime=CONTENT_DATETIME,
                      software_version=SOFTWARE_VERSION)
    return _read(sr), US, segs, sources


def _nm_case(kind: str, nm_source: pydicom.Dataset) -> Case:
    if kind == "diagnosis":
        return _nm([nm_source], builders.results(nm_source)), NM, [], [nm_source]
    if kind == "diagnosis+seed001":
        return _nm([nm_source], with_graves(nm_source, outcome(nm_source))), NM, [], [nm_source]
    if kind == "not-analysable":
        results = builders.not_analysable(nm_source, "not a planar thyroid view")
        return _nm([nm_source], results), NM, [], [nm_source]
    # a non-image instance in the study (an earlier SR): named in the reason, not referenced
    earlier = _nm([nm_source], builders.results(nm_source))
    rejected = builders.not_analysable(earlier, "not an NM Image Storage instance")
    results = dataclasses.replace(builders.results(nm_source), not_analysable=rejected.not_analysable)
    return _nm([nm_source, earlier], results), NM, [], [nm_source]


NM_KINDS = ["diagnosis", "diagnosis+seed001", "not-analysable", "non-image"]
CASES: dict[str, Callable[[], Case]] = {
    "ct-lesions-single-frame": lambda: _ct("single-frame"),
    "ct-lesions-enhanced": lambda: _ct("enhanced"),
    "ct-no-lesion": lambda: _ct("single-frame", lesions=False),
    "ct-not-analysable": lambda: _ct("single-frame", refused=True),
    "us-nodules-segs-and-site-outline": lambda: _us(),
    "us-nodules-polylines": lambda: _us(with_segs=False),
    "us-no-nodule-and-refused": lambda: _us((1, 2)),
    "us-nothing-found": lambda: _us(()),
}


@pytest.mark.parametrize("kind", NM_KINDS)
def test_every_nm_sr_is_complete(nm_source: pydicom.Dataset, kind: str, tmp_path: Path) -> None:
    sr, procedure, segs, sources = _nm_case(kind, nm_source)
    assert_complete(sr, procedure=procedure, segs=segs, sources=sources)
    path = write(tmp_path, "sr.dcm", to_bytes(sr))
    assert dciodvfy_errors(path) == []
    dsrdump(path)


@pytest.mark.parametrize("name", list(CASES))
def test_every_ct_and_us_sr_is_complete(name: str, tmp_path: Path) -> None:
    sr, procedure, segs, sources = CASES[name]()
    assert_complete(sr, procedure=procedure, segs=segs, sources=sources)
    path = write(tmp_path, "sr.dcm", to_bytes(sr))
    assert dciodvfy_errors(path) == []
    dsrdump(path)


def test_cases_cover_what_they_claim() -> None:
    """The site-outline nodule and the no-nodule / refused groups are really in the cases."""
    sr, _, _, _ = _us()
    texts = [str(i.TextValue) for i in walk(sr) if i.ValueType == "TEXT"]
    assert any(t.startswith("site SEG") for t in texts)
    sr, _, _, _ = _us((1, 2))
    verdicts = [str(i.ConceptCodeSequence[0].CodeMeaning) for i in walk(sr)
                if concept(i) == ("ANALYSIS-RESULT", "99THYAI")]
    assert sorted(verdicts) == ["No thyroid nodule found", "No thyroid nodule found", "Not analysable"]


# --- the checker fails on broken SRs --------------------------------------------------------


def _groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    measurements = next(i for i in children(sr) if concept(i) == ("126010", "DCM"))
    return [g for g in children(measurements) if concept(g) == ("125007", "DCM")]


def _drop(item: pydicom.Dataset, predicate: Callable[[pydicom.Dataset], bool]) -> None:
    item.ContentSequence = [c for c in children(item) if not predicate(c)]


def _first_num(sr: pydicom.Dataset) -> pydicom.Dataset:
    return next(i for i in children(_groups(sr)[0]) if i.ValueType == "NUM")


def _no_tracking_uid(sr: pydicom.Dataset) -> None:
    _drop(_groups(sr)[0], lambda c: concept(c) == ("112040", "DCM"))


def _same_tracking_uid(sr: pydicom.Dataset) -> None:
    first, second = _groups(sr)[:2]
    uid = next(c for c in children(first) if concept(c) == ("112040", "DCM")).UID
    next(c for c in children(second) if concept(c) == ("112040", "DCM")).UID = uid


def _no_scoord(sr: pydicom.Dataset) -> None:
    _drop(_first_num(sr), lambda c: c.ValueType == "SCOORD")


def _no_units(sr: pydicom.Dataset) -> None:
    del _first_num(sr).MeasuredValueSequence[0].MeasurementUnitsCodeSequence


def _no_finding_site(sr: pydicom.Dataset) -> None:
    _drop(_groups(sr)[0], lambda c: concept(c) == ("363698007", "SCT"))


def _no_algorithm(sr: pydicom.Dataset) -> None:
    group = _groups(sr)[0]
    for holder in [group, *(i for i in children(group) if i.ValueType == "NUM")]:
        _drop(holder, lambda c: concept(c) == ("111001", "DCM"))


def _no_procedure(sr: pydicom.Dataset) -> None:
    _drop(sr, lambda c: concept(c) == ("121058", "DCM"))


def _no_observer(sr: pydicom.Dataset) -> None:
    _drop(sr, lambda c: concept(c) in {("121012", "DCM"), ("121013", "DCM")})


def _no_segment_reference(sr: pydicom.Dataset) -> None:
    _drop(_groups(sr)[0], lambda c: concept(c) == ("121214", "DCM"))


def _plain_identifier(sr: pydicom.Dataset) -> None:
    next(c for c in children(_groups(sr)[0]) if concept(c) == ("112039", "DCM")).TextValue = "Nodule 1"


def _outside_image(sr: pydicom.Dataset) -> None:
    scoord = next(c for c in children(_first_num(sr)) if c.ValueType == "SCOORD")
    scoord.GraphicData = [5000.0, 5000.0, 5001.0, 5001.0]


def _no_disclaimer(sr: pydicom.Dataset) -> None:
    _drop(_groups(sr)[0], lambda c: concept(c) == ("DISCLAIMER", "99THYAI"))


def _foreign_image(sr: pydicom.Dataset) -> None:
    scoord = next(c for c in children(_first_num(sr)) if c.ValueType == "SCOORD")
    scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"


def _verdict(sr: pydicom.Dataset) -> pydicom.Dataset:
    return next(g for g in _groups(sr) if any(concept(c) == ("ANALYSIS-RESULT", "99THYAI") for c in children(g)))


def _verdict_without_region(sr: pydicom.Dataset) -> None:
    _drop(_verdict(sr), lambda c: c.ValueType == "SCOORD")


def _verdict_without_region_or_tool(sr: pydicom.Dataset) -> None:
    group = _verdict(sr)
    _drop(group, lambda c: c.ValueType == "SCOORD")
    next(c for c in children(group) if concept(c) == ("112039", "DCM")).TextValue = "not analysable"
    # keep a reference to the image, as a TID 1501 group would
    region_source = copy.deepcopy(next(i for i in walk(_groups(sr)[0]) if i.ValueType == "IMAGE"))
    group.ContentSequence.append(region_source)


BREAKS: list[tuple[Callable[[pydicom.Dataset], None], str]] = [
    (_no_tracking_uid, "group 1: no valid Tracking Unique Identifier"),
    (_same_tracking_uid, "used twice"),
    (_no_scoord, "group 1: the first measurement has no SCOORD child"),
    (_no_units, "has no UCUM unit"),
    (_no_finding_site, "group 1: no Finding Site"),
    (_no_algorithm, "group 1: no Algorithm Identification"),
    (_no_procedure, "no Procedure Reported"),
    (_no_observer, "no valid Device Observer UID"),
    (_no_segment_reference, "is not referenced"),
    (_plain_identifier, "a finding without a viewer tool"),
    (_outside_image, "SCOORD points outside"),
    (_no_disclaimer, "without a Disclaimer row"),
    (_foreign_image, "not in the evidence"),
    (_verdict_without_region, "RectangleROI needs one closed 5-point POLYLINE"),
    (_verdict_without_region_or_tool, "a verdict on one image without its image region"),
]


@pytest.fixture(scope="module")
def good() -> Case:
    return _us()


@pytest.mark.parametrize("damage, expected", BREAKS, ids=[b[0].__name__ for b in BREAKS])
def test_checker_finds_what_is_missing(
    good: Case, damage: Callable[[pydicom.Dataset], None], expected: str
) -> None:
    sr, procedure, segs, sources = good
    assert problems(sr, procedure=procedure, segs=segs, sources=sources) == []
    broken = copy.deepcopy(sr)
    damage(broken)
    found = problems(broken, procedure=procedure, segs=segs, sources=sources)
    assert any(expected in p for p in found), found
    with pytest.raises(AssertionError, match="SR structure"):
        assert_complete(broken, procedure=procedure, segs=segs, sources=sources)


def test_checker_wants_the_expected_procedure(good: Case) -> None:
    sr, _, segs, sources = good
    assert any("expected 30695-1" in p for p in problems(sr, procedure=NM, segs=segs, sources=sources))
