"""Demo bundles: built on first use from phantoms, cached, shared between processes.

``python -m model_zoo.demo [name]`` builds (or checks) the demo bundle and prints progress.
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from model_zoo.bundle import load_bundle
from model_zoo.errors import BundleError
from model_zoo.progress import ProgressFn

logger = logging.getLogger(__name__)


# Demo recipe per model: training kwargs and a rough CPU time estimate in minutes (2 cores).
DEMO_RECIPES: Final[dict[str, dict[str, Any]]] = {
    "nm_thyroid_dx": {"n_per_class": 80, "epochs": 6, "seed": 20240, "input_size": 128},
    "ct_lung_met_rai": {"seed": 20000, "n_phantoms": 24, "seg_iterations": 300, "seg_patch": 48, "cls_epochs": 6},
    "us_nodule_seg": {"seed": 40400, "n_train": 48, "iterations": 800, "size": 240},
    "us_calcified_nodule": {"seed": 40040, "n_train": 80, "epochs": 10,
                            "input_sizes": {"xception": 96, "densenet169": 96}},
    # radiomics_params "light": model_zoo.us_lvlnm.radiomics.LIGHT_PARAMS (original + LoG 1 mm, 195 features)
    "us_lvlnm": {"seed": 20020, "n_train": 120, "densenet_epochs": 3, "input_size": 224, "radiomics_params": "light"},
    "nm_graves_i131": {"seed": 20010, "n_train": 120, "epochs": 12, "input_size": 128, "n_features": 16},
}
# Network configurations of the demo bundles (part of the recipe: another one is rebuilt). The CT
# demo's SE V-Net is much lighter than the paper's (see model_zoo/nets/se_vnet.py) to fit CPU budgets.
DEMO_NETWORKS: Final[dict[str, dict[str, dict[str, object]]]] = {
    "ct_lung_met_rai": {
        "se_vnet": {"base_channels": 8, "kernel_size": 3, "levels": 4, "convs_per_level": [1, 2, 2, 2]},
        "se_resnet3d": {"channels": [8, 16, 32, 64]},
    },
    # US demo networks keep the papers' topologies at a fraction of their width (and 96 px inputs
    # for seed 004) so that the three US bundles train in a few minutes on 2 cores.
    "us_nodule_seg": {"network": {"channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2],
                                  "num_res_units": 0, "norm": "batch"}},
    "us_calcified_nodule": {"xception": {"width": 0.125}, "densenet169": {"init_features": 8, "growth_rate": 4}},
    "us_lvlnm": {"densenet121": {"init_features": 16, "growth_rate": 8}},
    "nm_graves_i131": {"resnet50": {"block_inplanes": [8, 16, 32, 64]}},
}
DEMO_MINUTES: Final[dict[str, float]] = {"nm_thyroid_dx": 3.0, "ct_lung_met_rai": 9.0, "us_nodule_seg": 1.5,
                                         "us_calcified_nodule": 2.0, "us_lvlnm": 1.5, "nm_graves_i131": 0.5}
# Bump when the phantoms or the training code change: cached demo bundles of another revision
# are rebuilt.
DEMO_REVISION: Final[dict[str, int]] = {"nm_thyroid_dx": 4, "ct_lung_met_rai": 2, "us_nodule_seg": 2,
                                        "us_calcified_nodule": 1, "us_lvlnm": 2, "nm_graves_i131": 1}


def demo_recipe(name: str) -> dict[str, object]:
    """The recipe a cached demo bundle must carry (card key ``demo_recipe``) to be reused."""
    return {"revision": DEMO_REVISION[name], **DEMO_RECIPES[name], **DEMO_NETWORKS.get(name, {})}


def cache_root() -> Path:
    """``$THYROID_NODE_CACHE``, else ``~/.cache/thyroid-node``."""
    env = os.environ.get("THYROID_NODE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "thyroid-node"


def demo_bundle_path(name: str = "nm_thyroid_dx", root: Path | None = None) -> Path:
    """Where the demo bundle of ``name`` lives (whether built or not)."""
    return (root or cache_root()) / "bundles" / f"{name}-demo"


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_valid(name: str, path: Path, quiet: bool = False) -> bool:
    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        if path.exists() and not quiet:
            logger.warning("demo bundle at %s is invalid (%s): rebuilding", path, exc)
        return False
    extra = bundle.card.model_extra or {}
    if extra.get("demo_recipe") != demo_recipe(name):
        if not quiet:
            logger.warning("demo bundle at %s was built by another recipe: rebuilding", path)
        return False
    return True


def _stamp(name: str, path: Path) -> None:
    """Record the recipe in the card and open the tree to other local users (mkdtemp is 0700)."""
    card_file = path / "configs" / "metadata.json"
    raw = json.loads(card_file.read_text(encoding="utf-8"))
    raw["demo_recipe"] = demo_recipe(name)
    card_file.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    for d in [path, *[p for p in path.rglob("*") if p.is_dir()]]:
        d.chmod(0o755)


def _build(name: str, tmp: Path, progress: ProgressFn | None) -> None:
    if name == "nm_thyroid_dx":
        from model_zoo.nm_thyroid_dx.train import train  # torch import only when building

        recipe = DEMO_RECIPES[name]
        train(
            tmp,
            n_per_class=recipe["n_per_class"],
            epochs=recipe["epochs"],
            seed=recipe["seed"],
            input_size=recipe["input_size"],
            progress=progress,
        )
        return
    if name == "ct_lung_met_rai":
        from model_zoo.ct_lung_met_rai.train import train as train_ct

        r = DEMO_RECIPES[name]
        train_ct(tmp, seed=r["seed"], n_phantoms=r["n_phantoms"], seg_iterations=r["seg_iterations"],
                 seg_patch=r["seg_patch"], cls_epochs=r["cls_epochs"], se_vnet=dict(DEMO_NETWORKS[name]["se_vnet"]),
                 se_resnet3d=dict(DEMO_NETWORKS[name]["se_resnet3d"]), progress=progress)
        return
    if name in ("us_nodule_seg", "us_calcified_nodule", "us_lvlnm", "nm_graves_i131"):
        import importlib

        kwargs = {**copy.deepcopy(DEMO_RECIPES[name]), **copy.deepcopy(DEMO_NETWORKS[name])}
        if kwargs.get("radiomics_params") == "light":
            from model_zoo.us_lvlnm.radiomics import LIGHT_PARAMS

            kwargs["radiomics_params"] = copy.deepcopy(LIGHT_PARAMS)
        import torch

        # one intra-op thread: these small-batch 2D trainings gain nothing from two, and on a
        # busy 2-core machine two spinning OpenMP threads made them up to 15x slower
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            importlib.import_module(f"model_zoo.{name}.train").train(tmp, progress=progress, **kwargs)
        finally:
            torch.set_num_threads(threads)
        return
    raise BundleError(f"no demo recipe for model {name!r}; known: {sorted(DEMO_RECIPES)}")


def ensure_demo_bundle(
    name: str = "nm_thyroid_dx",
    root: Path | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Return ``<root>/bundles/<name>-demo``, building it first if missing or invalid.

    The build runs in a temporary directory beside the target and is renamed into place, under
    an ``fcntl`` lock so that concurrent processes build it once; the others wait and reuse it.

    Parameters
    ----------
    name : str
        Model key (``nm_thyroid_dx``).
    root : pathlib.Path, optional
        Cache root; :func:`cache_root` when omitted.
    progress : callable, optional
        ``progress(fraction_done, message)`` during a build.

    Returns
    -------
    pathlib.Path
        The bundle directory (valid for :func:`model_zoo.bundle.load_bundle`).
    """
    if name not in DEMO_RECIPES:
        raise BundleError(f"no demo recipe for model {name!r}; known: {sorted(DEMO_RECIPES)}")
    target = demo_bundle_path(name, root)
    if _is_valid(name, target):
        return target
    with _exclusive(target.parent / f".{name}-demo.lock"):
        if target.exists() and _is_valid(name, target, quiet=True):  # built by another process while we waited
            return target
        logger.info(
            "building demo weights for %s (about %.0f minutes on this CPU) …", name, DEMO_MINUTES.get(name, 5.0)
        )
        t0 = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-demo-", dir=target.parent))
        try:
            _build(name, tmp, progress)
            _stamp(name, tmp)
            load_bundle(tmp)  # never publish a bundle that does not verify
            if target.exists():
                stale = target.with_name(f".{target.name}-stale-{os.getpid()}")
                os.replace(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("demo bundle %s ready at %s in %.0f s", name, target, time.monotonic() - t0)
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line: build the demo bundle of ``argv[0]`` (default nm_thyroid_dx)."""
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else "nm_thyroid_dx"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()

    def show(frac: float, msg: str) -> None:
        print(f"[{100 * frac:5.1f}%] {time.monotonic() - t0:6.1f} s  {msg}", flush=True)

    path = ensure_demo_bundle(name, progress=show)
    bundle = load_bundle(path)
    perf = bundle.card.reported_performance
    print(
        f"{bundle.card.ident} at {path} ({time.monotonic() - t0:.1f} s); "
        + ", ".join(f"{k} {v}" for k, v in perf.items() if k.startswith("heldout"))
        + f", training {perf.get('training_seconds')} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
