"""The pixel store's choices: its compression, and the PNG decoder of the first pass.

    python -m benchmarks.bench_pixels --n 512

(a) Compression: the same decoded 224x224 images written as a pixel store's ``pixels``
array with no compression, Blosc-LZ4 and Zstandard (levels 1 and 3): size on disk, write
speed, and read speed (images/s, one reader thread, and the reader threads Zarr uses).
(b) Decoders, on the archive's real-size PNGs: Pillow (with the zlib it was built with),
imagecodecs and OpenCV where installed: milliseconds per image on one thread, and the
speed-up with as many threads as cores (a decoder that holds the GIL gets none).
Prints a table and writes JSON next to it. Synthetic images are smoother than real chest
X-rays, so they compress better: run with ``--images`` on a real archive for real sizes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import disk_bytes, machine, save_results, table
from cxrdask.archive.images import locate_images
from cxrdask.archive.kinds.nih import read_metadata
from cxrdask.archive.synthetic import make_archive
from cxrdask.imaging.decode import decode_gray, resize_gray
from cxrdask.imaging.preprocessing import Preprocessing


def decoders() -> dict:
    """name -> function(bytes) -> uint8 array, for each decoder installed."""
    found = {"pillow": lambda data: np.asarray(decode_gray(data)[0])}
    try:
        import imagecodecs

        found["imagecodecs"] = lambda data: imagecodecs.png_decode(data)
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(1)
        found["opencv"] = lambda data: cv2.imdecode(np.frombuffer(data, np.uint8),
                                                    cv2.IMREAD_GRAYSCALE)
    except ImportError:
        pass
    return found


def decoder_rows(blobs: list[bytes], threads: int) -> list[dict]:
    rows = []
    for name, decode in decoders().items():
        decode(blobs[0])
        start = time.perf_counter()
        for blob in blobs:
            decode(blob)
        one = (time.perf_counter() - start) / len(blobs)
        with ThreadPoolExecutor(threads) as pool:
            start = time.perf_counter()
            list(pool.map(decode, blobs))
            many = (time.perf_counter() - start) / len(blobs)
        rows.append({"what": f"(b) decode with {name}", "ms_per_image_1_thread": one * 1e3,
                     f"speedup_{threads}_threads": one / many})
        print(rows[-1], flush=True)
    return rows


def compression_rows(images: np.ndarray, chunk_rows: int, folder: Path) -> list[dict]:
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from cxrdask.store.pixels import pixel_codecs

    variants = {"none": pixel_codecs("none"), "lz4": pixel_codecs("lz4"),
                "zstd-1 (default)": pixel_codecs("zstd"),
                "zstd-3": (ZstdCodec(level=3), Crc32cCodec())}
    rows = []
    raw = images.nbytes
    for name, codecs in variants.items():
        url = folder / name.split()[0]
        shutil.rmtree(url, ignore_errors=True)
        array = zarr.create_array(str(url), shape=images.shape, dtype="uint8",
                                  chunks=(chunk_rows, *images.shape[1:]), compressors=codecs)
        start = time.perf_counter()
        array[:] = images
        write = time.perf_counter() - start
        reader = zarr.open_array(str(url), mode="r")
        start = time.perf_counter()
        for first in range(0, len(images), chunk_rows):  # chunk by chunk, as a task reads
            reader[first:first + chunk_rows]
        read = time.perf_counter() - start
        size = disk_bytes(url)
        rows.append({"what": f"(a) pixels, {name}", "size_mb": size / 1e6, "ratio": raw / size,
                     "write_images_per_s": len(images) / write,
                     "read_images_per_s": len(images) / read,
                     "archive_gb (projection, 112,120 rows)": size / len(images) * 112_120 / 1e9})
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="synthetic images (default 512)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--images", help="a real archive root instead of a synthetic one")
    parser.add_argument("--archive", default=os.path.join(tempfile.gettempdir(),
                                                          "cxrdask-bench-pixels-archive"))
    parser.add_argument("--chunk-rows", type=int, default=512)
    parser.add_argument("--out", default="benchmarks/results/bench_pixels")
    args = parser.parse_args(argv)
    if args.images:
        root = args.images
        frame = read_metadata(next(Path(root).glob("Data_Entry*.csv")).as_posix())
    else:
        csv = Path(args.archive) / "Data_Entry_2017.csv"
        if not (Path(args.archive) / "cxrdask-synthetic.json").exists() or \
                len(read_metadata(str(csv), max_age=10_000)) != args.n:
            shutil.rmtree(args.archive, ignore_errors=True)
            make_archive(args.archive, n=args.n, size=args.size, seed=0)
        root, frame = args.archive, read_metadata(str(csv), max_age=10_000)
    urls = locate_images(root).urls_for(frame["image_index"])[: args.n]
    blobs = [Path(u).read_bytes() for u in urls]
    threads = os.cpu_count() or 1
    rows = decoder_rows(blobs[:200], threads)
    images = np.stack([resize_gray(decode_gray(b)[0], Preprocessing()) for b in blobs])
    with tempfile.TemporaryDirectory(prefix="bench-pixels-") as folder:
        rows += compression_rows(images, min(args.chunk_rows, len(images)), Path(folder))
    mean_png = np.mean([len(b) for b in blobs])
    rows.append({"what": f"source PNGs ({args.size}² here), mean size (kB)",
                 "size_mb": mean_png / 1e3})
    header = f"bench_pixels on {machine()}: {len(images)} images"
    save_results(args.out, rows, header, vars(args))
    print(table(rows, header))


if __name__ == "__main__":
    main()
