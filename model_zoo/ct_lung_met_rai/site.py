"""Train ct_lung_met_rai (seed 000) on a site's own labelled chest CTs (``thyroid-node train``).

The folder
----------
The one ``thyroid-node validate ct_lung_met_rai`` reads (:func:`model_zoo.validation.collect.collect_ct`):
DICOM files in any layout and ``labels.csv`` with one row per lesion,
``study_instance_uid,x_mm,y_mm,z_mm,diameter_mm,refractory`` (centre in patient coordinates, LPS as
DICOM; largest diameter in mm; ``refractory`` 1 or 0). Only labelled studies are used.

Lesion masks for the SE V-Net
-----------------------------
* **a SEG per study**: a DICOM Segmentation (read with highdicom) over the CT series the node
  analyses. Every segment of every such SEG counts as lesion (their union); the SEG's frames are
  placed by their own geometry (its plane positions and orientation) and resampled onto the
  node's 1 mm grid (trilinear, then >= 0.5). A study whose SEGs all lie over *another* series
  is refused with the reason (the node would train the network on a mask of another grid);
* **no SEG**: each labelled lesion becomes a ball of its labelled diameter around its labelled
  centre (1 mm voxels whose centre lies within the radius): right for the round metastases the
  paper describes, coarse for irregular ones, which is why a site with outlines should send SEGs.

Pre-processing is the node's own (:mod:`model_zoo.ct_lung_met_rai.volume`, as
:func:`workers.pipelines.ct.run`): the same series choice (thinnest usable axial series, the next
one when the checks refuse it), the geometry checks, the 1 mm trilinear resampling, the lung mask
and the chest check; the SE V-Net trains on the lung fields' bounding box plus the card's margin
(what :meth:`~model_zoo.ct_lung_met_rai.model.CTLungMetRAI.segment` sees), the classifier on
(32, 48, 48) patches at 1 mm around each labelled centre (what
:meth:`~model_zoo.ct_lung_met_rai.model.CTLungMetRAI.classify` sees), HU window to [0, 1]. A study
without an analysable chest series is left out with the reason.

Recipe and ``--epochs``
-----------------------
The demo's (:func:`model_zoo.ct_lung_met_rai.train.fit_segmenter`, ``fit_classifier``; the demo's
network sizes, :data:`model_zoo.demo.DEMO_NETWORKS`), on the site's volumes. ``--epochs N``
(default 6, the demo's) means N classifier epochs (2 jittered, randomly flipped copies of every
training lesion per epoch) and N SE V-Net "epochs" of ``min(50, max(10, training lesions))``
iterations of 2 patches of 48^3 (two thirds centred near a lesion): 50 iterations, the demo's
300 in all, once a site has 50 lesions or more; fewer on a handful of studies. Both networks are
checkpointed after every epoch; ``--resume`` continues an interrupted run.
Studies are held out by study, stratified by the study's class (refractory when any lesion is);
the held-out figures come from the bundle run as the node runs it (detection of the labelled
lesions, the RAI-refractory AUC and accuracy of the matched ones at the threshold 0.5) and from
the classifier on the labelled centres. ``--folds k``: both networks refitted on k-1 folds of the
training part, the same figures on the k-th.

Prepared volumes are kept on disk beside the checkpoints (memory-mapped), not in memory.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from model_zoo.bundle import load_bundle
from model_zoo.ct_lung_met_rai.model import CTLungMetRAI, CTSpec, extract_patch, normalise
from model_zoo.ct_lung_met_rai.train import (
    CLS_BATCH,
    CLS_LR,
    NAME,
    SEG_LR,
    fit_classifier,
    fit_segmenter,
    write_bundle,
)
from model_zoo.ct_lung_met_rai.volume import (
    CTVolume,
    IsoVolume,
    build_volume,
    check_chest,
    lung_mask,
    rank_series,
    resample_iso,
)
from model_zoo.demo import DEMO_NETWORKS, DEMO_RECIPES
from model_zoo.errors import InputRejected
from model_zoo.nets.se_resnet3d import SEResNet3d
from model_zoo.nets.se_vnet import SEVNet
from model_zoo.progress import ProgressFn
from model_zoo.site_training import (
    sub_report,
    Checkpoints,
    TrainingDataError,
    TrainOptions,
    json_safe,
    kfold_by_study,
    split_by_study,
    summarise_folds,
)
from model_zoo.validation.collect import LABELS_FILE, ValidationDataError, read_labels, write_labels

logger = logging.getLogger(__name__)

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SEG_ITERATIONS_PER_EPOCH = (10, 50)  # at least, at most (see the module's docstring)
CLS_COPIES = 2
JITTER = 2  # voxels (mm) of classifier-patch jitter, each way
THRESHOLD = 0.5
COLUMNS = ("study_instance_uid", "x_mm", "y_mm", "z_mm", "diameter_mm", "refractory")


@dataclass(frozen=True)
class Lesion:
    """One labelled lesion."""

    centre_mm: tuple[float, float, float]  # LPS
    diameter_mm: float
    refractory: int


@dataclass(frozen=True)
class PreparedStudy:
    """One study on the node's 1 mm grid, as the two networks see it."""

    uid: str
    image: np.ndarray  # float32 in [0, 1]: the lungs' bounding box plus margin (memory-mapped)
    mask: np.ndarray  # uint8, the same box: lesion voxels
    centres: list[np.ndarray]  # labelled lesion centres, indices into ``image``
    patches: np.ndarray  # float32 (lesions, 32 + 2 JITTER, 48 + 2 JITTER, 48 + 2 JITTER), [0, 1]
    labels: np.ndarray  # (lesions,) refractory 0/1
    mask_source: str  # "seg" or "spheres"


