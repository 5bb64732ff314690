"""C-STORE ingest throughput: the node against dcmtk's storescp.

    python benchmarks/ingest.py [--slices 300] [--size 512] [--reps 3]
        [--associations 1 4] [--senders storescu storescu-nodelay pynetdicom-nodelay]
        [--targets storescp node] [--storescp-mode fork|single] [--work-dir DIR] [--keep]

Sends a synthetic CT series (benchmarks/synthetic.py) over 1 and over 4
parallel associations (files split in 4 contiguous chunks, one sender process
per association) and prints MB/s (1 MB = 1e6 bytes of DICOM files sent) as
the median over the repetitions, and the node/storescp ratio.

Every measurement starts a fresh receiver into an empty directory (start-up
is not timed) and ends when the last sender has released its association.

Baseline choice: storescp runs with `+xa`, TCP_NODELAY=1 in its environment
(dcmtk otherwise keeps Nagle on, and every file then waits ~45 ms for a
delayed ACK: `--storescp-nagle` measures that) and, by default, `--fork` (one
child per association) so that 4 associations are received in parallel as
the node receives them; `--storescp-mode single` measures plain storescp,
which serves the associations one after another. storescp re-encodes each
data set and does not fsync; the node is expected to write the received
bytes and fsync each file before answering, so a ratio below 1 is expected.

Senders: `storescu` is dcmtk's default (Nagle on, as many PACS send);
`storescu-nodelay` sets TCP_NODELAY=1, which dcmtk reads from the
environment; `pynetdicom-nodelay` is a pynetdicom SCU with TCP_NODELAY set on
its socket (and `pynetdicom` without it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import peers, senders
from benchmarks.synthetic import write_ct_series

Sender = Callable[[Sequence[Sequence[Path]], int, str, Path], float]

SENDERS: dict[str, Sender] = {
    "storescu": lambda chunks, port, aet, logs: senders.send_storescu(chunks, port, aet, logs, nodelay=False),
    "storescu-nodelay": lambda chunks, port, aet, logs: senders.send_storescu(chunks, port, aet, logs, nodelay=True),
    "pynetdicom": lambda chunks, port, aet, logs: senders.send_pynetdicom(chunks, port, aet, nodelay=False),
    "pynetdicom-nodelay": lambda chunks, port, aet, logs: senders.send_pynetdicom(chunks, port, aet, nodelay=True),
}


@dataclass(frozen=True)
class Case:
    target: str
    sender: str
    associations: int


def make_receiver(target: str, work_dir: Path, args: argparse.Namespace) -> peers.Receiver:
    if target == "storescp":
        return peers.storescp(work_dir, fork=args.storescp_mode == "fork", nodelay=not args.storescp_nagle)
    executable = peers.node_executable()
    assert executable is not None
    # No routes, so no work: --no-workers keeps worker start-up off the 2 CPUs being measured.
    return peers.node(work_dir, executable, serve_args=["--no-workers"], quiet_period_s=3600.0, forced_limit_s=7200.0)


def measure(case: Case, files: Sequence[Path], work_dir: Path, args: argparse.Namespace) -> float:
    """Start a fresh receiver, send, stop it, check what it wrote; return seconds."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{case.target}-", dir=work_dir))
    chunks = senders.split(files, case.associations)
    os.sync()  # flush the previous run's dirty pages so their write-back is not timed here
    try:
        with make_receiver(case.target, run_dir, args) as receiver:
            elapsed = SENDERS[case.sender](chunks, receiver.port, receiver.aet, run_dir)
        if case.target == "storescp":
            _check_count(run_dir / "data", len(files))
    except BaseException:
        print(f"{case} failed; receiver and sender logs kept in {run_dir}", flush=True)
        raise
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return elapsed


def _check_count(data_dir: Path, expected: int) -> None:
    written = sum(1 for p in data_dir.rglob("*") if p.is_file())
    if written != expected:
        raise RuntimeError(f"storescp wrote {written} files, expected {expected}")


def run_cases(
    cases: list[Case], files: Sequence[Path], work_dir: Path, args: argparse.Namespace
) -> dict[Case, list[float]]:
    """Repetitions outermost, so slow drift of the machine spreads over all cases."""
    times: dict[Case, list[float]] = {case: [] for case in cases}
    for rep in range(args.reps):
        for case in cases:
            seconds = measure(case, files, work_dir, args)
            times[case].append(seconds)
            print(
                f"  rep {rep + 1}: {case.target:8s} {case.sender:18s} x{case.associations}: {seconds:6.2f} s",
                flush=True,
            )
    return times


def print_table(times: dict[Case, list[float]], megabytes: float, args: argparse.Namespace) -> None:
    rate = {case: megabytes / statistics.median(values) for case, values in times.items()}
    baseline = f"storescp ({args.storescp_mode}{', nagle' if args.storescp_nagle else ''})"
    print(f"\n{megabytes:.1f} MB per send, median of {args.reps}; MB/s")
    width = max(18, len(baseline))
    print(f"{'sender':20s} {'assoc':>5s} {baseline:>{width}s} {'node':>8s} {'node/storescp':>14s}")
    for sender in args.senders:
        for n in args.associations:
            scp = rate.get(Case("storescp", sender, n))
            nod = rate.get(Case("node", sender, n))
            ratio = f"{nod / scp:14.2f}" if scp and nod else f"{'-':>14s}"
            print(f"{sender:20s} {n:5d} {_fmt(scp):>{width}s} {_fmt(nod):>8s} {ratio}")


def _fmt(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--senders", nargs="+", choices=sorted(SENDERS), default=["storescu", "storescu-nodelay", "pynetdicom-nodelay"]
    )
    parser.add_argument("--targets", nargs="+", choices=["storescp", "node"], default=["storescp", "node"])
    parser.add_argument("--storescp-mode", choices=["fork", "single"], default="fork")
    parser.add_argument("--storescp-nagle", action="store_true", help="leave Nagle on in storescp (dcmtk's default)")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a new temp dir, removed at the end")
    parser.add_argument("--keep", action="store_true", help="keep received files and logs")
    args = parser.parse_args()
    if not 1 <= args.reps <= 20:
        parser.error("--reps must be 1..20")
    return args


def main() -> int:
    args = parse_args()
    if "node" in args.targets and peers.node_executable() is None:
        print("thyroid-node not found in this venv: node half NOT measured (storescp only)")
        args.targets = [t for t in args.targets if t != "node"]
    with peers.work_dir("thyroid-bench-", args.work_dir, args.keep) as work_dir:
        files = write_ct_series(work_dir / "series", args.slices, args.size, seed=0)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        cases = [Case(t, s, n) for n in args.associations for s in args.senders for t in args.targets]
        print(f"{len(files)} files, {megabytes:.1f} MB; {len(cases)} cases x {args.reps} reps", flush=True)
        print_table(run_cases(cases, files, work_dir, args), megabytes, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
