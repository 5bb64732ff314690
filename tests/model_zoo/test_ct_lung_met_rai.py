"""The CT pipeline (workers.pipelines.ct.run) on phantom studies with the demo bundle, no network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from model_zoo.bundle import CARD_PATH, load_bundle
from model_zoo.ct_lung_met_rai.model import CTLungMetRAI, ct_spec
from model_zoo.demo import ensure_demo_bundle
from model_zoo.errors import BundleError
from model_zoo.phantoms.ct import PhantomNodule
from model_zoo.phantoms.ct_dicom import write_ct_study
from workers.models import LoadedModel, model_info
from workers.pipelines import ct

NODULES = (
    PhantomNodule(centre_mm=(-45.0, 5.0, 10.0), diameter_mm=10.0, refractory=True, side="right"),
    PhantomNodule(centre_mm=(48.0, 12.0, -12.0), diameter_mm=7.0, refractory=False, side="left"),
)


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    bundle = load_bundle(ensure_demo_bundle("ct_lung_met_rai"))
    return {"ct_lung_met_rai": LoadedModel(model_info(bundle.card), bundle.card, CTLungMetRAI.from_bundle(bundle, "cpu"))}


def _study(tmp: Path, **kw: Any) -> list[Any]:
    study = write_ct_study(tmp, 6100, rows=192, slices=56, pixel_mm=1.0, slice_mm=1.5, nodules=NODULES, **kw)
    return [dcmread(p) for p in study.paths]


def test_lesions_match_the_phantom(models: dict[str, Any], tmp_path: Path) -> None:
    results = ct.run(_study(tmp_path), models)
    assert results.not_analysable == () and results.series is not None
    assert len(results.lesions) == len(NODULES)
    for lesion in results.lesions:
        truth = min(NODULES, key=lambda n: float(np.linalg.norm(np.subtract(n.centre_mm, lesion.centre_mm))))
        assert np.linalg.norm(np.subtract(truth.centre_mm, lesion.centre_mm)) <= 2.0
        assert abs(lesion.diameter_mm - truth.diameter_mm) <= 1.5
        assert lesion.side == truth.side
        assert lesion.refractory == truth.refractory, lesion.probability
        assert lesion.heatmap.shape == (192, 192) and lesion.heatmap.max() > 0
        assert lesion.mask.any() and lesion.mask.dtype == bool
    # numbered from head to feet
    assert [lesion.index for lesion in results.lesions] == [1, 2]
    assert results.lesions[0].centre_mm[2] > results.lesions[1].centre_mm[2]


def test_refused_best_series_falls_back_to_the_next(models: dict[str, Any], tmp_path: Path) -> None:
    """A tilted thin series beside a usable thick one: the thick one is analysed and the SR says why."""
    tilted = _study(tmp_path / "tilt", gantry_tilt_deg=10.0)
    good = write_ct_study(tmp_path / "thick", 6101, rows=192, slices=28, pixel_mm=1.0, slice_mm=3.0, nodules=NODULES)
    thick = [dcmread(p) for p in good.paths]
    for ds in thick:  # the same study as the tilted series
        ds.StudyInstanceUID = tilted[0].StudyInstanceUID
    results = ct.run(tilted + thick, models)
    assert results.series is not None and results.series.series_instance_uid == thick[0].SeriesInstanceUID
    assert results.not_analysable == ()


def test_not_a_chest_is_not_analysable(models: dict[str, Any], tmp_path: Path) -> None:
    study = write_ct_study(tmp_path, 6102, rows=128, slices=40, pixel_mm=1.6, slice_mm=2.5, kind="abdomen",
                           body_part=None, nodules=0)
    results = ct.run([dcmread(p) for p in study.paths], models)
    assert results.series is None and results.lesions == ()
    (verdict,) = results.not_analysable
    assert "lung" in verdict.reason


def test_card_without_ct_section_is_refused(tmp_path: Path) -> None:
    src = ensure_demo_bundle("ct_lung_met_rai")
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    card = json.loads((dst / CARD_PATH).read_text())
    card["ct"]["window"] = 7  # below the minimum
    (dst / CARD_PATH).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="window"):
        ct_spec(load_bundle(dst).card)
    del card["ct"]
    (dst / CARD_PATH).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="no 'ct' section"):
        CTLungMetRAI.from_bundle(load_bundle(dst), "cpu")
