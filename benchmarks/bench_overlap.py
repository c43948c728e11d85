"""Overlap search at NIH x RSNA size, from stores: how long, how much memory, what it finds.

Two feature stores are written directly (no extraction: their thumbnails are what the search
reads), of ``--a-rows`` and ``--b-rows`` rows (NIH's 112,120 and RSNA Pneumonia's 26,684 by
default). Store A's images are synthetic radiographs; a patient's later images are the first
one taken again: shifted by 2-6 % of the image, turned by up to 3 degrees, exposed up to 15 %
brighter or darker, with new detector noise (what makes two acquisitions of one patient look
alike, and the case a duplicate search must not flag). Store B's first ``--planted`` rows are
A's images re-encoded as RSNA's are (JPEG at quality 90) at another size, the rest images of
its own. Both are brought to the model's input size and thumbnailed as extraction does.

Timed: the search of B's images among A's (``find_overlap(A, B)``) and of repeats within A
(``find_overlap(A)``), with recall on the planted copies, false pairs, and how close
distinct images of one patient come to the threshold.

    python -m benchmarks.bench_overlap                                  # NIH x RSNA size
    python -m benchmarks.bench_overlap --a-rows 3000 --b-rows 800 --smoke
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import machine, peak_rss_mb, save_results, table


def _follow_up(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The base image taken again: shifted, turned, exposed otherwise, new noise."""
    size = base.shape[0]
    shift = rng.uniform(0.02, 0.06, 2) * size * rng.choice([-1, 1], 2)
    turned = Image.fromarray(base).rotate(rng.uniform(-3, 3), resample=Image.Resampling.BILINEAR,
                                          translate=tuple(shift), fillcolor=0)
    values = np.asarray(turned, dtype=np.float32) / 255.0
    values = values ** rng.uniform(0.87, 1.15) + rng.normal(0, 0.02, values.shape)
    return np.clip(values * 255, 0, 255).astype(np.uint8)


def _re_encoded(image: np.ndarray, side: int) -> np.ndarray:
    """As RSNA re-encoded NIH's PNGs: JPEG at quality 90, here also at another size."""
    buffer = io.BytesIO()
    Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=90)
    return np.asarray(Image.open(buffer).convert("L"))


def _signatures(image: np.ndarray, model_size: int) -> tuple[np.ndarray, np.ndarray]:
    """What extraction keeps: the model's input (Pillow's antialiased resize), its thumbnail
    and detail."""
    from cxrdask.imaging.decode import signatures

    resized = np.asarray(Image.fromarray(image).resize((model_size, model_size),
                                                       Image.Resampling.BILINEAR, reducing_gap=None))
    thumbnail, detail = signatures(resized[None])
    return thumbnail[0], detail[0]


def _store(url: str, n: int, seed: int):
    from cxrdask.testing import make_feature_store

    return make_feature_store(url, n, feature_dim=8, chunk_rows=512, seed=seed)


def _planted_rows(rng: np.random.Generator, args) -> list[int]:
    """The rows of A whose copies B holds (the run's first draw)."""
    return rng.choice(args.a_rows, args.planted, replace=False).tolist()


def _planted(args) -> dict[int, int]:
    """B row -> A row of the copies, as :func:`write_stores` planted them."""
    return dict(enumerate(sorted(_planted_rows(np.random.default_rng(0), args))))


