"""Secondary Captures in place of a SEG or an SR, for destinations that refuse or cannot show them.

Made from the node's own SEG and SR (read by :mod:`workers.encode.fallback_read`) and the
source images, so that a viewer that shows nothing but images still shows the result:

* **Outline SCs** (in place of the SEG), series :data:`OUTLINE_SERIES_NUMBER`: one per source
  image (slice, frame) that carries a segment: the image in grey (CT in a lung window, as the
  heatmaps), upscaled to :data:`LONG_SIDE` pixels on its long side, each segment's outline in
  its own colour (segment 1 magenta, as the heatmap SCs' outline, then cyan, yellow, ...) with
  its number beside it, and a legend: colour, number, label and what the SR reports for it
  (sizes with units, probabilities, decisions), the source image and frame, the models and,
  for demo models, "DEMO - not for clinical use" in red above and below.
* **Summary pages** (in place of the SR), series :data:`SUMMARY_SERIES_NUMBER`: the findings
  table, one block per SR measurement group (lesion, nodule, image): every measurement with its
  unit, probability, decision, threshold and note the SR holds, the image it was measured on,
  the algorithms with their versions, the DEMO band for demo models and "AI output, not
  verified by a physician"; more pages when the table is long.

DICOM choices (the builder of :mod:`workers.encode.sc` writes the dataset): RGB, 8 bit,
Explicit VR Little Endian, Conversion Type WSD, Burned In Annotation NO (no patient data is
drawn), in the source study, patient and study modules and Body Part Examined from a source
image, Source Image Sequence naming the source image (outline SC: the one drawn over, with its
frame) or every image the SR's groups name (summary page), the models' Contributing Equipment
items copied from the SEG / SR, every time stamp the SEG's / SR's content date and time.
UIDs derive from the SEG / SR SOP Instance UIDs (themselves derived from the source and the
model versions), the source image and frame, or the page number: the same outbox gives the
same objects for every destination and every retry, and a re-send replaces.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from workers.encode.codes import SOURCE_IMAGE_FOR_PROCESSING
from workers.encode.common import DEFAULT_MANUFACTURER, number_of_frames
from workers.encode.heatmap_render import ui_font, wrap
from workers.encode.fallback_read import Findings, FindingGroup, ImageRef, SegOutlines
from workers.encode.heatmap_render import OUTLINE_RGB, OUTLINE_WIDTH, window_to_uint8
from workers.encode.sc import LUNG_WINDOW, secondary_capture
from workers.encode.sc_us import source_frame_grey
from workers.encode.uids import OutputUIDs, derive_uid
from workers.pipelines.results import ModelInfo

logger = logging.getLogger(__name__)

OUTLINE_SERIES_NUMBER: Final[int] = 9905
OUTLINE_SERIES_BASE: Final[str] = "AI lesion outlines (SEG fallback)"
SUMMARY_SERIES_NUMBER: Final[int] = 9906
SUMMARY_SERIES_BASE: Final[str] = "AI findings summary (SR fallback)"
LONG_SIDE: Final[int] = 512
MIN_WIDTH: Final[int] = 512
PAGE_WIDTH: Final[int] = 1024
PAGE_MAX_HEIGHT: Final[int] = 1400
DEMO_BAND: Final[int] = 40
NOT_VERIFIED: Final[str] = "AI output, not verified by a physician."
#: Outline colours by segment number (1: magenta, as the heatmap SCs); none is grey.
PALETTE: Final[tuple[tuple[int, int, int], ...]] = (
    OUTLINE_RGB, (0, 255, 255), (255, 255, 0), (0, 255, 0), (255, 128, 0), (64, 128, 255),
    (255, 64, 64), (160, 255, 160),
)
_PAD: Final[int] = 10
_WHITE: Final[tuple[int, int, int]] = (255, 255, 255)
_GREY: Final[tuple[int, int, int]] = (170, 170, 170)
_YELLOW: Final[tuple[int, int, int]] = (255, 220, 80)
_RED: Final[tuple[int, int, int]] = (200, 0, 0)
_BLOCK: Final[tuple[int, int, int]] = (40, 40, 56)
_BIPED: Final[frozenset[str]] = frozenset("APRLHF")


def colour(segment_number: int) -> tuple[int, int, int]:
    """The outline colour of a segment."""
    return PALETTE[(segment_number - 1) % len(PALETTE)]


def _band(canvas: Image.Image, y: int, text: str) -> int:
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, y, canvas.width, y + DEMO_BAND - 1], fill=_RED)
    draw.text((canvas.width // 2, y + DEMO_BAND // 2), text, font=ui_font(22, bold=True), fill=_WHITE, anchor="mm")
    return y + DEMO_BAND


# --- outlines --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where the source frame lies in an outline picture: top-left corner and scale."""

    top: int
    left: int
    scale: float
    width: int
    height: int


