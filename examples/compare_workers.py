"""Which worker layout extracts fastest on this machine? Run it before a long extraction.

    python examples/compare_workers.py                       # a synthetic archive, 1024 x 1024
    python examples/compare_workers.py --images /data/nih --n 400   # 400 of your own images

Runs ``extract_features`` on the same images for each layout (processes x threads, on the
CPU or sharing the GPU), prints images/s and the projected time for the whole NIH archive
(112,120 images), and names the fastest. Model build and worker start-up are excluded
(they happen once per worker). ``benchmarks/bench_extract.py`` is the full benchmark
(bounds, precisions, a DataLoader loop and PySpark side by side).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import torch

from cxrdask import extract_features, local_client, make_archive, read_metadata
from cxrdask.archive.kinds.nih import find_metadata

FULL_ARCHIVE = 112_120


def default_layouts(cores: int, gpu: bool) -> list[str]:
    """One process per core, one process with a thread per core, and halfway between."""
    layouts = {f"{cores}x1", f"1x{cores}", f"{max(1, cores // 2)}x2"}
    if gpu:
        layouts.add(f"1x{min(cores, 8)}")
    return sorted(layouts, key=lambda s: tuple(int(v) for v in s.split("x")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="an archive root (default: write a synthetic one)")
    parser.add_argument("--n", type=int, default=64 * (os.cpu_count() or 1),
                        help="images to time (default 64 per core)")
    parser.add_argument("--size", type=int, default=1024, help="side of synthetic images")
    parser.add_argument("--layouts", help="processes x threads, e.g. 2x1,1x2 (default: a few)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--weights", default="random",
                        help="random (offline), imagenet or a .pth file: all cost the same")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    workdir = tempfile.mkdtemp(prefix="compare-workers-")
    try:
        if args.images:
            root = args.images
            metadata = read_metadata(find_metadata(root)).head(args.n)
        else:
            archive = make_archive(os.path.join(workdir, "archive"), n=args.n, size=args.size,
                                   progress=True)
            root, metadata = archive.root, read_metadata(archive.metadata_url)
        batch = 64 if gpu else 8
        rows = []
        for layout in (args.layouts.split(",") if args.layouts else default_layouts(cores, gpu)):
            processes, threads = (int(v) for v in layout.split("x"))
            store = os.path.join(workdir, f"{layout}.zarr")
            with local_client(n_workers=processes, threads_per_worker=threads, announce=False,
                              dashboard_address=None) as client:
                summary = extract_features(metadata, root, store, client=client,
                                           weights=args.weights, device=args.device,
                                           precision=args.precision, batch_size=batch,
                                           chunk_rows=max(batch, len(metadata) // (2 * processes * threads)),
                                           io_threads=max(8, cores // processes),
                                           split="random", progress=False)
            shutil.rmtree(store, ignore_errors=True)
            rate = summary.images_per_second
            rows.append((layout, rate))
            print(f"{processes} process(es) x {threads} thread(s): {rate:7.1f} images/s, "
                  f"whole archive in {FULL_ARCHIVE / rate / 60:6.1f} min "
                  f"(model warm-up {summary.warmup_seconds:.1f} s)", flush=True)
        best, rate = max(rows, key=lambda row: row[1])
        processes, threads = best.split("x")
        print(f"\nfastest here: {processes} process(es) x {threads} thread(s), {rate:.1f} images/s "
              f"({'GPU' if gpu else 'CPU'}, {args.precision}, {cores} cores). Use it with:\n"
              f"  cxrdask extract --images ... --store ... --workers {processes} "
              f"--threads-per-worker {threads} --precision {args.precision}"
              + (" --device cuda" if gpu else ""))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