def write_stores(work: Path, args) -> tuple[str, str, dict[int, int], np.ndarray]:
    """Stores A and B with their thumbnails; the planted copies (B row -> A row)."""
    from cxrdask.archive.synthetic.render import render_image
    from cxrdask.store.features import FeatureStore

    a_url, b_url = str(work / "a.zarr"), str(work / "b.zarr")
    _store(a_url, args.a_rows, 1)
    _store(b_url, args.b_rows, 2)
    a = FeatureStore.open(a_url, mode="r+")
    patients = a.read("patient_id")
    rng = np.random.default_rng(0)
    no_signs = np.zeros(14, np.uint8)
    images: dict[int, np.ndarray] = {}
    bases: dict[int, np.ndarray] = {}
    thumbs = np.empty((args.a_rows, 32, 32), np.uint8)
    details = np.empty((args.a_rows, 32, 32), np.int8)
    planted_rows = set(_planted_rows(rng, args))
    for row, patient in enumerate(patients):
        if patient not in bases:
            bases[patient] = render_image(no_signs, size=args.size, seed=(1, 7, int(patient)))
            image = bases[patient]
        else:
            image = _follow_up(bases[patient], rng)
        thumbs[row], details[row] = _signatures(image, args.model_size)
        if row in planted_rows:
            images[row] = image
    a.array("thumbnail")[:], a.array("detail")[:] = thumbs, details
    b = FeatureStore.open(b_url, mode="r+")
    planted = dict(enumerate(sorted(images)))  # B's first rows are copies of these A rows
    b_thumbs = np.empty((args.b_rows, 32, 32), np.uint8)
    b_details = np.empty((args.b_rows, 32, 32), np.int8)
    for row in range(args.b_rows):
        if row in planted:
            image = _re_encoded(images[planted[row]], int(args.size * 1.25))
        else:
            image = render_image(no_signs, size=args.size, seed=(2, 7, row))
        b_thumbs[row], b_details[row] = _signatures(image, args.model_size)
    b.array("thumbnail")[:], b.array("detail")[:] = b_thumbs, b_details
    return a_url, b_url, planted, patients


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a-rows", type=int, default=112_120)
    parser.add_argument("--b-rows", type=int, default=26_684)
    parser.add_argument("--planted", type=int, default=2_000)
    parser.add_argument("--size", type=int, default=256, help="side of the rendered images")
    parser.add_argument("--model-size", type=int, default=224, help="the model's input side")
    parser.add_argument("--threshold", type=float, default=0.9, help="the details' correlation")
    parser.add_argument("--reuse", metavar="DIR",
                        help="a folder of an earlier run's stores (a.zarr, b.zarr) with the same "
                             "sizes: search them again, without writing them")
    parser.add_argument("--smoke", action="store_true", help="write no result files")
    parser.add_argument("--out", default="benchmarks/results/bench_overlap")
    args = parser.parse_args(argv)

    from cxrdask.store.features import FeatureStore
    from cxrdask.store.overlap import find_overlap, standardised_signatures

    if args.reuse:
        a_url, b_url = str(Path(args.reuse) / "a.zarr"), str(Path(args.reuse) / "b.zarr")
        planted, patients = _planted(args), FeatureStore.open(a_url).read("patient_id")
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-overlap-"))
        started = time.perf_counter()
        a_url, b_url, planted, patients = write_stores(work, args)
        print(f"stores written in {time.perf_counter() - started:.0f} s in {work}", flush=True)
    rows = []
    started = time.perf_counter()
    pairs = find_overlap(a_url, b_url, threshold=args.threshold)
    seconds = time.perf_counter() - started
    found = {(int(b), int(a)) for a, b in zip(pairs["a_row"], pairs["b_row"], strict=True)}
    true = {(b, a) for b, a in planted.items()}
    rows.append({"what": f"B among A ({args.b_rows:,} x {args.a_rows:,})", "seconds": seconds,
                 "pairs": len(pairs), "recall": len(found & true) / max(len(true), 1),
                 "false pairs": len(found - true), "peak_rss_mb": peak_rss_mb()})
    print(rows[-1], flush=True)
    started = time.perf_counter()
    repeats = find_overlap(a_url, threshold=args.threshold)
    seconds = time.perf_counter() - started
    same_patient = int((repeats["a_patient"] == repeats["b_patient"]).sum())
    rows.append({"what": f"repeats within A ({args.a_rows:,})", "seconds": seconds,
                 "pairs": len(repeats), "recall": "", "false pairs": len(repeats),
                 "same-patient false pairs": same_patient, "peak_rss_mb": peak_rss_mb()})
    print(rows[-1], flush=True)
    # How close distinct images of one patient come (the margins under both thresholds).
    signed = standardised_signatures(FeatureStore.open(a_url))
    ids = patients[signed.rows]
    order = np.argsort(ids, kind="stable")
    closest, closest_detail, compared = -1.0, -1.0, 0
    for group in np.split(order, np.flatnonzero(np.diff(ids[order])) + 1):
        if len(group) > 1:
            upper = np.triu_indices(len(group), 1)
            shapes = signed.thumbnails[group] @ signed.thumbnails[group].T
            closest = max(closest, float(shapes[upper].max()))
            closest_detail = max(closest_detail,
                                 float((signed.details[group] @ signed.details[group].T)[upper].max()))
            compared += len(group) * (len(group) - 1) // 2
    rows.append({"what": "distinct images of one patient", "pairs": compared,
                 "highest thumbnail correlation": closest,
                 "highest detail correlation": closest_detail, "threshold": args.threshold})
    header = (f"bench_overlap on {machine()}: {args.a_rows:,} x {args.b_rows:,} rows, "
              f"{args.planted:,} planted re-encoded copies, threshold {args.threshold}")
    print(table(rows, header))
    if not args.smoke:
        save_results(args.out, rows, header, vars(args), plot_column="seconds")


if __name__ == "__main__":
    main()
