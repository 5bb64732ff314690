"""Coded concepts the encoders write, and where each one comes from.

Standard codes (checked against pydicom's copy of PS3.16 and LOINC's table):

* ``(30695-1, LN, "NM Thyroid gland Views")``: Procedure Reported.  LOINC's
  radiology (RSNA Playbook) code for a planar thyroid scintigram; PS3.16 CID
  7000 lists the same code as "Nuclear Medicine Thyroid Scan Report".
* ``(69748006, SCT, "Thyroid structure")``: Finding Site.
* ``(109102, DCM, "Processing Equipment")``: Purpose of Reference of the
  Contributing Equipment item that names this node.
* ``(121322, DCM, "Source image for image processing operation")``: Purpose of
  Reference of the SC's Source Image Sequence item (CID 7202).
* ``(1, UCUM, "no units")``: unit of a probability.

CT (seed 000, lung metastases of differentiated thyroid cancer):

* ``(24627-2, LN, "CT Chest")``: Procedure Reported (LOINC / RSNA Playbook
  "CT Chest"; a non-contrast chest CT).
* ``(39607008, SCT, "Lung")``: Finding Site and SEG Anatomic Region, with the
  laterality ``(24028007, SCT, "Right")`` / ``(7771000, SCT, "Left")``.
* ``(49755003, SCT, "Morphologically abnormal structure")``: SEG Segmented
  Property Category (CID 7150) and SR Finding Category.
* ``(14799000, SCT, "Neoplasm, metastatic")``: SEG Segmented Property Type
  and SR Finding (the lesion is a metastasis candidate).
* ``(81827009, SCT, "Diameter")`` with derivation ``(56851009, SCT,
  "Maximum")`` (CID 7464): the largest 3D diameter, in ``(mm, UCUM, "mm")``.
* ``(118565006, SCT, "Volume")`` in ``(mm3, UCUM, "cubic millimeter")``.
* ``(373066001, SCT, "Yes")`` / ``(373067005, SCT, "No")``: value of the
  RAI-refractory evaluation.

Private codes, scheme ``99THYAI`` (declared in each object's Coding Scheme
Identification Sequence by :func:`private_coding_scheme`): one concept per
class probability ("Probability of <class>"), and the few TID 1501 qualitative
evaluations no standard code says as plainly (analysis result, reason, frame
choice, disclaimer; for CT: RAI-refractory status, decision threshold, lesion
centre, plane of the axes, series selection, "no lung lesion found"; the NM
arrow to the Grad-CAM peak).
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes

from workers.pipelines.results import Code

PRIVATE_SCHEME: Final[str] = "99THYAI"
PRIVATE_SCHEME_NAME: Final[str] = "Thyroid AI Node private codes"

PROCEDURE_THYROID_SCINTIGRAPHY: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept(
    value="30695-1", scheme_designator="LN", meaning="NM Thyroid gland Views"
)
THYROID_STRUCTURE: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept(
    value="69748006", scheme_designator="SCT", meaning="Thyroid structure"
)
PROCESSING_EQUIPMENT: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(
    codes.DCM.ProcessingEquipment
)
SOURCE_IMAGE_FOR_PROCESSING: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(
    codes.DCM.SourceImageForImageProcessingOperation
)
NO_UNITS: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.UCUM.NoUnits)


def _private(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


ANALYSIS_RESULT: Final[hd.sr.CodedConcept] = _private("ANALYSIS-RESULT", "AI analysis result")
NOT_ANALYSABLE: Final[hd.sr.CodedConcept] = _private("NOT-ANALYSABLE", "Not analysable")
REASON_NOT_ANALYSABLE: Final[hd.sr.CodedConcept] = _private("REASON", "Reason not analysable")
FRAME_CHOICE: Final[hd.sr.CodedConcept] = _private("FRAME-CHOICE", "Frame selection")
DISCLAIMER: Final[hd.sr.CodedConcept] = _private("DISCLAIMER", "Disclaimer")

# --- CT (seed 000) ---------------------------------------------------------------------------
PROCEDURE_CT_CHEST: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept(
    value="24627-2", scheme_designator="LN", meaning="CT Chest"
)
LUNG: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.SCT.Lung)
RIGHT: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.SCT.Right)
LEFT: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.SCT.Left)
MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept(
    value="49755003", scheme_designator="SCT", meaning="Morphologically abnormal structure"
)
METASTATIC_NEOPLASM: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept(
    value="14799000", scheme_designator="SCT", meaning="Neoplasm, metastatic"
)
DIAMETER: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.SCT.Diameter)
MAXIMUM: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.SCT.Maximum)
VOLUME: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.SCT.Volume)
MILLIMETER: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.UCUM.Millimeter)
CUBIC_MILLIMETER: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(
    codes.UCUM.CubicMillimeter
)
YES: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.SCT.Yes)
NO: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.SCT.No)
ARTIFICIAL_INTELLIGENCE: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(
    codes.cid7162.ArtificialIntelligence
)

RAI_REFRACTORY: Final[hd.sr.CodedConcept] = _private("RAI-REFRACTORY", "RAI-refractory")
DECISION_THRESHOLD: Final[hd.sr.CodedConcept] = _private("THRESHOLD", "Decision threshold")
LESION_CENTRE: Final[hd.sr.CodedConcept] = _private(
    "LESION-CENTRE", "Lesion centre (patient LPS, mm)"
)
SERIES_CHOICE: Final[hd.sr.CodedConcept] = _private("SERIES-CHOICE", "Series selection")
AXES_PLANE: Final[hd.sr.CodedConcept] = _private("AXES-PLANE", "Plane of the axes")
NO_LESION_FOUND: Final[hd.sr.CodedConcept] = _private("NO-LESION", "No lung lesion found")

_SH_MAX: Final[int] = 16  # Code Value is SH
_LO_MAX: Final[int] = 64  # Code Meaning is LO


def to_coded_concept(code: Code) -> hd.sr.CodedConcept:
    """Turn a model card's :class:`~workers.pipelines.results.Code` into highdicom's.

    Parameters
    ----------
    code : Code
        Value, scheme designator and meaning.

    Returns
    -------
    highdicom.sr.CodedConcept
        The same concept.
    """
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def probability_concept(class_key: str, class_code: Code) -> hd.sr.CodedConcept:
    """Concept name of the measurement "probability of <class>".

    The value is ``P-<KEY>`` (``P-GRAVES``); keys too long for a 16-character
    Code Value keep a readable head and a hash of the whole key, so that two
    keys never share a code.

    Parameters
    ----------
    class_key : str
        The model card's label key, e.g. ``"graves"``.
    class_code : Code
        The class as a coded concept; its meaning names the measurement.

    Returns
    -------
    highdicom.sr.CodedConcept
        A concept of the private scheme :data:`PRIVATE_SCHEME`.
    """
    key = re.sub(r"[^A-Z0-9_]", "_", class_key.upper())
    value = f"P-{key}"
    if len(value) > _SH_MAX:
        digest = hashlib.sha256(class_key.encode()).hexdigest()[:4].upper()
        value = f"P-{key[: _SH_MAX - 7]}-{digest}"
    meaning = f"Probability of {class_code.meaning}"[:_LO_MAX]
    return _private(value, meaning)


def private_coding_scheme(manufacturer: str) -> CodingSchemeIdentificationItem:
    """Coding Scheme Identification item that declares :data:`PRIVATE_SCHEME`.

    Parameters
    ----------
    manufacturer : str
        Organisation responsible for the scheme.

    Returns
    -------
    highdicom.coding_schemes.CodingSchemeIdentificationItem
        Item for the Coding Scheme Identification Sequence.
    """
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name=PRIVATE_SCHEME_NAME,
        responsible_organization=manufacturer,
    )


#: Measurement "Probability of RAI-refractory status" (value 0..1, unit "1").
PROBABILITY_RAI_REFRACTORY: Final[hd.sr.CodedConcept] = probability_concept(
    "rai_refractory",
    Code(value="RAI-REFRACTORY", scheme=PRIVATE_SCHEME, meaning="RAI-refractory status"),
)

# --- US (seeds 004 and 002): thyroid nodules on B-mode ultrasound ----------------------------
# Standard codes (checked against pydicom's copy of PS3.16):
# * (25010-0, LN, "US Thyroid Report"): Procedure Reported; PS3.16 CID 7000 and CID 12320
#   (General Ultrasound Report Document Title) list it for a thyroid ultrasound.
# * (27925004, SCT, "Nodule"): SEG Segmented Property Type (CID 7151) and SR Finding, with the
#   category (49755003, SCT) and the site / anatomic region (69748006, SCT, "Thyroid structure").
# * (103339001, SCT, "Long Axis"), (103340004, SCT, "Short Axis"), (42798000, SCT, "Area"):
#   the nodule's largest diameter, the largest width perpendicular to it, its area (CID 7469).
#   The meanings are written "Long Axis" / "Short Axis" (as dcmjs writes them; pydicom's
#   table says "Long axis"; a Code Meaning's case carries no meaning): Cornerstone's
#   Bidirectional adapter, which OHIF
#   uses to load the pair as one measurement, matches these two Code Meanings exactly. The
#   CT lesion groups use the same pair for the axes in the axial slice through the centre.
# * (mm2, UCUM, "square millimeter"); for an uncalibrated image UCUM annotations, which UCUM
#   reads as unity: ({pixels}, UCUM, "Pixels"), as highdicom writes image sizes in the Image
#   Library, and ({pixels}.{pixels}, UCUM, "square pixels") (UCUM annotations may not hold a
#   space or an exponent; DICOM writes counts the same way: ({counts}, UCUM, "Counts")).
# Private (99THYAI): probabilities of malignancy and of large-volume lymph node metastasis,
# their yes/no evaluations, and text rows (backbones averaged, outline source, size unit,
# region choice, nodule centre, "no thyroid nodule found").
PROCEDURE_US_THYROID: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(
    codes.LN.USThyroidReport
)
NODULE: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.SCT.Nodule)
LONG_AXIS: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept(
    value=codes.SCT.LongAxis.value, scheme_designator="SCT", meaning="Long Axis"
)
SHORT_AXIS: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept(
    value=codes.SCT.ShortAxis.value, scheme_designator="SCT", meaning="Short Axis"
)
AREA: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.SCT.Area)
SQUARE_MILLIMETER: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(
    codes.UCUM.SquareMillimeter
)
PIXELS: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept(
    value="{pixels}", scheme_designator="UCUM", meaning="Pixels"
)
SQUARE_PIXELS: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept(
    value="{pixels}.{pixels}", scheme_designator="UCUM", meaning="square pixels"
)
MALIGNANT: Final[hd.sr.CodedConcept] = _private("MALIGNANT", "Malignant")
LVLNM: Final[hd.sr.CodedConcept] = _private(
    "LVLNM", "Large-volume lymph node metastasis (> 5 nodes)"
)
#: Measurement "Probability of malignancy" (seed 004; value 0..1, unit "1").
PROBABILITY_MALIGNANCY: Final[hd.sr.CodedConcept] = probability_concept(
    "malignancy", Code(value="MALIGNANCY", scheme=PRIVATE_SCHEME, meaning="malignancy")
)
#: Measurement "Probability of large-volume lymph node metastasis" (seed 002; 0..1, unit "1").
PROBABILITY_LVLNM: Final[hd.sr.CodedConcept] = probability_concept(
    "lvlnm",
    Code(value="LVLNM", scheme=PRIVATE_SCHEME, meaning="large-volume lymph node metastasis"),
)
BACKBONES: Final[hd.sr.CodedConcept] = _private("BACKBONES", "Backbones averaged")
OUTLINE_SOURCE: Final[hd.sr.CodedConcept] = _private("OUTLINE-SOURCE", "Nodule outline source")
SIZE_UNIT: Final[hd.sr.CodedConcept] = _private("SIZE-UNIT", "Size unit")
REGION_CHOICE: Final[hd.sr.CodedConcept] = _private("REGION-CHOICE", "Image region selection")
NODULE_CENTRE: Final[hd.sr.CodedConcept] = _private(
    "NODULE-CENTRE", "Nodule centre (source pixels)"
)
NO_NODULE_FOUND: Final[hd.sr.CodedConcept] = _private("NO-NODULE", "No thyroid nodule found")

# --- NM (seed 001): cure after a first I-131 therapy of Graves' disease ----------------------
# No standard code says "cured by a first I-131 therapy" (see model_zoo.nm_graves_i131.model:
# SCT 765205004 "In remission" and 413322009 "Problem resolved" are statuses, not a predicted
# outcome of one therapy), so the measurement and its yes/no evaluation are private (99THYAI);
# the value of the evaluation is SCT Yes / No, as for the CT and US decisions.
#: Measurement "Probability of cure after I-131 therapy" (seed 001; value 0..1, unit "1").
PROBABILITY_I131_CURE: Final[hd.sr.CodedConcept] = probability_concept(
    "i131_cure", Code(value="I131-CURE", scheme=PRIVATE_SCHEME, meaning="cure after I-131 therapy")
)
#: CODE evaluation: called cured (Yes / No) at the card's decision threshold.
I131_CURE: Final[hd.sr.CodedConcept] = _private("I131-CURE", "Cure after first I-131 therapy")

# --- Spatial coordinates of measurements (what viewers draw) ---------------------------------
# * (121055, DCM, "Path"): the SCOORD of a linear measurement (TID 1400's concept name for it):
#   the end points of a long or short axis.
# * (99THYAI, GRADCAM-PEAK, "Arrow to Grad-CAM peak"): the SCOORD of an NM probability, a
#   2-point POLYLINE whose first point is the peak of the model's Grad-CAM (no standard code
#   names an arrow).
# * (121106, DCM, "Comment"): a TEXT row of each measurement group with a short label
#   ("Nodule 1", "Lesion 2", "Graves' disease 0.91"); OHIF shows it as the measurement's label.
PATH: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.DCM.Path)
COMMENT: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept.from_code(codes.DCM.Comment)
#: SCOORD name of an NM probability's arrow: tip at the Grad-CAM peak, tail where the label goes.
GRADCAM_PEAK: Final[hd.sr.CodedConcept] = _private("GRADCAM-PEAK", "Arrow to Grad-CAM peak")
