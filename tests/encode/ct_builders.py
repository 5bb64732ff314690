"""A small synthetic chest CT (single-frame and Enhanced CT) and the CT results around it.

Geometry: 24 axial slices of 64 x 64 pixels, 0.8 x 0.8 mm, 1.25 mm apart, orientation
[1, 0, 0, 0, 1, 0].  Volume slice ``k`` lies at z = Z0 + 1.25 k; the Instance Numbers (and
the Enhanced CT's frame numbers) run the other way, so that an encoder that orders by them
instead of by the ``CTSeriesUsed.slices`` mapping puts lesions on the wrong slices.

Two spherical lesions: lesion 1 in the right lung (patient x < 0, image left), lesion 2 in
the left lung, their masks cropped to a box on the source grid as ``CTLesion`` says.
"""

from __future__ import annotations

import dataclasses
from typing import Final

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from workers.pipelines.results import (
    CTLesion,
    CTResults,
    CTSeriesUsed,
    ModelInfo,
    NotAnalysable,
    SourceImage,
)

N_SLICES: Final[int] = 24
MATRIX: Final[int] = 64
PIXEL_MM: Final[float] = 0.8
SLICE_MM: Final[float] = 1.25
ORIGIN: Final[tuple[float, float, float]] = (-25.2, -60.0, -100.0)  # slice 0, pixel (0, 0)
IOP: Final[tuple[float, ...]] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2.1"
THRESHOLD: Final[float] = 0.5
# (centre in patient mm, radius mm, probability)
LESIONS: Final[tuple[tuple[tuple[float, float, float], float, float], ...]] = (
    ((-11.0, -35.0, -90.5), 3.2, 0.8125),
    ((10.5, -32.0, -85.0), 2.4, 0.25),
)
_STUDY: Final[str] = generate_uid(entropy_srcs=["ct-builders", "study"])
_FOR: Final[str] = generate_uid(entropy_srcs=["ct-builders", "frame-of-reference"])


def _uid(*what: str) -> str:
    return str(generate_uid(entropy_srcs=["ct-builders", *what]))


def voxel_positions() -> np.ndarray:
    """Patient coordinates (LPS, mm) of every voxel centre, shape (k, r, c, 3)."""
    k, r, c = np.meshgrid(
        np.arange(N_SLICES), np.arange(MATRIX), np.arange(MATRIX), indexing="ij"
    )
    x = ORIGIN[0] + c * PIXEL_MM
    y = ORIGIN[1] + r * PIXEL_MM
    z = ORIGIN[2] + k * SLICE_MM
    return np.stack([x, y, z], axis=-1).astype(np.float64)


def lesion_masks() -> list[np.ndarray]:
    """Full-volume bool masks (k, r, c) of the two lesions."""
    pos = voxel_positions()
    return [
        np.linalg.norm(pos - np.asarray(centre), axis=-1) <= radius
        for centre, radius, _ in LESIONS
    ]


def _hu_volume() -> np.ndarray:
    pos = voxel_positions()
    x, y = pos[..., 0], pos[..., 1]
    hu = np.full(pos.shape[:3], -1000.0)
    body = (x / 24.0) ** 2 + ((y + 30.0) / 28.0) ** 2 <= 1.0
    hu[body] = 40.0
    for cx in (-12.0, 12.0):
        lung = ((x - cx) / 9.0) ** 2 + ((y + 33.0) / 16.0) ** 2 <= 1.0
        hu[lung] = -850.0
    for mask in lesion_masks():
        hu[mask] = 30.0
    return hu


def _common(
    ds: Dataset, *, series_uid: str, series_number: int, sop_class: str, sop_uid: str
) -> None:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = "CT^Phantom"
    ds.PatientID = "CTPHANTOM01"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = _STUDY
    ds.StudyDate = "20250310"
    ds.StudyTime = "101500"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "CT1"
    ds.AccessionNumber = "ACC-CT-1"
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "Lung 1.25"
    ds.FrameOfReferenceUID = _FOR
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "Phantom CT"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = MATRIX
    ds.Columns = MATRIX
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.KVP = 120
    ds.ContentDate = "20250310"
    ds.ContentTime = "101501"
    ds.AcquisitionNumber = 1


def _meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta


def _stored(hu: np.ndarray) -> np.ndarray:
    return np.round(hu + 1024.0).astype(np.uint16)  # Rescale Intercept -1024


def ct_series() -> list[pydicom.Dataset]:
    """The single-frame CT series, in volume order (slice k at index k)."""
    hu = _hu_volume()
    series_uid = _uid("series", "single")
    out = []
    for k in range(N_SLICES):
        ds = Dataset()
        _common(
            ds,
            series_uid=series_uid,
            series_number=3,
            sop_class=CT_IMAGE_STORAGE,
            sop_uid=_uid("slice", str(k)),
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = N_SLICES - k
        ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SLICE_MM]
        ds.ImageOrientationPatient = list(IOP)
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.SliceThickness = SLICE_MM
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = _stored(hu[k]).tobytes()
        _meta(ds)
        out.append(ds)
    return out


def _frame_of_slice(k: int) -> int:
    return N_SLICES - k  # frames run from the top (high z) down


