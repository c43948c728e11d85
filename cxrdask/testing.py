"""What a user needs to rehearse cxrdask without the cloud or the archive (also what its own
tests and benchmarks use); not needed to use cxrdask.

- :func:`local_s3_server`: a real S3 API (moto's server) on 127.0.0.1 with a bucket.
- :class:`FaultyProxy`: an HTTP proxy on 127.0.0.1 in front of it that injects storage
  faults (503s, 500s, connection resets, stalls, an outage) into object reads and writes,
  and can hold a write in flight.
- :func:`make_feature_store`: a complete feature store with learnable synthetic features and
  no images behind it.
- :func:`direct_features`: features of local files computed in this process, without Dask
  (the reference that extraction is checked against).

They need the ``testing`` extra (``pip install 'cxrdask[testing]'``: moto's server, boto3,
s3fs). Nothing in the library imports this module.
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from cxrdask._fs import StorageOptions
from cxrdask.archive.findings import label_matrix
from cxrdask.archive.labels import LABELS
from cxrdask.archive.synthetic.layout import make_metadata
from cxrdask.backbones.runner import BackboneSpec, cached_runner
from cxrdask.imaging.decode import preprocess_bytes
from cxrdask.imaging.preprocessing import Preprocessing


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


class _ProxyServer(ThreadingHTTPServer):
    """The proxy's HTTP server, knowing its :class:`FaultyProxy` and the target it forwards to."""

    proxy: FaultyProxy
    upstream: tuple[str, int | None]


class _ProxyHandler(BaseHTTPRequestHandler):
    """One request through a :class:`FaultyProxy` (``server.proxy``): counted, maybe held,
    maybe failed, else forwarded to the target (``server.upstream``)."""

    server: _ProxyServer

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, status: int, code: bytes) -> None:
        payload = (b"<?xml version='1.0'?><Error><Code>" + code + b"</Code><Message>"
                   b"Please reduce your request rate.</Message></Error>")
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _forward(self) -> None:
        proxy = self.server.proxy
        with proxy._lock:
            proxy.requests["LIST" if "list-type" in self.path else self.command] += 1
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if proxy._holds(self.path):
            proxy.holding.set()
            proxy._released.wait(proxy._hold_seconds)
            proxy.holding.clear()
        fault = proxy._fault_for(self.command, self.path)
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
            self.close_connection = True
            return
        if fault == "503":
            return self._reply(503, b"SlowDown")
        if fault == "500":
            return self._reply(500, b"InternalError")
        if fault == "stall":
            time.sleep(proxy.stall_seconds)
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        try:
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            size = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", size or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
                with proxy._lock:
                    proxy.bytes_sent[self.command] += len(data)
        except (BrokenPipeError, ConnectionResetError):  # the client is gone (killed)
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