# --- reading the folder ----------------------------------------------------------------------


def index_folder(data_dir: Path) -> dict[str, list[Path]]:
    """Study Instance UID -> its DICOM files (headers only are read here)."""
    studies: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file() and p.name != LABELS_FILE):
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "StudyInstanceUID" in ds:
            studies[str(ds.StudyInstanceUID)].append(path)
    if not studies:
        raise ValidationDataError(f"{data_dir}: no DICOM study found")
    return studies


def read_lesions(data_dir: Path) -> dict[str, list[Lesion]]:
    """The labelled lesions per study, in the order of ``labels.csv``."""
    out: dict[str, list[Lesion]] = defaultdict(list)
    for n, row in enumerate(read_labels(data_dir, COLUMNS), start=2):
        try:
            centre = (float(row["x_mm"]), float(row["y_mm"]), float(row["z_mm"]))
            diameter = float(row["diameter_mm"])
        except ValueError as exc:
            raise ValidationDataError(f"{LABELS_FILE} line {n}: {exc}") from exc
        flag = row["refractory"].strip().lower()
        if flag not in ("0", "1", "true", "false", "yes", "no") or not diameter > 0:
            raise ValidationDataError(f"{LABELS_FILE} line {n}: refractory must be 1 or 0 and diameter_mm > 0")
        out[row["study_instance_uid"].strip()].append(Lesion(centre, diameter, int(flag in ("1", "true", "yes"))))
    return out


def load_study(paths: Sequence[Path], spacing_mm: float) -> tuple[CTVolume, IsoVolume, np.ndarray, list[Dataset]]:
    """The series the node would analyse, on its 1 mm grid, its lung mask, and the study's SEGs.

    The same steps and checks as :func:`workers.pipelines.ct.run`; InputRejected with every
    series' reason when none can be analysed.
    """
    datasets: list[Dataset] = [dcmread(p) for p in paths]
    segs: list[Dataset] = [ds for ds in datasets if str(ds.get("SOPClassUID", "")) == SEG_STORAGE]
    reasons: list[str] = []
    for choice in rank_series(datasets):
        try:
            volume = build_volume(choice.datasets)
            iso = resample_iso(volume, spacing_mm)
            lungs = lung_mask(iso)
            check_chest(volume, choice.datasets, lungs, iso)
        except InputRejected as exc:
            reasons.append(f"{choice.reason.split(':')[0]}: {exc.reason}")
            continue
        return volume, iso, lungs, segs
    raise InputRejected("; ".join(reasons) or "no CT series")


