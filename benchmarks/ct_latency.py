"""CT study -> SEG + SR + heatmaps in the PACS: seconds from complete to stored, and the worker's peak memory.

    python benchmarks/ct_latency.py [--slices 300] [--rows 512] [--studies 1] [--quiet 2]
        [--broker-url redis://127.0.0.1:6379/13] [--timeout 900] [--work-dir DIR] [--keep]

Starts Orthanc (the PACS) and the node with a Redis broker; this script runs the Celery workers
(`thyroid-node worker`: inference on nm,ct,us, and export), so it knows the inference worker's PID
and reads its peak resident memory (VmHWM in /proc) at the end. A small warm-up study first loads
torch and the model. Then each phantom chest CT (model_zoo.phantoms.ct.write_ct_study; 300 slices of
512 x 512 at 0.7 x 0.7 x 1 mm by default, 4 nodules) is:

1. sent by dcmtk storescu straight to Orthanc (the peer: how long the PACS itself takes to take the
   study in), then deleted from Orthanc;
2. sent by storescu to the node; the clock runs from storescu's return until Orthanc holds the SEG,
   the SR and one SC per lesion. "complete -> stored" is that minus the quiet period (the node only
   closes a study after it).

The worker's own split (resampling, segmentation, lesions) comes from its log. On a CUDA machine the
worker uses the GPU (mixed precision, batched sliding-window) with no option to set.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom

from benchmarks import peers
from tests.peers import Orthanc, log_tail, stop_process, store_statuses, storescu, wait_until

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def _kinds(pacs: Orthanc, study_uid: str, seen: dict[str, str]) -> dict[str, int]:
    for inst in pacs.study_instances(study_uid):
        if inst["ID"] not in seen:
            seen[inst["ID"]] = pacs.instance_metadata(inst["ID"]).get("SopClassUid", "")
    counts = {"SEG": 0, "SR": 0, "SC": 0}
    for sop_class in seen.values():
        if sop_class == SEG_CLASS:
            counts["SEG"] += 1
        elif sop_class.startswith(SR_PREFIX):
            counts["SR"] += 1
        elif sop_class.startswith(SC_PREFIX):
            counts["SC"] += 1
    return counts


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _send(files: list[Path], port: int, aet: str) -> float:
    t0 = time.monotonic()
    result = storescu(files, port, called_aet=aet, calling_aet="PACS", timeout=900)
    if result.returncode != 0 or set(store_statuses(result)) != {"Success"}:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-1000:]}")
    return time.monotonic() - t0


def one_study(pacs: Orthanc, node: peers.Receiver, files: list[Path], lesions: int, timeout: float) -> tuple[float, float]:
    """(seconds for Orthanc to ingest the study, seconds until the node's results are in Orthanc)."""
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    ingest = _send(files, pacs.dicom_port, pacs.aet)
    study_id = pacs.lookup_study(study_uid)
    if study_id:
        pacs.request("DELETE", f"/studies/{study_id}")
    _send(files, node.port, node.aet)
    sent = time.monotonic()
    seen: dict[str, str] = {}

    def done() -> bool:
        node.check_alive()
        k = _kinds(pacs, study_uid, seen)
        return k["SEG"] >= (1 if lesions else 0) and k["SR"] >= 1 and k["SC"] >= lesions

    wait_until(done, timeout, interval=0.25, what="SEG, SR and SCs in Orthanc")
    return ingest, time.monotonic() - sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--pixel-mm", type=float, default=0.7)
    parser.add_argument("--slice-mm", type=float, default=1.0)
    parser.add_argument("--studies", type=int, default=1)
    parser.add_argument("--quiet", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if not (1 <= args.studies <= 5 and 16 <= args.slices <= 600 and 64 <= args.rows <= 1024):
        parser.error("--studies 1..5, --slices 16..600, --rows 64..1024")
    executable = peers.node_executable()
    if executable is None:
        print("thyroid-node not found in this venv: nothing to measure")
        return 2
    from model_zoo.demo import ensure_demo_bundle
    from model_zoo.phantoms.ct_dicom import write_ct_study

    ensure_demo_bundle("ct_lung_met_rai")
    import redis

    redis.Redis.from_url(args.broker_url).flushdb()
    ingest_s, latency_s = [], []
    with peers.work_dir("thyroid-ct-latency-", args.work_dir, args.keep) as work, Orthanc(work / "orthanc") as pacs:
        node = peers.node(
            work / "node", executable, quiet_period_s=args.quiet, forced_limit_s=max(120.0, args.quiet),
            destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": pacs.host, "port": pacs.dicom_port}],
            routes=[{"name": "ct", "match": {"modality": ["CT"]}, "pipeline": "ct_lung_met_rai", "queue": "ct"}],
            models={"ct_lung_met_rai": "demo"}, broker_url=args.broker_url,
        )
        node.startup_timeout = 120.0
        infer = peers.node_worker(node.work_dir, executable, "nm,ct,us")
        export = peers.node_worker(node.work_dir, executable, "export")
        try:
            with node:
                t0 = time.monotonic()
                warm = write_ct_study(work / "warm", 8000, rows=128, slices=48, pixel_mm=1.6, slice_mm=2.5, nodules=1)
                one_study(pacs, node, warm.paths, 1, args.timeout)
                print(f"warm-up study (model load): {time.monotonic() - t0:.1f} s", flush=True)
                for i in range(args.studies):
                    t0 = time.monotonic()
                    study = write_ct_study(work / f"ct-{i}", 8100 + i, rows=args.rows, slices=args.slices,
                                           pixel_mm=args.pixel_mm, slice_mm=args.slice_mm, nodules=4)
                    size_mb = sum(p.stat().st_size for p in study.paths) / 1e6
                    print(f"study {i + 1}: {len(study.paths)} files, {size_mb:.0f} MB written in "
                          f"{time.monotonic() - t0:.0f} s", flush=True)
                    ingest, latency = one_study(pacs, node, study.paths, len(study.nodules), args.timeout)
                    ingest_s.append(ingest)
                    latency_s.append(latency)
                    print(f"  Orthanc ingest {ingest:.1f} s; node: results in Orthanc {latency:.1f} s after "
                          f"storescu returned ({latency - args.quiet:.1f} s beyond the quiet period)", flush=True)
                peak = peak_rss_mb(infer.pid)
        except BaseException:
            for log in sorted(node.work_dir.glob("*.log")):
                print(f"--- {log}:\n{log_tail(log, 3000)}")
            raise
        finally:
            stop_process(infer, timeout=30)
            stop_process(export, timeout=30)
        worker_log = (node.work_dir / "worker-nm-ct-us.log").read_text(errors="replace")
    splits = re.findall(r"CT analysis: .*", worker_log)
    beyond = [t - args.quiet for t in latency_s]
    print(f"\nCT {args.slices} x {args.rows} x {args.rows} study, {args.studies} run(s), quiet period {args.quiet:g} s")
    print(f"  complete -> SEG + SR + SCs stored in Orthanc: median {statistics.median(beyond):.1f} s (target <= 60 s)")
    print(f"  Orthanc's own ingest of the same study (peer): median {statistics.median(ingest_s):.1f} s; "
          f"ratio node/peer {statistics.median(beyond) / statistics.median(ingest_s):.2f}")
    print(f"  inference worker peak RSS: {peak:.0f} MB (target <= 4096 MB)")
    for line in splits[1:]:
        print(f"  worker: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
