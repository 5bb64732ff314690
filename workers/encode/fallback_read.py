"""Reading the node's own SR and SEG back, for the Secondary Capture fallback.

The fallback (:mod:`workers.encode.sc_fallback`) renders what a destination that refuses SR
or SEG would otherwise miss.  It reads the objects the node already wrote instead of the
pipelines' results, so it works on any job's outbox, whichever pipeline made it.

The SR is read by concept code, never by position: a measurement group is any CONTAINER
(125007, DCM, "Measurement Group") anywhere in the tree, and a group's rows are every NUM,
CODE and TEXT item anywhere below it (a SCOORD under a NUM, or a NUM under a SCOORD, changes
nothing).  Algorithm identification rows (111001, 111003, 111002, 122405 DCM) become the
group's model list, not rows; the disclaimer row (DISCLAIMER, 99THYAI) the page's DEMO band.
A SEG's frames are placed with their own references, per-frame or shared functional groups.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pydicom
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

SEG_SOP_CLASS: Final[str] = "1.2.840.10008.5.1.4.1.1.66.4"
SR_SOP_CLASS_PREFIX: Final[str] = "1.2.840.10008.5.1.4.1.1.88."
DEMO_DISCLAIMER: Final[str] = "DEMO - not for clinical use"

_DCM: Final[str] = "DCM"
MEASUREMENT_GROUP: Final[tuple[str, str]] = ("125007", _DCM)
TRACKING_IDENTIFIER: Final[tuple[str, str]] = ("112039", _DCM)
TRACKING_UID: Final[tuple[str, str]] = ("112040", _DCM)
PROCEDURE_REPORTED: Final[tuple[str, str]] = ("121058", _DCM)
ALGORITHM_NAME: Final[tuple[str, str]] = ("111001", _DCM)
ALGORITHM_VERSION: Final[tuple[str, str]] = ("111003", _DCM)
_ALGORITHM_OTHER: Final[frozenset[tuple[str, str]]] = frozenset({("111002", _DCM), ("122405", _DCM)})
DISCLAIMER: Final[tuple[str, str]] = ("DISCLAIMER", "99THYAI")
_UNIT_TEXT: Final[dict[str, str]] = {"1": "", "{pixels}": "px", "{pixels}.{pixels}": "px2"}


class FallbackInputError(ValueError):
    """An SR or SEG the fallback cannot read (not ours, or damaged)."""


@dataclass(frozen=True)
class ImageRef:
    """A source image (and frame) a finding was computed on."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None


@dataclass(frozen=True)
class Row:
    """One line of the findings table: what the SR says, as text."""

    label: str
    value: str
    value_type: str = "TEXT"  # NUM, CODE or TEXT: the SR item it came from
    concept: tuple[str, str] = ("", "")  # its concept name (code value, scheme): find rows by this


@dataclass(frozen=True)
class FindingGroup:
    """One SR measurement group (a lesion, a nodule, an image's diagnosis, an outcome)."""

    title: str
    tracking_uid: str | None
    rows: tuple[Row, ...]
    images: tuple[ImageRef, ...]
    algorithms: tuple[str, ...]  # "name version", in order of first appearance


@dataclass(frozen=True)
class Findings:
    """What one of our SRs reports."""

    sr_sop_instance_uid: str
    study_instance_uid: str
    procedure: str | None
    series_description: str
    content_date: str
    content_time: str
    groups: tuple[FindingGroup, ...]
    algorithms: tuple[str, ...]
    disclaimer: str | None
    equipment: tuple[Dataset, ...] = field(default=(), compare=False)
    evidence: tuple[ImageRef, ...] = ()  # the images of the SR's evidence sequences

    def images(self) -> list[ImageRef]:
        """Every source image any group names, in order of first appearance; when no group
        names one (a study that could not be analysed), the SR's evidence images."""
        seen: dict[tuple[str, int | None], ImageRef] = {}
        for group in self.groups:
            for ref in group.images:
                seen.setdefault((ref.sop_instance_uid, ref.frame_number), ref)
        return list(seen.values()) or list(self.evidence)


