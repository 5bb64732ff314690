"""Our own check of the TID 1500 rows the node must always write, and of what OHIF needs.

No tool here enforces TID 1500's required rows (dciodvfy checks attributes and references,
dsrdump relationship rules), so this module walks an SR and lists what is missing:

document
    Comprehensive 3D SR, template 1500 (DCMR), root "Imaging Measurement Report"; language;
    observer context: a device with a UID and a name; Procedure Reported (the expected code);
    an Image Library with at least one image; Imaging Measurements with at least one group;
    every IMAGE reference names an instance of the evidence sequences.
each Measurement Group
    Tracking Identifier (text) and Tracking Unique Identifier (a UID, unique in the document);
    Finding Site; Algorithm Identification (name and version) of the group, or of its
    measurements where the outline came from the site; a Finding, or the coded
    "AI analysis result" of a group that has none; a reference to an image (except a
    not-analysable verdict on a non-image instance, which names it in its reason); with a
    DEMO series description, the Disclaimer row.
each measurement (NUM)
    a numeric value with UCUM units; a probability (unit "1") lies in [0, 1] and names its
    algorithm; a long or short axis has its SCOORD child.
geometry (OHIF 3.13's rules, see :mod:`workers.encode.sr_geometry`)
    a group with a Finding names a Cornerstone tool in its Tracking Identifier; such a group's
    first NUM has a SCOORD child (INFERRED FROM) with its image (SELECTED FROM), within the
    image when the sources are given; Bidirectional: "Long Axis" and "Short Axis" NUMs with a
    2-point POLYLINE each; ArrowAnnotate: a POINT or 2-point POLYLINE; RectangleROI (a
    verdict on one image): a closed 5-point image region; and a Comment row (the label).  A
    verdict on one image carries that image's region (OHIF loads no measurement of an SR in
    which one group on an image has no coordinates).  A group without coordinates (a verdict
    on a series or on a non-image instance) must not name a tool.
SEG references
    every Referenced Segment / Segmentation Frame names one of the given SEGs and a segment
    whose Tracking UID is the group's, with its Source Image for Segmentation; every segment of
    the given SEGs is referenced.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pydicom
from pydicom.uid import Comprehensive3DSRStorage, UID

Concept = tuple[str, str]

ROOT: Concept = ("126000", "DCM")
LANGUAGE: Concept = ("121049", "DCM")
OBSERVER_TYPE: Concept = ("121005", "DCM")
DEVICE: Concept = ("121007", "DCM")
DEVICE_UID: Concept = ("121012", "DCM")
DEVICE_NAME: Concept = ("121013", "DCM")
PROCEDURE: Concept = ("121058", "DCM")
IMAGE_LIBRARY: Concept = ("111028", "DCM")
IMAGING_MEASUREMENTS: Concept = ("126010", "DCM")
GROUP: Concept = ("125007", "DCM")
TRACKING_ID: Concept = ("112039", "DCM")
TRACKING_UID: Concept = ("112040", "DCM")
FINDING: Concept = ("121071", "DCM")
FINDING_SITE: Concept = ("363698007", "SCT")
ALGORITHM_NAME: Concept = ("111001", "DCM")
ALGORITHM_VERSION: Concept = ("111003", "DCM")
ANALYSIS_RESULT: Concept = ("ANALYSIS-RESULT", "99THYAI")
DISCLAIMER: Concept = ("DISCLAIMER", "99THYAI")
COMMENT: Concept = ("121106", "DCM")
LONG_AXIS: Concept = ("103339001", "SCT")
SHORT_AXIS: Concept = ("103340004", "SCT")
REFERENCED_SEGMENT: Concept = ("121191", "DCM")
REFERENCED_SEGMENTATION_FRAME: Concept = ("121214", "DCM")
SOURCE_FOR_SEGMENTATION: Concept = ("121233", "DCM")
CORNERSTONE_TAG = "Cornerstone3DTools@^0.1.0:"
TOOLS = ("Bidirectional", "ArrowAnnotate", "Length", "EllipticalROI", "RectangleROI",
         "PlanarFreehandROI", "Probe", "CircleROI")


def code_value(code: pydicom.Dataset) -> str:
    """Code Value, or Long Code Value (more than 16 characters, e.g. ``{pixels}.{pixels}``)."""
    for keyword in ("CodeValue", "LongCodeValue", "URNCodeValue"):
        if keyword in code:
            return str(code[keyword].value)
    return ""


def concept(item: pydicom.Dataset) -> Concept | None:
    """(Code Value, Coding Scheme Designator) of an item's concept name; None when it has none."""
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return None
    return code_value(names[0]), str(names[0].CodingSchemeDesignator)


