"""A site's labelled thyroid-ultrasound folder, read the way the node reads US studies.

One folder format serves the three US models (``thyroid-node train`` and ``thyroid-node validate``
of ``us_nodule_seg``, ``us_calcified_nodule`` and ``us_lvlnm``):

* DICOM files in any layout (read recursively): the US images (US Image or US Multi-frame Image
  Storage) and the site's nodule outlines as DICOM Segmentation objects (one per image or one per
  study, any manufacturer but this node) whose frames reference the US image (for a cine clip,
  the frame the node analyses: the middle one). Each segment is one nodule. These are the SEGs
  the node already takes in service in place of its own segmentation
  (:mod:`workers.pipelines.site_roi`);
* ``labels.csv``, one row per nodule::

      study_instance_uid,sop_instance_uid,segment_number,malignant,lvlnm
      1.2.3...,1.2.3.4...,1,1,0
      1.2.3...,1.2.3.4...,2,0,
      1.2.3...,1.2.3.5...,,,

  ``sop_instance_uid``: the US image; ``segment_number``: the nodule's segment in the site SEG
  on that image (empty: the image was read and holds no nodule); ``malignant``: pathology
  (1 malignant, 0 benign) for ``us_calcified_nodule``; ``lvlnm``: large-volume (> 5 nodes) lymph
  node metastasis (1 or 0) for ``us_lvlnm``. A label left empty is unknown: the nodule is left out
  of that model's training and validation only. ``study_instance_uid`` is optional (checked
  against the image when given); ``seg_sop_instance_uid`` (optional) names the SEG where two
  SEGs on one image use the same segment number.

Every image listed in ``labels.csv`` must have *all* its nodules outlined: for ``us_nodule_seg``
the outlines of every segment on the image are the truth, and whatever else it finds there is a
false positive.

Pre-processing is the pipeline's own: the B-mode region(s) of the frame the node analyses
(:func:`model_zoo.us_image.bmode_images`), the site's outlines cut to that region exactly as
:func:`workers.pipelines.us._nodule_masks` cuts them; an image the node would refuse is left out
with a warning.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydicom import Dataset

from model_zoo.errors import InputRejected
from model_zoo.phantoms.us import USPhantom
from model_zoo.us_image import BMode, bmode_images
from model_zoo.validation.collect import LABELS_FILE, ValidationDataError, read_labels, read_studies, write_labels

logger = logging.getLogger(__name__)

LABEL_COLUMNS: Final[tuple[str, ...]] = ("malignant", "lvlnm")
_TRUE: Final = frozenset({"1", "true", "yes"})
_FALSE: Final = frozenset({"0", "false", "no"})


@dataclass(frozen=True)
class USImage:
    """One B-mode region of a labelled image, with every site outline on it (region-shaped masks)."""

    study_uid: str
    sop_uid: str
    bmode: BMode = field(repr=False)
    outlines: tuple[np.ndarray, ...] = field(repr=False)
    segments: tuple[int, ...] = ()  # the segment number of each outline

    @property
    def truth(self) -> np.ndarray:
        """The union of the outlines (bool, region-shaped)."""
        out = np.zeros(self.bmode.pixels.shape, dtype=bool)
        for mask in self.outlines:
            out |= mask
        return out


@dataclass(frozen=True)
class USNodule:
    """One labelled nodule: its image, outline (region-shaped) and labels (None: unknown)."""

    image: USImage
    segment_number: int
    mask: np.ndarray = field(repr=False)
    labels: dict[str, int | None]

    def label(self, column: str) -> int | None:
        return self.labels.get(column)


@dataclass(frozen=True)
class USFolder:
    images: tuple[USImage, ...]
    nodules: tuple[USNodule, ...]

    def labelled(self, column: str) -> list[USNodule]:
        """The nodules whose ``column`` label is known."""
        return [n for n in self.nodules if n.label(column) is not None]


def parse_flag(value: str | None, column: str, where: str) -> int | None:
    """``1``/``true``/``yes`` -> 1, ``0``/``false``/``no`` -> 0, empty -> None; else a clear error."""
    text = (value or "").strip().lower()
    if not text:
        return None
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise ValidationDataError(f"{LABELS_FILE}: {where}: {column} must be 1, 0 or empty, got {value!r}")


def _image_regions(regions: list[BMode], rois: list[Any]) -> list[tuple[BMode, list[tuple[Any, np.ndarray]]]]:
    """Each B-mode region of the analysed frame and the ROIs (with their region-cut masks) it holds most of."""
    out: list[tuple[BMode, list[tuple[Any, np.ndarray]]]] = [(b, []) for b in regions]
    for roi in rois:
        cuts = [roi.mask[b.region[0] : b.region[2], b.region[1] : b.region[3]] for b in regions]
        best = int(np.argmax([int(c.sum()) for c in cuts]))
        if cuts[best].any():  # the pipeline drops outlines outside the region too
            out[best][1].append((roi, cuts[best]))
    return out


def read_us_folder(data_dir: Path, label: str | None = None) -> USFolder:
    """The labelled images and nodules of a US folder (format in the module docstring).

    Parameters
    ----------
    data_dir : pathlib.Path
    label : str, optional
        ``malignant`` or ``lvlnm``: that column must be in the header.

    Raises
    ------
    ValidationDataError
        No DICOM, no ``labels.csv`` or a header without the columns, an image or segment that
        the labels name but the folder does not hold, a label that is not 1, 0 or empty.
    """
    from workers.pipelines.site_roi import site_rois

    data_dir = Path(data_dir)
    rows = read_labels(data_dir, ("sop_instance_uid", "segment_number"))
    if label is not None and label not in rows[0]:
        raise ValidationDataError(f"{data_dir / LABELS_FILE}: needs a {label!r} column (1, 0 or empty per nodule)")
    studies = read_studies(data_dir)
    by_sop = {str(ds.SOPInstanceUID): (uid, ds) for uid, items in studies.items() for ds in items
              if "PixelData" in ds and str(ds.get("Modality", "")) == "US"}
    rois_of_study: dict[str, dict[tuple[str, int | None], list[Any]]] = {}
    rows_of_image: dict[str, list[tuple[int, dict[str, str]]]] = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        rows_of_image[(row.get("sop_instance_uid") or "").strip()].append((line, row))
    images: list[USImage] = []
    nodules: list[USNodule] = []
    for sop, image_rows in rows_of_image.items():
        if sop not in by_sop:
            raise ValidationDataError(f"{LABELS_FILE} line {image_rows[0][0]}: image {sop!r} is not a US image in {data_dir}")
        study_uid, ds = by_sop[sop]
        for line, row in image_rows:
            given = (row.get("study_instance_uid") or "").strip()
            if given and given != study_uid:
                raise ValidationDataError(f"{LABELS_FILE} line {line}: image {sop} belongs to study {study_uid}, not {given}")
        if study_uid not in rois_of_study:
            rois_of_study[study_uid] = site_rois(studies[study_uid])
        try:
            found = bmode_images(ds)
            regions = _image_regions(found, rois_of_study[study_uid].get((sop, found[0].frame_number), []))
        except InputRejected as exc:
            logger.warning("image …%s left out: the node would not analyse it (%s)", sop[-12:], exc.reason)
            continue
        by_number: dict[int, list[tuple[USImage, Any, np.ndarray]]] = defaultdict(list)
        for bmode, held in regions:
            image = USImage(study_uid, sop, bmode, tuple(mask for _, mask in held),
                            tuple(int(roi.segment_number) for roi, _ in held))
            images.append(image)
            for roi, mask in held:
                by_number[int(roi.segment_number)].append((image, roi, mask))
        for line, row in image_rows:
            number_text = (row.get("segment_number") or "").strip()
            if not number_text:
                continue  # an image read and found without nodule
            where = f"line {line} (image …{sop[-12:]}, segment {number_text})"
            try:
                number = int(number_text)
            except ValueError:
                raise ValidationDataError(f"{LABELS_FILE}: {where}: segment_number must be an integer") from None
            matches = by_number.get(number, [])
            seg_uid = (row.get("seg_sop_instance_uid") or "").strip()
            if seg_uid:
                matches = [m for m in matches if m[1].seg_sop_instance_uid == seg_uid]
            if not matches:
                raise ValidationDataError(f"{LABELS_FILE}: {where}: no site SEG segment {number} on the frame the node "
                                          "analyses (is the SEG in the folder, does it reference this image?)")
            if len(matches) > 1:
                raise ValidationDataError(f"{LABELS_FILE}: {where}: segment {number} is in several SEGs on this image; "
                                          "add a seg_sop_instance_uid column")
            image, _, mask = matches[0]
            labels = {c: parse_flag(row.get(c), c, where) for c in LABEL_COLUMNS if c in row}
            nodules.append(USNodule(image, number, mask, labels))
    if not images:
        raise ValidationDataError(f"{data_dir}: none of the images in {LABELS_FILE} could be analysed")
    logger.info("%s: %d image region(s), %d labelled nodule(s) from %d studies", data_dir, len(images), len(nodules),
                len({i.study_uid for i in images}))
    return USFolder(tuple(images), tuple(nodules))


# --------------------------------------------------------------------------- phantom folders
def site_seg(source: Dataset, masks: Sequence[np.ndarray], seed: int) -> Dataset:
    """A SEG as a site's ROI tool writes it: one segment per outline (full-frame bool masks) on ``source``."""
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    labelmap = np.zeros(masks[0].shape, dtype=np.uint8)
    for k, mask in enumerate(masks, start=1):
        labelmap[mask & (labelmap == 0)] = k
    uid = str(source.SOPInstanceUID)
    return hd.seg.Segmentation(
        source_images=[source], pixel_array=labelmap[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=k, segment_label=f"nodule {k}",
            segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically abnormal structure"),
            segmented_property_type=hd.sr.CodedConcept("27925004", "SCT", "Nodule"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        ) for k in range(1, len(masks) + 1)],
        series_instance_uid=generate_uid(entropy_srcs=["site-seg-series", uid, str(seed)]), series_number=40,
        sop_instance_uid=generate_uid(entropy_srcs=["site-seg", uid, str(seed)]), instance_number=1,
        manufacturer="Site PACS", manufacturer_model_name="ROI tool", software_versions="1",
        device_serial_number="1", transfer_syntax_uid=ExplicitVRLittleEndian,
    )


