"""C-STORE senders for the benchmarks: dcmtk's storescu and a pynetdicom SCU.

Each sender sends a list of chunks, one association per chunk, all in
parallel (one process per association), and returns the wall time in
seconds from launch to the last association's release. A sender raises if
any C-STORE did not succeed, so a figure is never computed over failures.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE
from dicom_node.send import guard_reactor_race

from tests.peers import LOCALHOST, native_tool, store_statuses

SEND_TIMEOUT_S = 600.0
SCU_AET = "BENCHSCU"


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """Split files into `parts` contiguous chunks of near-equal length."""
    size, extra = divmod(len(files), parts)
    chunks, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        chunks.append(list(files[start:end]))
        start = end
    return chunks


def send_storescu(chunks: Sequence[Sequence[Path]], port: int, aet: str, log_dir: Path, *, nodelay: bool) -> float:
    """One storescu -R process per chunk; TCP_NODELAY=1 in its env if `nodelay`.

    dcmtk reads the TCP_NODELAY environment variable; unset, storescu keeps
    Nagle's algorithm on (its default), which is what a PACS running dcmtk does.
    """
    env = {**os.environ, "TCP_NODELAY": "1" if nodelay else "0"}
    logs = [log_dir / f"storescu-{index}.log" for index in range(len(chunks))]
    procs: list[subprocess.Popen[bytes]] = []
    start = time.perf_counter()
    for chunk, log_path in zip(chunks, logs):
        cmd = [native_tool("storescu"), "-R", "-v", "-aet", SCU_AET, "-aec", aet, LOCALHOST, str(port)]
        with log_path.open("wb") as log:
            procs.append(subprocess.Popen([*cmd, *map(str, chunk)], stdout=log, stderr=subprocess.STDOUT, env=env))
    codes = [_wait(proc) for proc in procs]
    elapsed = time.perf_counter() - start
    for chunk, log_path, code in zip(chunks, logs, codes):
        _check_storescu(chunk, log_path, code)
    return elapsed


def _wait(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=SEND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        raise


def _check_storescu(chunk: Sequence[Path], log_path: Path, code: int) -> None:
    output = log_path.read_text(errors="replace")
    result = subprocess.CompletedProcess[str]([], code, output, "")
    statuses = store_statuses(result)
    if code != 0 or statuses != ["Success"] * len(chunk):
        failed = [s for s in statuses if s != "Success"][:3]
        raise RuntimeError(
            f"storescu exit {code}, {statuses.count('Success')}/{len(chunk)} stored, "
            f"first failures {failed}; see {log_path}"
        )


def pynetdicom_send(files: Sequence[str], port: int, aet: str, nodelay: bool) -> int:
    """Send files over one pynetdicom association; return how many succeeded.

    The presentation contexts are the files' own (SOP class, transfer syntax)
    pairs. TCP_NODELAY is set on the socket once the association is up (the
    A-ASSOCIATE exchange is one round trip either way).
    """
    ae = AE(ae_title=SCU_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class, syntax in sorted(_contexts(files)):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(LOCALHOST, port, ae_title=aet)
    if not assoc.is_established:
        raise RuntimeError(f"association to {aet}@{port} not established")
    if nodelay:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    guard_reactor_race(assoc)
    succeeded = 0
    try:
        for path in files:
            status = assoc.send_c_store(path)
            succeeded += int(bool(status) and status.Status == 0x0000)
    finally:
        assoc.release()
    return succeeded


def _contexts(files: Sequence[str]) -> set[tuple[str, str]]:
    contexts = set()
    for path in files:
        meta = read_file_meta_info(path)
        contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    return contexts


def send_pynetdicom(chunks: Sequence[Sequence[Path]], port: int, aet: str, *, nodelay: bool = True) -> float:
    """One forked worker process per chunk, each with its own association.

    The workers are forked before the clock starts (Python's start-up is not
    part of the figure; storescu's exec is, but it is a few ms).
    """
    context = multiprocessing.get_context("fork")
    with context.Pool(processes=len(chunks)) as pool:
        args = [([str(p) for p in chunk], port, aet, nodelay) for chunk in chunks]
        start = time.perf_counter()
        pending = pool.starmap_async(pynetdicom_send, args)
        counts = pending.get(timeout=SEND_TIMEOUT_S)
        elapsed = time.perf_counter() - start
    expected = [len(chunk) for chunk in chunks]
    if counts != expected:
        raise RuntimeError(f"pynetdicom stored {counts} of {expected} files per association")
    return elapsed
