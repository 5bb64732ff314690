"""US images per second: each network at batch 1 and batched, each model's full step, and the whole path.

    python benchmarks/us_throughput.py [--images 12] [--batch 8] [--repeats 5] [--skip-path]
        [--broker-url redis://127.0.0.1:6379/14] [--timeout 600] [--work-dir DIR] [--keep]

1. **Networks** (forward passes only, ``torch.inference_mode``; fp16 autocast on CUDA), at batch 1
   and at ``--batch``, for the demo bundles' networks and for the papers' full-size networks
   (random weights: speed does not depend on them): the nodule U-Net (256 px working size for the
   site size, the demo's 160), Xception at 299 (demo: 96), DenseNet169 at 224 (demo: 96),
   DenseNet121 at 224. The batched/batch-1 ratio is the gain a batching worker would have.
2. **Models' full steps** with the demo bundles, one nodule at a time as the pipeline runs them:
   segmentation (pre-processing, network, components), seed 004 (crop, network, Grad-CAM) and
   seed 002 (crop, DenseNet121 features, radiomics, MLP).
3. **Whole path**: one study of ``--images`` single-frame JPEG-baseline US images (one nodule
   each) sent by dcmtk storescu to the node (Redis broker, a Celery worker run by this script),
   timed from storescu's return until Orthanc holds the SR and one SC per nodule, net of the
   quiet period; the peer is Orthanc's own ingest of the same files, in the same run.

On a CUDA machine every figure is taken on the GPU, with no option to set.
Every loop is bounded in count (``--repeats``) and the whole path in time (``--timeout``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks import peers
from tests.peers import Orthanc, log_tail, stop_process, store_statuses, storescu, wait_until


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def images_per_second(fn: Callable[[], object], n_images: int, repeats: int, device: torch.device) -> float:
    """Median images/s of ``fn`` (which handles ``n_images``) over ``repeats`` timed calls after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return n_images / statistics.median(times)


def _forward(net: torch.nn.Module, shape: tuple[int, ...], device: torch.device) -> Callable[[], object]:
    x = torch.rand(shape, device=device)
    net = net.to(device).eval()

    def run() -> object:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            return net(x)

    return run


