"""Nodule outlines a site sends with the images: a DICOM SEG that references the US image.

Seeds 004 and 002 were trained on hand-drawn outlines. Where the study holds a Segmentation
object referencing an ultrasound image (or one frame of a cine clip), its segments are taken as
that image's nodules and the node's own segmentation model does not run on it.

A SEG this node wrote itself (Manufacturer "Thyroid AI Node", as every output of
:mod:`workers.encode` carries) is not a site ROI: a PACS that sends a study back with the node's
results in it gets the same analysis, not one fed by its own output.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.multival import MultiValue

from workers.encode.common import DEFAULT_MANUFACTURER

log = logging.getLogger(__name__)

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True)
class SiteROI:
    """One segment of a site SEG on one source frame (full-frame mask)."""

    seg_sop_instance_uid: str
    segment_number: int
    label: str
    mask: np.ndarray = field(repr=False, compare=False)  # bool (rows, columns) of the source frame


def is_site_seg(ds: Dataset) -> bool:
    """A Segmentation object not written by this node."""
    return str(ds.get("SOPClassUID", "")) == SEG_STORAGE and str(ds.get("Manufacturer", "")) != DEFAULT_MANUFACTURER


def _referenced(seg: Dataset) -> set[tuple[str, int | None]]:
    """(SOP Instance UID, frame number or None) of every source frame a SEG's frames derive from."""
    refs: set[tuple[str, int | None]] = set()
    for frame in seg.get("PerFrameFunctionalGroupsSequence", []):
        for der in frame.get("DerivationImageSequence", []):
            for src in der.get("SourceImageSequence", []):
                numbers = src.get("ReferencedFrameNumber")
                if numbers is None:
                    refs.add((str(src.ReferencedSOPInstanceUID), None))
                else:
                    for n in numbers if isinstance(numbers, MultiValue) else [numbers]:
                        refs.add((str(src.ReferencedSOPInstanceUID), int(n)))
    return refs


def site_rois(sources: Sequence[Dataset]) -> dict[tuple[str, int | None], list[SiteROI]]:
    """Site ROIs by source (SOP Instance UID, frame number; None for single-frame images).

    A SEG that cannot be read is logged and ignored: the images then get the model's outlines.
    """
    rois: dict[tuple[str, int | None], list[SiteROI]] = {}
    multiframe = {str(ds.SOPInstanceUID) for ds in sources if int(ds.get("NumberOfFrames", 1) or 1) > 1}
    for ds in sources:
        if not is_site_seg(ds):
            continue
        uid = str(ds.SOPInstanceUID)
        try:
            seg = hd.seg.Segmentation.from_dataset(ds, copy=True)
            labels = {int(s.SegmentNumber): str(s.get("SegmentLabel", f"segment {s.SegmentNumber}"))
                      for s in ds.SegmentSequence}
            for sop, frame in sorted(_referenced(ds), key=lambda r: (r[0], r[1] or 0)):
                if sop in multiframe and frame is not None:
                    pixels = seg.get_pixels_by_source_frame(
                        source_sop_instance_uid=sop, source_frame_numbers=[frame], combine_segments=False,
                        ignore_spatial_locations=True,
                    )
                    key: tuple[str, int | None] = (sop, frame)
                else:
                    pixels = seg.get_pixels_by_source_instance(
                        source_sop_instance_uids=[sop], combine_segments=False, ignore_spatial_locations=True,
                    )
                    key = (sop, None)
                numbers = seg.segment_numbers
                for i, number in enumerate(numbers):
                    mask = np.asarray(pixels[0, :, :, i]) > 0
                    if mask.any():
                        rois.setdefault(key, []).append(SiteROI(uid, int(number), labels.get(int(number), ""), mask))
        except Exception as exc:  # highdicom raises ValueError/AttributeError/KeyError on malformed SEGs
            log.warning("site SEG %s ignored: cannot read its segments (%s: %s)", uid, type(exc).__name__, exc)
            continue
    return rois