def seg_mask(segs: Sequence[Dataset], volume: CTVolume, iso: IsoVolume) -> np.ndarray | None:
    """The union of the segments of the SEGs over ``volume``'s series, on the iso grid; None without SEG."""
    import highdicom as hd

    if not segs:
        return None
    mask = np.zeros(iso.hu.shape, dtype=np.float32)
    used = 0
    for ds in segs:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        series = {str(s) for _, s, _ in seg.get_source_image_uids()}
        if volume.series_instance_uid not in series:
            continue
        try:
            vol = seg.get_volume(combine_segments=True, skip_overlap_checks=True)
        except (ValueError, RuntimeError) as exc:
            raise TrainingDataError(f"SEG {ds.SOPInstanceUID}: its frames do not form a volume ({exc})") from exc
        to_seg = np.linalg.inv(np.asarray(vol.affine, dtype=np.float64)) @ iso.affine
        sampled = ndimage.affine_transform((np.asarray(vol.array) > 0).astype(np.float32), to_seg[:3, :3],
                                           offset=to_seg[:3, 3], output_shape=iso.hu.shape, order=1, mode="constant",
                                           cval=0.0, prefilter=False)
        np.maximum(mask, sampled, out=mask)
        used += 1
    if not used:
        raise TrainingDataError(f"study {segs[0].StudyInstanceUID}: its SEG(s) lie over another series than the one "
                                f"the node analyses ({volume.series_instance_uid})")
    out: np.ndarray = mask >= 0.5
    return out


def sphere_mask(lesions: Sequence[Lesion], iso: IsoVolume) -> np.ndarray:
    """Balls of the labelled diameters around the labelled centres, on the iso grid."""
    mask = np.zeros(iso.hu.shape, dtype=bool)
    inv = np.linalg.inv(iso.affine)
    for lesion in lesions:
        centre = (inv @ np.array([*lesion.centre_mm, 1.0]))[:3]
        radius = lesion.diameter_mm / 2 / iso.spacing_mm
        lo = np.maximum(np.floor(centre - radius).astype(int), 0)
        hi = np.minimum(np.ceil(centre + radius).astype(int) + 1, iso.hu.shape)
        if np.any(hi <= lo):
            continue
        d = [np.arange(lo[a], hi[a]) - centre[a] for a in range(3)]
        ball = d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2 + d[2][None, None, :] ** 2 <= radius**2
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] |= ball
    return mask


def prepare_study(uid: str, paths: Sequence[Path], lesions: Sequence[Lesion], spec: CTSpec,
                  cache: Path) -> PreparedStudy:
    """Load, resample and cut one study for training; its arrays saved under ``cache`` and memory-mapped."""
    volume, iso, lungs, segs = load_study(paths, spec.spacing_mm)
    mask = seg_mask(segs, volume, iso)
    source = "seg" if mask is not None else "spheres"
    if mask is None:
        mask = sphere_mask(lesions, iso)
    margin = int(round(spec.lung_margin_mm / iso.spacing_mm))
    box = ndimage.find_objects(lungs.astype(np.uint8))[0]
    box = tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, lungs.shape))
    inv = np.linalg.inv(iso.affine)
    lo = spec.hu_window[0]
    size = tuple(s + 2 * JITTER for s in spec.patch)
    centres, patches = [], []
    for lesion in lesions:
        centre = (inv @ np.array([*lesion.centre_mm, 1.0]))[:3]
        if np.any(centre < 0) or np.any(centre > np.array(iso.hu.shape) - 1):
            raise TrainingDataError(f"study {uid}: lesion at {lesion.centre_mm} mm lies outside the analysed series")
        centres.append(centre - np.array([b.start for b in box]))
        patches.append(normalise(extract_patch(iso.hu, centre, (size[0], size[1], size[2]), fill=lo), spec.hu_window))
    cache.mkdir(parents=True, exist_ok=True)
    stem = cache / hashlib.sha256(uid.encode()).hexdigest()[:16]
    np.save(f"{stem}-image.npy", normalise(iso.hu[box], spec.hu_window))
    np.save(f"{stem}-mask.npy", mask[box].astype(np.uint8))
    if mask.any() and not mask[box].any():
        logger.warning("study …%s: its lesion mask lies outside the lungs' box", uid[-8:])
    return PreparedStudy(uid, np.load(f"{stem}-image.npy", mmap_mode="r"), np.load(f"{stem}-mask.npy", mmap_mode="r"),
                         centres, np.stack(patches), np.array([lesion.refractory for lesion in lesions]), source)


