"""The archive and the feature store in object storage, end to end.

    python examples/s3_pipeline.py                       # a local S3 server (moto), offline
    python examples/s3_pipeline.py --bucket my-bucket    # real S3, credentials from the usual
                                                         # AWS environment or ~/.aws
Needs the ``s3`` extra (and ``moto[server]`` for the local server: the ``test`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile

from cxrdask import evaluate, extract_features, make_archive, train_head
from cxrdask.runtime.cluster import local_client
from cxrdask.testing import local_s3_server


def run(bucket: str, storage_options: dict, n: int) -> None:
    archive = make_archive(f"s3://{bucket}/cxrdask-example/archive", n=n, size=256,
                           prevalence="balanced", storage_options=storage_options)
    store = f"s3://{bucket}/cxrdask-example/features.zarr"
    with local_client(n_workers=2) as client:
        print(extract_features(archive.metadata_url, archive.root, store, client=client,
                               weights="random", chunk_rows=32, storage_options=storage_options))
    out = tempfile.mkdtemp(prefix="cxrdask-s3-example-")
    result = train_head(store, out_dir=out, storage_options=storage_options)
    report = evaluate(store, result.checkpoint, out_dir=out, storage_options=storage_options)
    print(report.to_markdown())
    print(f"checkpoint and report in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", help="a real bucket (default: a local moto server)")
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    with (contextlib.nullcontext({}) if args.bucket else local_s3_server("cxrdask")) as options:
        run(args.bucket or "cxrdask", options, args.n)


if __name__ == "__main__":
    main()
