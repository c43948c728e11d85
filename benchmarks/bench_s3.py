"""Images/s reading from an S3 API (moto's server on 127.0.0.1) against local disk.

    python -m benchmarks.bench_s3 --n 96

The same synthetic archive is extracted from local disk and from the bucket, with the
concurrent fetch on (8 reader threads per worker) and off (1), on one local cluster of
2 worker processes. A loopback server has little latency: real object stores (20-80 ms a
request) gain far more from the concurrent fetch than this shows.
"""

from __future__ import annotations

import argparse
import tempfile

from benchmarks.common import machine, save_results, table
from cxrdask.archive.synthetic import make_archive
from cxrdask.extract.run import extract_features
from cxrdask.runtime.cluster import local_client
from cxrdask.testing import local_s3_server


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/bench_s3")
    args = parser.parse_args(argv)

    with local_s3_server("bench") as options:
        rows = run(args, options)
    header = f"bench_s3 on {machine()}: {args.n} PNGs of {args.size}x{args.size}"
    save_results(args.out, rows, header, vars(args), plot_column="images_per_s")
    print(table(rows, header))


def run(args, options: dict) -> list[dict]:
    """Extract the same archive from local disk and from the bucket, fetch concurrent or not."""
    local_root = tempfile.mkdtemp(prefix="bench-s3-local-")
    local = make_archive(local_root, n=args.n, size=args.size, seed=0)
    remote = make_archive("s3://bench/archive", n=args.n, size=args.size, seed=0,
                          storage_options=options)
    rows = []
    with local_client(n_workers=args.workers, announce=False, dashboard_address=None) as client:
        for where, archive, opts in (("local disk", local, None), ("S3 (moto)", remote, options)):
            for threads in (8, 1):
                store = tempfile.mkdtemp(prefix="bench-s3-store-") + "/f.zarr"
                summary = extract_features(archive.metadata_url, archive.root, store,
                                           client=client, weights="random", chunk_rows=16,
                                           io_threads=threads, storage_options=opts,
                                           progress=False, split="patient")
                read_s = float(summary.timings["read_s"].sum())
                rows.append({"what": f"{where}, {threads} reader thread(s) per worker",
                             "images_per_s": summary.images_per_second,
                             "read_s_per_image": read_s / summary.rows_written})
                print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