def networks(batch: int, repeats: int, device: torch.device) -> list[tuple[str, float, float]]:
    """(name, images/s at batch 1, images/s at ``batch``) for each network, demo and paper size."""
    from model_zoo.demo import DEMO_NETWORKS, DEMO_RECIPES
    from model_zoo.nets.densenet2d import densenet_classifier
    from model_zoo.nets.xception import Xception
    from model_zoo.us_nodule_seg.model import SITE_UNET
    from monai.networks.nets import UNet

    seg_demo = dict(DEMO_NETWORKS["us_nodule_seg"]["network"])
    calc = DEMO_NETWORKS["us_calcified_nodule"]
    sizes = DEMO_RECIPES["us_calcified_nodule"]["input_sizes"]
    seg_size = int(DEMO_RECIPES["us_nodule_seg"]["size"])
    # (name, network factory, input side; U-Net inputs are a 3:4 B-mode region padded to 16)
    nets: list[tuple[str, Callable[[], torch.nn.Module], tuple[int, int, int]]] = [
        ("U-Net nodule segmentation, site size, 256 px", lambda: UNet(spatial_dims=2, in_channels=1, out_channels=1, **SITE_UNET), (1, 192, 256)),
        (f"U-Net nodule segmentation, demo, {seg_size} px", lambda: UNet(spatial_dims=2, in_channels=1, out_channels=1, **seg_demo),
         (1, (seg_size * 3 // 4 + 15) // 16 * 16, seg_size)),
        ("Xception, paper size, 299 px", lambda: Xception(), (3, 299, 299)),
        (f"Xception, demo width {calc['xception']['width']}, {sizes['xception']} px",
         lambda: Xception(**calc["xception"]), (3, sizes["xception"], sizes["xception"])),
        ("DenseNet169, paper size, 224 px", lambda: densenet_classifier("densenet169"), (3, 224, 224)),
        (f"DenseNet169, demo, {sizes['densenet169']} px", lambda: densenet_classifier("densenet169", **calc["densenet169"]),
         (3, sizes["densenet169"], sizes["densenet169"])),
        ("DenseNet121, paper size, 224 px", lambda: densenet_classifier("densenet121"), (3, 224, 224)),
        ("DenseNet121, demo, 224 px", lambda: densenet_classifier("densenet121", **DEMO_NETWORKS["us_lvlnm"]["densenet121"]), (3, 224, 224)),
    ]
    out = []
    for name, factory, chw in nets:
        torch.manual_seed(0)
        net = factory()
        one = images_per_second(_forward(net, (1, *chw), device), 1, repeats, device)
        many = images_per_second(_forward(net, (batch, *chw), device), batch, repeats, device)
        out.append((name, one, many))
        print(f"  {name:52s} batch 1: {one:7.1f} img/s   batch {batch}: {many:7.1f} img/s   ratio {many / one:.2f}", flush=True)
    return out


def model_steps(n_images: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Images/s of each demo model's full per-nodule step, on phantoms."""
    from model_zoo.bundle import load_bundle
    from model_zoo.demo import ensure_demo_bundle
    from model_zoo.phantoms.us import us_phantom
    from model_zoo.us_calcified_nodule.model import USCalcifiedNodule
    from model_zoo.us_lvlnm.model import USLVLNM
    from model_zoo.us_nodule_seg.model import USNoduleSeg

    seg = USNoduleSeg.from_bundle(load_bundle(ensure_demo_bundle("us_nodule_seg")))
    calc = USCalcifiedNodule.from_bundle(load_bundle(ensure_demo_bundle("us_calcified_nodule")))
    lvlnm = USLVLNM.from_bundle(load_bundle(ensure_demo_bundle("us_lvlnm")))
    cases = []
    for i in range(n_images):
        ph = us_phantom(9300 + i)
        cases.append((ph.image.astype(np.float32) / 255.0, ph.nodules[0].mask, (ph.spacing_mm, ph.spacing_mm)))

    def each(step: Callable[[np.ndarray, np.ndarray, tuple[float, float]], object]) -> Callable[[], object]:
        return lambda: [step(b, m, s) for b, m, s in cases]

    steps: dict[str, Callable[[], object]] = {
        "segmentation (us_nodule_seg)": each(lambda b, m, s: seg.segment(b, s)),
        "malignancy, Xception + Grad-CAM (us_calcified_nodule)": each(lambda b, m, s: calc.predict(b, m, ["xception"])),
        "malignancy, DenseNet169 + Grad-CAM": each(lambda b, m, s: calc.predict(b, m, ["densenet169"])),
        "malignancy, both averaged": each(lambda b, m, s: calc.predict(b, m, ["xception", "densenet169"])),
        "LVLNM, DenseNet121 + radiomics + MLP (us_lvlnm)": each(lambda b, m, s: lvlnm.predict(b, m, s)),
    }
    out = {}
    for name, fn in steps.items():
        out[name] = images_per_second(fn, n_images, max(1, repeats // 2), device)
        print(f"  {name:56s} {out[name]:7.1f} img/s", flush=True)
    return out


def _send(files: list[Path], port: int, aet: str) -> float:
    t0 = time.monotonic()
    result = storescu(files, port, called_aet=aet, calling_aet="PACS", timeout=600, extra_args=["-xy"])
    if result.returncode != 0 or set(store_statuses(result)) != {"Success"}:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-1000:]}")
    return time.monotonic() - t0


def whole_path(n_images: int, quiet: float, broker_url: str, timeout: float, work_parent: Path | None, keep: bool) -> tuple[float, float]:
    """(seconds for Orthanc to ingest the study, seconds complete -> SR + SCs stored by the node)."""
    import pydicom
    import redis

    from model_zoo.phantoms.us import us_phantom
    from model_zoo.phantoms.us_dicom import write_us_study

    executable = peers.node_executable()
    if executable is None:
        raise RuntimeError("thyroid-node not found in this venv")
    redis.Redis.from_url(broker_url).flushdb()
    with peers.work_dir("thyroid-us-throughput-", work_parent, keep) as work, Orthanc(work / "orthanc") as pacs:
        node = peers.node(
            work / "node", executable, quiet_period_s=quiet, forced_limit_s=max(120.0, quiet),
            destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": pacs.host, "port": pacs.dicom_port}],
            routes=[{"name": "us", "match": {"modality": ["US"]}, "pipeline": "us_thyroid_nodule", "queue": "us"}],
            models={"us_nodule_seg": "demo", "us_calcified_nodule": "demo", "us_lvlnm": "demo"}, broker_url=broker_url,
        )
        node.startup_timeout = 120.0
        infer = peers.node_worker(node.work_dir, executable, "nm,ct,us")
        export = peers.node_worker(node.work_dir, executable, "export")
        try:
            with node:
                timings = []
                for label, seed, count in (("warm-up (model load)", 9500, 1), ("study", 9600, n_images)):
                    study = write_us_study(work / label.split()[0], seed, transfer_syntax="jpeg_baseline",
                                           phantoms=[us_phantom(seed + i, n_nodules=1) for i in range(count)])
                    files = [i.path for i in study.instances]
                    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                    ingest = _send(files, pacs.dicom_port, pacs.aet)
                    study_id = pacs.lookup_study(study_uid)
                    if study_id:
                        pacs.request("DELETE", f"/studies/{study_id}")
                    _send(files, node.port, node.aet)
                    sent = time.monotonic()

                    def done(uid: str = study_uid, wanted: int = count) -> bool:
                        node.check_alive()
                        kinds = [pacs.instance_metadata(i["ID"]).get("SopClassUid", "") for i in pacs.study_instances(uid)]
                        return sum(k.startswith("1.2.840.10008.5.1.4.1.1.88.") for k in kinds) >= 1 and \
                            sum(k == "1.2.840.10008.5.1.4.1.1.7" for k in kinds) >= wanted

                    wait_until(done, timeout, interval=0.25, what="SR and SCs in Orthanc")
                    latency = time.monotonic() - sent - quiet
                    print(f"  {label}: {count} image(s), Orthanc ingest {ingest:.2f} s, node complete -> stored {latency:.1f} s",
                          flush=True)
                    timings.append((ingest, latency))
        except BaseException:
            for log in sorted(node.work_dir.glob("*.log")):
                print(f"--- {log}:\n{log_tail(log, 3000)}")
            raise
        finally:
            stop_process(infer, timeout=30)
            stop_process(export, timeout=30)
    return timings[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quiet", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--skip-path", action="store_true", help="networks and model steps only (no node, no Orthanc)")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if not (1 <= args.images <= 64 and 1 <= args.batch <= 64 and 1 <= args.repeats <= 20):
        parser.error("--images 1..64, --batch 1..64, --repeats 1..20")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    print("networks (forward only):", flush=True)
    networks(args.batch, args.repeats, device)
    print("models' full per-nodule steps (demo bundles):", flush=True)
    model_steps(args.images, args.repeats, device)
    if not args.skip_path:
        print(f"whole path (storescu -> node -> worker -> Orthanc), quiet period {args.quiet:g} s:", flush=True)
        ingest, latency = whole_path(args.images, args.quiet, args.broker_url, args.timeout, args.work_dir, args.keep)
        print(f"  {args.images / latency:.2f} images/s through the node ({latency:.1f} s for {args.images}); "
              f"Orthanc's ingest {args.images / ingest:.1f} images/s; ratio node/peer time {latency / ingest:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
