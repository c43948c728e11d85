"""What cxrdask tells the Dask dashboard and Prometheus while it works.

- **Stage seconds** (``read``, ``decode``, ``resize``, ``forward``, ``write``) and image counts
  are digested by each chunk task through ``distributed.metrics.context_meter``, so the
  dashboard's Fine Performance Metrics page shows them live, per span and per task prefix
  (``extract-chunk``), and the run's summary reads the very same numbers back from the
  scheduler (:func:`span_metrics`) instead of keeping its own.
- **Counters** (images done and failed per worker, chunk tasks re-run after a worker was
  lost) are kept on the scheduler by :class:`CountersPlugin` and served with Dask's own
  Prometheus metrics at ``/metrics`` on the dashboard's port.

Everything here is a no-op outside a Dask worker, so a chunk task can also run in a plain
process (tests, debugging).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

TOPIC = "cxrdask-counters"
PLUGIN_NAME = "cxrdask-counters"
CHUNK_PREFIX = "extract-chunk"
WARMUP_PREFIX = "backbone-warmup"  # the key prefix of a worker's model warm-up task
STAGES = ("read", "decode", "resize", "forward", "write")


# --------------------------------------------------------------------------- inside tasks


def report_chunk(stage_seconds: Mapping[str, float], images: int, failed: int) -> None:
    """From inside a chunk task: digest its stage seconds and counts, and count its images
    on the scheduler. Outside a Dask worker nothing happens."""
    from distributed.metrics import context_meter

    for stage, seconds in stage_seconds.items():
        context_meter.digest_metric(stage, float(seconds), "seconds")
    context_meter.digest_metric("images", images, "count")
    context_meter.digest_metric("failed", failed, "count")
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:
        return
    worker.log_event(TOPIC, {"worker": str(worker.name), "images": int(images),
                             "failed": int(failed)})


# --------------------------------------------------------------------------- read back


def span_metrics(client, span_id: str, prefix: str = CHUNK_PREFIX, *, expect_images: int = 0,
                 timeout: float = 15.0) -> dict[str, float]:
    """A span's fine performance metrics for tasks of ``prefix``: ``{label: total}`` over
    every worker (seconds for stages, counts for ``images`` and ``failed``).

    Workers send their metrics with their heartbeats (every 0.5 s or more): each is asked
    for one now (:func:`_send_heartbeat`), which spared the end of every call 0.2-0.4 s of
    waiting on 2 cores; then this waits (up to ``timeout``) until the span has counted
    ``expect_images`` images, in case one did not answer.
    """

    def read(dask_scheduler, span_id: str, prefix: str) -> dict[str, float]:
        spans = dask_scheduler.extensions["spans"]
        if span_id not in spans.spans:
            return {}
        totals: dict[str, float] = {}
        for key, value in spans.spans[span_id].cumulative_worker_metrics.items():
            context, task_prefix, label, _unit = key[0], key[1], key[-2], key[-1]
            if context == "execute" and task_prefix == prefix and isinstance(label, str):
                totals[label] = totals.get(label, 0.0) + value
        return totals

    deadline = time.monotonic() + timeout
    client.run(_send_heartbeat, on_error="return")  # a worker lost meanwhile: the wait covers it
    while True:
        totals = client.run_on_scheduler(read, span_id=span_id, prefix=prefix)
        if totals.get("images", 0) >= expect_images or time.monotonic() > deadline:
            return totals
        time.sleep(0.2)


async def _send_heartbeat(dask_worker) -> None:
    """On a worker: send the scheduler its heartbeat now, the fine performance metrics
    gathered since the last one with it (``Worker.heartbeat``, also what its periodic
    callback runs; no await comes between its taking the metrics and sending them, so one
    beside the periodic one sends each metric once)."""
    await dask_worker.heartbeat()


# --------------------------------------------------------------------------- counters


_COLLECTOR_LOCK = threading.Lock()
_REGISTERED: dict[str, Any] = {}  # the collector this process registered with Prometheus
# Plugins of this process's running schedulers, oldest first. Prometheus' registry is one
# per process and refuses two collectors of the same names, so the newest scheduler's
# counters are served; when it closes, the one started before it is served again (a test
# session's long-lived cluster, after a short-lived one beside it).
_RUNNING: list[CountersPlugin] = []


def _serve(plugin: CountersPlugin | None) -> None:
    """Register ``plugin``'s collector with Prometheus in place of the one there (None:
    none). Called with ``_COLLECTOR_LOCK`` held."""
    try:
        from prometheus_client import REGISTRY
    except ImportError:  # Dask serves no /metrics without it either
        return
    previous = _REGISTERED.pop("collector", None)
    if previous is not None:
        REGISTRY.unregister(previous)
    if plugin is not None:
        collector = _Collector(plugin)
        REGISTRY.register(collector)
        _REGISTERED["collector"] = collector


class CountersPlugin(SchedulerPlugin):
    """Scheduler plugin: cxrdask's counters, kept per worker and served at ``/metrics``.

    ``cxrdask_images_done_total`` and ``cxrdask_images_failed_total`` (label ``worker``) add
    up what chunk tasks report when they finish; ``cxrdask_chunks_retried_total`` counts
    chunk tasks that went back to waiting after their worker was lost (Dask then runs them
    again elsewhere). Counters only grow, across every run on the cluster.
    """

    name = PLUGIN_NAME
    idempotent = True  # registered once per scheduler: counters survive later runs

    def __init__(self) -> None:
        self.done: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.retried = 0

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        with _COLLECTOR_LOCK:
            _RUNNING.append(self)
            _serve(self)

    async def close(self) -> None:
        with _COLLECTOR_LOCK:
            if self not in _RUNNING:
                return
            served = _RUNNING[-1] is self
            _RUNNING.remove(self)
            if served:
                _serve(_RUNNING[-1] if _RUNNING else None)

    def log_event(self, topic: str, msg: Any) -> None:
        if topic != TOPIC or not isinstance(msg, dict):
            return
        worker = msg.get("worker", "?")
        self.done[worker] = self.done.get(worker, 0) + int(msg.get("images", 0)) - int(msg.get("failed", 0))
        self.failed[worker] = self.failed.get(worker, 0) + int(msg.get("failed", 0))

    def transition(self, key, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        name = key if isinstance(key, str) else str(key)
        if start == "processing" and finish in ("released", "waiting") \
                and name.startswith(CHUNK_PREFIX):
            task = getattr(self, "scheduler", None) and self.scheduler.tasks.get(key)
            if task is not None and task.who_wants:  # still wanted: it will run again
                self.retried += 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain values (for tests and ``client.run_on_scheduler``)."""
        return {"done": dict(self.done), "failed": dict(self.failed), "retried": self.retried}


