"""The DICOM header pass: how long reading 10,000 files' headers takes, and that it reads none
of their pixel data.

Writes ``--files`` DICOM files of ``--side`` x ``--side`` 16-bit pixels (uncompressed, as a CR
or DX export holds them: 2 MB each at 1024), each with its own PatientID, StudyInstanceUID,
SOPInstanceUID, AccessionNumber, view, sex and age. Then reads their headers as cxrdask
reads them (:func:`cxrdask.archive.dicom_headers.read_dicom_headers`: pydicom's
``stop_before_pixels`` and ``specific_tags``) in this process (one file at a time on a local
disk, where parsing holds the GIL) and on a local Dask cluster, and, for comparison, reads
the whole of every file (what a pass that decodes the pixels must read). Every pass counts
the bytes it asked the file system for. Each pass runs with the files in the page cache
(written just before: the times are the parsing's and the file system's) and, with
``--cold`` (root only), again after the page cache is dropped (``/proc/sys/vm/drop_caches``):
the disk's. The kernel reads ahead of what is asked, so a cold header pass moves more from
the disk than it counts.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import machine, peak_rss_mb, save_results, table


def write_files(folder: Path, files: int, side: int) -> tuple[list[str], int]:
    """``files`` DICOM files with distinct headers and one shared image (the header pass
    does not look at it); their paths and their bytes in all."""
    import pydicom

    from cxrdask.archive.synthetic.layouts import encode_dicom

    stored = np.random.default_rng(0).integers(0, 4096, (side, side)).astype(np.uint16)
    template = encode_dicom(stored, header={"PatientID": "P000000"})
    dataset = pydicom.dcmread(io.BytesIO(template))
    paths, total = [], 0
    for k in range(files):
        dataset.PatientID, dataset.AccessionNumber = f"P{k // 3:06d}", f"A{k // 2:07d}"
        dataset.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1418.9.{k // 2}"
        dataset.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1418.8.{k}"
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.ViewPosition, dataset.PatientSex = ("PA", "AP")[k % 2], "MF"[k % 3 % 2]
        dataset.PatientAge, dataset.Modality = f"{20 + k % 70:03d}Y", "DX"
        path = folder / f"{k // 1000:02d}" / f"IM{k:06d}.dcm"
        path.parent.mkdir(exist_ok=True)
        dataset.save_as(path, enforce_file_format=True)
        paths.append(str(path))
        total += path.stat().st_size
    return paths, total


def read_whole(paths: list[str], threads: int) -> int:
    """Every byte of every file, ``threads`` at a time; the bytes read."""
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda p: len(Path(p).read_bytes()), paths))


def drop_page_cache() -> None:
    """Empty the kernel's page cache (root only), so the next pass reads from the disk."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise SystemExit(f"--cold drops the page cache, which needs root: {exc}") from exc


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--side", type=int, default=1024, help="pixels a side (16-bit)")
    parser.add_argument("--threads", type=int, default=16,
                        help="threads reading whole files (headers: one on a local disk)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="Dask worker processes of the cluster pass")
    parser.add_argument("--cold", action="store_true",
                        help="also run each pass after dropping the page cache (root only)")
    parser.add_argument("--keep", metavar="DIR", help="write the files here and keep them")
    parser.add_argument("--smoke", action="store_true", help="write no result files")
    parser.add_argument("--out", default="benchmarks/results/bench_dicom_headers")
    args = parser.parse_args(argv)

    from cxrdask.archive.dicom_headers import read_dicom_headers
    from cxrdask.runtime.cluster import local_client

    folder = Path(args.keep or tempfile.mkdtemp(prefix="bench-dicom-headers-"))
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths, total = write_files(folder, args.files, args.side)
    print(f"{args.files:,} files, {total / 2**20:,.0f} MB, written in "
          f"{time.perf_counter() - started:.0f} s in {folder}", flush=True)
    rows = []
    try:
        def record(what: str, seconds: float, read: int, headers=None) -> None:
            row = {"what": what, "files": args.files, "seconds": seconds,
                   "files_per_s": args.files / seconds, "MB read": read / 2**20,
                   "share of the files' bytes": read / total,
                   "peak_rss_mb": peak_rss_mb()}
            if headers is not None:
                row["unreadable"] = int((headers["error"] != "").sum())
                row["distinct patients"] = int(headers["PatientID"].nunique())
            rows.append(row)
            print(rows[-1], flush=True)

        read_dicom_headers(paths[:256], threads=args.threads)  # pydicom's imports
        with local_client(n_workers=args.workers, threads_per_worker=1,
                          dashboard_address="127.0.0.1:0", announce=False) as client:
            read_dicom_headers(paths[:256], client=client)  # the workers import pydicom
            for cache in ("warm", "cold") if args.cold else ("warm",):
                def start(cold: bool = cache == "cold") -> float:
                    if cold:
                        drop_page_cache()
                    return time.perf_counter()

                started = start()
                headers = read_dicom_headers(paths, threads=args.threads)
                record(f"headers, one process, {cache} cache",
                       time.perf_counter() - started, int(headers["header_bytes"].sum()), headers)
                started = start()
                headers = read_dicom_headers(paths, client=client)
                record(f"headers, Dask cluster of {args.workers} workers, {cache} cache",
                       time.perf_counter() - started, int(headers["header_bytes"].sum()), headers)
                started = start()
                read = read_whole(paths, args.threads)
                record(f"whole files, {args.threads} threads (what a pixel pass reads), {cache} "
                       "cache", time.perf_counter() - started, read)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    header = (f"bench_dicom_headers on {machine()}: {args.files:,} DICOM files of "
              f"{args.side} x {args.side} 16-bit pixels ({total / args.files / 2**20:.1f} MB "
              "each)")
    print(table(rows, header))
    if not args.smoke:
        save_results(args.out, rows, header, vars(args), plot_column="seconds")


if __name__ == "__main__":
    main()
