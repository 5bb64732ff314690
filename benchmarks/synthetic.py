"""Synthetic but plausible DICOM studies for benchmarks (no patient data).

python benchmarks/synthetic.py OUT_DIR [--slices 300] [--size 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

HU_AIR, HU_LUNG, HU_FAT, HU_SOFT, HU_BONE = -1000, -850, -100, 40, 700
RESCALE_INTERCEPT = -1024
PIXEL_SPACING_MM = 0.7
SLICE_THICKNESS_MM = 1.0


def _uid(seed: int, *parts: object) -> str:
    """A deterministic UID: the same seed gives the same study."""
    return str(generate_uid(entropy_srcs=["thyroid-ai-node-benchmark", str(seed), *map(str, parts)]))


def _body_phantom(size: int) -> np.ndarray:
    """An axial chest-like slice in HU: body ellipse, two lungs, a spine, a fat rim."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    image = np.full((size, size), HU_AIR, dtype=np.float32)
    body = (x / 0.42) ** 2 + (y / 0.30) ** 2 <= 1
    inner = (x / 0.39) ** 2 + (y / 0.27) ** 2 <= 1
    image[body] = HU_FAT
    image[inner] = HU_SOFT
    for cx in (-0.17, 0.17):
        image[((x - cx) / 0.13) ** 2 + ((y + 0.02) / 0.19) ** 2 <= 1] = HU_LUNG
    image[(x / 0.05) ** 2 + ((y - 0.19) / 0.05) ** 2 <= 1] = HU_BONE
    return image


def _pixels(base: np.ndarray, index: int, rng: np.random.Generator) -> bytes:
    """Stored int16 values (HU - intercept) of one slice, with noise and a slow z change."""
    scale = 1.0 + 0.05 * np.sin(index / 40.0)
    noise = rng.normal(0.0, 12.0, size=base.shape).astype(np.float32)
    hu = np.where(base > HU_AIR, base * scale + noise, base)
    stored = np.clip(np.rint(hu - RESCALE_INTERCEPT), -32768, 32767).astype("<i2")
    data: bytes = stored.tobytes()
    return data


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _series_header(seed: int, size: int, when: dt.datetime) -> Dataset:
    """Attributes shared by every slice of the series."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = "PHANTOM^CT", f"PHANTOM{seed:04d}"
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(seed, "study"), _uid(seed, "series")
    ds.FrameOfReferenceUID = _uid(seed, "frame")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = f"BENCH{seed:04d}", "1", ""
    ds.StudyDescription, ds.SeriesDescription = "Benchmark chest CT", "Axial 1.0 mm"
    ds.Modality, ds.BodyPartExamined, ds.SeriesNumber = "CT", "CHEST", 2
    ds.PatientPosition, ds.PositionReferenceIndicator = "HFS", ""
    ds.Manufacturer, ds.ManufacturerModelName = "Thyroid AI Node benchmark", "synthetic"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP, ds.AcquisitionNumber = 120, 1
    ds.SliceThickness, ds.PixelSpacing = SLICE_THICKNESS_MM, [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = RESCALE_INTERCEPT, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    return ds


def write_ct_series(out_dir: Path, n_slices: int = 300, size: int = 512, seed: int = 0) -> list[Path]:
    """Write an axial chest CT series (one study, one series) and return its files in order.

    CT Image Storage, Explicit VR Little Endian, signed 16-bit pixels with
    RescaleIntercept -1024 / slope 1 (HU), 1 mm slices; a 512x512 slice is
    ~0.5 MB. UIDs derive from `seed`: the same seed writes the same study.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = _body_phantom(size)
    when = dt.datetime(2024, 1, 1, 9, 0, 0)
    origin = -PIXEL_SPACING_MM * size / 2
    paths = []
    for index in range(n_slices):
        ds = _series_header(seed, size, when)
        ds.SOPInstanceUID = _uid(seed, "instance", index)
        ds.file_meta = _file_meta(ds.SOPInstanceUID)
        ds.InstanceNumber = index + 1
        z = -index * SLICE_THICKNESS_MM
        ds.ImagePositionPatient, ds.SliceLocation = [origin, origin, z], z
        ds.PixelData = _pixels(base, index, rng)
        path = out_dir / f"CT{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = write_ct_series(args.out_dir, args.slices, args.size, args.seed)
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files, {total / 1e6:.1f} MB, into {args.out_dir}")


if __name__ == "__main__":
    main()
