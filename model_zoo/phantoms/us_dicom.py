"""Writing thyroid US phantoms (:mod:`model_zoo.phantoms.us`) as DICOM, as scanners send them.

Each instance is a display frame (default 600 x 800) larger than the B-mode image: a black
background, the B-mode image at a seeded offset, a vendor text strip burned in at the top (fake
vendor, ``THYROID``, date, patient id, ``PHANTOM^US``), probe and settings text, a depth scale with
tick marks (every 5 mm) at the right edge, and a small grey-scale bar at the left. Burned-in text
and bars are drawn at 255 and never inside the B-mode region. With ``doppler=True`` a colour-flow
box overlaps part of the B-mode image: coloured flow pixels replace the grey there, and a colour
velocity bar is drawn beside the grey one.

Calibrated instances carry a Sequence of Ultrasound Regions (0018,6011) as vendors write it: the
B-mode region (spatial format 1 = 2D, data type 1 = tissue) with inclusive RegionLocationMax, cm
units and cm/pixel deltas, and, with Doppler, a colour-flow region (data type 2). ``calibrated=False``
writes no regions at all.

US Image Storage (single frame) or US Multi-frame Image Storage (a cine loop: the same anatomy and
nodules with independent speckle per frame; frame ``n // 2 + 1`` (1-based, the middle one) is the
phantom's own image, the others are redrawn with :func:`~model_zoo.phantoms.us.respeckle`; phantoms
that carry no seed repeat their image). Transfer syntaxes: ``explicit`` (Explicit VR Little Endian),
``jpeg_baseline`` (Pillow, quality 95; colour as YBR_FULL_422 with 4:2:2 subsampling), ``rle``,
``jpeg_ls`` and ``j2k`` (lossless, pydicom's encoders). Every file passes ``dciodvfy``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from model_zoo.phantoms.us import USPhantom, respeckle, us_phantom

logger = logging.getLogger(__name__)

US_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.3.1"
TRANSFER_SYNTAXES: Final[dict[str, UID]] = {
    "explicit": ExplicitVRLittleEndian,
    "jpeg_baseline": JPEGBaseline8Bit,
    "rle": RLELossless,
    "jpeg_ls": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
}
_UID_TAG: Final[str] = "thyroid-node-phantom-us-v1"
_VENDOR: Final[str] = "SONOPHANT"
_TOP: Final[int] = 64  # rows of the text strip
_BOTTOM: Final[int] = 28  # rows of the settings line
_LEFT: Final[int] = 48  # columns of the grey-scale (and colour) bars
_RIGHT: Final[int] = 64  # columns of the depth scale
_FRAME_TIME_MS: Final[float] = 40.0


@dataclass(frozen=True)
class USInstanceTruth:
    """What one written instance holds, and where."""

    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    number_of_frames: int | None  # None for single-frame US Image Storage
    region: tuple[int, int, int, int]  # B-mode region (row0, col0, row1, col1) in the full frame, end exclusive
    spacing_mm: tuple[float, float] | None  # (row, col) mm/pixel; None when written uncalibrated
    text_boxes: tuple[tuple[int, int, int, int], ...]  # burned-in text / bars (outside region), end exclusive
    phantom: USPhantom  # ground truth in region coordinates (add region origin for full-frame coords)
    doppler_region: tuple[int, int, int, int] | None = None  # the colour-flow box, end exclusive
    middle_frame: int | None = None  # 1-based frame that equals phantom.image (multi-frame only)


@dataclass(frozen=True)
class USPhantomStudy:
    """What :func:`write_us_study` wrote (one series)."""

    study_instance_uid: str
    instances: tuple[USInstanceTruth, ...]


def _uid(seed: int, variant: str, what: str) -> str:
    return str(generate_uid(entropy_srcs=[_UID_TAG, str(seed), variant, what]))


def _item(**attrs: object) -> Dataset:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


class _Canvas:
    """One display frame being drawn (grey or RGB), with the boxes of what was burned in."""

    def __init__(self, size: tuple[int, int], colour: bool) -> None:
        self.image = Image.new("RGB" if colour else "L", (size[1], size[0]), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.draw.fontmode = "1"  # no anti-aliasing: burned-in text is exactly 255
        self.font = ImageFont.load_default(size=13)
        self.white: int | tuple[int, int, int] = (255, 255, 255) if colour else 255
        self.boxes: list[tuple[int, int, int, int]] = []

    def text(self, row: int, col: int, text: str) -> None:
        x0, y0, x1, y1 = self.draw.textbbox((col, row), text, font=self.font)
        self.draw.text((col, row), text, fill=self.white, font=self.font)
        self.boxes.append((int(y0), int(x0), int(y1) + 1, int(x1) + 1))

    def line(self, r0: int, c0: int, r1: int, c1: int) -> None:
        self.draw.line([(c0, r0), (c1, r1)], fill=self.white, width=1)
        self.boxes.append((min(r0, r1), min(c0, c1), max(r0, r1) + 1, max(c0, c1) + 1))

    def block(self, r0: int, c0: int, pixels: np.ndarray) -> None:
        arr = np.asarray(self.image)
        patch = pixels if arr.ndim == pixels.ndim else np.repeat(pixels[..., None], 3, axis=2)
        arr = arr.copy()
        arr[r0:r0 + pixels.shape[0], c0:c0 + pixels.shape[1]] = patch
        self.image = Image.fromarray(arr)
        self.draw = ImageDraw.Draw(self.image)
        self.draw.fontmode = "1"


def _annotations(canvas: _Canvas, frame: tuple[int, int], region: tuple[int, int, int, int], spacing_mm: float,
                 date: str, patient_id: str, rng: np.random.Generator) -> None:
    """Burn in the vendor strip, settings, depth scale and grey-scale bar (all outside ``region``)."""
    rows, cols = frame
    r0, c0, r1, c1 = region
    canvas.text(6, 10, f"{_VENDOR} US-{int(rng.integers(100, 999))}    THYROID    {date[:4]}-{date[4:6]}-{date[6:]}")
    canvas.text(26, 10, f"ID {patient_id}    PHANTOM^US")
    canvas.text(6, max(cols - 170, cols // 2), f"L12-5  {int(rng.integers(9, 14))} MHz")
    canvas.text(26, max(cols - 170, cols // 2), f"MI 0.{int(rng.integers(3, 9))}  TIs 0.{int(rng.integers(1, 5))}")
    canvas.text(rows - _BOTTOM + 6, 10, f"GAIN {int(rng.integers(40, 60))}  DR 60  FR 25")
    # depth scale: a line beside the image, ticks every 5 mm, cm labels
    x = cols - _RIGHT + 8
    canvas.line(r0, x, r1 - 1, x)
    step = 5.0 / spacing_mm
    k = 0
    while r0 + k * step <= r1 - 1:
        y = int(round(r0 + k * step))
        canvas.line(y, x, y, x + (8 if k % 2 == 0 else 4))
        if k % 2 == 0:
            canvas.text(y - 6, x + 12, str(k // 2))
        k += 1
    # grey-scale bar: 0 at the bottom to 255 at the top
    height = min(128, r1 - r0)
    ramp = np.repeat(np.linspace(255, 0, height).round().astype(np.uint8)[:, None], 10, axis=1)
    canvas.block(r0, 14, ramp)
    canvas.boxes.append((r0, 14, r0 + height, 24))


def _doppler(canvas: _Canvas, region: tuple[int, int, int, int], rng: np.random.Generator,
             ) -> tuple[int, int, int, int]:
    """Paint a colour-flow box over part of the B-mode image; returns the box (end exclusive)."""
    r0, c0, r1, c1 = region
    h, w = r1 - r0, c1 - c0
    bh, bw = int(h * rng.uniform(0.3, 0.45)), int(w * rng.uniform(0.25, 0.35))
    br = r0 + int(rng.integers(0, h - bh))
    bc = c0 + int(rng.integers(0, w - bw))
    arr = np.asarray(canvas.image).copy()
    yy, xx = np.mgrid[0:bh, 0:bw]
    flow = np.zeros((bh, bw))
    for _ in range(2):  # two vessels: a red (toward) and a blue (away) tube
        cy, cx = rng.uniform(0.2, 0.8) * bh, rng.uniform(0.2, 0.8) * bw
        t = rng.uniform(0, np.pi)
        dist = np.abs((yy - cy) * np.cos(t) - (xx - cx) * np.sin(t))
        radius = rng.uniform(0.05, 0.1) * min(bh, bw)
        sign = 1.0 if not flow.any() else -1.0
        inside = dist < radius
        flow[inside] = sign * (1.0 - dist[inside] / radius) * 0.8 + sign * 0.2
    red = flow > 0
    blue = flow < 0
    patch = arr[br:br + bh, bc:bc + bw]
    patch[red] = np.stack([155 + 100 * flow[red], 20 + 60 * flow[red], np.full(red.sum(), 20)],
                          axis=-1).astype(np.uint8)
    patch[blue] = np.stack([np.full(blue.sum(), 20), 60 - 40 * flow[blue], 155 - 100 * flow[blue]],
                           axis=-1).astype(np.uint8)
    canvas.image = Image.fromarray(arr)
    canvas.draw = ImageDraw.Draw(canvas.image)
    canvas.draw.fontmode = "1"
    # the colour velocity bar beside the grey one
    bar = np.zeros((64, 10, 3), dtype=np.uint8)
    bar[:32, :, 0] = np.linspace(255, 80, 32).astype(np.uint8)[:, None]
    bar[32:, :, 2] = np.linspace(80, 255, 32).astype(np.uint8)[:, None]
    canvas.block(r0, 30, bar)
    canvas.boxes.append((r0, 30, r0 + 64, 40))
    return br, bc, br + bh, bc + bw


def _region_item(box: tuple[int, int, int, int], data_type: int, spacing_mm: float) -> Dataset:
    r0, c0, r1, c1 = box
    cm = spacing_mm / 10.0
    return _item(
        RegionSpatialFormat=1, RegionDataType=data_type, RegionFlags=0,
        RegionLocationMinX0=c0, RegionLocationMinY0=r0, RegionLocationMaxX1=c1 - 1, RegionLocationMaxY1=r1 - 1,
        ReferencePixelX0=(c1 - c0) // 2, ReferencePixelY0=0,
        PhysicalUnitsXDirection=3, PhysicalUnitsYDirection=3,
        ReferencePixelPhysicalValueX=0.0, ReferencePixelPhysicalValueY=0.0,
        PhysicalDeltaX=cm, PhysicalDeltaY=cm,
    )


def _encode_jpeg(frames: np.ndarray) -> list[bytes]:
    out = []
    for fr in frames:
        buf = io.BytesIO()
        Image.fromarray(fr).save(buf, format="JPEG", quality=95, subsampling=1 if fr.ndim == 3 else 0)
        out.append(buf.getvalue())
    return out


def _base_dataset(seed: int, variant: str, sop_class: str, sop_uid: str, series_uid: str, study_uid: str,
                  when: _dt.datetime, patient_id: str, accession: str, instance: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.PatientName, ds.PatientID = "PHANTOM^US", patient_id
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom, no real patient"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"U{seed % 100000:05d}"
    ds.AccessionNumber = accession
    ds.StudyDescription = "US THYROID (PHANTOM)"
    ds.Modality = "US"
    ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = "Thyroid"
    ds.BodyPartExamined = "THYROID"
    ds.Manufacturer = f"{_VENDOR} (Thyroid AI Node phantom)"
    ds.ManufacturerModelName = "us-thyroid-phantom"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = "Phantom Institution"
    ds.StationName = "PHANTOM-US"
    ds.InstanceNumber = instance
    ds.PatientOrientation = ""
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDateTime = f"{date}{time}"
    ds.BurnedInAnnotation = "YES"
    ds.AnatomicRegionSequence = DicomSequence([_item(CodeValue="69748006", CodingSchemeDesignator="SCT",
                                                     CodeMeaning="Thyroid")])
    return ds


def write_us_study(
    out_dir: Path,
    seed: int,
    *,
    phantoms: list[USPhantom] | None = None,
    n_images: int = 1,
    multiframe: bool = False,
    frames: int = 6,
    transfer_syntax: str = "explicit",
    photometric: str = "RGB",
    calibrated: bool = True,
    doppler: bool = False,
    frame_size: tuple[int, int] = (600, 800),
    study_uid: str | None = None,
    patient_id: str = "PHANTOM-US",
    accession: str = "",
) -> USPhantomStudy:
    """Write a phantom thyroid US study: ``n_images`` instances in one series.

    Parameters
    ----------
    out_dir : pathlib.Path
        Created if missing; files are named ``<SOPInstanceUID>.dcm``.
    seed : int
        Seeds the layout, the UIDs (which also depend on every option) and, without ``phantoms``,
        the phantoms (``us_phantom(seed + i)``).
    phantoms : list of USPhantom or None
        The B-mode images to write (one instance each); overrides ``n_images``.
    n_images : int
        Instances to write when ``phantoms`` is None.
    multiframe, frames : bool, int
        US Multi-frame Image Storage with ``frames`` cine frames instead of US Image Storage.
    transfer_syntax : str
        One of :data:`TRANSFER_SYNTAXES`.
    photometric : str
        ``"RGB"`` (what scanners send) or ``"MONOCHROME2"``.
    calibrated : bool
        Write the Sequence of Ultrasound Regions (False: none at all).
    doppler : bool
        Add a colour-flow box over part of the B-mode image and its region (RGB only).
    frame_size : tuple of int
        ``(rows, columns)`` of the display frame.
    study_uid, patient_id, accession
        Override the study's UID, the fake PatientID, the AccessionNumber.

    Returns
    -------
    USPhantomStudy
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}; expected one of {sorted(TRANSFER_SYNTAXES)}")
    if photometric not in ("RGB", "MONOCHROME2"):
        raise ValueError(f"photometric must be 'RGB' or 'MONOCHROME2', not {photometric!r}")
    if doppler and photometric != "RGB":
        raise ValueError("a colour-flow (Doppler) box needs photometric 'RGB'")
    if multiframe and frames < 1:
        raise ValueError("a multi-frame instance needs frames >= 1")
    images = list(phantoms) if phantoms is not None else [us_phantom(seed + i) for i in range(n_images)]
    variant = repr((len(images), multiframe, frames, transfer_syntax, photometric, calibrated, doppler,
                    tuple(frame_size), patient_id, accession,
                    [(p.seed, p.options) if p.seed is not None else hashlib.sha256(p.image.tobytes()).hexdigest()
                     for p in images]))
    rng = np.random.default_rng([seed, 6011])
    when = _dt.datetime(2024, 1, 1, 8, 0) + _dt.timedelta(days=int(rng.integers(0, 365)),
                                                          minutes=int(rng.integers(0, 480)))
    study = study_uid or _uid(seed, variant, "study")
    series = _uid(seed, variant, "series")
    sop_class = US_MULTIFRAME_IMAGE_STORAGE if multiframe else US_IMAGE_STORAGE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, cols = frame_size
    colour = photometric == "RGB"
    written: list[USInstanceTruth] = []
    for i, ph in enumerate(images):
        h, w = ph.image.shape
        free_r, free_c = rows - _TOP - _BOTTOM - h, cols - _LEFT - _RIGHT - w
        if free_r < 0 or free_c < 0:
            raise ValueError(f"a {h}x{w} B-mode image does not fit a {rows}x{cols} frame with its annotations")
        r0 = _TOP + int(rng.integers(0, free_r + 1))
        c0 = _LEFT + int(rng.integers(0, free_c + 1))
        region = (r0, c0, r0 + h, c0 + w)
        n_frames = frames if multiframe else 1
        middle = n_frames // 2
        bmodes = []
        for f in range(n_frames):
            if f == middle or ph.seed is None:
                bmodes.append(ph.image)
            else:
                bmodes.append(respeckle(ph, int(np.random.default_rng([seed, i, f, 77]).integers(2**31 - 1))).image)
        canvas = _Canvas(frame_size, colour)
        canvas.block(r0, c0, ph.image)
        _annotations(canvas, frame_size, region, ph.spacing_mm, when.strftime("%Y%m%d"), patient_id, rng)
        flow_box = _doppler(canvas, region, rng) if doppler else None
        for box in canvas.boxes:
            if box[0] < region[2] and region[0] < box[2] and box[1] < region[3] and region[1] < box[3]:
                raise AssertionError(f"burned-in annotation {box} overlaps the B-mode region {region}")
        base = np.asarray(canvas.image)
        stack = np.repeat(base[None], n_frames, axis=0)
        if colour:
            colour_px = (base.max(axis=2) != base.min(axis=2))[r0:r0 + h, c0:c0 + w]
            for f, bm in enumerate(bmodes):
                grey = np.repeat(bm[..., None], 3, axis=2)
                stack[f, r0:r0 + h, c0:c0 + w] = np.where(colour_px[..., None], base[r0:r0 + h, c0:c0 + w], grey)
        else:
            for f, bm in enumerate(bmodes):
                stack[f, r0:r0 + h, c0:c0 + w] = bm
        sop_uid = _uid(seed, variant, f"sop/{i}")
        ds = _base_dataset(seed, variant, sop_class, sop_uid, series, study, when, patient_id, accession, i + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "SMALL PARTS", "0011" if doppler else "0001"]
        ds.SamplesPerPixel = 3 if colour else 1
        ds.PhotometricInterpretation = photometric
        if colour:
            ds.PlanarConfiguration = 0
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.TransducerType = "LINEAR"
        ds.TransducerData = ["L12-5", "", ""]
        ds.ProcessingFunction = "THYROID"
        if multiframe:
            ds.NumberOfFrames = n_frames
            ds.FrameIncrementPointer = 0x00181063  # FrameTime
            ds.FrameTime = f"{_FRAME_TIME_MS:g}"
            ds.CineRate = int(round(1000.0 / _FRAME_TIME_MS))
            ds.RecommendedDisplayFrameRate = ds.CineRate
            ds.StartTrim, ds.StopTrim = 1, n_frames
            ds.ActualFrameDuration = int(_FRAME_TIME_MS)
        if calibrated:
            items = [_region_item(region, 1, ph.spacing_mm)]
            if flow_box is not None:
                items.append(_region_item(flow_box, 2, ph.spacing_mm))
            ds.SequenceOfUltrasoundRegions = DicomSequence(items)
        path = out_dir / f"{sop_uid}.dcm"
        _store(ds, stack, transfer_syntax, colour)
        ds.save_as(path, enforce_file_format=True)
        written.append(USInstanceTruth(
            path=path, sop_instance_uid=sop_uid, series_instance_uid=series, sop_class_uid=sop_class,
            number_of_frames=n_frames if multiframe else None, region=region,
            spacing_mm=(ph.spacing_mm, ph.spacing_mm) if calibrated else None,
            text_boxes=tuple(canvas.boxes), phantom=ph, doppler_region=flow_box,
            middle_frame=middle + 1 if multiframe else None,
        ))
    logger.info("wrote US phantom study (%d instances, %s)", len(written), transfer_syntax)
    return USPhantomStudy(study, tuple(written))


def _store(ds: Dataset, stack: np.ndarray, transfer_syntax: str, colour: bool) -> None:
    """Put the frames into ``ds`` in ``transfer_syntax`` (native first, then compressed)."""
    ts = TRANSFER_SYNTAXES[transfer_syntax]
    if ts == JPEGBaseline8Bit:
        ds.PixelData = encapsulate(_encode_jpeg(stack), has_bot=True)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
        if colour:
            ds.PhotometricInterpretation = "YBR_FULL_422"
        raw = stack.nbytes
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{raw / max(len(ds.PixelData), 1):.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        return
    ds.PixelData = np.ascontiguousarray(stack).tobytes()
    ds["PixelData"].VR = "OB"
    if ts.is_compressed:
        if ts == JPEG2000Lossless and colour:
            ds.PhotometricInterpretation = "YBR_RCT"  # RGB pixels, coded with the reversible colour transform
        ds.compress(ts)
    else:
        ds.file_meta.TransferSyntaxUID = ts