def enhanced_ct() -> pydicom.Dataset:
    """The same volume as one Enhanced CT instance, frames in descending z."""
    hu = _hu_volume()
    ds = Dataset()
    _common(
        ds,
        series_uid=_uid("series", "enhanced"),
        series_number=4,
        sop_class=ENHANCED_CT_IMAGE_STORAGE,
        sop_uid=_uid("enhanced"),
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = N_SLICES
    ds.AcquisitionDateTime = "20250310101501"
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [PIXEL_MM, PIXEL_MM]
    measures.SliceThickness = SLICE_MM
    shared.PixelMeasuresSequence = [measures]
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(IOP)
    shared.PlaneOrientationSequence = [orientation]
    transform = Dataset()
    transform.RescaleIntercept = -1024
    transform.RescaleSlope = 1
    transform.RescaleType = "HU"
    shared.PixelValueTransformationSequence = [transform]
    voi = Dataset()
    voi.WindowCenter = 40
    voi.WindowWidth = 400
    shared.FrameVOILUTSequence = [voi]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    frames = []
    for f in range(1, N_SLICES + 1):
        k = N_SLICES - f
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SLICE_MM]
        item.PlanePositionSequence = [position]
        content = Dataset()
        content.FrameAcquisitionNumber = 1
        content.InStackPositionNumber = f
        content.StackID = "1"
        item.FrameContentSequence = [content]
        per_frame.append(item)
        frames.append(_stored(hu[k]))
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.stack(frames).tobytes()
    _meta(ds)
    return ds


def seg_model(*, demo: bool = True, version: str = "0.1.0-demo") -> ModelInfo:
    return ModelInfo(
        name="ct_lung_met_seg",
        version=version,
        title="Lung metastasis segmentation (SE V-Net, Gao 2024)",
        weights_sha256="1a" * 32,
        demo=demo,
    )


def cls_model(*, demo: bool = True, version: str = "0.1.0-demo") -> ModelInfo:
    return ModelInfo(
        name="ct_lung_met_rai",
        version=version,
        title="RAI-refractory lung metastasis (3D SE-ResNet, Gao 2024)",
        weights_sha256="2b" * 32,
        demo=demo,
    )


def _source(ds: pydicom.Dataset, frame: int | None = None) -> SourceImage:
    return SourceImage(
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        frame_number=frame,
    )


def series_used(sources: list[pydicom.Dataset]) -> CTSeriesUsed:
    """``CTSeriesUsed`` of :func:`ct_series` (volume order) or ``[enhanced_ct()]``."""
    if len(sources) == 1:
        (ds,) = sources
        slices = tuple(_source(ds, _frame_of_slice(k)) for k in range(N_SLICES))
    else:
        slices = tuple(_source(ds) for ds in sources)
    return CTSeriesUsed(
        series_instance_uid=sources[0].SeriesInstanceUID,
        slices=slices,
        choice=f"series {sources[0].SeriesNumber} 'Lung 1.25': {N_SLICES} axial slices of 1.25 mm",
    )


def _heatmap(centre_rc: tuple[float, float]) -> np.ndarray:
    rr, cc = np.mgrid[0:MATRIX, 0:MATRIX].astype(np.float64)
    blob = np.exp(-((rr - centre_rc[0]) ** 2 + (cc - centre_rc[1]) ** 2) / (2.0 * 4.0**2))
    return (blob / blob.max()).astype(np.float32)


def lesion(index: int) -> CTLesion:
    """Lesion ``index`` (1 or 2) with its cropped mask and figures measured on the grid."""
    centre, _radius, probability = LESIONS[index - 1]
    full = lesion_masks()[index - 1]
    ks, rs, cs = np.nonzero(full)
    origin = (int(ks.min()), int(rs.min()), int(cs.min()))
    box = full[origin[0] : ks.max() + 1, origin[1] : rs.max() + 1, origin[2] : cs.max() + 1]
    points = voxel_positions()[full]
    diffs = points[:, None, :] - points[None, :, :]
    diameter = float(np.sqrt((diffs**2).sum(-1)).max())
    centre_slice = int(round((centre[2] - ORIGIN[2]) / SLICE_MM))
    centre_rc = ((centre[1] - ORIGIN[1]) / PIXEL_MM, (centre[0] - ORIGIN[0]) / PIXEL_MM)
    return CTLesion(
        index=index,
        centre_mm=tuple(float(v) for v in points.mean(axis=0)),  # type: ignore[arg-type]
        diameter_mm=diameter,
        volume_mm3=float(full.sum() * PIXEL_MM * PIXEL_MM * SLICE_MM),
        side="right" if centre[0] < 0 else "left",
        probability=probability,
        threshold=THRESHOLD,
        box_origin=origin,
        mask=box.copy(),
        centre_slice=centre_slice,
        heatmap=_heatmap(centre_rc),
    )


def results(
    sources: list[pydicom.Dataset],
    *,
    lesions: tuple[CTLesion, ...] | None = None,
    seg: ModelInfo | None = None,
    cls: ModelInfo | None = None,
) -> CTResults:
    return CTResults(
        study_instance_uid=sources[0].StudyInstanceUID,
        segmentation_model=seg or seg_model(),
        classifier_model=cls or cls_model(),
        series=series_used(sources),
        lesions=(lesion(1), lesion(2)) if lesions is None else lesions,
    )


def not_analysable(sources: list[pydicom.Dataset], reason: str) -> CTResults:
    return CTResults(
        study_instance_uid=sources[0].StudyInstanceUID,
        segmentation_model=seg_model(),
        classifier_model=cls_model(),
        not_analysable=(
            NotAnalysable(source=_source(sources[0]), model=seg_model(), reason=reason),
        ),
    )


def with_model_versions(res: CTResults, version: str) -> CTResults:
    return dataclasses.replace(
        res,
        segmentation_model=seg_model(version=version),
        classifier_model=cls_model(version=version),
    )