def _concept(item: Dataset) -> tuple[str, str] | None:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return None
    code = seq[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue") or ""
    return str(value), str(code.get("CodingSchemeDesignator", ""))


def _meaning(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].get("CodeMeaning", "")) if seq else ""


def _walk(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from _walk(child)


def _number(text: str) -> str:
    value = float(text)
    return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.6g}"


def _num_value(item: Dataset) -> str | None:
    seq = item.get("MeasuredValueSequence")
    if not seq:
        return None
    measured = seq[0]
    value = float(measured.NumericValue)
    unit_seq = measured.get("MeasurementUnitsCodeSequence")
    unit = ""
    if unit_seq:
        code = unit_seq[0]
        raw = str(code.get("CodeValue") or code.get("LongCodeValue") or "")
        unit = _UNIT_TEXT.get(raw, raw)
        if raw == "1" and 0.0 <= value <= 1.0 and "probab" in _meaning(item).lower():
            return f"{value:.3f} ({value * 100:.1f} %)"
    text = _number(str(measured.NumericValue))
    return f"{text} {unit}".strip()


def _image_ref(item: Dataset) -> ImageRef | None:
    for ref in item.get("ReferencedSOPSequence", []):
        sop_class = str(ref.get("ReferencedSOPClassUID", ""))
        if sop_class == SEG_SOP_CLASS or sop_class.startswith(SR_SOP_CLASS_PREFIX):
            continue
        frames = ref.get("ReferencedFrameNumber")
        frame = None
        if frames not in (None, ""):
            frame = int(frames[0]) if isinstance(frames, pydicom.multival.MultiValue) else int(frames)
        return ImageRef(sop_class, str(ref.ReferencedSOPInstanceUID), frame)
    return None


def _algorithm(item: Dataset) -> str | None:
    """"name version" of the algorithm identification rows directly under ``item``."""
    name = version = None
    for child in item.get("ContentSequence", []):
        if _concept(child) == ALGORITHM_NAME:
            name = str(child.get("TextValue", ""))
        elif _concept(child) == ALGORITHM_VERSION:
            version = str(child.get("TextValue", ""))
    if not name:
        return None
    return f"{name} {version}".strip() if version else name


def _modifiers(item: Dataset) -> list[str]:
    """CODE children of a NUM or CODE row (derivation, laterality), as words for its label."""
    out = []
    for child in item.get("ContentSequence", []):
        if child.get("ValueType") == "CODE" and child.get("ConceptCodeSequence"):
            out.append(str(child.ConceptCodeSequence[0].CodeMeaning).lower())
    return out


def display_title(tracking_identifier: str) -> str:
    """A tracking identifier as a person reads it: "Nodule 1", also from a viewer-oriented one
    such as "Cornerstone3DTools@^0.1.0:Bidirectional:Nodule 1" (tool prefixes dropped)."""
    return tracking_identifier.rsplit(":", 1)[-1].strip()


