from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset

from model_zoo.errors import InputRejected
from model_zoo.nm_thyroid_dx.preprocess import select_frame, to_input
from model_zoo.phantoms import nm_phantom_dataset


def _set_pixels(ds: Dataset, arr: np.ndarray) -> Dataset:
    arr = arr.astype(np.uint16)
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.NumberOfFrames = arr.shape[0] if arr.ndim == 3 else 1
    ds.PixelData = arr.tobytes()
    return ds


def test_single_frame() -> None:
    assert select_frame(nm_phantom_dataset("normal", 1)) == (0, "single frame")


def test_multi_frame_static_anterior_by_view_code() -> None:
    ds = nm_phantom_dataset("normal", 1, frames=3)
    # move the anterior view to detector 3: frame 2
    views = [d.ViewCodeSequence[0] for d in ds.DetectorInformationSequence]
    views[0].CodeValue, views[2].CodeValue = views[2].CodeValue, views[0].CodeValue
    views[0].CodeMeaning, views[2].CodeMeaning = views[2].CodeMeaning, views[0].CodeMeaning
    index, reason = select_frame(ds)
    assert index == 2 and "anterior" in reason


def test_multi_frame_static_by_counts_when_no_view() -> None:
    ds = nm_phantom_dataset("graves", 2, frames=3)
    for det in ds.DetectorInformationSequence:
        del det.ViewCodeSequence
    frames = ds.pixel_array.astype(np.uint32)
    frames = np.stack([frames[1], frames[2], frames[0] * 2])  # most counts in frame 2
    _set_pixels(ds, np.clip(frames, 0, 65535))
    index, reason = select_frame(ds)
    assert index == 2 and "most counts" in reason


def test_dynamic_frames_are_summed() -> None:
    ds = nm_phantom_dataset("normal", 4, frames=3, dynamic=True)
    index, reason = select_frame(ds)
    assert index is None and "summed" in reason
    summed = ds.pixel_array.astype(np.float64).sum(axis=0)
    one = ds.copy()
    _set_pixels(one, summed)
    one.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    assert torch.allclose(to_input(ds, 64), to_input(one, 64))


def test_to_input_shape_range_and_rescale() -> None:
    ds = nm_phantom_dataset("graves", 5)
    x = to_input(ds, 96)
    assert x.shape == (1, 1, 96, 96) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and 0.9 < float(x.max()) <= 1.0
    ds.RescaleSlope, ds.RescaleIntercept = 3.0, 0.0  # a pure scale: normalised input unchanged
    assert torch.allclose(to_input(ds, 96), x, atol=1e-6)


def test_rejects_non_nm() -> None:
    ds = nm_phantom_dataset("normal", 6)
    ds.Modality = "CT"
    with pytest.raises(InputRejected, match="not NM"):
        to_input(ds, 64)


def test_rejects_missing_pixels() -> None:
    ds = nm_phantom_dataset("normal", 6)
    del ds.PixelData
    with pytest.raises(InputRejected, match="no pixel data"):
        to_input(ds, 64)


def test_rejects_tiny_matrix() -> None:
    ds = nm_phantom_dataset("normal", 6, matrix=16)
    with pytest.raises(InputRejected, match="smaller than 32"):
        to_input(ds, 64)


def test_rejects_all_zero() -> None:
    ds = _set_pixels(nm_phantom_dataset("normal", 6), np.zeros((64, 64)))
    with pytest.raises(InputRejected, match="all zero") as info:
        to_input(ds, 64)
    assert info.value.reason == "image is all zero"