def children(item: pydicom.Dataset) -> list[pydicom.Dataset]:
    return list(item.get("ContentSequence", []))


def walk(item: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    """Every content item below ``item``, depth first."""
    for child in children(item):
        yield child
        yield from walk(child)


def _named(items: Sequence[pydicom.Dataset], name: Concept) -> list[pydicom.Dataset]:
    return [i for i in items if concept(i) == name]


def _is_uid(value: object) -> bool:
    return isinstance(value, str) and UID(value).is_valid


def _evidence(sr: pydicom.Dataset) -> set[str]:
    out = set()
    for name in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in sr.get(name, []):
            for series in study.get("ReferencedSeriesSequence", []):
                out |= {str(r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence}
    return out


def _segment_of_frame(seg: pydicom.Dataset, frame: int) -> int:
    group = seg.PerFrameFunctionalGroupsSequence[frame - 1]
    if "SegmentIdentificationSequence" not in group:
        group = seg.SharedFunctionalGroupsSequence[0]
    return int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)


def _frames(ref: pydicom.Dataset) -> list[int]:
    value = ref.get("ReferencedFrameNumber")
    if value in (None, ""):
        return []
    return [int(v) for v in (value if isinstance(value, pydicom.multival.MultiValue) else [value])]


def _document(sr: pydicom.Dataset, procedure: Concept) -> list[str]:
    out = []
    if sr.get("SOPClassUID") != Comprehensive3DSRStorage:
        out.append(f"SOP class {sr.get('SOPClassUID')} is not Comprehensive 3D SR")
    templates = sr.get("ContentTemplateSequence", [])
    if not templates or (templates[0].TemplateIdentifier, templates[0].MappingResource) != ("1500", "DCMR"):
        out.append("content template is not TID 1500 (DCMR)")
    if concept(sr) != ROOT or sr.get("ValueType") != "CONTAINER":
        out.append("root is not the 'Imaging Measurement Report' container")
    top = children(sr)
    if not _named(top, LANGUAGE):
        out.append("no Language of Content Item and Descendants")
    observer = _named(top, OBSERVER_TYPE)
    observer_code = observer[0].ConceptCodeSequence[0] if observer else None
    if observer_code is None or (code_value(observer_code), observer_code.CodingSchemeDesignator) != DEVICE:
        out.append("observer type is not Device")
    uid = _named(top, DEVICE_UID)
    if not uid or not _is_uid(str(uid[0].UID)):
        out.append("no valid Device Observer UID")
    name = _named(top, DEVICE_NAME)
    if not name or not str(name[0].TextValue).strip():
        out.append("no Device Observer Name")
    reported = _named(top, PROCEDURE)
    if not reported:
        out.append("no Procedure Reported")
    else:
        code = reported[0].ConceptCodeSequence[0]
        if (code_value(code), str(code.CodingSchemeDesignator)) != procedure:
            out.append(f"Procedure Reported is {code_value(code)}, expected {procedure[0]}")
    library = _named(top, IMAGE_LIBRARY)
    if not library or not any(i.ValueType == "IMAGE" for i in walk(library[0])):
        out.append("no image in the Image Library")
    evidence = _evidence(sr)
    for item in walk(sr):
        if item.ValueType == "IMAGE":
            for ref in item.ReferencedSOPSequence:
                if str(ref.ReferencedSOPInstanceUID) not in evidence:
                    out.append(f"IMAGE reference {ref.ReferencedSOPInstanceUID} not in the evidence")
    return out


def _measurement_problems(num: pydicom.Dataset, where: str) -> list[str]:
    out = []
    name = concept(num)
    values = num.get("MeasuredValueSequence", [])
    if not values or "NumericValue" not in values[0]:
        return [f"{where}: measurement {name} has no value"]
    units = values[0].get("MeasurementUnitsCodeSequence", [])
    if not units or units[0].CodingSchemeDesignator != "UCUM":
        out.append(f"{where}: measurement {name} has no UCUM unit")
    elif code_value(units[0]) == "1":
        value = float(values[0].NumericValue)
        if not 0.0 <= value <= 1.0:
            out.append(f"{where}: probability {name} = {value} outside [0, 1]")
        if not _named(children(num), ALGORITHM_NAME):
            out.append(f"{where}: probability {name} names no algorithm")
    if name in (LONG_AXIS, SHORT_AXIS) and not any(c.ValueType == "SCOORD" for c in children(num)):
        out.append(f"{where}: {name} has no SCOORD child")
    return out


def _scoord_problems(
    scoord: pydicom.Dataset,
    evidence: set[str],
    sizes: dict[str, tuple[int, int]],
    where: str,
    relationship: str = "INFERRED FROM",
) -> list[str]:
    out = []
    if scoord.RelationshipType != relationship:
        out.append(f"{where}: SCOORD relationship {scoord.RelationshipType}, not {relationship}")
    images = [c for c in children(scoord) if c.ValueType == "IMAGE"]
    if len(images) != 1 or images[0].RelationshipType != "SELECTED FROM":
        return [*out, f"{where}: SCOORD without its one IMAGE (SELECTED FROM)"]
    sop = str(images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    if sop not in evidence:
        out.append(f"{where}: SCOORD on {sop}, not in the evidence")
    points = np.reshape(np.asarray(scoord.GraphicData, dtype=float), (-1, 2))
    if sop in sizes:
        rows, columns = sizes[sop]
        if not (np.all(points[:, 0] >= 0) and np.all(points[:, 0] <= columns)
                and np.all(points[:, 1] >= 0) and np.all(points[:, 1] <= rows)):
            out.append(f"{where}: SCOORD points outside the {columns}x{rows} image")
    return out


def _first_scoord(num: pydicom.Dataset) -> pydicom.Dataset | None:
    return next((c for c in children(num) if c.ValueType == "SCOORD"), None)


def _geometry(
    group: pydicom.Dataset,
    identifier: str,
    has_finding: bool,
    evidence: set[str],
    sizes: dict[str, tuple[int, int]],
    where: str,
) -> list[str]:
    items = children(group)
    nums = [i for i in items if i.ValueType == "NUM"]
    tool = identifier[len(CORNERSTONE_TAG):].split(":")[0] if identifier.startswith(CORNERSTONE_TAG) else None
    scoords = [s for n in nums for s in children(n) if s.ValueType == "SCOORD"]
    regions = [i for i in items if i.ValueType == "SCOORD"]  # TID 1410 Image Region
    out = []
    for region in regions:
        out += _scoord_problems(region, evidence, sizes, where, relationship="CONTAINS")
    if tool is None:
        if has_finding:
            out.append(f"{where}: a finding without a viewer tool in its Tracking Identifier")
        elif scoords or regions:
            out.append(f"{where}: spatial coordinates but no viewer tool named")
        return out
    if tool not in TOOLS:
        out.append(f"{where}: unknown tool {tool!r}")
    if not _named(items, COMMENT):
        out.append(f"{where}: no Comment row (the measurement's label)")
    for scoord in scoords:
        out += _scoord_problems(scoord, evidence, sizes, where)
    if tool == "RectangleROI":
        closed = [r for r in regions if r.GraphicType == "POLYLINE" and len(r.GraphicData) == 10
                  and list(r.GraphicData[:2]) == list(r.GraphicData[-2:])]
        if len(closed) != 1:
            out.append(f"{where}: RectangleROI needs one closed 5-point POLYLINE image region")
        return out
    if not nums or _first_scoord(nums[0]) is None:
        return [*out, f"{where}: the first measurement has no SCOORD child (a viewer loads nothing)"]
    if tool == "Bidirectional":
        for meaning in ("Long Axis", "Short Axis"):
            axis = [n for n in nums if n.ConceptNameCodeSequence[0].CodeMeaning == meaning]
            line = _first_scoord(axis[0]) if len(axis) == 1 else None
            if line is None or line.GraphicType != "POLYLINE" or len(line.GraphicData) != 4:
                out.append(f"{where}: Bidirectional needs one {meaning!r} NUM with a 2-point POLYLINE")
        if nums[0].ConceptNameCodeSequence[0].CodeMeaning != "Long Axis":
            out.append(f"{where}: Bidirectional's first measurement is not the long axis")
    elif tool == "ArrowAnnotate":
        arrow = _first_scoord(nums[0])
        assert arrow is not None
        if (arrow.GraphicType, len(arrow.GraphicData)) not in (("POINT", 2), ("POLYLINE", 4)):
            out.append(f"{where}: ArrowAnnotate needs a POINT or a 2-point POLYLINE")
    return out


def _segments(
    group: pydicom.Dataset,
    tracking: str | None,
    segs: dict[str, pydicom.Dataset],
    used: set[tuple[str, int]],
    where: str,
) -> list[str]:
    out = []
    refs = _named(children(group), REFERENCED_SEGMENT) + _named(children(group), REFERENCED_SEGMENTATION_FRAME)
    for item in refs:
        ref = item.ReferencedSOPSequence[0]
        seg = segs.get(str(ref.ReferencedSOPInstanceUID))
        if seg is None:
            out.append(f"{where}: references SEG {ref.ReferencedSOPInstanceUID}, not one given")
            continue
        if "ReferencedSegmentNumber" in ref:
            numbers = {int(ref.ReferencedSegmentNumber)}
        else:
            numbers = {_segment_of_frame(seg, f) for f in _frames(ref)}
        if len(numbers) != 1:
            out.append(f"{where}: the SEG reference names {len(numbers)} segments, not 1")
            continue
        number = numbers.pop()
        segment = next((s for s in seg.SegmentSequence if int(s.SegmentNumber) == number), None)
        if segment is None:
            out.append(f"{where}: segment {number} is not in the SEG")
        elif str(segment.get("TrackingUID", "")) != tracking:
            out.append(f"{where}: segment {number}'s Tracking UID is not the group's")
        used.add((str(seg.SOPInstanceUID), number))
        if not _named(children(group), SOURCE_FOR_SEGMENTATION):
            out.append(f"{where}: a segment without its Source Image for Segmentation")
    return out


def _group(
    group: pydicom.Dataset,
    index: int,
    *,
    demo: bool,
    evidence: set[str],
    sizes: dict[str, tuple[int, int]],
    segs: dict[str, pydicom.Dataset],
    used: set[tuple[str, int]],
    tracking_uids: set[str],
) -> list[str]:
    where = f"group {index}"
    items = children(group)
    out = []
    ids = _named(items, TRACKING_ID)
    uids = _named(items, TRACKING_UID)
    identifier = str(ids[0].TextValue) if len(ids) == 1 else ""
    if not identifier.strip():
        out.append(f"{where}: no Tracking Identifier")
    tracking = str(uids[0].UID) if len(uids) == 1 else None
    if tracking is None or not _is_uid(tracking):
        out.append(f"{where}: no valid Tracking Unique Identifier")
    elif tracking in tracking_uids:
        out.append(f"{where}: Tracking Unique Identifier {tracking} used twice")
    else:
        tracking_uids.add(tracking)
    if not _named(items, FINDING_SITE):
        out.append(f"{where}: no Finding Site")
    # on the group, or (a nodule outlined by the site: the sizes are geometry, not a model's)
    # on the measurements a model made
    holders = [group] + [i for i in items if i.ValueType == "NUM"]
    if not any(_named(children(h), ALGORITHM_NAME) and _named(children(h), ALGORITHM_VERSION) for h in holders):
        out.append(f"{where}: no Algorithm Identification (name and version)")
    has_finding = bool(_named(items, FINDING))
    verdict = _named(items, ANALYSIS_RESULT)
    if not has_finding and not verdict and not any(i.ValueType == "NUM" for i in items):
        out.append(f"{where}: neither a Finding, a measurement nor an AI analysis result")
    reasons = [str(i.TextValue) for i in items if i.ValueType == "TEXT" and "(instance " in str(i.TextValue)]
    if not any(i.ValueType == "IMAGE" for i in walk(group)) and not (verdict and reasons):
        out.append(f"{where}: references no image")
    on_image = any(i.ValueType == "IMAGE" for i in walk(group))
    if verdict and on_image and not has_finding and not any(i.ValueType == "SCOORD" for i in items):
        single = {str(r.ReferencedSOPInstanceUID) for i in walk(group) if i.ValueType == "IMAGE"
                  for r in i.ReferencedSOPSequence}
        if len(single) == 1 and not any(_frames(r) and len(_frames(r)) > 1 for i in walk(group)
                                        if i.ValueType == "IMAGE" for r in i.ReferencedSOPSequence):
            out.append(f"{where}: a verdict on one image without its image region (OHIF loads nothing)")
    if demo and not _named(items, DISCLAIMER):
        out.append(f"{where}: DEMO document without a Disclaimer row")
    for num in (i for i in items if i.ValueType == "NUM"):
        out += _measurement_problems(num, where)
    out += _geometry(group, identifier, has_finding, evidence, sizes, where)
    out += _segments(group, tracking, segs, used, where)
    return out


def problems(
    sr: pydicom.Dataset,
    *,
    procedure: Concept,
    segs: Sequence[pydicom.Dataset] = (),
    sources: Sequence[pydicom.Dataset] = (),
) -> list[str]:
    """Everything the node must write that ``sr`` lacks (empty: the SR is complete).

    Parameters
    ----------
    sr : pydicom.Dataset
        The SR as read back from its bytes.
    procedure : tuple of str
        (Code Value, Coding Scheme Designator) of the Procedure Reported expected.
    segs : Sequence[pydicom.Dataset], optional
        The SEGs made with it: each of their segments must be referenced.
    sources : Sequence[pydicom.Dataset], optional
        The source images: SCOORD points must lie within them.
    """
    out = _document(sr, procedure)
    measurements = _named(children(sr), IMAGING_MEASUREMENTS)
    groups = _named(children(measurements[0]), GROUP) if measurements else []
    if not groups:
        return [*out, "no Measurement Group in Imaging Measurements"]
    evidence = _evidence(sr)
    sizes = {str(ds.SOPInstanceUID): (int(ds.Rows), int(ds.Columns)) for ds in sources if "Rows" in ds}
    by_uid = {str(seg.SOPInstanceUID): seg for seg in segs}
    used: set[tuple[str, int]] = set()
    tracking_uids: set[str] = set()
    demo = str(sr.get("SeriesDescription", "")).startswith("DEMO")
    for index, group in enumerate(groups, start=1):
        out += _group(
            group, index, demo=demo, evidence=evidence, sizes=sizes, segs=by_uid, used=used,
            tracking_uids=tracking_uids,
        )
    for seg in segs:
        for segment in seg.SegmentSequence:
            if (str(seg.SOPInstanceUID), int(segment.SegmentNumber)) not in used:
                out.append(f"segment {segment.SegmentNumber} of SEG {seg.SOPInstanceUID} is not referenced")
    return out


def assert_complete(
    sr: pydicom.Dataset,
    *,
    procedure: Concept,
    segs: Sequence[pydicom.Dataset] = (),
    sources: Sequence[pydicom.Dataset] = (),
) -> None:
    """Fail with every problem :func:`problems` finds."""
    found = problems(sr, procedure=procedure, segs=segs, sources=sources)
    assert not found, "SR structure:\n  " + "\n  ".join(found)
