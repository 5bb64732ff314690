"""End-to-end latency of an NM thyroid study: sent to the node -> SR and SC in the PACS.

    python benchmarks/nm_latency.py [--studies 3] [--warmup 1] [--quiet 2]
        [--timeout 600] [--broker-url URL] [--work-dir DIR] [--keep]

Starts Orthanc (the PACS, tests/peers.py) and the node (`thyroid-node serve`;
with the embedded broker it starts its own workers, with --broker-url this
script starts `thyroid-node worker` for nm,ct,us and for export),
routes NM to `nm_thyroid_dx` with the demo weights, then for each phantom
study (model_zoo.phantoms.nm.write_nm_study) sends it with storescu and polls
Orthanc until the study holds an SR (SOP class 1.2.840.10008.5.1.4.1.1.88.*)
and a Secondary Capture (1.2.840.10008.5.1.4.1.1.7*). Latency runs from
storescu's return to the first poll that sees both; the table also shows it
minus the quiet period (what the node adds beyond waiting for completeness).
Warm-up studies (model loading, first imports) are reported but not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom

from benchmarks import peers
from tests.peers import (
    SC_SOP_CLASS_PREFIX,
    SR_SOP_CLASS_PREFIX,
    Orthanc,
    log_tail,
    stop_process,
    store_statuses,
    storescu,
    wait_until,
)

PACS_MODALITY = "pacs"
CALLING_AET = "PACS"


def node_settings(pacs: Orthanc, quiet_s: float, broker_url: str | None) -> dict[str, Any]:
    """The node_config() arguments of this benchmark: one NM route, results to Orthanc."""
    return {
        "quiet_period_s": quiet_s,
        "forced_limit_s": max(60.0, quiet_s),
        "destinations": [{"name": PACS_MODALITY, "ae_title": pacs.aet, "host": pacs.host, "port": pacs.dicom_port}],
        "routes": [{"name": "nm-thyroid", "match": {"modality": ["NM"]}, "pipeline": "nm_thyroid_dx", "queue": "nm"}],
        "models": {"nm_thyroid_dx": "demo"},
        "broker_url": broker_url,
    }


def output_kinds(pacs: Orthanc, study_uid: str, seen: dict[str, str]) -> set[str]:
    """Which of "SR", "SC" the PACS holds for the study (`seen` caches SOP classes by ID)."""
    for instance in pacs.study_instances(study_uid):
        if instance["ID"] not in seen:
            seen[instance["ID"]] = pacs.instance_metadata(instance["ID"]).get("SopClassUid", "")
    kinds = set()
    for sop_class in seen.values():
        if sop_class.startswith(SR_SOP_CLASS_PREFIX):
            kinds.add("SR")
        elif sop_class.startswith(SC_SOP_CLASS_PREFIX):
            kinds.add("SC")
    return kinds


def _done(pacs: Orthanc, node: peers.Receiver, study_uid: str, seen: dict[str, str]) -> bool:
    node.check_alive()
    return {"SR", "SC"} <= output_kinds(pacs, study_uid, seen)


def one_study(pacs: Orthanc, node: peers.Receiver, path: Path, timeout: float) -> float:
    """Send one study to the node; return seconds until its SR and SC are in the PACS."""
    study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    result = storescu([path], node.port, called_aet=node.aet, calling_aet=CALLING_AET)
    sent = time.monotonic()
    if result.returncode != 0 or store_statuses(result) != ["Success"]:
        raise RuntimeError(f"storescu to the node failed ({result.returncode}): {store_statuses(result)}")
    seen: dict[str, str] = {}
    wait_until(
        lambda: _done(pacs, node, study_uid, seen),
        timeout,
        interval=0.1,
        what="the node's SR and SC in Orthanc",
    )
    return time.monotonic() - sent


def write_study(work_dir: Path, index: int) -> Path:
    from model_zoo.phantoms.nm import NM_LABELS, write_nm_study

    label = NM_LABELS[index % len(NM_LABELS)]
    return write_nm_study(work_dir / f"nm-{index}", label, 7000 + index)


@contextlib.contextmanager
def _workers(args: argparse.Namespace, node: peers.Receiver, executable: str) -> Iterator[None]:
    """With --broker-url, this script runs the Celery workers (`serve` runs none then)."""
    procs = [peers.node_worker(node.work_dir, executable, q) for q in ("nm,ct,us", "export")] if args.broker_url else []
    try:
        yield
    finally:
        for proc in procs:
            stop_process(proc, timeout=30)


def _print_logs(node_dir: Path) -> None:
    for log_path in sorted(node_dir.glob("*.log")):
        print(f"--- {log_path}:\n{log_tail(log_path, 3000)}")


def run(args: argparse.Namespace, work_dir: Path, executable: str) -> tuple[list[float], list[float]]:
    warm: list[float] = []
    timed: list[float] = []
    with Orthanc(work_dir / "orthanc") as pacs:
        settings = node_settings(pacs, args.quiet, args.broker_url)
        node = peers.node(work_dir / "node", executable, **settings)
        node.startup_timeout = 120.0
        with node, _workers(args, node, executable):
            for index in range(args.warmup + args.studies):
                path = write_study(work_dir, index)
                try:
                    seconds = one_study(pacs, node, path, args.timeout)
                except TimeoutError:
                    _print_logs(node.work_dir)
                    raise
                (warm if index < args.warmup else timed).append(seconds)
                kind = "warm-up" if index < args.warmup else "study"
                print(
                    f"  {kind} {index + 1}: {seconds:6.2f} s ({seconds - args.quiet:6.2f} s beyond the quiet period)",
                    flush=True,
                )
    return warm, timed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quiet", type=float, default=2.0, help="the node's quiet period, seconds")
    parser.add_argument("--timeout", type=float, default=600.0, help="per study, seconds")
    parser.add_argument(
        "--broker-url",
        default=None,
        help="e.g. redis://127.0.0.1:6379/13 (a DB no one else uses): this script then runs the workers; "
        "default: the node's embedded broker, whose workers `serve` starts",
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if not (1 <= args.studies <= 50 and 0 <= args.warmup <= 5):
        parser.error("--studies must be 1..50 and --warmup 0..5")
    return args


def main() -> int:
    args = parse_args()
    executable = peers.node_executable()
    if executable is None:
        print("thyroid-node not found in this venv: nothing to measure")
        return 2
    with peers.work_dir("thyroid-nm-latency-", args.work_dir, args.keep) as work_dir:
        warm, timed = run(args, work_dir, executable)
    beyond = [t - args.quiet for t in timed]
    print(f"\nNM study -> SR + SC in Orthanc, quiet period {args.quiet:g} s, {len(timed)} studies")
    print(f"  latency      median {statistics.median(timed):6.2f} s   max {max(timed):6.2f} s")
    print(f"  minus quiet  median {statistics.median(beyond):6.2f} s   max {max(beyond):6.2f} s")
    if warm:
        print(f"  warm-up (not counted): {', '.join(f'{t:.2f} s' for t in warm)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
