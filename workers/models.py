"""Loading the zoo's models for the workers: once per process, on first use, checked."""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import Settings
from workers.pipelines.results import ModelInfo

log = logging.getLogger(__name__)

# zoo key -> (module, class) whose ``from_bundle(bundle)`` returns the runnable model
LOADERS = {
    "nm_thyroid_dx": ("model_zoo.nm_thyroid_dx", "NMThyroidDx"),
    "ct_lung_met_rai": ("model_zoo.ct_lung_met_rai.model", "CTLungMetRAI"),
    "us_nodule_seg": ("model_zoo.us_nodule_seg.model", "USNoduleSeg"),
    "us_calcified_nodule": ("model_zoo.us_calcified_nodule.model", "USCalcifiedNodule"),
    "us_lvlnm": ("model_zoo.us_lvlnm.model", "USLVLNM"),
    "nm_graves_i131": ("model_zoo.nm_graves_i131.model", "NMGravesI131"),
}


@dataclass(frozen=True)
class LoadedModel:
    info: ModelInfo
    card: Any  # model_zoo.card.ModelCard
    impl: Any  # the runnable model (e.g. NMThyroidDx)


_cache: dict[tuple[str, str], LoadedModel] = {}
_lock = threading.Lock()


def model_info(card: Any) -> ModelInfo:
    return ModelInfo(
        name=card.name,
        version=card.version,
        title=card.title,
        weights_sha256=card.weights[0].sha256,
        demo=bool(card.demo),
    )


def load_model(name: str, settings: Settings) -> LoadedModel:
    """The model ``name`` from the bundle the settings name ("demo": the phantom-trained cache).

    Raises model_zoo.errors.BundleError when the bundle is missing or fails its checks.
    """
    from model_zoo.bundle import load_bundle
    from model_zoo.demo import ensure_demo_bundle
    from model_zoo.errors import BundleError

    location = settings.models.get(name)
    if not location:
        raise BundleError(f"no bundle configured for model {name!r} (settings: models.{name})")
    key = (name, location)
    with _lock:
        if key not in _cache:
            path = ensure_demo_bundle(name) if location == "demo" else Path(location)
            bundle = load_bundle(path)
            module, cls = LOADERS[name]
            impl = getattr(importlib.import_module(module), cls).from_bundle(bundle)
            _cache[key] = LoadedModel(model_info(bundle.card), bundle.card, impl)
            log.info("loaded model %s %s%s", bundle.card.name, bundle.card.version, " (DEMO weights)" if bundle.card.demo else "")
        return _cache[key]


def load_models(names: tuple[str, ...] | list[str], settings: Settings) -> dict[str, LoadedModel]:
    return {name: load_model(name, settings) for name in names}
