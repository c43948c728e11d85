"""A real S3 API on 127.0.0.1 (moto's server) for tests, benchmarks and offline examples."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


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
