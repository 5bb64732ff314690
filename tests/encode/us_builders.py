"""A small synthetic thyroid ultrasound study and the US results around it.

Four instances of one study, none with a Frame of Reference (as B-mode scanners write them):

* :func:`us_rgb`: US Image Storage, RGB, 8 bit, 120 x 160, a calibrated B-mode region
  (Sequence of Ultrasound Regions, 0.2 mm pixels); two nodules (1 and 2).
  :func:`us_rgb_jpeg` is the same instance as YBR_FULL_422 JPEG Baseline.
* :func:`us_cine`: US Multi-frame Image Storage, RGB, 4 frames, same calibration, in its own
  series; nodule 3 on frame 3, its outline taken from a site SEG.
* :func:`us_mono`: US Image Storage, MONOCHROME2, a region without physical units (the
  node measures in pixels); nodule 4.
* :func:`us_doppler`: US Image Storage, RGB, the image the pipeline refused (not analysable).

Each nodule is a dark ellipse in the speckle; its mask is cropped to its bounding box as
``USNodule`` says, and its sizes are measured on that mask.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Final

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

from workers.pipelines.results import (
    ModelInfo,
    NotAnalysable,
    SourceImage,
    USImageUsed,
    USNodule,
    USResults,
)

ROWS: Final[int] = 120
COLUMNS: Final[int] = 160
CINE_FRAMES: Final[int] = 4
CINE_FRAME: Final[int] = 3  # the frame the pipeline analysed
PIXEL_MM: Final[float] = 0.2  # PhysicalDeltaX/Y 0.02 cm
US_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.3.1"
#: B-mode region of every image: (row0, col0, row1, col1), end exclusive
REGION: Final[tuple[int, int, int, int]] = (10, 8, 114, 152)
MALIGNANCY_THRESHOLD: Final[float] = 0.5
LVLNM_THRESHOLD: Final[float] = 0.4
# per nodule: (image key, centre (row, column), semi-axes (rows, columns), malignancy, lvlnm)
NODULES: Final[tuple[tuple[str, tuple[int, int], tuple[int, int], float, float], ...]] = (
    ("rgb", (50, 50), (14, 22), 0.8125, 0.375),
    ("rgb", (80, 115), (10, 12), 0.125, 0.625),
    ("cine", (60, 90), (16, 25), 0.6875, 0.25),
    ("mono", (64, 70), (12, 18), 0.25, 0.5),
)
_STUDY: Final[str] = generate_uid(entropy_srcs=["us-builders", "study"])


def _uid(*what: str) -> str:
    return str(generate_uid(entropy_srcs=["us-builders", *what]))


def _ellipse(centre: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    rr, cc = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float64)
    return ((rr - centre[0]) / axes[0]) ** 2 + ((cc - centre[1]) / axes[1]) ** 2 <= 1.0


def _b_mode(seed: int, nodules: list[int]) -> np.ndarray:
    """A grey speckle image, dark outside the B-mode region, darker ellipses for the nodules."""
    rng = np.random.default_rng(seed)
    grey = rng.gamma(4.0, 22.0, size=(ROWS, COLUMNS))
    for n in nodules:
        grey[_ellipse(NODULES[n - 1][1], NODULES[n - 1][2])] *= 0.35
    r0, c0, r1, c1 = REGION
    out = np.zeros((ROWS, COLUMNS))
    out[r0:r1, c0:c1] = grey[r0:r1, c0:c1]
    return np.clip(out, 0, 255).astype(np.uint8)


def _rgb(grey: np.ndarray) -> np.ndarray:
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[2:8, 2:40] = (255, 255, 0)  # a yellow annotation bar, as scanners burn in
    return rgb


def _region(calibrated: bool) -> Dataset:
    r0, c0, r1, c1 = REGION
    item = Dataset()
    item.RegionSpatialFormat = 1  # 2D
    item.RegionDataType = 1  # tissue
    item.RegionFlags = 0
    item.RegionLocationMinX0 = c0
    item.RegionLocationMinY0 = r0
    item.RegionLocationMaxX1 = c1 - 1
    item.RegionLocationMaxY1 = r1 - 1
    item.PhysicalUnitsXDirection = 3 if calibrated else 0  # cm, or none
    item.PhysicalUnitsYDirection = 3 if calibrated else 0
    item.PhysicalDeltaX = PIXEL_MM / 10.0 if calibrated else 0.0
    item.PhysicalDeltaY = PIXEL_MM / 10.0 if calibrated else 0.0
    return item


def _common(ds: Dataset, *, series: str, series_number: int, sop_class: str, key: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid("instance", key)
    ds.PatientName = "US^Phantom"
    ds.PatientID = "USPHANTOM01"
    ds.PatientBirthDate = "19800202"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = _STUDY
    ds.StudyDate = "20250311"
    ds.StudyTime = "141000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "US1"
    ds.AccessionNumber = "ACC-US-1"
    ds.Modality = "US"
    ds.SeriesInstanceUID = _uid("series", series)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "Thyroid"
    ds.BodyPartExamined = "THYROID"
    ds.Manufacturer = "Phantom US"
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ContentDate = "20250311"
    ds.ContentTime = "141200"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.Rows = ROWS
    ds.Columns = COLUMNS


def _meta(ds: Dataset) -> pydicom.Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def _colour(ds: Dataset) -> None:
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0


def us_rgb() -> pydicom.Dataset:
    """Single-frame RGB B-mode image with nodules 1 and 2, calibrated."""
    ds = Dataset()
    _common(ds, series="rgb", series_number=1, sop_class=US_IMAGE_STORAGE, key="rgb")
    _colour(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "THYROID", "0001"]
    ds.SequenceOfUltrasoundRegions = [_region(calibrated=True)]
    ds.PixelData = _rgb(_b_mode(1, [1, 2])).tobytes()
    return _meta(ds)


def us_rgb_jpeg() -> pydicom.Dataset:
    """:func:`us_rgb` as scanners often send it: YBR_FULL_422, JPEG Baseline (same UIDs)."""
    ds = us_rgb()
    rgb = ds.pixel_array
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95, subsampling=1)  # 4:2:2
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = round(rgb.nbytes / len(buffer.getvalue()), 2)
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


def us_cine() -> pydicom.Dataset:
    """Multi-frame RGB cine clip; nodule 3 on every frame (analysed: frame 3)."""
    ds = Dataset()
    _common(ds, series="cine", series_number=2, sop_class=US_MULTIFRAME_IMAGE_STORAGE, key="cine")
    _colour(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "THYROID", "0001"]
    ds.NumberOfFrames = CINE_FRAMES
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 40.0
    ds.SequenceOfUltrasoundRegions = [_region(calibrated=True)]
    frames = [_rgb(_b_mode(10 + f, [3])) for f in range(CINE_FRAMES)]
    ds.PixelData = np.stack(frames).tobytes()
    return _meta(ds)


def us_mono() -> pydicom.Dataset:
    """Single-frame MONOCHROME2 image with nodule 4; its region has no physical units."""
    ds = Dataset()
    _common(ds, series="mono", series_number=3, sop_class=US_IMAGE_STORAGE, key="mono")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "THYROID", "0001"]
    ds.SequenceOfUltrasoundRegions = [_region(calibrated=False)]
    ds.PixelData = _b_mode(3, [4]).tobytes()
    return _meta(ds)


def us_doppler() -> pydicom.Dataset:
    """Single-frame RGB image the pipeline could not use."""
    ds = Dataset()
    _common(ds, series="rgb", series_number=1, sop_class=US_IMAGE_STORAGE, key="doppler")
    _colour(ds)
    ds.InstanceNumber = 2
    ds.ImageType = ["ORIGINAL", "PRIMARY", "THYROID", "0001"]
    ds.SequenceOfUltrasoundRegions = [_region(calibrated=True)]
    ds.PixelData = _rgb(_b_mode(4, [])).tobytes()
    return _meta(ds)


def study() -> list[pydicom.Dataset]:
    """Every instance of the study: RGB, cine, mono, Doppler."""
    return [us_rgb(), us_cine(), us_mono(), us_doppler()]


def seg_model(*, demo: bool = True, version: str = "0.1.0-demo") -> ModelInfo:
    return ModelInfo(
        name="us_nodule_seg",
        version=version,
        title="Thyroid nodule segmentation (U-Net)",
        weights_sha256="3c" * 32,
        demo=demo,
    )


def malignancy_model(*, demo: bool = True, version: str = "0.1.0-demo") -> ModelInfo:
    return ModelInfo(
        name="us_calcified_nodule",
        version=version,
        title="Calcified nodule benign/malignant (Xception, Chen 2023)",
        weights_sha256="4d" * 32,
        demo=demo,
    )


def lvlnm_model(*, demo: bool = True, version: str = "0.1.0-demo") -> ModelInfo:
    return ModelInfo(
        name="us_lvlnm",
        version=version,
        title="Large-volume node metastasis (DenseNet121 + radiomics MLP, Ni 2024)",
        weights_sha256="5e" * 32,
        demo=demo,
    )


def source(ds: pydicom.Dataset, frame: int | None = None) -> SourceImage:
    return SourceImage(
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        frame_number=frame,
    )


def image_used(ds: pydicom.Dataset) -> USImageUsed:
    """The image (frame :data:`CINE_FRAME` of a cine clip) as the pipeline reports it."""
    calibrated = ds.SequenceOfUltrasoundRegions[0].PhysicalUnitsXDirection == 3
    frame = CINE_FRAME if "NumberOfFrames" in ds else None
    return USImageUsed(
        source=source(ds, frame),
        rows=ROWS,
        columns=COLUMNS,
        region=REGION,
        spacing_mm=(PIXEL_MM, PIXEL_MM) if calibrated else None,
        choice=(
            "calibrated B-mode region 1 of the Sequence of Ultrasound Regions"
            if calibrated
            else "region 1 has no physical units: sizes in pixels"
        )
        + (f"; frame {frame} of {CINE_FRAMES}: the sharpest" if frame else ""),
    )


def nodule_mask(index: int) -> np.ndarray:
    """Full-frame bool mask of nodule ``index``."""
    _, centre, axes, _, _ = NODULES[index - 1]
    return _ellipse(centre, axes)


def _heatmap(shape: tuple[int, int]) -> np.ndarray:
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    cy, cx = 0.45 * shape[0], 0.55 * shape[1]
    blob = np.exp(-((rr - cy) ** 2 + (cc - cx) ** 2) / (2.0 * (0.3 * max(shape)) ** 2))
    return (blob / blob.max()).astype(np.float32)


def nodule(index: int, image: USImageUsed) -> USNodule:
    """Nodule ``index`` (1..4) on ``image``, its mask cropped and its sizes measured."""
    full = nodule_mask(index)
    rs, cs = np.nonzero(full)
    box = (int(rs.min()), int(cs.min()), int(rs.max()) + 1, int(cs.max()) + 1)
    mask = full[box[0] : box[2], box[1] : box[3]].copy()
    _, centre, axes, malignancy, lvlnm = NODULES[index - 1]
    scale = image.spacing_mm[0] if image.spacing_mm else 1.0
    long_px, short_px = 2 * max(axes) + 1, 2 * min(axes) + 1
    return USNodule(
        index=index,
        image=image,
        box=box,
        mask=mask,
        outline_source="site SEG" if index == 3 else "model",
        long_axis=long_px * scale,
        short_axis=short_px * scale,
        calibrated=image.spacing_mm is not None,
        area=float(full.sum()) * scale * scale,
        centre_px=(float(rs.mean()), float(cs.mean())),
        malignancy=malignancy,
        malignancy_threshold=MALIGNANCY_THRESHOLD,
        malignancy_backbones=("xception", "densenet169"),
        lvlnm=lvlnm,
        lvlnm_threshold=LVLNM_THRESHOLD,
        heatmap=_heatmap(mask.shape),
    )


def results(
    sources: list[pydicom.Dataset] | None = None,
    *,
    nodules: tuple[int, ...] = (1, 2, 3, 4),
    seg: ModelInfo | None = None,
    malignancy: ModelInfo | None = None,
    lvlnm: ModelInfo | None = None,
    not_analysable: bool = True,
) -> USResults:
    """Results of :func:`study`: the first three images analysed, the Doppler one refused.

    ``nodules`` picks which nodules were found (renumbered 1..N in order, as the pipeline
    numbers them).
    """
    rgb, cine, mono, doppler = sources or study()
    images = {"rgb": image_used(rgb), "cine": image_used(cine), "mono": image_used(mono)}
    found = tuple(
        dataclasses.replace(nodule(n, images[NODULES[n - 1][0]]), index=i)
        for i, n in enumerate(nodules, start=1)
    )
    seg_info = seg or seg_model()
    refused = (
        (
            NotAnalysable(
                source=source(doppler),
                model=seg_info,
                reason="no B-mode region: colour Doppler only",
            ),
        )
        if not_analysable
        else ()
    )
    return USResults(
        study_instance_uid=rgb.StudyInstanceUID,
        segmentation_model=seg_info,
        malignancy_model=malignancy or malignancy_model(),
        lvlnm_model=lvlnm or lvlnm_model(),
        images=tuple(images.values()),
        nodules=found,
        not_analysable=refused,
    )


def with_model_versions(res: USResults, version: str) -> USResults:
    return dataclasses.replace(
        res,
        segmentation_model=seg_model(version=version),
        malignancy_model=malignancy_model(version=version),
        lvlnm_model=lvlnm_model(version=version),
    )
