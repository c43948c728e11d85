"""Helpers for tests, benchmarks and offline examples; not needed to use cxrdask.

- :func:`local_s3_server`: a real S3 API (moto's server) on 127.0.0.1 with a bucket.
- :func:`make_feature_store`: a complete feature store with learnable synthetic features and
  no images behind it.
- :func:`direct_features`: features of local files computed in this process, without Dask
  (the reference that extraction is checked against).

They need the ``testing`` extra (``pip install 'cxrdask[testing]'``: moto's server, boto3,
s3fs). Nothing in the library imports this module.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from ._fs import StorageOptions
from .backbone import BackboneSpec, cached_runner
from .imaging import Preprocessing, preprocess_bytes
from .labels import LABELS
from .metadata import label_matrix
from .synthetic.layout import make_metadata


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def local_s3_server(bucket: str, key: str = "testing") -> Iterator[dict]:
    """Start moto's S3 server on a free loopback port with ``bucket``; yield storage_options.

    Needs ``moto[server]`` (the ``test`` and ``bench`` extras). The options work for every
    cxrdask call and for ``--storage-option`` on the command line.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id=key, aws_secret_access_key=key).create_bucket(Bucket=bucket)
        yield {"key": key, "secret": key,
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    finally:
        server.stop()


def make_feature_store(
    url: str,
    n_rows: int,
    *,
    feature_dim: int = 2048,
    chunk_rows: int = 512,
    seed: int = 0,
    signal: float = 1.0,
    dtype: str = "float16",
    storage_options: StorageOptions | None = None,
    shuffle_labels: bool = False,
):
    """A complete feature store of ``n_rows`` with no images behind it (benchmarks, tests).

    Features are non-negative like pooled ReLU outputs, and each disease shifts its own
    random direction by ``signal`` standard deviations, so a head can learn them; with
    ``shuffle_labels`` the labels are permuted after the features are made (no signal).
    Written chunk by chunk: memory stays at one chunk whatever ``n_rows``.
    """
    from .splits import patient_split
    from .store import STATUS_OK, FeatureStore

    rng = np.random.default_rng([seed, 11])
    frame = make_metadata(n_rows, seed=seed)
    frame["split"] = patient_split(frame["patient_id"], seed=seed)
    frame = frame.sort_values("split", kind="stable").reset_index(drop=True)
    labels = label_matrix(frame)
    if shuffle_labels:
        frame.loc[:, list(LABELS)] = labels[rng.permutation(n_rows)]
    directions = rng.standard_normal((len(LABELS), feature_dim)).astype(np.float32)
    store = FeatureStore.create(
        url, frame, chunk_rows=chunk_rows, dtype=dtype, storage_options=storage_options,
        backbone={"name": "synthetic", "feature_dim": feature_dim, "kind": "random",
                  "weights": f"synthetic features, seed {seed}"},
        preprocessing=Preprocessing().to_dict(),
        split={"method": "patient", "seed": seed, "description": f"patient split, seed {seed}"},
        extra={"archive": {"root": None, "synthetic": True}},
    )
    for chunk in range(store.n_chunks):
        start, stop = store.chunk_bounds(chunk)
        noise = np.random.default_rng([seed, 12, chunk]).standard_normal(
            (stop - start, feature_dim), dtype=np.float32)
        features = np.abs(noise + signal * labels[start:stop].astype(np.float32) @ directions)
        store.write_chunk(chunk, features, np.full(stop - start, STATUS_OK, np.uint8),
                          [""] * (stop - start))
    store.update_provenance(complete=True, failed_rows=0)
    return store


def direct_features(paths: Iterable[str], spec: BackboneSpec,
                    preprocessing: Preprocessing = Preprocessing(), batch_size: int = 8,
                    precision: str = "fp32") -> np.ndarray:
    """Features of local files computed in this process, without Dask (a reference for tests)."""
    runner = cached_runner(spec, "cpu", precision, False, batch_size)
    arrays = []
    for path in paths:
        with open(path, "rb") as handle:
            arrays.append(preprocess_bytes(handle.read(), os.path.basename(path), preprocessing)[0])
    out = [runner(np.stack(arrays[i:i + batch_size])) for i in range(0, len(arrays), batch_size)]
    return np.concatenate(out)


__all__ = ["direct_features", "free_port", "local_s3_server", "make_feature_store"]