def read_group(group: Dataset, index: int) -> FindingGroup:
    """One measurement group's rows, images and algorithms."""
    title = f"Finding {index}"
    tracking: str | None = None
    rows: list[Row] = []
    images: list[ImageRef] = []
    algorithms: list[str] = []
    modifier_items: set[int] = set()
    algo = _algorithm(group)
    if algo:
        algorithms.append(algo)
    for item in _walk(group):
        concept, value_type = _concept(item), item.get("ValueType")
        if value_type in ("NUM", "CODE"):
            for child in item.get("ContentSequence", []):
                if child.get("ValueType") == "CODE":
                    modifier_items.add(id(child))
            algo = _algorithm(item)
            if algo and algo not in algorithms:
                algorithms.append(algo)
        if id(item) in modifier_items:
            continue
        if concept == TRACKING_IDENTIFIER:
            title = display_title(str(item.get("TextValue", title))) or title
        elif concept == TRACKING_UID:
            tracking = str(item.get("UID", "")) or None
        elif concept in (ALGORITHM_NAME, ALGORITHM_VERSION) or concept in _ALGORITHM_OTHER:
            continue
        elif concept == DISCLAIMER:
            continue
        elif value_type == "NUM":
            value = _num_value(item)
            if value is not None:
                extra = _modifiers(item)
                label = _meaning(item) + (f" ({', '.join(extra)})" if extra else "")
                rows.append(Row(label, value, "NUM", concept or ("", "")))
        elif value_type == "CODE" and item.get("ConceptCodeSequence"):
            value = str(item.ConceptCodeSequence[0].CodeMeaning)
            extra = _modifiers(item)
            rows.append(Row(_meaning(item), value + (f" ({', '.join(extra)})" if extra else ""), "CODE", concept or ("", "")))
        elif value_type == "TEXT":
            rows.append(Row(_meaning(item), str(item.get("TextValue", "")), "TEXT", concept or ("", "")))
        elif value_type == "IMAGE":
            ref = _image_ref(item)
            if ref is not None and ref not in images:
                images.append(ref)
    return FindingGroup(title, tracking, tuple(rows), tuple(images), tuple(algorithms))


def model_equipment(ds: Dataset) -> tuple[Dataset, ...]:
    """The Contributing Equipment items that name one of our models (processing equipment,
    not highdicom's own item nor the source's acquisition equipment)."""
    out = []
    for item in ds.get("ContributingEquipmentSequence", []):
        purposes = item.get("PurposeOfReferenceCodeSequence", [])
        if not any(str(p.get("CodeValue", "")) == "109102" for p in purposes):
            continue
        if str(item.get("ManufacturerModelName", "")) in ("", "highdicom"):
            continue
        out.append(item)
    return tuple(out)


def _disclaimer(ds: Dataset) -> str | None:
    for item in _walk(ds):
        if _concept(item) == DISCLAIMER and item.get("TextValue"):
            return str(item.TextValue)
    if str(ds.get("SeriesDescription", "")).upper().startswith("DEMO"):
        return DEMO_DISCLAIMER
    return None


def read_findings(sr: Dataset) -> Findings:
    """Read one of our SRs.

    Raises
    ------
    FallbackInputError
        If the dataset is not an SR, or holds no content tree.
    """
    if not str(sr.get("SOPClassUID", "")).startswith(SR_SOP_CLASS_PREFIX) or "ContentSequence" not in sr:
        raise FallbackInputError("not a structured report with content")
    groups: list[FindingGroup] = []
    algorithms: list[str] = []
    procedure = None
    for item in _walk(sr):
        concept = _concept(item)
        if concept == PROCEDURE_REPORTED and item.get("ConceptCodeSequence") and procedure is None:
            procedure = str(item.ConceptCodeSequence[0].CodeMeaning)
        if item.get("ValueType") == "CONTAINER" and concept == MEASUREMENT_GROUP:
            group = read_group(item, len(groups) + 1)
            groups.append(group)
            algorithms.extend(a for a in group.algorithms if a not in algorithms)
    equipment = model_equipment(sr)
    evidence = []
    for name in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in sr.get(name, []):
            for series in study.get("ReferencedSeriesSequence", []):
                for ref in series.get("ReferencedSOPSequence", []):
                    sop_class = str(ref.get("ReferencedSOPClassUID", ""))
                    if sop_class != SEG_SOP_CLASS and not sop_class.startswith(SR_SOP_CLASS_PREFIX):
                        evidence.append(ImageRef(sop_class, str(ref.ReferencedSOPInstanceUID)))
    logger.debug("read %d measurement group(s) from an SR", len(groups))
    return Findings(
        sr_sop_instance_uid=str(sr.SOPInstanceUID),
        study_instance_uid=str(sr.StudyInstanceUID),
        procedure=procedure,
        series_description=str(sr.get("SeriesDescription", "")),
        content_date=str(sr.get("ContentDate", "")),
        content_time=str(sr.get("ContentTime", "")),
        groups=tuple(groups),
        algorithms=tuple(algorithms),
        disclaimer=_disclaimer(sr),
        equipment=equipment,
        evidence=tuple(evidence),
    )


