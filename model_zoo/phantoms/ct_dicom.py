"""Writing CT phantoms (:mod:`model_zoo.phantoms.ct`) as DICOM studies with known nodules.

:func:`write_ct_study` writes the main axial series as CT Image Storage files (or one Enhanced CT
Image Storage instance), in any slice order, head- or feet-first, in any lossless transfer syntax,
and optionally a localizer, a coronal reformat and a thick-slice series beside it; or series the
node must refuse (gantry tilt, uneven spacing, an abdomen). Every file passes ``dciodvfy``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from model_zoo.phantoms.ct import (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    HU_MAX,
    HU_MIN,
    ChestPhantom,
    CTPhantomStudy,
    PhantomNodule,
    chest_phantom,
)

logger = logging.getLogger(__name__)

_UID_TAG: Final[str] = "thyroid-node-phantom-ct-v1"


def _ds_str(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(**attrs: object) -> DicomSequence:
    """A one-item sequence; numbers given as text become floats where the VR is binary (FD, FL)."""
    item = Dataset()
    for key, val in attrs.items():
        if dictionary_VR(key) in ("FD", "FL"):
            val = [float(v) for v in val] if isinstance(val, list) else float(val)  # type: ignore[arg-type]
        setattr(item, key, val)
    return DicomSequence([item])


@dataclass(frozen=True)
class _Slice:
    """One image to write: stored pixels and where they lie."""

    pixels: np.ndarray  # uint16 (rows, cols), stored values
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    spacing: tuple[float, float]  # PixelSpacing (between rows, between columns)
    thickness: float


class _Writer:
    """Common attributes of every image of one phantom study."""

    def __init__(self, seed: int, variant: str, kind: str, body_part: str | None, feet_first: bool) -> None:
        self.seed, self.variant = seed, variant
        digest = hashlib.sha256(f"{_UID_TAG}|{seed}".encode()).hexdigest()[:8].upper()
        self.patient_id, self.patient_name = f"PHANTOM-CT-{digest}", f"PHANTOM^CT{digest}"
        rng = np.random.default_rng([seed, 104729])
        when = _dt.datetime(2024, 1, 1, 8, 0) + _dt.timedelta(
            days=int(rng.integers(0, 365)), minutes=int(rng.integers(0, 480))
        )
        self.date, self.time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
        self.kind, self.body_part, self.feet_first = kind, body_part, feet_first
        self.study_uid = self.uid("study")
        self.for_uid = self.uid("for")

    def uid(self, what: str) -> str:
        return str(generate_uid(entropy_srcs=[_UID_TAG, str(self.seed), self.variant, what]))

    def dataset(self, sop_class: str, sop_uid: str, series_uid: str, series_number: int, description: str) -> Dataset:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.InstanceCreationDate, ds.InstanceCreationTime = self.date, self.time
        ds.PatientName, ds.PatientID = self.patient_name, self.patient_id
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "Synthetic phantom, no real patient"
        ds.StudyInstanceUID = self.study_uid
        ds.StudyDate, ds.StudyTime = self.date, self.time
        ds.ReferringPhysicianName = ""
        ds.StudyID = f"C{self.seed % 100000:05d}"
        ds.AccessionNumber = f"PC{self.patient_id[-8:]}"
        ds.StudyDescription = "CT CHEST NON-CONTRAST (PHANTOM)" if self.kind == "chest" else "CT ABDOMEN (PHANTOM)"
        ds.Modality = "CT"
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
        ds.SeriesDate, ds.SeriesTime = self.date, self.time
        ds.SeriesDescription = description
        if self.body_part is not None:
            ds.BodyPartExamined = self.body_part
        ds.PatientPosition = "FFS" if self.feet_first else "HFS"
        ds.FrameOfReferenceUID = self.for_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "Thyroid AI Node phantom"
        ds.ManufacturerModelName = "ct-chest-phantom"
        ds.DeviceSerialNumber = "0001"
        ds.SoftwareVersions = "1"
        ds.InstitutionName = "Phantom Institution"
        ds.StationName = "PHANTOM"
        ds.ContentDate, ds.ContentTime = self.date, self.time
        ds.AcquisitionDate, ds.AcquisitionTime = self.date, self.time
        ds.BurnedInAnnotation = "NO"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        return ds

    def ct_image(self, ds: Dataset, sl: _Slice, image_type: list[str], instance: int, tilt_deg: float) -> Dataset:
        """Fill the per-image attributes of a (single-frame) CT Image."""
        ds.ImageType = image_type
        ds.InstanceNumber = instance
        ds.AcquisitionNumber = 1
        ds.KVP = "120"
        ds.ConvolutionKernel = "B30f"
        ds.GantryDetectorTilt = _ds_str(tilt_deg)
        ds.ImagePositionPatient = [_ds_str(v) for v in sl.position]
        ds.ImageOrientationPatient = [_ds_str(v) for v in sl.orientation]
        ds.PixelSpacing = [_ds_str(v) for v in sl.spacing]
        ds.SliceThickness = _ds_str(sl.thickness)
        ds.SliceLocation = _ds_str(sl.position[2])
        ds.RescaleIntercept, ds.RescaleSlope = str(HU_MIN), "1"
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.Rows, ds.Columns = sl.pixels.shape
        ds.PixelData = np.ascontiguousarray(sl.pixels, dtype=np.uint16).tobytes()
        return ds


def _stored(hu: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.clip(np.rint(hu) - HU_MIN, 0, HU_MAX - HU_MIN).astype(np.uint16)
    return out


def _axial_slices(
    phantom: ChestPhantom, feet_first: bool, tilt_deg: float, thickness: float, group: int = 1
) -> list[_Slice]:
    """Axial images of the phantom in canonical slice order (``group`` slices averaged into one)."""
    aff = phantom.affine
    n = phantom.hu.shape[0] // group
    shear = np.tan(np.deg2rad(tilt_deg))
    out = []
    for j in range(n):
        block = phantom.hu[j * group : (j + 1) * group]
        hu = block[0] if group == 1 else block.mean(axis=0)
        z = aff[2, 3] + (j * group + (group - 1) / 2) * aff[2, 0]
        y = aff[1, 3] + (z - aff[2, 3]) * shear
        if feet_first:  # rows run to the patient's right: columns mirrored, first column at max x
            x = aff[0, 3] + (hu.shape[1] - 1) * aff[0, 2]
            orient: tuple[float, ...] = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
            hu = hu[:, ::-1]
        else:
            x, orient = aff[0, 3], (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        out.append(_Slice(_stored(hu), (x, y, z), orient, (aff[1, 1], aff[0, 2]), thickness))
    return out


def _coronal_slices(phantom: ChestPhantom, count: int) -> list[_Slice]:
    """Coronal reformats (rows from superior to inferior, columns to the patient's left)."""
    aff, shape = phantom.affine, phantom.hu.shape
    top = aff[2, 3] + (shape[0] - 1) * aff[2, 0]
    rows = np.unique(np.linspace(0.15 * shape[1], 0.85 * shape[1], count).astype(int))
    return [
        _Slice(_stored(phantom.hu[::-1, r, :]), (aff[0, 3], aff[1, 3] + r * aff[1, 1], top),
               (1.0, 0.0, 0.0, 0.0, 0.0, -1.0), (aff[2, 0], aff[0, 2]), aff[1, 1])
        for r in rows
    ]


def _localizer(phantom: ChestPhantom) -> _Slice:
    """An antero-posterior projection (a topogram), coronal orientation."""
    aff, shape = phantom.affine, phantom.hu.shape
    path = np.clip(phantom.hu + 1000.0, 0.0, None).sum(axis=1)[::-1] * aff[1, 1] / 1000.0  # water-equivalent mm
    scaled = path / max(float(path.max()), 1.0) * 3000.0 + HU_MIN
    top = aff[2, 3] + (shape[0] - 1) * aff[2, 0]
    return _Slice(_stored(scaled), (aff[0, 3], 0.0, top), (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
                  (aff[2, 0], aff[0, 2]), 1.0)


def _enhanced(writer: _Writer, slices: list[_Slice], sop_uid: str, series_uid: str, description: str,
              tilt_deg: float) -> Dataset:
    """One Enhanced CT Image holding ``slices`` as frames, in the given order."""
    ds = writer.dataset(ENHANCED_CT_IMAGE_STORAGE, sop_uid, series_uid, 3, description)
    del ds.AcquisitionDate, ds.AcquisitionTime
    first = slices[0]
    frame_type = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    acquired = f"{writer.date}{writer.time}"
    ds.ImageType = frame_type
    ds.InstanceNumber, ds.AcquisitionNumber = 1, 1
    ds.AcquisitionDateTime, ds.AcquisitionDuration = acquired, 5.0
    ds.ContentQualification = "RESEARCH"
    ds.PixelPresentation, ds.VolumetricProperties, ds.VolumeBasedCalculationTechnique = "MONOCHROME", "VOLUME", "NONE"
    ds.PresentationLUTShape, ds.LossyImageCompression = "IDENTITY", "00"
    ds.AcquisitionContextSequence = DicomSequence([])
    dim_uid = writer.uid(f"dimension/{series_uid}")
    ds.DimensionOrganizationSequence = _item(DimensionOrganizationUID=dim_uid)
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = _item(
        DimensionOrganizationUID=dim_uid, DimensionIndexPointer=0x00200032, FunctionalGroupPointer=0x00209113,
        DimensionDescriptionLabel="Image Position",
    )
    anatomy = _code("51185008", "SCT", "Thorax") if writer.kind == "chest" else _code("818981001", "SCT", "Abdomen")
    shared = Dataset()
    shared.PixelMeasuresSequence = _item(
        PixelSpacing=[_ds_str(v) for v in first.spacing], SliceThickness=_ds_str(first.thickness)
    )
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=[_ds_str(v) for v in first.orientation])
    shared.PixelValueTransformationSequence = _item(RescaleIntercept=str(HU_MIN), RescaleSlope="1", RescaleType="HU")
    shared.FrameVOILUTSequence = _item(WindowCenter="-600", WindowWidth="1500")
    shared.FrameAnatomySequence = _item(AnatomicRegionSequence=DicomSequence([anatomy]), FrameLaterality="U")
    shared.IrradiationEventIdentificationSequence = _item(IrradiationEventUID=writer.uid(f"event/{series_uid}"))
    shared.CTImageFrameTypeSequence = _item(
        FrameType=frame_type, PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE",
    )
    shared.CTAcquisitionTypeSequence = _item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")
    shared.CTAcquisitionDetailsSequence = _item(
        DataCollectionDiameter="500", RevolutionTime="0.5", TotalCollimationWidth="38.4",
        SingleCollimationWidth="0.6", TableHeight="150", GantryDetectorTilt=_ds_str(tilt_deg), RotationDirection="CW",
    )
    shared.CTTableDynamicsSequence = _item(TableSpeed="46", TableFeedPerRotation="23", SpiralPitchFactor="0.6")
    shared.CTGeometrySequence = _item(DistanceSourceToDetector="1085.6", DistanceSourceToDataCollectionCenter="595")
    fov = first.pixels.shape[1] * first.spacing[1]
    shared.CTReconstructionSequence = _item(
        ReconstructionAlgorithm="FILTER_BACK_PROJ", ConvolutionKernel="B30f", ConvolutionKernelGroup="SOFT_TISSUE",
        ReconstructionDiameter=_ds_str(fov), ReconstructionPixelSpacing=[_ds_str(v) for v in first.spacing],
        ReconstructionAngle=360.0, ImageFilter="NONE",
    )
    shared.CTExposureSequence = _item(
        ExposureTimeInms=500.0, XRayTubeCurrentInmA=200.0, ExposureInmAs=100.0, ExposureModulationType="NONE",
        CTDIvol=6.0, CTDIPhantomTypeCodeSequence=DicomSequence([_code("113691", "DCM", "IEC Body Dosimetry Phantom")]),
    )
    shared.CTXRayDetailsSequence = _item(KVP="120", FocalSpots=["1.2"], FilterType="BODY", FilterMaterial=["ALUMINUM"])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ranks = np.argsort(np.argsort([s.position[2] for s in slices]))  # stack position: ascending z
    frames = []
    for j, sl in enumerate(slices):
        item = Dataset()
        item.FrameContentSequence = _item(
            FrameAcquisitionNumber=1, FrameReferenceDateTime=acquired, FrameAcquisitionDateTime=acquired,
            FrameAcquisitionDuration=500.0, StackID="1", InStackPositionNumber=int(ranks[j]) + 1,
            DimensionIndexValues=[int(ranks[j]) + 1],
        )
        item.PlanePositionSequence = _item(ImagePositionPatient=[_ds_str(v) for v in sl.position])
        centre = [_ds_str(0.0), _ds_str(0.0), _ds_str(sl.position[2])]
        item.CTPositionSequence = _item(
            TablePosition=_ds_str(sl.position[2]), ReconstructionTargetCenterPatient=centre,
            DataCollectionCenterPatient=centre,
        )
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.NumberOfFrames = len(slices)
    ds.Rows, ds.Columns = first.pixels.shape
    ds.PixelData = np.stack([s.pixels for s in slices]).astype(np.uint16).tobytes()
    return ds


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> Path:
    ts = UID(transfer_syntax)
    if ts.is_compressed:
        ds.compress(ts)
    else:
        ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_study(
    out_dir: Path,
    seed: int,
    *,
    rows: int = 256,
    slices: int = 80,
    pixel_mm: float = 0.8,
    slice_mm: float = 1.25,
    nodules: int | Sequence[PhantomNodule] = 4,
    diameter_range: tuple[float, float] = (5.0, 20.0),
    kind: str = "chest",
    feet_first: bool = False,
    order: str = "ascending",
    transfer_syntaxes: Sequence[str] = (ExplicitVRLittleEndian,),
    gantry_tilt_deg: float = 0.0,
    enhanced: bool = False,
    body_part: str | None = "CHEST",
    extra_series: Sequence[str] = (),
    uneven_spacing: bool = False,
) -> CTPhantomStudy:
    """Write a phantom CT study: one analysable axial series, optionally with distractor series.

    Parameters
    ----------
    out_dir : pathlib.Path
        Created if missing; files are named ``<SOPInstanceUID>.dcm``.
    seed : int
        Seeds the phantom (the same seed and grid give the same phantom whatever the other options),
        the UIDs (which also depend on every option) and the fake patient.
    rows, slices, pixel_mm, slice_mm : int, int, float, float
        Matrix (rows = columns), slice count, pixel spacing and slice spacing (= thickness), mm.
    nodules, diameter_range, kind
        As for :func:`chest_phantom`.
    feet_first : bool
        PatientPosition FFS, rows running to the patient's right (ImageOrientationPatient
        ``[-1, 0, 0, 0, 1, 0]``, so the slice normal points to the feet).
    order : str
        Writing (acquisition) order: ``"ascending"`` (inferior to superior), ``"descending"``, or
        ``"shuffled"`` (also scrambles the Instance Numbers, which then do not sort the slices).
    transfer_syntaxes : sequence of str
        Cycled slice by slice (lossless ones keep the HU exact); an Enhanced CT uses the first.
    gantry_tilt_deg : float
        Non-zero: GantryDetectorTilt set and positions sheared along y (pixels are not re-sampled).
    enhanced : bool
        Write the main series as one Enhanced CT Image (multi-frame) instead.
    body_part : str or None
        BodyPartExamined (omitted when None).
    extra_series : sequence of str
        Any of ``"localizer"`` (one topogram), ``"coronal"`` (~40 reformats), ``"thick"`` (5 mm axial).
    uneven_spacing : bool
        Leave out the middle slice (one doubled gap); ``phantom`` still holds every slice.

    Returns
    -------
    CTPhantomStudy
    """
    if order not in ("ascending", "descending", "shuffled"):
        raise ValueError(f"unknown order {order!r}")
    unknown = set(extra_series) - {"localizer", "coronal", "thick"}
    if unknown:
        raise ValueError(f"unknown extra series {sorted(unknown)}")
    phantom = chest_phantom(
        np.random.default_rng([seed, 7127]), shape=(slices, rows, rows), spacing=(slice_mm, pixel_mm, pixel_mm),
        nodules=nodules, diameter_range=diameter_range, kind=kind,
    )
    variant = repr((rows, slices, pixel_mm, slice_mm, nodules, diameter_range, kind, feet_first, order,
                    tuple(transfer_syntaxes), gantry_tilt_deg, enhanced, body_part, tuple(extra_series),
                    uneven_spacing))
    writer = _Writer(seed, variant, kind, body_part, feet_first)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 31])
    title = "Chest" if kind == "chest" else "Abdomen"
    paths: list[Path] = []
    extras: dict[str, str] = {}

    def write_series(role: str, number: int, description: str, images: list[_Slice], image_type: list[str],
                     tilt: float = 0.0, syntaxes: Sequence[str] = (ExplicitVRLittleEndian,),
                     numbers: Sequence[int] | None = None) -> str:
        series_uid = writer.uid(f"series/{role}")
        for i, sl in enumerate(images):
            ds = writer.dataset(CT_IMAGE_STORAGE, writer.uid(f"sop/{role}/{i}"), series_uid, number, description)
            writer.ct_image(ds, sl, image_type, numbers[i] if numbers else i + 1, tilt)
            paths.append(_save(ds, out_dir / f"{ds.SOPInstanceUID}.dcm", syntaxes[i % len(syntaxes)]))
        return series_uid

    if "localizer" in extra_series:
        extras["localizer"] = write_series("localizer", 1, "Topogram", [_localizer(phantom)],
                                           ["ORIGINAL", "PRIMARY", "LOCALIZER"])
    if "thick" in extra_series:
        group = max(1, int(round(5.0 / slice_mm)))
        thick = _axial_slices(phantom, feet_first, 0.0, group * slice_mm, group)
        extras["thick"] = write_series("thick", 2, f"{title} {group * slice_mm:g} mm", thick,
                                       ["ORIGINAL", "PRIMARY", "AXIAL"])
    main = _axial_slices(phantom, feet_first, gantry_tilt_deg, slice_mm)
    if uneven_spacing:
        del main[len(main) // 2]
    if order == "descending":
        main = main[::-1]
    elif order == "shuffled":
        main = [main[i] for i in rng.permutation(len(main))]
    instances = [int(i) + 1 for i in (rng.permutation(len(main)) if order == "shuffled" else range(len(main)))]
    description = f"{title} {slice_mm:g} mm"
    if enhanced:
        series_uid = writer.uid("series/main")
        ds = _enhanced(writer, main, writer.uid("sop/main/enhanced"), series_uid, description, gantry_tilt_deg)
        paths.append(_save(ds, out_dir / f"{ds.SOPInstanceUID}.dcm", transfer_syntaxes[0]))
    else:
        series_uid = write_series("main", 3, description, main, ["ORIGINAL", "PRIMARY", "AXIAL"],
                                  gantry_tilt_deg, transfer_syntaxes, instances)
    if "coronal" in extra_series:
        extras["coronal"] = write_series("coronal", 4, f"{title} coronal", _coronal_slices(phantom, 40),
                                         ["DERIVED", "SECONDARY", "REFORMATTED"])
    logger.info("wrote CT phantom study (%d files, %d nodules)", len(paths), len(phantom.nodules))
    return CTPhantomStudy(paths, writer.study_uid, series_uid, phantom.nodules, phantom, extras)
