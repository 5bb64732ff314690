"""The NM pipeline with seed 001: which images it runs on (nm.graves_i131), what it returns, what
``process`` writes, and that "off" never loads its bundle. Uses the demo bundles."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
import torch

from config.settings import Settings, load_settings
from model_zoo.errors import BundleError
from model_zoo.phantoms.nm import nm_phantom_dataset
from model_zoo.phantoms.nm_graves import CURE_AREA_CUTOFF_MM2, GravesPhantom, graves_dataset
from tests.encode.dicom_tools import dciodvfy_errors, to_bytes, write
from tests.encode.sr_structure import assert_complete
from workers.infer import pipeline_models
from workers.models import load_models
from workers.pipelines import nm

WHEN = datetime(2025, 3, 14, 9, 26, 53)
CLEAR_MARGIN_MM2 = 500.0  # a "clear" phantom: label not flipped, gland area this far from the cutoff


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return load_models(nm.models_for(load_settings()), load_settings())


def _settings(mode: str) -> Settings:
    return load_settings(nm={"graves_i131": mode})


def _clear(seed: int, cured: bool) -> tuple[pydicom.Dataset, GravesPhantom]:
    ds, case = graves_dataset(seed, cured)
    assert not case.noisy and abs(case.gland_area_mm2 - CURE_AREA_CUTOFF_MM2) > CLEAR_MARGIN_MM2
    return ds, case


def _study(seed: int, cured: bool) -> list[pydicom.Dataset]:
    """A Graves' scintigram and, in the same study, a normal one (seed-003 phantom)."""
    graves, _ = _clear(seed, cured)
    normal = nm_phantom_dataset(
        "normal", seed, study_instance_uid=graves.StudyInstanceUID, patient_id=graves.PatientID,
        patient_name=str(graves.PatientName),
    )
    return [graves, normal]


def test_models_for_follows_the_option() -> None:
    assert nm.models_for(_settings("if_graves")) == ("nm_thyroid_dx", "nm_graves_i131")
    assert nm.models_for(_settings("always")) == ("nm_thyroid_dx", "nm_graves_i131")
    assert nm.models_for(_settings("off")) == ("nm_thyroid_dx",)
    assert nm.models_for(load_settings(models={"nm_thyroid_dx": "demo"})) == ("nm_thyroid_dx",)
    assert pipeline_models(nm, _settings("off")) == ("nm_thyroid_dx",)


def test_off_never_loads_the_bundle(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-bundle")
    off = load_settings(nm={"graves_i131": "off"}, models={"nm_thyroid_dx": "demo", "nm_graves_i131": missing})
    assert list(load_models(pipeline_models(nm, off), off)) == ["nm_thyroid_dx"]
    on = load_settings(models={"nm_thyroid_dx": "demo", "nm_graves_i131": missing})
    with pytest.raises(BundleError):
        load_models(pipeline_models(nm, on), on)


@pytest.mark.parametrize("seed, cured", [(9300, True), (9300, False)])
def test_if_graves_runs_on_the_graves_image_only(models: dict[str, Any], seed: int, cured: bool) -> None:
    sources = _study(seed, cured)
    results = nm.run(sources, models, _settings("if_graves"))
    assert [d.predicted.key for d in results.diagnoses] == ["graves", "normal"]
    (outcome,) = results.graves
    assert outcome.source == results.diagnoses[0].source
    assert outcome.model.name == "nm_graves_i131" and outcome.model.demo
    assert 0.0 <= outcome.probability_cured <= 1.0 and outcome.resnet_probability is not None
    assert outcome.threshold == models["nm_graves_i131"].impl.threshold
    assert outcome.cured is cured  # a clear phantom: the demo model gets it right
    assert outcome.heatmap.shape == (int(sources[0].Rows), int(sources[0].Columns))


def test_always_and_off(models: dict[str, Any]) -> None:
    sources = _study(9300, True)
    always = nm.run(sources, models, _settings("always"))
    assert [g.source.sop_instance_uid for g in always.graves] == [ds.SOPInstanceUID for ds in sources]
    assert nm.run(sources, models, _settings("off")).graves == ()
    # without the model loaded (a config with no bundle for it) seed 003 runs alone
    only_dx = {"nm_thyroid_dx": models["nm_thyroid_dx"]}
    assert nm.run(sources, only_dx, _settings("always")).graves == ()
    # no settings: the default, if_graves
    assert len(nm.run(sources, models).graves) == 1


def test_process_writes_sr_and_two_kinds_of_sc(models: dict[str, Any], tmp_path: Path) -> None:
    sources = _study(9300, False)
    objects = nm.process(sources, models, WHEN, _settings("if_graves"))
    sr, *scs = objects
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert [sc.SeriesNumber for sc in scs] == [9902, 9902, 9904]
    graves_sc = scs[2]
    assert graves_sc.SourceImageSequence[0].ReferencedSOPInstanceUID == sources[0].SOPInstanceUID
    assert len({sc.SOPInstanceUID for sc in scs}) == 3
    meanings = [str(i.ConceptNameCodeSequence[0].CodeMeaning) for i in _walk(sr) if i.get("ValueType") == "NUM"]
    assert meanings.count("Probability of cure after I-131 therapy") == 1
    decisions = [i.ConceptCodeSequence[0].CodeMeaning for i in _walk(sr)
                 if i.get("ValueType") == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "I131-CURE"]
    assert decisions == ["No"]
    # every row the node must write, and one arrow per model for the viewer
    assert_complete(sr, procedure=("30695-1", "LN"), sources=sources)
    tools = [str(i.TextValue).split(":")[1] for i in _walk(sr)
             if i.get("ValueType") == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "112039"]
    assert tools == ["ArrowAnnotate"] * 3  # seed 003 on both images, seed 001 on the Graves one
    for ds in objects:
        assert dciodvfy_errors(write(tmp_path, f"{ds.SOPInstanceUID}.dcm", to_bytes(ds))) == []
    # off: seed 003's objects only, the same SR UID as before seed 001 existed
    off = nm.process(sources, models, WHEN, _settings("off"))
    assert len(off) == 3 and off[0].SOPInstanceUID != sr.SOPInstanceUID
    assert nm.process(sources, {"nm_thyroid_dx": models["nm_thyroid_dx"]}, WHEN)[0].SOPInstanceUID == off[0].SOPInstanceUID


def _walk(ds: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)
