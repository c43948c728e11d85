"""Similar cases at NIH's size: building a store's nearest-neighbour index and querying it.

Writes a store of ``--rows`` rows of ``--dim`` float16 features
(:func:`cxrdask.testing.make_feature_store`, NIH's size by default), then builds its index
(:func:`cxrdask.store.neighbours.build_index`: FAISS's exhaustive inner-product search over
the centred, unit-length features, held in float16), reads it back as a later process would, and times
``--queries`` single-image queries (``neighbours(store, row, k)``, what the web page asks
once per diagnosis) and the bare index search for a vector. Reports the build's time and
the index's size on disk and in memory, and each query's median and 95th percentile. With
``--compare``, the other FAISS indexes one might choose, on the same vectors and queries:
float32 exhaustive (``IndexFlatIP``, the reference for recall), a PCA to 256 dimensions,
and HNSW (32 links): their build time, query time and recall of the reference's top k.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import disk_bytes, machine, peak_rss_mb, save_results, table


def _timed_queries(index, queries: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    """Median and 95th-percentile milliseconds of one query at a time, and every answer."""
    index.search(queries[:1], k)
    times, found = [], []
    for q in range(len(queries)):
        started = time.perf_counter()
        found.append(index.search(queries[q:q + 1], k)[1][0])
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times)), 1000 * float(np.percentile(times, 95)), np.array(found)


def compare_indexes(store, ours, features: np.ndarray, k: int) -> list[dict]:
    """The FAISS indexes one might choose instead, on the same unit vectors and queries; the
    recall of each is of float32 exhaustive search's top k."""
    import faiss

    vectors = np.concatenate([ours.unit(np.asarray(store.read("features", slice(s, s + 8192)),
                                                   dtype=np.float32))
                              for s in range(0, store.n_rows, 8192)])
    queries = ours.unit(features)
    choices = {
        "float32 exhaustive (IndexFlatIP)": lambda d: faiss.IndexFlatIP(d),
        "float16 exhaustive (IndexScalarQuantizer fp16, ours)": lambda d: faiss.IndexScalarQuantizer(
            d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT),
        "PCA to 256 (or a quarter), then float32 exhaustive": lambda d: faiss.IndexPreTransform(
            faiss.PCAMatrix(d, min(256, d // 4)), faiss.IndexFlatIP(min(256, d // 4))),
        "HNSW, 32 links (IndexHNSWFlat)": lambda d: faiss.IndexHNSWFlat(
            d, 32, faiss.METRIC_INNER_PRODUCT),
    }
    rows, reference = [], None
    for what, make in choices.items():
        started = time.perf_counter()
        index = make(vectors.shape[1])
        if not index.is_trained:
            index.train(vectors[np.random.default_rng(0).choice(len(vectors),
                                                                min(20_000, len(vectors)))])
        index.add(vectors)
        built = time.perf_counter() - started
        median, p95, found = _timed_queries(index, queries, k)
        reference = found if reference is None else reference
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, reference,
                                                                          strict=True)]))
        rows.append({"what": f"compare: {what}", "seconds": built, "median_ms": median,
                     "p95_ms": p95, f"recall_at_{k}": recall, "peak_rss_mb": peak_rss_mb()})
        print(rows[-1], flush=True)
        del index
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=112_120)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the other FAISS indexes and their recall")
    parser.add_argument("--smoke", action="store_true", help="write no result files")
    parser.add_argument("--out", default="benchmarks/results/bench_neighbours")
    args = parser.parse_args(argv)

    from cxrdask.store.features import FeatureStore
    from cxrdask.store.neighbours import build_index, index_url, neighbours, open_index
    from cxrdask.testing import make_feature_store

    work = Path(tempfile.mkdtemp(prefix="bench-neighbours-"))
    try:
        url = str(work / "store.zarr")
        started = time.perf_counter()
        make_feature_store(url, args.rows, feature_dim=args.dim, chunk_rows=512, seed=0)
        print(f"store of {args.rows:,} rows written in {time.perf_counter() - started:.0f} s",
              flush=True)
        store = FeatureStore.open(url)
        built = build_index(store)
        rows = [{"what": "build the index (read the features twice, add, save)",
                 "seconds": built.seconds, "rows": len(built.rows),
                 "index_MB_on_disk": disk_bytes(index_url(store)) / 2**20,
                 "index_MB_in_memory": built.index.ntotal * built.index.d * 2 / 2**20,
                 "peak_rss_mb": peak_rss_mb()}]
        print(rows[-1], flush=True)
        started = time.perf_counter()
        index = open_index(store)
        rows.append({"what": "open the kept index (a later process)",
                     "seconds": time.perf_counter() - started, "rows": len(index.rows),
                     "peak_rss_mb": peak_rss_mb()})
        print(rows[-1], flush=True)
        rng = np.random.default_rng(0)
        chosen = rng.choice(len(index.rows), args.queries, replace=False)
        features = np.asarray(store.read("features")[np.sort(index.rows[chosen])], dtype=np.float32)
        for what, ask in (
                ("neighbours(store, row, k): read the row, search, describe",
                 lambda q: neighbours(store, int(index.rows[chosen[q]]), args.k, index=index)),
                ("index.search(vector, k): the search alone",
                 lambda q: index.search(features[q], args.k))):
            ask(0)  # warm
            times = []
            for q in range(args.queries):
                started = time.perf_counter()
                ask(q)
                times.append(time.perf_counter() - started)
            rows.append({"what": what, "queries": args.queries,
                         "median_ms": 1000 * float(np.median(times)),
                         "p95_ms": 1000 * float(np.percentile(times, 95)),
                         "peak_rss_mb": peak_rss_mb()})
            print(rows[-1], flush=True)
        if args.compare:
            rows += compare_indexes(store, index, features, args.k)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = (f"bench_neighbours on {machine()}: {args.rows:,} rows of {args.dim} float16 "
              f"features, k={args.k}, exhaustive search (FAISS IndexScalarQuantizer fp16, "
              "centred cosine)")
    print(table(rows, header))
    if not args.smoke:
        save_results(args.out, rows, header, vars(args), plot_column="seconds")


if __name__ == "__main__":
    main()