def placement(rows: int, cols: int, demo: bool) -> Placement:
    """The upscaled frame's place in the picture (the legend goes below it)."""
    scale = LONG_SIDE / max(rows, cols)
    width, height = max(1, round(cols * scale)), max(1, round(rows * scale))
    return Placement(DEMO_BAND if demo else 0, (max(width, MIN_WIDTH) - width) // 2, scale, width, height)


@dataclass(frozen=True)
class OutlineEntry:
    """One segment on the picture: number (colour), label, what the SR says of it."""

    number: int
    label: str
    mask: np.ndarray
    summary: str = ""


def render_outlines(
    grey: np.ndarray,
    entries: Sequence[OutlineEntry],
    *,
    source_line: str,
    models_line: str,
    disclaimer: str | None,
) -> np.ndarray:
    """The source frame with every segment's outline in colour, numbered, and a legend.

    Parameters
    ----------
    grey : numpy.ndarray
        ``(rows, columns)`` uint8 frame.
    entries : Sequence[OutlineEntry]
        Masks on the frame's grid.
    source_line, models_line : str
        Legend lines: which image this is, which models drew the outlines.
    disclaimer : str, optional
        Drawn in a red band above the image and below the legend.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8.

    Raises
    ------
    ValueError
        If a mask's shape differs from the frame's, or there is no segment to draw.
    """
    if not entries:
        raise ValueError("no segment to outline")
    rows, cols = grey.shape
    place = placement(rows, cols, disclaimer is not None)
    size = (place.width, place.height)
    up = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR))
    image = np.repeat(up[..., None], 3, axis=2).copy()
    from scipy import ndimage  # heavy import, only where outlines are drawn

    labels: list[tuple[int, int, int]] = []
    for entry in entries:
        if entry.mask.shape != grey.shape:
            raise ValueError(f"mask shape {entry.mask.shape} differs from the frame's {grey.shape}")
        region = np.asarray(
            Image.fromarray(entry.mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
        ) > 0
        ring = ndimage.binary_dilation(region, iterations=OUTLINE_WIDTH) & ~region
        image[ring] = colour(entry.number)
        rr, cc = np.nonzero(region | ring)
        if rr.size:
            labels.append((entry.number, int(rr.min()), int(cc.max())))
    # legend height: a generous bound, cropped to what was drawn
    height = place.top + place.height + 200 + 60 * len(entries) + 2 * DEMO_BAND
    width = max(place.width, MIN_WIDTH)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    y = _band(canvas, 0, disclaimer) if disclaimer else 0
    canvas.paste(Image.fromarray(image), (place.left, y))
    draw = ImageDraw.Draw(canvas)
    font = ui_font(16, bold=True)
    for number, top, right in labels:  # the number beside the outline, white on black
        x = min(place.left + right + 4, width - 24)
        ty = max(y + top - 18, y)
        draw.text((x, ty), str(number), font=font, fill=_WHITE, stroke_width=2, stroke_fill=(0, 0, 0))
    y += place.height + _PAD
    draw.text((_PAD, y), "AI lesion outlines", font=ui_font(16, bold=True), fill=_WHITE)
    y += 22
    for entry in entries:
        draw.rectangle([_PAD, y + 2, _PAD + 14, y + 16], fill=colour(entry.number))
        text = f"{entry.number}  {entry.label}" + (f": {entry.summary}" if entry.summary else "")
        for line in wrap(draw, text, ui_font(14), width - 3 * _PAD - 16):
            draw.text((_PAD + 22, y), line, font=ui_font(14), fill=_WHITE)
            y += 19
        y += 3
    for text, fill in ((source_line, _GREY), (models_line, _GREY), (NOT_VERIFIED, _YELLOW)):
        for line in wrap(draw, text, ui_font(12), width - 2 * _PAD):
            draw.text((_PAD, y), line, font=ui_font(12), fill=fill)
            y += 17
    if disclaimer:
        y = _band(canvas, y + 4, disclaimer)
    return np.asarray(canvas.crop((0, 0, width, y + _PAD // 2)))


# --- summary page ------------------------------------------------------------------------------


def _block(lines: Sequence[tuple[str, str, bool]], title: str, images: str) -> Image.Image:
    """One finding's block: title bar, image line, label/value rows (wrapped, never cut)."""
    label_w = 400
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    image_lines = wrap(measure, images, ui_font(13), PAGE_WIDTH - 2 * _PAD)
    rows = [
        (wrap(measure, label, ui_font(14), label_w - _PAD),
         wrap(measure, value, ui_font(14, bold=strong), PAGE_WIDTH - label_w - 2 * _PAD), strong)
        for label, value, strong in lines
    ]
    height = 34 + 18 * len(image_lines) + 19 * sum(max(len(a), len(b)) for a, b, _ in rows) + 8
    canvas = Image.new("RGB", (PAGE_WIDTH, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, PAGE_WIDTH, 28], fill=_BLOCK)
    draw.text((_PAD, 5), title, font=ui_font(16, bold=True), fill=_YELLOW)
    y = 34
    for line in image_lines:
        draw.text((_PAD, y), line, font=ui_font(13), fill=_GREY)
        y += 18
    for label_lines, value_lines, strong in rows:
        for k in range(max(len(label_lines), len(value_lines))):
            if k < len(label_lines):
                draw.text((_PAD + 10, y), label_lines[k], font=ui_font(14), fill=_GREY)
            if k < len(value_lines):
                draw.text((label_w + _PAD, y), value_lines[k], font=ui_font(14, bold=strong), fill=_WHITE)
            y += 19
    return canvas


def _is_decision(label: str, value: str) -> bool:
    return value.split(" (")[0] in ("Yes", "No") or "probab" in label.lower()


def render_summary(findings: Findings, image_names: Mapping[tuple[str, int | None], str]) -> list[np.ndarray]:
    """The findings table as one or more page images.

    Parameters
    ----------
    findings : Findings
        What the SR says.
    image_names : Mapping
        (SOP Instance UID, frame) -> how to name that image ("US image 3, frame 2").

    Returns
    -------
    list of numpy.ndarray
        ``(H, PAGE_WIDTH, 3)`` uint8 pages, each at most about :data:`PAGE_MAX_HEIGHT` high
        (a single block longer than that gets a page of its own).
    """
    blocks = []
    for group in findings.groups:
        where = [image_names.get((r.sop_instance_uid, r.frame_number), "an image of the study") for r in group.images]
        images = "Measured on: " + ("; ".join(dict.fromkeys(where)) if where else "the study")
        if group.algorithms:
            images += ". Algorithms: " + ", ".join(group.algorithms)
        lines = [(r.label, r.value, _is_decision(r.label, r.value)) for r in group.rows]
        blocks.append(_block(lines, group.title, images))
    n = len(findings.groups)
    heading = [
        ("AI findings summary", ui_font(22, bold=True), _WHITE),
        (findings.procedure or "", ui_font(15), _GREY),
        (f"{n} finding{'s' if n != 1 else ''} in the structured report "
         f"'{findings.series_description}'.", ui_font(15), _WHITE),
        ("Models: " + (", ".join(findings.algorithms) or "not named"), ui_font(14), _GREY),
        (NOT_VERIFIED + (" Not for clinical use." if findings.disclaimer else ""), ui_font(14, bold=True), _YELLOW),
    ]
    pages: list[list[Image.Image]] = [[]]
    used = 200
    for block in blocks:
        if pages[-1] and used + block.height > PAGE_MAX_HEIGHT:
            pages.append([])
            used = 120
        pages[-1].append(block)
        used += block.height + 8
    out = []
    for k, page_blocks in enumerate(pages, start=1):
        height = 2 * DEMO_BAND + 260 + sum(b.height + 8 for b in page_blocks) + 40
        canvas = Image.new("RGB", (PAGE_WIDTH, height), (0, 0, 0))
        y = _band(canvas, 0, findings.disclaimer) if findings.disclaimer else 0
        y += _PAD
        draw = ImageDraw.Draw(canvas)
        for text, font, fill in heading if k == 1 else heading[:1]:
            for line in wrap(draw, text, font, PAGE_WIDTH - 2 * _PAD):
                draw.text((_PAD, y), line, font=font, fill=fill)
                y += int(font.size) + 6
        y += 6
        if not page_blocks:
            draw.text((_PAD, y), "No finding reported.", font=ui_font(15), fill=_WHITE)
            y += 24
        for block in page_blocks:
            canvas.paste(block, (0, y))
            y += block.height + 8
        draw.text((_PAD, y), f"Page {k} of {len(pages)}", font=ui_font(12), fill=_GREY)
        y += 20
        if findings.disclaimer:
            y = _band(canvas, y, findings.disclaimer)
        out.append(np.asarray(canvas.crop((0, 0, PAGE_WIDTH, y + _PAD // 2))))
    return out


# --- DICOM -------------------------------------------------------------------------------------


def content_datetime(date: str, time: str) -> datetime.datetime:
    """The SEG's or SR's Content Date and Time, as the fallback objects' time stamps."""
    try:
        return datetime.datetime.strptime(f"{date}{time.split('.')[0][:6]:0<6}", "%Y%m%d%H%M%S")
    except ValueError:
        raise ValueError(f"content date/time {date!r} {time!r} is not a DICOM DA/TM") from None


def source_grey(source: Dataset, frame_number: int | None) -> np.ndarray:
    """One source frame in grey uint8: CT in the lung window, others as the US heatmaps show them."""
    frames = number_of_frames(source)
    if frame_number is not None and not 1 <= frame_number <= frames:
        raise ValueError(f"frame {frame_number} outside 1..{frames}")
    if str(source.get("Modality", "")) == "CT" and int(source.get("SamplesPerPixel", 1)) == 1:
        image = hd.Image.from_dataset(source.copy(), copy=False)
        hu = image.get_frame(frame_number or 1, apply_real_world_transform=False, apply_modality_transform=True)
        return window_to_uint8(np.asarray(hu), LUNG_WINDOW)
    return source_frame_grey(source, frame_number)


def _orientation(source: Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2:
        row, col = str(value[0]), str(value[1])
        if row and col and set(row + col) <= _BIPED:
            return row, col
    cosines = source.get("ImageOrientationPatient")
    if cosines is not None and len(cosines) == 6:
        r, c = np.asarray([float(v) for v in cosines[:3]]), np.asarray([float(v) for v in cosines[3:]])
        try:
            closest = hd.spatial.get_closest_patient_orientation(np.column_stack([r, c, np.cross(r, c)]))
        except ValueError:
            return None
        return closest[0].value, closest[1].value
    return None


def _description_model(name: str, algorithms: Sequence[str], demo: bool) -> ModelInfo:
    versions = list(dict.fromkeys(a.rsplit(" ", 1)[-1] for a in algorithms if " " in a))
    return ModelInfo(name=name or "thyroid-ai-node", version="+".join(versions) or "", title="",
                     weights_sha256="", demo=demo)


def _source_item(ref: ImageRef) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    if ref.frame_number is not None:
        item.ReferencedFrameNumber = ref.frame_number
    item.PurposeOfReferenceCodeSequence = [SOURCE_IMAGE_FOR_PROCESSING]
    return item


def _build(
    source: Dataset,
    pixels: np.ndarray,
    *,
    uids: OutputUIDs,
    model: ModelInfo,
    equipment: Sequence[Dataset],
    series_base: str,
    series_number: int,
    instance_number: int,
    orientation: tuple[str, str] | None,
    ref_frame: int | None,
    derivation: str,
    when: datetime.datetime,
    manufacturer: str,
    software_version: str,
) -> hd.sc.SCImage:
    sc = secondary_capture(
        source, pixels, uids=uids, models=[], description_model=model, series_base=series_base,
        series_number=series_number, instance_number=instance_number,
        orientation=orientation or ("A", "F"), ref_frame=ref_frame, derivation=derivation,
        content_datetime=when, manufacturer=manufacturer, software_version=software_version,
    )
    if orientation is None:
        sc.PatientOrientation = []  # Type 2: present, empty (a page, or a US image without one)
    items: list[Dataset] = list(sc.get("ContributingEquipmentSequence", []))
    items.extend(Dataset(item) for item in equipment)
    setattr(sc, "ContributingEquipmentSequence", items)  # highdicom types it as its own class
    return sc


def _group_summary(group: FindingGroup | None) -> str:
    if group is None:
        return ""
    return "; ".join(
        f"{r.label} {r.value}" for r in group.rows
        if r.value_type == "NUM" or (r.value_type == "CODE" and r.value in ("Yes", "No"))
    )[:400]


def lesion_number(label: str, segment_number: int) -> int:
    """The number a picture shows for a segment: the one its label ends with ("Nodule 3", as the
    SR's tracking identifier numbers it across the study), else its segment number."""
    match = re.search(r"(\d+)\s*$", label)
    return int(match.group(1)) if match and int(match.group(1)) > 0 else segment_number


def image_name(source: Dataset, frame_number: int | None) -> str:
    """How the pictures name a source image: modality, series and instance number, frame."""
    text = f"{source.get('Modality', '')} series {source.get('SeriesNumber', '?')} image {source.get('InstanceNumber', '?')}"
    frames = number_of_frames(source)
    if frame_number is not None and frames > 1:
        text += f", frame {frame_number} of {frames}"
    return text.strip()


def encode_outline_scs(
    outlines: Sequence[SegOutlines],
    sources: Mapping[str, Dataset],
    findings: Findings | None,
    *,
    software_version: str,
    manufacturer: str = DEFAULT_MANUFACTURER,
) -> list[hd.sc.SCImage]:
    """One outline SC per source image (frame) any of ``outlines`` draws on.

    Parameters
    ----------
    outlines : Sequence[SegOutlines]
        The route's SEGs, read back.
    sources : Mapping[str, Dataset]
        SOP Instance UID -> source dataset with pixel data (only the frames drawn on are decoded).
    findings : Findings, optional
        The route's SR, read back: each segment's legend line says what the SR reports for the
        group with its Tracking UID.
    software_version, manufacturer : str
        Of the node.

    Returns
    -------
    list of highdicom.sc.SCImage
        In the order of the sources' series, instance and frame numbers; Instance Number 1..n.

    Raises
    ------
    ValueError
        If a SEG names a source image that is not in ``sources`` or a frame it does not have.
    """
    if not outlines:
        return []
    groups = {g.tracking_uid: g for g in findings.groups} if findings else {}
    seg_uids = sorted(o.seg_sop_instance_uid for o in outlines)
    first = min(outlines, key=lambda o: o.seg_sop_instance_uid)
    algorithms = list(dict.fromkeys(s.algorithm for o in outlines for s in o.segments.values() if s.algorithm))
    disclaimer = next((o.disclaimer for o in outlines if o.disclaimer), None)
    model = _description_model(
        "+".join(dict.fromkeys(a.split(" ")[0] for a in algorithms)) or "site outlines", algorithms, disclaimer is not None,
    )
    equipment = list({id(e): e for o in outlines for e in o.equipment}.values())
    when = content_datetime(first.content_date, first.content_time)
    items = []
    for outline in outlines:
        for image in outline.images:
            source = sources.get(image.source.sop_instance_uid)
            if source is None:
                raise ValueError(f"the SEG names a source image not in the study's spool ({image.source.sop_instance_uid})")
            items.append((outline, image, source))
    items.sort(key=lambda t: (int(t[2].get("SeriesNumber", 0) or 0), int(t[2].get("InstanceNumber", 0) or 0),
                              t[1].source.sop_instance_uid, t[1].source.frame_number or 0))
    series_uid = derive_uid("fallback-outline-series", "seg", *seg_uids)
    out = []
    for n, (outline, image, source) in enumerate(items, start=1):
        entries = []
        for number, mask in sorted(image.masks.items()):
            info = outline.segments.get(number)
            label = info.label if info else f"Segment {number}"
            group = groups.get(info.tracking_uid) if info else None
            entries.append(OutlineEntry(lesion_number(label, number), label, mask, _group_summary(group)))
        frame = image.source.frame_number
        pixels = render_outlines(
            source_grey(source, frame), entries,
            source_line=f"Source: {image_name(source, frame)}.",
            models_line="Outlines: " + (", ".join(algorithms) or "the site's segmentation"),
            disclaimer=disclaimer,
        )
        uid = derive_uid("fallback-outline", outline.seg_sop_instance_uid, image.source.sop_instance_uid,
                         str(frame or 0), model.version)
        ref_frame = frame if "NumberOfFrames" in source else None
        out.append(_build(
            source, pixels, uids=OutputUIDs(series_uid, uid), model=model, equipment=equipment,
            series_base=OUTLINE_SERIES_BASE, series_number=OUTLINE_SERIES_NUMBER, instance_number=n,
            orientation=_orientation(source), ref_frame=ref_frame,
            derivation=(f"Outlines of segment(s) {', '.join(str(e.number) for e in entries)} of the node's "
                        "segmentation burned over the source image")[:1024],
            when=when, manufacturer=manufacturer, software_version=software_version,
        ))
    logger.info("encoded %d outline SC(s) from %d SEG(s)", len(out), len(outlines))
    return out


def encode_summary_scs(
    findings: Findings,
    sources: Mapping[str, Dataset],
    *,
    software_version: str,
    manufacturer: str = DEFAULT_MANUFACTURER,
) -> list[hd.sc.SCImage]:
    """The findings table of one SR as Secondary Capture page(s).

    Parameters
    ----------
    findings : Findings
        The SR, read back.
    sources : Mapping[str, Dataset]
        SOP Instance UID -> source dataset (headers suffice); the first image the SR names gives
        the patient, study and Body Part Examined; every image it names that is here is in the
        Source Image Sequence.

    Raises
    ------
    ValueError
        If none of the images the SR names is in ``sources``.
    """
    refs = [r for r in findings.images() if r.sop_instance_uid in sources]
    if not refs:
        raise ValueError("the SR names no source image that is in the study's spool")
    first = sources[refs[0].sop_instance_uid]
    names = {(r.sop_instance_uid, r.frame_number): image_name(sources[r.sop_instance_uid], r.frame_number) for r in refs}
    pages = render_summary(findings, names)
    model = _description_model("+".join(dict.fromkeys(a.split(" ")[0] for a in findings.algorithms)),
                               findings.algorithms, findings.disclaimer is not None)
    when = content_datetime(findings.content_date, findings.content_time)
    series_uid = derive_uid("fallback-summary-series", "sr", findings.sr_sop_instance_uid)
    out = []
    framed = {r.sop_instance_uid for r in refs if r.frame_number is not None}
    unique_refs = list({
        (r.sop_instance_uid, r.frame_number): r for r in refs
        if r.frame_number is not None or r.sop_instance_uid not in framed
    }.values())
    for k, pixels in enumerate(pages, start=1):
        uid = derive_uid("fallback-summary", findings.sr_sop_instance_uid, str(k), model.version)
        sc = _build(
            first, pixels, uids=OutputUIDs(series_uid, uid), model=model, equipment=findings.equipment,
            series_base=SUMMARY_SERIES_BASE, series_number=SUMMARY_SERIES_NUMBER, instance_number=k,
            orientation=None, ref_frame=refs[0].frame_number if "NumberOfFrames" in first else None,
            derivation=(f"Findings table of the node's structured report: {len(findings.groups)} finding(s), "
                        f"page {k} of {len(pages)}"),
            when=when, manufacturer=manufacturer, software_version=software_version,
        )
        sc.SourceImageSequence = [_source_item(r) for r in unique_refs]
        out.append(sc)
    logger.info("encoded %d summary page(s) for %d finding(s)", len(out), len(findings.groups))
    return out