# --- training and evaluation -----------------------------------------------------------------


def _cls_data(studies: Sequence[PreparedStudy], spec: CTSpec, rng: np.random.Generator,
              copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``copies`` jittered, randomly flipped classifier patches per lesion (``copies`` 0: centred, unflipped)."""
    xs, ys = [], []
    d, h, w = spec.patch
    for study in studies:
        for patch, label in zip(study.patches, study.labels):
            for _ in range(max(1, copies)):
                o = rng.integers(0, 2 * JITTER + 1, 3) if copies else np.array([JITTER] * 3)
                p = patch[o[0] : o[0] + d, o[1] : o[1] + h, o[2] : o[2] + w]
                for axis in (1, 2):
                    if copies and rng.random() < 0.5:
                        p = np.flip(p, axis)
                xs.append(np.ascontiguousarray(p))
                ys.append(float(label))
    return torch.from_numpy(np.stack(xs))[:, None], torch.tensor(ys, dtype=torch.float32)[:, None]


def seg_iterations_per_epoch(studies: Sequence[PreparedStudy]) -> int:
    lo, hi = SEG_ITERATIONS_PER_EPOCH
    return min(hi, max(lo, sum(len(s.centres) for s in studies)))


def fit_networks(studies: Sequence[PreparedStudy], spec: CTSpec, *, epochs: int, seed: int, device: torch.device,
                 report: ProgressFn, checkpoints: tuple[Checkpoints, Checkpoints]) -> tuple[SEVNet, SEResNet3d]:
    """Both networks on prepared studies with the demo's recipe; each stage resumable."""
    rng = np.random.default_rng([seed, 0])
    per_epoch = seg_iterations_per_epoch(studies)
    torch.manual_seed(seed)
    seg = SEVNet(**spec.se_vnet).to(device)
    data = [(s.image, s.mask, s.centres) for s in studies]
    patch = int(DEMO_RECIPES[NAME]["seg_patch"])
    fit_segmenter(seg, data, rng, iterations=epochs * per_epoch, patch=patch, device=device, report=report,
                  span=(0.05, 0.6), checkpoints=checkpoints[0], block=per_epoch)
    x, y = _cls_data(studies, spec, rng, CLS_COPIES)
    torch.manual_seed(seed + 1)
    clf = SEResNet3d(**spec.se_resnet3d).to(device)
    fit_classifier(clf, x, y, epochs=epochs, seed=seed, device=device, report=report, span=(0.65, 0.25),
                   checkpoints=checkpoints[1])
    return seg, clf


def evaluate(model: CTLungMetRAI, studies: Sequence[PreparedStudy], paths: dict[str, list[Path]],
             lesions: dict[str, list[Lesion]], spec: CTSpec) -> dict[str, Any]:
    """Figures on some studies: the bundle run as the node runs it, and the classifier alone.

    The node's run: lesions found on the whole study, matched to the labelled lesion whose centre
    is nearest, within half its diameter and at least 5 mm (as ``thyroid-node validate``):
    ``detected`` of ``lesions``, ``unmatched_found``, and the RAI-refractory AUC and accuracy of the
    matched lesions (``matched_auc``, ``matched_accuracy``). The classifier alone, on a patch
    centred on each labelled centre: ``auc``, ``accuracy``. NaN where undefined (one class, none matched).
    """
    x_centred, _ = _cls_data(studies, spec, np.random.default_rng(0), 0)
    model.cls.eval()
    with torch.no_grad():
        p_centred = torch.cat([torch.sigmoid(model.cls(x_centred[i : i + 8].to(model.device))).float().cpu()
                               for i in range(0, len(x_centred), 8)])[:, 0].numpy()
    t = np.concatenate([s.labels for s in studies]).astype(int)
    matched_t: list[int] = []
    matched_p: list[float] = []
    found = unmatched = 0
    for study in studies:
        volume, iso, lungs, _ = load_study(paths[study.uid], spec.spacing_mm)
        findings = [(f.measurement.centre_mm, f.probability) for f in model.analyse(volume, iso, lungs).lesions]
        del volume, iso, lungs
        used: set[int] = set()
        for lesion in lesions[study.uid]:
            best, dist = None, max(5.0, lesion.diameter_mm / 2)
            for i, (centre, _) in enumerate(findings):
                d = float(np.linalg.norm(np.subtract(centre, lesion.centre_mm)))
                if i not in used and d <= dist:
                    best, dist = i, d
            if best is not None:
                used.add(best)
                found += 1
                matched_t.append(lesion.refractory)
                matched_p.append(float(findings[best][1]))
        unmatched += len(findings) - len(used)
    return {
        "lesions": int(len(t)),
        "detected": found,
        "detection_sensitivity": round(found / len(t), 4),
        "unmatched_found": unmatched,
        **_binary(t, p_centred, ""),
        **_binary(np.asarray(matched_t, dtype=int), np.asarray(matched_p, dtype=float), "matched_"),
    }


def _binary(t: np.ndarray, p: np.ndarray, prefix: str) -> dict[str, float]:
    nan = float("nan")
    return {
        f"{prefix}auc": round(float(roc_auc_score(t, p)), 4) if 0 < t.sum() < len(t) else nan,
        f"{prefix}accuracy": round(float(((p >= THRESHOLD) == (t == 1)).mean()), 4) if len(t) else nan,
    }


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def train_site(opts: TrainOptions) -> Path:
    """Train both networks on a labelled folder and write a bundle (``demo`` false)."""
    t0 = time.monotonic()
    dev = opts.torch_device()
    report = opts.report(NAME)
    epochs = opts.epochs if opts.epochs is not None else int(DEMO_RECIPES[NAME]["cls_epochs"])
    if epochs < 1:
        raise TrainingDataError(f"--epochs {epochs}: at least 1")
    networks = DEMO_NETWORKS[NAME]
    spec = CTSpec(se_vnet=dict(networks["se_vnet"]), se_resnet3d=dict(networks["se_resnet3d"]))
    data_dir = Path(opts.data_dir)
    paths = index_folder(data_dir)
    lesions = read_lesions(data_dir)
    missing = [uid for uid in lesions if uid not in paths]
    if missing:
        raise ValidationDataError(f"{LABELS_FILE}: study {missing[0]} has no DICOM files in {data_dir}")

    prepared: dict[str, PreparedStudy] = {}
    cache = opts.checkpoint_dir / "prepared"
    for n, uid in enumerate(lesions, start=1):
        try:
            prepared[uid] = prepare_study(uid, paths[uid], lesions[uid], spec, cache)
        except InputRejected as exc:
            logger.warning("study …%s not analysable, left out: %s", uid[-8:], exc.reason)
            continue
        report(0.04 * n / len(lesions), f"study {n}/{len(lesions)} on the 1 mm grid "
                                         f"({len(lesions[uid])} lesion(s), mask from {prepared[uid].mask_source})")
    uids = list(prepared)
    item_y = [lesion.refractory for uid in uids for lesion in lesions[uid]]
    item_s = [uid for uid in uids for _ in lesions[uid]]
    train_idx, hold_idx = split_by_study(item_y, item_s, opts.holdout, opts.seed)
    train_uids, hold_uids = _unique([item_s[i] for i in train_idx]), _unique([item_s[i] for i in hold_idx])
    if not train_uids or not hold_uids:
        raise TrainingDataError(f"{data_dir}: {len(uids)} analysable labelled studies, too few to hold "
                                f"{opts.holdout:.0%} out for evaluation")
    report(0.05, f"{len(train_uids)} training and {len(hold_uids)} held-out studies, "
                 f"{len(train_idx)} + {len(hold_idx)} lesions ({sum(item_y)} refractory)")
    key = {"model": NAME, "studies": uids, "spec": spec.model_dump(mode="json"), "epochs_resolved": epochs,
           "lesions": [[list(x.centre_mm), x.diameter_mm, x.refractory] for uid in uids for x in lesions[uid]],
           "masks": [hashlib.sha256(np.ascontiguousarray(prepared[uid].mask).tobytes()).hexdigest() for uid in uids]}

    cv = None
    if opts.folds:
        y_tr = np.asarray(item_y)[train_idx]
        folds = kfold_by_study(y_tr, [item_s[i] for i in train_idx], opts.folds, opts.seed)
        per_fold = []
        for k, (a, b) in enumerate(folds, start=1):
            fit_uids = _unique([item_s[train_idx[i]] for i in a])
            val_uids = _unique([item_s[train_idx[i]] for i in b])
            sub = sub_report(report, 0.05 + 0.45 * (k - 1) / len(folds), 0.45 / len(folds), f"fold {k}/{len(folds)}")
            seg, clf = fit_networks([prepared[u] for u in fit_uids], spec, epochs=epochs, seed=opts.seed + k,
                                    device=dev, report=sub, checkpoints=(opts.checkpoints(f"fold{k}-seg", key),
                                                                         opts.checkpoints(f"fold{k}-cls", key)))
            fold_dir = write_bundle(opts.checkpoint_dir / f"fold{k}-bundle", seg, clf, spec, threshold=THRESHOLD,
                                    version=opts.version, demo=False, intended_use="cross-validation fold",
                                    population="cross-validation fold", training_data="cross-validation fold",
                                    performance={})
            model = CTLungMetRAI.from_bundle(load_bundle(fold_dir), device=dev.type)
            figures = evaluate(model, [prepared[u] for u in val_uids], paths, lesions, spec)
            per_fold.append({"n": figures.pop("lesions"), "studies": len(val_uids), **figures})
            report(0.05 + 0.45 * k / len(folds), f"fold {k}/{len(folds)}: {per_fold[-1]}")
        cv = json_safe(summarise_folds(per_fold))
        cv["scope"] = ("both networks refitted per fold; detection and matched_* figures: the bundle run as the node "
                       "runs it; auc, accuracy: the classifier on the labelled centres")
        report = sub_report(report, 0.5, 0.5, "final fit")

    train_set = [prepared[u] for u in train_uids]
    seg, clf = fit_networks(train_set, spec, epochs=epochs, seed=opts.seed, device=dev, report=report,
                            checkpoints=(opts.checkpoints("final-seg", key), opts.checkpoints("final-cls", key)))
    iterations = epochs * seg_iterations_per_epoch(train_set)
    sources = [prepared[u].mask_source for u in uids]
    common: dict[str, Any] = dict(
        threshold=THRESHOLD, version=opts.version, demo=False,
        intended_use=(f"Trained by the site on the studies of {data_dir.name}: lung metastases of differentiated "
                      "thyroid cancer on chest CT, and their RAI-refractory status. Validate locally before use."),
        population=f"the site's labelled chest CTs in {data_dir.name}",
        training_data=(
            f"{len(uids)} studies, {len(item_y)} labelled lesions ({sum(item_y)} RAI-refractory) from {data_dir.name}; "
            f"masks: {sources.count('seg')} studies from their SEG, {sources.count('spheres')} "
            "from the labelled centre and diameter (balls); held out by study, stratified: "
            f"{opts.holdout:.0%} (seed {opts.seed}), "
            f"{len(hold_uids)} studies; SE V-Net {epochs} epochs = {iterations} iterations of 2 x "
            f"{DEMO_RECIPES[NAME]['seg_patch']}^3 patches, Dice + BCE, Adam one-cycle peak {SEG_LR}; "
            f"SE-ResNet {epochs} epochs of {CLS_COPIES} jittered copies per lesion, batch {CLS_BATCH}, BCE, "
            f"Adam one-cycle peak {CLS_LR}; "
            "the demo recipe and networks of model_zoo.ct_lung_met_rai.train"
            + (f"; {opts.folds}-fold cross-validation by study on the training part" if opts.folds else "")
        ),
    )
    out = write_bundle(Path(opts.out_dir), seg, clf, spec, performance={}, **common)
    report(0.92, "bundle written; running it on the held-out studies")
    model = CTLungMetRAI.from_bundle(load_bundle(out), device=dev.type)
    figures = evaluate(model, [prepared[u] for u in hold_uids], paths, lesions, spec)
    performance = json_safe({
        **{f"heldout_{k}": v for k, v in figures.items()},
        "heldout_studies": len(hold_uids),
        "training_studies": len(train_uids),
        "training_lesions": int(len(train_idx)),
        "seg_iterations": iterations,
        "threshold_rule": "0.5, as the demo",
        **({"cross_validation": cv} if cv else {}),
        "training_seconds": round(time.monotonic() - t0, 1),
        "training_device": f"{dev.type} ({platform.machine()})",
    })
    report(0.99, f"held-out: {figures}")
    return write_bundle(out, seg, clf, spec, performance=performance, **common)


def write_phantoms(out_dir: Path, n: int, seed: int) -> Path:
    """``n`` phantom chest CT studies with 3 nodules each (6-16 mm, RAI-refractory at random) and
    ``labels.csv``; every second study (odd index) also carries a SEG of its nodules over the
    analysed series (the phantom's own voxel labels), so both mask sources are exercised."""
    from model_zoo.phantoms.ct_dicom import write_ct_study

    if n < 2:
        raise TrainingDataError(f"--n {n}: at least 2 studies")
    rows = []
    for i in range(n):
        folder = out_dir / f"s{i:03d}"
        study = write_ct_study(folder, seed + i, rows=192, slices=56, pixel_mm=1.0, slice_mm=1.5, nodules=3,
                               diameter_range=(6.0, 16.0))
        for nodule in study.nodules:
            x, y, z = nodule.centre_mm
            rows.append({"study_instance_uid": study.study_instance_uid, "x_mm": x, "y_mm": y, "z_mm": z,
                         "diameter_mm": nodule.diameter_mm, "refractory": int(nodule.refractory)})
        if i % 2 == 1:
            _write_phantom_seg(folder, study.paths, study.phantom.labels > 0, seed + i)
    return write_labels(out_dir, rows)


def _write_phantom_seg(folder: Path, paths: Sequence[Path], truth: np.ndarray, seed: int) -> Path:
    """A binary SEG of ``truth`` (canonical grid of the written series) over its source images."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    from workers.encode import codes

    datasets = [dcmread(p) for p in paths]
    volume = build_volume(datasets)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    sources = [by_uid[s.sop_instance_uid] for s in volume.slices]
    axes = tuple(i for i, flip in enumerate(volume.flips) if flip)
    pixels = np.ascontiguousarray(np.flip(truth, axes) if axes else truth).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label="Lung nodules",
            segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            segmented_property_type=codes.METASTATIC_NEOPLASM,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)],
        series_instance_uid=generate_uid(entropy_srcs=["thyroid-node-phantom-ct-seg", str(seed), "series"]),
        series_number=300,
        sop_instance_uid=generate_uid(entropy_srcs=["thyroid-node-phantom-ct-seg", str(seed), "sop"]),
        instance_number=1,
        manufacturer="Thyroid AI Node phantoms",
        manufacturer_model_name="phantom outlines",
        software_versions="1",
        device_serial_number="0",
        series_description="Nodule outlines (phantom truth)",
    )
    path = folder / f"{seg.SOPInstanceUID}.dcm"
    seg.save_as(path)
    return path