class _Collector:
    """A Prometheus collector that reads a :class:`CountersPlugin` when scraped."""

    def __init__(self, plugin: CountersPlugin):
        self.plugin = plugin

    def collect(self) -> Iterable:
        from prometheus_client.core import CounterMetricFamily

        done = CounterMetricFamily("cxrdask_images_done", "Images whose features were written, "
                                   "by worker", labels=["worker"])
        failed = CounterMetricFamily("cxrdask_images_failed", "Images that could not be read or "
                                     "decoded (recorded as failed rows), by worker", labels=["worker"])
        for worker, count in sorted(self.plugin.done.items()):
            done.add_metric([worker], count)
        for worker, count in sorted(self.plugin.failed.items()):
            failed.add_metric([worker], count)
        retried = CounterMetricFamily("cxrdask_chunks_retried", "Chunk tasks run again after "
                                      "their worker was lost")
        retried.add_metric([], self.plugin.retried)
        yield from (done, failed, retried)


def install_counters(client) -> bool:
    """Register :class:`CountersPlugin` on the client's scheduler once (idempotent).

    Returns False, with the run going on, when the scheduler cannot load it (a remote
    scheduler without cxrdask installed).
    """
    try:
        client.register_plugin(CountersPlugin(), name=PLUGIN_NAME)
    except Exception as exc:  # counters are optional: the run must not fail for them
        warnings.warn(f"cxrdask's Prometheus counters are off on this cluster: {exc}", stacklevel=2)
        return False
    return True


def counters(client) -> dict[str, Any]:
    """The scheduler's cxrdask counters (``done``/``failed`` per worker, ``retried``)."""

    def read(dask_scheduler) -> dict[str, Any]:
        plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
        return plugin.snapshot() if plugin is not None else {}

    return client.run_on_scheduler(read)


__all__ = ["CHUNK_PREFIX", "STAGES", "WARMUP_PREFIX", "CountersPlugin", "counters",
           "install_counters", "report_chunk", "span_metrics"]
