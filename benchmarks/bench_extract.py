"""Feature extraction speed: the compute bound, decode alone, cxrdask layouts, a DataLoader loop.

All on the same synthetic 1024x1024 PNGs, in one run, so the ratios are fair:

    python -m benchmarks.bench_extract --n 192

(a) the bare backbone on tensors already decoded, one thread, per precision and batch size;
(b) read + decode + resize + normalise alone, one thread; the bound for N cores is
    N / (1/a + 1/b); (c) ``extract_features`` end to end for worker layouts (processes x
    threads) and precisions; (d) a hand-written PyTorch DataLoader loop (num_workers = cores)
    with the same preprocessing, writing ``np.save`` files. Prints a table last and writes
    JSON and a PNG next to it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine, peak_rss_mb, save_results, table
from cxrdask.backbone import BackboneRunner, BackboneSpec
from cxrdask.imaging import preprocess_bytes
from cxrdask.metadata import locate_images, read_metadata
from cxrdask.synthetic import make_archive

SPEC = BackboneSpec("resnet50", "random", 0)


def archive_for(path: Path, n: int, size: int):
    """Reuse a synthetic archive of the right size, else write one."""
    csv = path / "Data_Entry_2017.csv"
    if csv.exists() and len(read_metadata(str(csv), max_age=10_000)) == n:
        return str(path), str(csv)
    shutil.rmtree(path, ignore_errors=True)
    archive = make_archive(str(path), n=n, size=size, seed=0, progress=True)
    print(f"synthetic archive: {archive.images_per_second:.1f} images/s written")
    return archive.root, archive.metadata_url


def forward_rate(precision: str, compile: bool, batch: int, seconds: float) -> float:
    """Images/s of the bare backbone, one thread, on random decoded tensors."""
    torch.set_num_threads(1)
    runner = BackboneRunner(SPEC, "cpu", precision, compile, batch)
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    runner(x)  # warm-up (and compilation)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner(x)
        done += batch
    return done / (time.perf_counter() - start)


def decode_rate(urls: list[str]) -> float:
    """Images/s of read + decode + resize + normalise on one thread."""
    start = time.perf_counter()
    for url in urls:
        with open(url, "rb") as handle:
            preprocess_bytes(handle.read(), os.path.basename(url))
    return len(urls) / (time.perf_counter() - start)


def cxrdask_rate(metadata: str, root: str, workers: int, threads: int, precision: str,
                 compile: bool, chunk_rows: int, batch: int) -> dict:
    """extract_features on a fresh local cluster; the model is built before the clock starts."""
    from cxrdask.cluster import local_client
    from cxrdask.extract import extract_features

    store = tempfile.mkdtemp(prefix="bench-store-") + "/f.zarr"
    with local_client(n_workers=workers, threads_per_worker=threads, announce=False,
                      dashboard_address=None) as client:
        summary = extract_features(metadata, root, store, client=client, weights="random",
                                   chunk_rows=chunk_rows, batch_size=batch, precision=precision,
                                   compile=compile, progress=False, split="patient")
    stages = summary.timings[["read_s", "decode_s", "forward_s", "write_s"]].sum()
    shutil.rmtree(os.path.dirname(store), ignore_errors=True)
    return {"images_per_s": summary.images_per_second, "seconds": summary.seconds,
            "warmup_s": summary.warmup_seconds,
            **{k: round(float(v), 2) for k, v in stages.items()}}


class _Files(torch.utils.data.Dataset):
    def __init__(self, urls):
        self.urls = urls

    def __len__(self):
        return len(self.urls)

    def __getitem__(self, i):
        with open(self.urls[i], "rb") as handle:
            return torch.from_numpy(preprocess_bytes(handle.read(), self.urls[i])[0])


def dataloader_rate(urls: list[str], precision: str, batch: int) -> dict:
    """A plain PyTorch loop: DataLoader workers decode, the main process runs the model."""
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    runner = BackboneRunner(SPEC, "cpu", precision, False, batch)
    runner(np.zeros((batch, 3, 224, 224), np.float32))
    out = Path(tempfile.mkdtemp(prefix="bench-dl-"))
    loader = torch.utils.data.DataLoader(_Files(urls), batch_size=batch, num_workers=cores,
                                         multiprocessing_context="spawn", prefetch_factor=4)
    start = time.perf_counter()
    for i, x in enumerate(loader):
        np.save(out / f"features_{i:05d}.npy", runner(x.numpy()).astype(np.float16))
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    torch.set_num_threads(1)
    return {"images_per_s": len(urls) / seconds, "seconds": seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=192, help="images (default 192)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--archive", default=os.path.join(tempfile.gettempdir(),
                                                          "cxrdask-bench-archive"))
    parser.add_argument("--layouts", default="1x1,1x2,2x1", help="processes x threads, comma list")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile + bf16")
    parser.add_argument("--batch-sizes", default="8,32", help="for the bare-backbone bound")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the extraction")
    parser.add_argument("--chunk-rows", type=int, default=24,
                        help="a multiple of --batch, so compiled graphs never pad")
    parser.add_argument("--seconds", type=float, default=8.0, help="per bare-backbone figure")
    parser.add_argument("--no-dataloader", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/bench_extract")
    args = parser.parse_args(argv)

    root, metadata = archive_for(Path(args.archive), args.n, args.size)
    frame = read_metadata(metadata, max_age=10_000)
    urls = locate_images(root).urls_for(frame["image_index"])
    configs = [(p, False) for p in args.precisions.split(",")]
    if args.compile:
        configs.append(("bf16", True))

    rows, bound = [], {}
    decode = decode_rate(urls[: min(len(urls), 100)])
    rows.append({"what": "(b) read+decode+resize, 1 thread", "images_per_s": decode})
    for precision, compile in configs:
        name = f"{'compile+' if compile else ''}{precision}"
        rates = {b: forward_rate(precision, compile, int(b), args.seconds)
                 for b in args.batch_sizes.split(",")}
        for batch, rate in rates.items():
            rows.append({"what": f"(a) backbone {name}, batch {batch}, 1 thread",
                         "images_per_s": rate})
        per_core = 1.0 / (1.0 / rates[str(args.batch)] + 1.0 / decode) \
            if str(args.batch) in rates else 1.0 / (1.0 / max(rates.values()) + 1.0 / decode)
        bound[name] = per_core
    cores = os.cpu_count() or 1
    for name, per_core in bound.items():
        rows.append({"what": f"bound {name}, {cores} cores", "images_per_s": per_core * cores})

    one_worker = {}
    for precision, compile in configs:
        name = f"{'compile+' if compile else ''}{precision}"
        for layout in args.layouts.split(","):
            processes, threads = (int(v) for v in layout.split("x"))
            used = processes * threads
            result = cxrdask_rate(metadata, root, processes, threads, precision, compile,
                                  args.chunk_rows, args.batch)
            rate = result["images_per_s"]
            if used == 1:
                one_worker[name] = rate
            rows.append({
                "what": f"(c) cxrdask {name}, {processes} proc x {threads} thr",
                "images_per_s": rate,
                "of_bound": rate / (bound[name] * used),
                "vs_1_worker": rate / one_worker[name] if name in one_worker else None,
                "stages_s": f"read {result['read_s']} dec {result['decode_s']} "
                            f"fwd {result['forward_s']} write {result['write_s']}",
                "warmup_s": round(result["warmup_s"], 1),
            })
            print(rows[-1], flush=True)
    if not args.no_dataloader:
        for precision, compile in configs:
            if compile:
                continue
            result = dataloader_rate(urls, precision, args.batch)
            rows.append({"what": f"(d) DataLoader loop {precision}, {cores} workers",
                         "images_per_s": result["images_per_s"],
                         "of_bound": result["images_per_s"] / (bound[precision] * cores)})
    rows.append({"what": "peak RSS of this process (MB)", "images_per_s": peak_rss_mb()})
    header = f"bench_extract on {machine()}: {args.n} PNGs of {args.size}x{args.size}"
    save_results(args.out, rows, header, vars(args), plot_column="images_per_s")
    print(table(rows, header))


if __name__ == "__main__":
    main()