class FaultyProxy:
    """An HTTP proxy on 127.0.0.1 that forwards to ``target`` (moto's endpoint) and makes
    object requests fail: what flaky object storage does to a long job.

    A faulted request gets, in turn, a ``503 SlowDown``, a connection reset, a ``500``, and
    (with ``stall_seconds``) a stall before it is answered; a reset or an error comes
    before the request reaches the server, as when a load balancer drops it.

    Parameters
    ----------
    target
        ``http://127.0.0.1:PORT`` of the real server.
    fail_first
        The first this-many requests of each object fail.
    fault_rate
        Besides, this share of object requests fails at random: the draw is seeded by
        ``seed``, the method, the key and how often that request was seen, so which requests
        fail does not depend on the order threads send them in.
    outage_after
        After this many object requests answered, every object request fails (a reset)
        until :meth:`end_outage`.
    only_suffix
        Only keys ending so can fail (``.png``: images, not the metadata).
    methods
        The HTTP methods that can fail (object GETs by default; ``("GET", "PUT")`` for
        writes too). Listings never fail.
    stall_seconds
        When above 0, every fourth fault is a stall of this long, then the real answer.
    hold
        The first request whose key contains this text is held (not forwarded) until
        :meth:`release` or ``hold_seconds``; :attr:`holding` is set meanwhile, so a test can
        act while a write is in flight.

    Attributes
    ----------
    endpoint : str
        Where clients connect instead of ``target``.
    faults, answered : int
        Object requests failed, and object requests forwarded, so far.
    faults_by_method : dict[str, int]
        Faults per HTTP method.
    faulted : list[tuple[str, str]]
        ``(method, bucket/key)`` of every faulted request, in order.
    requests : dict[str, int]
        Every request received, by kind: ``LIST`` for bucket listings (each page counts),
        else the HTTP method. A job that lists an archive once makes ceil(N / 1000) LISTs.
    bytes_sent : dict[str, int]
        Bytes of the response bodies sent to the client, by HTTP method (what was read).
    holding : threading.Event
        Set while the ``hold`` request is held.
    """

    def __init__(self, target: str, *, fail_first: int = 0, fault_rate: float = 0.0,
                 outage_after: int | None = None, only_suffix: str = "",
                 methods: tuple[str, ...] = ("GET",), stall_seconds: float = 0.0,
                 hold: str | None = None, hold_seconds: float = 60.0, seed: int = 0):
        import collections
        import urllib.parse

        parsed = urllib.parse.urlparse(target)
        self.fail_first, self.fault_rate, self.outage_after = fail_first, fault_rate, outage_after
        self.only_suffix, self.methods, self.stall_seconds = only_suffix, methods, stall_seconds
        self.faults = self.answered = 0
        self.faults_by_method: collections.Counter[str] = collections.Counter()
        self.faulted: list[tuple[str, str]] = []
        self.requests: collections.Counter[str] = collections.Counter()
        self.bytes_sent: collections.Counter[str] = collections.Counter()
        self.holding = threading.Event()
        self._hold, self._hold_seconds = hold, hold_seconds
        self._released = threading.Event()
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._seed = seed
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.proxy = self
        self._server.upstream = (parsed.hostname or "127.0.0.1", parsed.port)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _holds(self, path: str) -> bool:
        """Whether this request is the one to hold (the first that matches, once)."""
        with self._lock:
            if self._hold is None or self._hold not in path.split("?", 1)[0]:
                return False
            self._hold = None
            return True

    def _fault_for(self, method: str, path: str) -> str | None:
        """``reset``, ``503``, ``500``, ``stall`` or None for a request; only requests of an
        object key with one of :attr:`methods` can fail."""
        bucket_and_key = path.split("?", 1)[0].strip("/")
        if method not in self.methods or "/" not in bucket_and_key or "list-type" in path \
                or not bucket_and_key.endswith(self.only_suffix):
            return None
        with self._lock:
            if self.outage_after is not None and self.answered >= self.outage_after:
                self._count_fault(method, bucket_and_key)
                return "reset"
            request = f"{method} {bucket_and_key}"
            seen = self._seen.get(request, 0)
            self._seen[request] = seen + 1
            draw = random.Random(f"{self._seed} {request} {seen}").random()
            if seen < self.fail_first or draw < self.fault_rate:
                self._count_fault(method, bucket_and_key)
                kinds = ["503", "reset", "500"] + (["stall"] if self.stall_seconds > 0 else [])
                return kinds[self.faults % len(kinds)]
            self.answered += 1
            return None

    def _count_fault(self, method: str, bucket_and_key: str) -> None:
        self.faults += 1
        self.faults_by_method[method] += 1
        self.faulted.append((method, bucket_and_key))

    def end_outage(self) -> None:
        """Storage is back: object requests are answered again."""
        with self._lock:
            self.outage_after = None

    def release(self) -> None:
        """Forward the held request (see ``hold``)."""
        self._released.set()

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()