# --- SEG -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentInfo:
    number: int
    label: str
    tracking_uid: str | None
    algorithm: str | None


@dataclass
class OutlinedImage:
    """The segments one SEG places on one source image (frame): number -> mask on its grid."""

    source: ImageRef
    masks: dict[int, np.ndarray]


@dataclass(frozen=True)
class SegOutlines:
    seg_sop_instance_uid: str
    series_description: str
    content_date: str
    content_time: str
    segments: dict[int, SegmentInfo]
    images: list[OutlinedImage]
    disclaimer: str | None
    equipment: tuple[Dataset, ...] = ()


def _macro(frame: Dataset, shared: Dataset, name: str) -> Dataset | None:
    seq = frame.get(name) or shared.get(name)
    return seq[0] if seq else None


def read_seg(seg: Dataset) -> SegOutlines:
    """Every frame of a BINARY (or FRACTIONAL, at half) SEG, grouped by source image and frame.

    Raises
    ------
    FallbackInputError
        If it is not a SEG, or a frame names no segment or no source image.
    """
    if str(seg.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise FallbackInputError("not a segmentation")
    segments = {}
    for item in seg.get("SegmentSequence", []):
        algo = None
        ident = item.get("SegmentationAlgorithmIdentificationSequence")
        if ident and ident[0].get("AlgorithmName"):
            algo = f"{ident[0].AlgorithmName} {ident[0].get('AlgorithmVersion', '')}".strip()
        elif item.get("SegmentAlgorithmName"):
            algo = str(item.SegmentAlgorithmName)
        number = int(item.SegmentNumber)
        segments[number] = SegmentInfo(
            number, str(item.get("SegmentLabel", f"Segment {number}")),
            str(item.get("TrackingUID", "")) or None, algo,
        )
    pixels = seg.pixel_array
    frames = int(seg.get("NumberOfFrames", 1))
    if pixels.ndim == 2:
        pixels = pixels[None]
    shared = seg.SharedFunctionalGroupsSequence[0] if seg.get("SharedFunctionalGroupsSequence") else Dataset()
    per_frame = seg.get("PerFrameFunctionalGroupsSequence") or [Dataset()] * frames
    fractional = seg.get("SegmentationType") == "FRACTIONAL"
    threshold = int(seg.get("MaximumFractionalValue", 1)) / 2 if fractional else 0.5
    by_source: dict[tuple[str, int | None], OutlinedImage] = {}
    for i in range(frames):
        identification = _macro(per_frame[i], shared, "SegmentIdentificationSequence")
        derivation = _macro(per_frame[i], shared, "DerivationImageSequence")
        if identification is None or derivation is None or not derivation.get("SourceImageSequence"):
            raise FallbackInputError(f"SEG frame {i + 1} names no segment or no source image")
        src = derivation.SourceImageSequence[0]
        frame_number = int(src.ReferencedFrameNumber) if src.get("ReferencedFrameNumber") not in (None, "") else None
        ref = ImageRef(str(src.ReferencedSOPClassUID), str(src.ReferencedSOPInstanceUID), frame_number)
        number = int(identification.ReferencedSegmentNumber)
        mask = pixels[i] >= threshold
        if not mask.any():
            continue
        entry = by_source.setdefault((ref.sop_instance_uid, frame_number), OutlinedImage(ref, {}))
        entry.masks[number] = entry.masks[number] | mask if number in entry.masks else mask
    return SegOutlines(
        seg_sop_instance_uid=str(seg.SOPInstanceUID),
        series_description=str(seg.get("SeriesDescription", "")),
        content_date=str(seg.get("ContentDate", "")),
        content_time=str(seg.get("ContentTime", "")),
        segments=segments,
        images=list(by_source.values()),
        disclaimer=DEMO_DISCLAIMER if str(seg.get("SeriesDescription", "")).upper().startswith("DEMO") else None,
        equipment=model_equipment(seg),
    )
