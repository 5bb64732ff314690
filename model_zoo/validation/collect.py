"""Run a zoo model over a site's labelled studies and collect predictions against the labels.

A validation folder holds DICOM files (any layout, read recursively) and ``labels.csv``:

* ``nm_thyroid_dx``: one row per study, ``study_instance_uid,label`` with ``label`` a class key
  of the model card (``graves``, ``subacute_thyroiditis``, ``thyroid_tumour``, ``normal``);
* ``ct_lung_met_rai``: one row per lesion, ``study_instance_uid,x_mm,y_mm,z_mm,diameter_mm,refractory``
  (centre in patient coordinates, LPS; ``refractory`` 1 or 0). A found lesion matches the labelled
  one whose centre is nearest, within half its diameter and at least 5 mm; labelled lesions with
  no match count as missed (detection sensitivity) and are left out of the classifier's figures;
* ``nm_graves_i131``: one row per study of a Graves' patient, ``study_instance_uid,cured`` with
  ``cured`` 1 (cured by the first I-131 therapy) or 0;
* ``us_nodule_seg``, ``us_calcified_nodule``, ``us_lvlnm``: the US folder of
  :mod:`model_zoo.us_site_data` (US images, the site's outlines as DICOM SEG, one row per nodule
  ``sop_instance_uid,segment_number,malignant,lvlnm``). The classifiers score each labelled
  nodule on the site's outline, as the node does when a site SEG comes with the study (so the
  classifier is validated on its own); ``us_nodule_seg`` segments every listed image as the node
  does without a site SEG and is compared with the outlines (per-nodule Dice; a nodule is found
  when a predicted nodule, matched one to one, reaches Dice 0.5; unmatched predictions are
  false positives).

The pipelines run exactly as in the node (:mod:`workers.pipelines`), without Celery or network.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from model_zoo.bundle import load_bundle
from model_zoo.errors import ModelZooError

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"


class ValidationDataError(ModelZooError):
    """The validation folder or its labels file cannot be used (the message says why)."""


@dataclass(frozen=True)
class Collected:
    """Predictions of one model on a validation folder."""

    model: str
    version: str
    demo: bool
    y_true: np.ndarray  # (n,) int: class index (multi-class) or 0/1
    probabilities: np.ndarray  # (n, k) multi-class, (n,) binary
    labels: tuple[str, ...]  # class keys (multi-class) or ("avid", "refractory")
    threshold: float | None
    sizes_mm: np.ndarray | None = None  # CT: labelled diameter of each classified lesion
    detection: dict[str, Any] | None = None  # CT: labelled / found / missed / unmatched
    segmentation: dict[str, Any] | None = None  # us_nodule_seg: images, per-nodule Dice, false positives
    extra: dict[str, Any] | None = None  # more figures for the report (US classifiers: per-backbone AUC)


def read_studies(data_dir: Path) -> dict[str, list[Dataset]]:
    studies: dict[str, list[Dataset]] = defaultdict(list)
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file() and p.name != LABELS_FILE):
        try:
            ds = dcmread(path)
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "StudyInstanceUID" in ds:
            studies[str(ds.StudyInstanceUID)].append(ds)
    if not studies:
        raise ValidationDataError(f"{data_dir}: no DICOM study found")
    return studies


def read_labels(data_dir: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    path = data_dir / LABELS_FILE
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ValidationDataError(f"{path}: cannot read ({exc})") from exc
    missing = [c for c in columns if rows and c not in rows[0]]
    if not rows or missing:
        raise ValidationDataError(f"{path}: needs a header with {', '.join(columns)} and one row per case")
    return rows


def write_labels(data_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``labels.csv`` (columns: the first row's keys) into ``data_dir``; returns ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LABELS_FILE, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return data_dir


def load(name: str, bundle_path: Path) -> Any:
    """The runnable model of a bundle folder, as the workers load it (``workers.models.LoadedModel``)."""
    import importlib

    from workers.models import LOADERS, LoadedModel, model_info

    bundle = load_bundle(bundle_path)
    if bundle.card.name != name:
        raise ValidationDataError(f"bundle {bundle_path} holds {bundle.card.name}, not {name}")
    module, cls = LOADERS[name]
    impl = getattr(importlib.import_module(module), cls).from_bundle(bundle)
    return LoadedModel(model_info(bundle.card), bundle.card, impl)


def collect_nm(bundle_path: Path, data_dir: Path) -> Collected:
    """4-class predictions of nm_thyroid_dx, one per labelled study (its first analysable image)."""
    from workers.pipelines import nm

    loaded = load("nm_thyroid_dx", bundle_path)
    keys = tuple(loaded.card.label_keys)
    rows = read_labels(data_dir, ("study_instance_uid", "label"))
    studies = read_studies(data_dir)
    y, probs = [], []
    for row in rows:
        uid, label = row["study_instance_uid"].strip(), row["label"].strip()
        if label not in keys:
            raise ValidationDataError(f"{LABELS_FILE}: label {label!r} is not one of {keys}")
        if uid not in studies:
            raise ValidationDataError(f"{LABELS_FILE}: study {uid} has no DICOM files in {data_dir}")
        results = nm.run(studies[uid], {"nm_thyroid_dx": loaded})
        if not results.diagnoses:
            logger.warning("study %s… not analysable: left out", uid[-12:])
            continue
        p = {c.key: c.probability for c in results.diagnoses[0].probabilities}
        y.append(keys.index(label))
        probs.append([p[k] for k in keys])
    return Collected("nm_thyroid_dx", loaded.card.version, bool(loaded.card.demo), np.asarray(y, int),
                     np.asarray(probs, float), keys, None)


def collect_ct(bundle_path: Path, data_dir: Path) -> Collected:
    """Per-lesion RAI-refractory probabilities of ct_lung_met_rai, matched to the labelled lesions."""
    from workers.pipelines import ct

    loaded = load("ct_lung_met_rai", bundle_path)
    rows = read_labels(data_dir, ("study_instance_uid", "x_mm", "y_mm", "z_mm", "diameter_mm", "refractory"))
    studies = read_studies(data_dir)
    by_study: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_study[row["study_instance_uid"].strip()].append(row)
    y, probs, sizes = [], [], []
    labelled = found = unmatched = 0
    for uid, lesions in by_study.items():
        if uid not in studies:
            raise ValidationDataError(f"{LABELS_FILE}: study {uid} has no DICOM files in {data_dir}")
        results = ct.run(studies[uid], {"ct_lung_met_rai": loaded})
        predicted = list(results.lesions)
        used: set[int] = set()
        for row in lesions:
            labelled += 1
            centre = np.array([float(row["x_mm"]), float(row["y_mm"]), float(row["z_mm"])])
            diameter = float(row["diameter_mm"])
            best, dist = None, max(5.0, diameter / 2)
            for i, lesion in enumerate(predicted):
                d = float(np.linalg.norm(np.subtract(lesion.centre_mm, centre)))
                if i not in used and d <= dist:
                    best, dist = i, d
            if best is None:
                continue
            used.add(best)
            found += 1
            y.append(1 if row["refractory"].strip() in ("1", "true", "True", "yes") else 0)
            probs.append(predicted[best].probability)
            sizes.append(diameter)
        unmatched += len(predicted) - len(used)
    threshold = float(loaded.card.decision_thresholds.get("refractory", 0.5))
    detection = {"labelled": labelled, "found": found, "missed": labelled - found,
                 "unmatched_found": unmatched, "sensitivity": found / labelled if labelled else None}
    return Collected("ct_lung_met_rai", loaded.card.version, bool(loaded.card.demo), np.asarray(y, int),
                     np.asarray(probs, float), ("avid", "refractory"), threshold, np.asarray(sizes, float), detection)


def collect_graves(bundle_path: Path, data_dir: Path) -> Collected:
    """Probabilities of cure after I-131 (seed 001), one per labelled study of a Graves' patient.

    Every labelled study is scored (the site labels Graves' patients), not only those seed 003
    would call Graves' disease; the image is the first one the model accepts, with seed 003's
    frame choice.
    """
    loaded = load("nm_graves_i131", bundle_path)
    rows = read_labels(data_dir, ("study_instance_uid", "cured"))
    studies = read_studies(data_dir)
    y, probs = [], []
    for row in rows:
        uid = row["study_instance_uid"].strip()
        if uid not in studies:
            raise ValidationDataError(f"{LABELS_FILE}: study {uid} has no DICOM files in {data_dir}")
        cured = row["cured"].strip().lower()
        if cured not in ("0", "1", "true", "false", "yes", "no"):
            raise ValidationDataError(f"{LABELS_FILE}: cured must be 1 or 0, got {row['cured']!r}")
        prediction = None
        for ds in sorted(studies[uid], key=lambda d: str(d.SOPInstanceUID)):
            if str(ds.get("Modality", "")) != "NM":
                continue
            try:
                prediction = loaded.impl.predict(ds)
                break
            except ModelZooError as exc:
                logger.warning("study %s…: an image was refused (%s)", uid[-12:], exc)
        if prediction is None:
            logger.warning("study %s… not analysable: left out", uid[-12:])
            continue
        y.append(1 if cured in ("1", "true", "yes") else 0)
        probs.append(float(prediction.probability_cured))
    threshold = float(loaded.card.decision_thresholds.get("cured", 0.5))
    return Collected("nm_graves_i131", loaded.card.version, bool(loaded.card.demo), np.asarray(y, int),
                     np.asarray(probs, float), ("not_cured", "cured"), threshold)


def _binary_flag_values(name: str, column: str, bundle_path: Path, data_dir: Path,
                        ) -> tuple[Any, list[Any]]:
    from model_zoo.us_site_data import read_us_folder

    loaded = load(name, bundle_path)
    nodules = read_us_folder(data_dir, column).labelled(column)
    if not nodules:
        raise ValidationDataError(f"{data_dir / LABELS_FILE}: no nodule with a {column} label (1 or 0)")
    return loaded, nodules


def collect_us_calcified(bundle_path: Path, data_dir: Path) -> Collected:
    """P(malignant) of us_calcified_nodule for every nodule labelled ``malignant``, on the site's outline.

    The probability is the mean over every backbone of the bundle (the node averages the ones its
    configuration names, ``us.malignancy_backbones``); each backbone's own AUC goes into ``extra``.
    """
    from model_zoo.validation.stats import auc_delong

    loaded, nodules = _binary_flag_values("us_calcified_nodule", "malignant", bundle_path, data_dir)
    y, probs = [], []
    per: dict[str, list[float]] = defaultdict(list)
    for n in nodules:
        result = loaded.impl.predict(n.image.bmode.pixels, n.mask)
        y.append(int(n.label("malignant")))
        probs.append(float(result.probability))
        for backbone, p in result.per_backbone.items():
            per[backbone].append(float(p))
    y_arr = np.asarray(y, int)
    extra: dict[str, Any] = {}
    if 0 < y_arr.sum() < len(y_arr):
        for backbone, values in per.items():
            auc = auc_delong(y_arr, np.asarray(values))
            extra[f"auc_{backbone}"] = {"auc": auc.auc, "ci_low": auc.ci_low, "ci_high": auc.ci_high}
    threshold = float(loaded.card.decision_thresholds.get("malignant", 0.5))
    return Collected("us_calcified_nodule", loaded.card.version, bool(loaded.card.demo), y_arr,
                     np.asarray(probs, float), ("benign", "malignant"), threshold, extra=extra or None)


def collect_us_lvlnm(bundle_path: Path, data_dir: Path) -> Collected:
    """P(LVLNM) of us_lvlnm for every nodule labelled ``lvlnm``, on the site's outline and the region's spacing."""
    loaded, nodules = _binary_flag_values("us_lvlnm", "lvlnm", bundle_path, data_dir)
    y, probs = [], []
    for n in nodules:
        result = loaded.impl.predict(n.image.bmode.pixels, n.mask, n.image.bmode.spacing_mm)
        y.append(int(n.label("lvlnm")))
        probs.append(float(result.probability))
    threshold = float(loaded.card.decision_thresholds.get("lvlnm", 0.5))
    return Collected("us_lvlnm", loaded.card.version, bool(loaded.card.demo), np.asarray(y, int),
                     np.asarray(probs, float), ("no_lvlnm", "lvlnm"), threshold)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def match_nodules(truth: list[np.ndarray], found: list[np.ndarray], min_dice: float,
                  ) -> tuple[list[float], list[bool], int]:
    """Per labelled nodule its best Dice with any found one and whether it is matched (one to one,
    greedily by decreasing Dice, at least ``min_dice``); and the number of found nodules left unmatched."""
    scores = np.array([[_dice(t, f) for f in found] for t in truth]).reshape(len(truth), len(found))
    matched = [False] * len(truth)
    used = [False] * len(found)
    pairs = sorted(((scores[i, j], i, j) for i in range(len(truth)) for j in range(len(found))), reverse=True)
    for score, i, j in pairs:
        if score < min_dice:
            break
        if not matched[i] and not used[j]:
            matched[i] = used[j] = True
    best = [float(scores[i].max()) if len(found) else 0.0 for i in range(len(truth))]
    return best, matched, int(len(found) - sum(used))


def collect_us_seg(bundle_path: Path, data_dir: Path) -> Collected:
    """us_nodule_seg on every image of the labels file, as the node runs it without a site SEG,
    against the site's outlines: per-nodule Dice, detection and false positives."""
    from model_zoo.us_image import feret_axes
    from model_zoo.us_nodule_seg.train import MATCH_DICE
    from model_zoo.us_site_data import read_us_folder
    from workers.pipelines.us import _nodule_masks

    loaded = load("us_nodule_seg", bundle_path)
    folder = read_us_folder(data_dir)
    per_nodule: list[dict[str, Any]] = []
    false_positives = 0
    for image in folder.images:
        found, _ = _nodule_masks(image.bmode, [], loaded.impl)
        best, matched, unmatched = match_nodules(list(image.outlines), found, MATCH_DICE)
        false_positives += unmatched
        spacing = image.bmode.spacing_mm
        for mask, number, dice, hit in zip(image.outlines, image.segments, best, matched):
            long_axis = float(feret_axes(mask, spacing or (1.0, 1.0))[0])
            per_nodule.append({"sop_instance_uid": image.sop_uid, "segment_number": number, "dice": round(dice, 4),
                               "found": hit, "long_axis": round(long_axis, 2), "unit": "mm" if spacing else "px"})
    segmentation = {"images": len(folder.images), "studies": len({i.study_uid for i in folder.images}),
                    "nodules": per_nodule, "false_positives": false_positives, "match_dice": MATCH_DICE}
    return Collected("us_nodule_seg", loaded.card.version, bool(loaded.card.demo), np.zeros(0, int), np.zeros(0),
                     ("background", "nodule"), float(loaded.card.decision_thresholds.get("nodule", 0.5)),
                     segmentation=segmentation)


COLLECTORS = {"nm_thyroid_dx": collect_nm, "ct_lung_met_rai": collect_ct, "nm_graves_i131": collect_graves,
              "us_nodule_seg": collect_us_seg, "us_calcified_nodule": collect_us_calcified, "us_lvlnm": collect_us_lvlnm}