@dataclass(frozen=True)
class StoreOrigin:
    """Where a synthetic store's rows come from (:func:`make_feature_store`).

    Attributes
    ----------
    kind : str
        The archive the store records (``nih``, ``chexpert``, ``mimic``, ...).
    findings : mapping of str to str or None, optional
        Another archive's finding set: each of its findings (in order) takes the labels of
        the NIH finding it names, or is missing on every row (None), as a store of CheXpert's
        or MIMIC's findings would be. None: NIH's 14.
    signatures : bool
        Each row gets a thumbnail and detail of its own (smooth random shapes and random
        texture, drawn from the store's seed), so an overlap search has rows to compare;
        :func:`copy_signatures` plants one store's rows in another.
    backbone_seed : int, optional
        Draws each finding's direction, and is the synthetic backbone the store records
        (the store's seed by default): stores of one ``backbone_seed`` and other seeds are
        other archives' images through one backbone (one head trains on them all).
    """

    kind: str = "nih"
    findings: Mapping[str, str | None] | None = None
    signatures: bool = False
    backbone_seed: int | None = None


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
    origin: StoreOrigin = StoreOrigin(),
):
    """A complete feature store of ``n_rows`` with no images behind it (benchmarks, tests).

    Features are non-negative like pooled ReLU outputs, and each disease shifts its own
    random direction by ``signal`` standard deviations, so a head can learn them; with
    ``shuffle_labels`` the labels are permuted after the features are made (no signal).
    Written chunk by chunk: memory stays at one chunk whatever ``n_rows``.

    ``origin`` makes it another archive's store, its images' signatures kept, or its
    features one backbone's with other stores' (:class:`StoreOrigin`).
    """
    from cxrdask.archive.splits import patient_split
    from cxrdask.store.features import STATUS_OK, FeatureSettings, FeatureStore

    backbone_seed = seed if origin.backbone_seed is None else origin.backbone_seed
    rng = np.random.default_rng([backbone_seed, 11])
    frame = make_metadata(n_rows, seed=seed)
    frame["split"] = patient_split(frame["patient_id"], seed=seed)
    frame = frame.sort_values("split", kind="stable").reset_index(drop=True)
    labels = label_matrix(frame)
    if shuffle_labels:
        frame.loc[:, list(LABELS)] = labels[rng.permutation(n_rows)]
    if origin.findings is not None:
        frame = _with_findings(frame, origin.findings)
    directions = rng.standard_normal((len(LABELS), feature_dim)).astype(np.float32)
    settings = FeatureSettings(
        backbone={"name": "synthetic", "feature_dim": feature_dim, "kind": "random",
                  "weights": f"synthetic features, seed {backbone_seed}"},
        preprocessing=Preprocessing().to_dict(), dtype=dtype,  # type: ignore[arg-type]
        split={"method": "patient", "seed": seed, "description": f"patient split, seed {seed}"})
    store = FeatureStore.create(url, frame, settings, chunk_rows=chunk_rows,
                                storage_options=storage_options,
                                extra={"archive": {"root": None, "synthetic": True,
                                                   "kind": origin.kind}})
    for chunk in range(store.n_chunks):
        start, stop = store.chunk_bounds(chunk)
        noise = np.random.default_rng([seed, 12, chunk]).standard_normal(
            (stop - start, feature_dim), dtype=np.float32)
        features = np.abs(noise + signal * labels[start:stop].astype(np.float32) @ directions)
        store.write_chunk(chunk, features, np.full(stop - start, STATUS_OK, np.uint8),
                          [""] * (stop - start),
                          signatures=random_signatures(seed, start, stop) if origin.signatures
                          else None)
    store.update_provenance(complete=True, failed_rows=0)
    return store


def _with_findings(frame, findings: Mapping[str, str | None]):
    """The NIH-labelled ``frame`` under another archive's findings (see make_feature_store)."""
    unknown = sorted({taken for taken in findings.values() if taken is not None} - set(LABELS))
    if unknown:
        raise ValueError(f"findings take the labels of NIH findings, not {unknown}")
    renamed = frame.drop(columns=list(LABELS))
    for name, taken in findings.items():
        renamed[name] = np.nan if taken is None else frame[taken].astype(float)
    renamed.attrs["findings"] = list(findings)
    return renamed


def random_signatures(seed: int, start: int, stop: int, side: int = 32
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start``-``stop``'s thumbnails (smooth shapes: a 4 x 4 random field enlarged,
    plus noise) and details (random texture), drawn from ``seed`` and ``start``."""
    rng = np.random.default_rng([seed, 13, start])
    n = stop - start
    coarse = rng.uniform(40, 215, (n, 4, 1, 4, 1))
    shapes = np.broadcast_to(coarse, (n, 4, side // 4, 4, side // 4)).reshape(n, side, side)
    thumbnails = np.clip(shapes + rng.normal(0, 8, (n, side, side)), 0, 255).astype(np.uint8)
    details = rng.integers(-40, 41, (n, side, side), dtype=np.int8)
    return thumbnails, details


def copy_signatures(source: str, rows: Sequence[int], target: str,
                    storage_options: StorageOptions | None = None) -> None:
    """Give ``target``'s first ``len(rows)`` rows the signatures of ``source``'s ``rows``:
    its images are then those images again (as RSNA's are NIH's), for overlap search."""
    from cxrdask.store.features import FeatureStore

    first = FeatureStore.open(source, storage_options=storage_options)
    second = FeatureStore.open(target, mode="r+", storage_options=storage_options)
    taken = np.asarray(rows, np.int64)
    for name in ("thumbnail", "detail"):
        values = first.array(name).get_orthogonal_selection((taken, slice(None), slice(None)))
        second.array(name)[:len(taken)] = values


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


__all__ = ["FaultyProxy", "StoreOrigin", "copy_signatures", "direct_features", "free_port", "local_s3_server",
           "make_feature_store", "random_signatures"]