def write_phantom_folder(out_dir: Path, studies: Sequence[Sequence[USPhantom]], seed: int) -> Path:
    """Write phantom US studies, a site SEG per image with every nodule's true outline, and labels.csv.

    ``studies[i]`` are the B-mode phantoms of study ``i`` (one image each); every nodule gets a
    row with its true ``malignant`` and ``lvlnm`` labels; an image without nodule gets a row with
    an empty ``segment_number``.
    """
    from pydicom import dcmread

    from model_zoo.phantoms.us_dicom import write_us_study

    out_dir = Path(out_dir)
    rows: list[dict[str, Any]] = []
    for i, phantoms in enumerate(studies):
        folder = out_dir / f"s{i:03d}"
        study = write_us_study(folder, seed + i, phantoms=list(phantoms))
        for inst in study.instances:
            ph = inst.phantom
            if not ph.nodules:
                rows.append({"study_instance_uid": study.study_instance_uid, "sop_instance_uid": inst.sop_instance_uid,
                             "segment_number": "", "malignant": "", "lvlnm": ""})
                continue
            source = dcmread(inst.path)
            full = []
            for nodule in ph.nodules:
                mask = np.zeros((int(source.Rows), int(source.Columns)), dtype=bool)
                r0, c0 = inst.region[0], inst.region[1]
                mask[r0 : r0 + nodule.mask.shape[0], c0 : c0 + nodule.mask.shape[1]] = nodule.mask
                full.append(mask)
            site_seg(source, full, seed + i).save_as(folder / f"seg-{inst.sop_instance_uid}.dcm")
            for k, nodule in enumerate(ph.nodules, start=1):
                rows.append({"study_instance_uid": study.study_instance_uid, "sop_instance_uid": inst.sop_instance_uid,
                             "segment_number": k, "malignant": int(nodule.malignant), "lvlnm": int(nodule.lvlnm)})
    return write_labels(out_dir, rows)
