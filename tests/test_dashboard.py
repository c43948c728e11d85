"""What the Dask dashboard shows of cxrdask, checked on a real LocalCluster of processes:
spans per call, fine performance metrics per stage, readable task names, and cxrdask's
counters on the Prometheus endpoint."""

from __future__ import annotations

import re
import urllib.request

import pytest
from dask.utils import key_split
from distributed import get_task_stream

from cxrdask.extract.metrics import counters
from cxrdask.extract.run import extract_features

pytestmark = pytest.mark.slow


def spans(client) -> dict[str, tuple]:
    """Span id -> name, for every span the scheduler knows."""
    return client.run_on_scheduler(
        lambda dask_scheduler: {s.id: s.name for s in dask_scheduler.extensions["spans"].spans.values()})


def scrape(client) -> dict[str, float]:
    """``cxrdask_*`` samples of the dashboard's /metrics, summed over labels, by name."""
    port = re.search(r":(\d+)/", client.dashboard_link).group(1)
    assert client.dashboard_link.startswith("http://127.0.0.1:")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    totals: dict[str, float] = {}
    for name, value in re.findall(r"^(cxrdask_\w+?)(?:\{[^}]*\})? ([\d.e+]+)$", text, re.M):
        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def test_each_run_is_a_span_whose_stage_metrics_match_the_summary(small_archive, cluster_client,
                                                                  tmp_path):
    before = scrape(cluster_client)
    with get_task_stream(cluster_client) as stream:
        first = extract_features(small_archive.metadata_url, small_archive.root,
                                 str(tmp_path / "one.zarr"), client=cluster_client,
                                 weights="random", chunk_rows=16, progress=False)
    second = extract_features(small_archive.metadata_url, small_archive.root,
                              str(tmp_path / "two.zarr"), client=cluster_client, weights="random",
                              chunk_rows=16, progress=False)

    names = spans(cluster_client)
    assert names[first.span_id] == ("cxrdask-extract one.zarr",)
    assert names[second.span_id] == ("cxrdask-extract two.zarr",)

    for summary in (first, second):
        own = summary.timings[["read_s", "decode_s", "resize_s", "forward_s", "write_s"]].sum()
        for stage in ("decode", "forward", "read", "write"):
            measured = summary.stage_seconds[stage]
            assert measured == pytest.approx(own[f"{stage}_s"], rel=0.10), stage
        assert summary.stage_seconds["forward"] > 0 and summary.stage_seconds["decode"] > 0
        assert "Fine Performance Metrics" in str(summary)

    prefixes = {key_split(task["key"]) for task in stream.data}
    assert {"extract-chunk", "backbone-warmup"} <= prefixes, prefixes

    after = scrape(cluster_client)
    done = first.rows_written + second.rows_written
    assert after["cxrdask_images_done_total"] - before.get("cxrdask_images_done_total", 0) == done
    assert after["cxrdask_images_failed_total"] == before.get("cxrdask_images_failed_total", 0)
    assert "cxrdask_chunks_retried_total" in after
    per_worker = counters(cluster_client)["done"]
    assert len(per_worker) == 2 and sum(per_worker.values()) >= done


def test_a_spans_stage_metrics_are_read_back_at_once_not_at_the_next_heartbeat(cluster_client):
    """Workers send their metrics with their heartbeats; reading a span's back asks each for
    one first, so the end of a run waits for no periodic heartbeat (0.2-0.4 s a call)."""
    import uuid

    from distributed import span

    from cxrdask.extract.metrics import CHUNK_PREFIX, report_chunk, span_metrics

    token = uuid.uuid4().hex
    with span("cxrdask-test read back") as span_id:
        cluster_client.gather([cluster_client.submit(report_chunk, {"forward": 0.25}, 8, 1,
                                                     key=f"{CHUNK_PREFIX}-{i}-{token}")
                               for i in range(4)])
    totals = span_metrics(cluster_client, span_id, expect_images=32, timeout=0)  # one read
    assert {label: totals.get(label) for label in ("forward", "images", "failed")} == {
        "forward": 1.0, "images": 32, "failed": 4}


def test_grid_search_is_a_span_of_train_trials(cluster_client, tmp_path):
    from cxrdask.head.train import TrainConfig, grid_search
    from cxrdask.testing import make_feature_store

    url = str(tmp_path / "grid.zarr")
    make_feature_store(url, 400, feature_dim=16, chunk_rows=100, seed=4)
    with get_task_stream(cluster_client) as stream:
        frame = grid_search(url, [1e-3, 3e-3], [0.0], config=TrainConfig(epochs=1, batch_size=64),
                            out_dir=tmp_path / "grid", client=cluster_client, progress=False)
    assert len(frame) == 2
    assert {key_split(task["key"]) for task in stream.data} == {"train-trial"}
    assert ("cxrdask-grid-search grid.zarr",) in spans(cluster_client).values()


def test_the_dashboard_is_built_once_the_workers_have_started(monkeypatch):
    """The scheduler would build its Bokeh pages before it starts any worker (0.4-0.7 s of a
    cold start with the other cores idle); cxrdask's local cluster adds them once its
    workers have started, and they serve as usual."""
    import distributed.dashboard.scheduler as bokeh_dashboard

    from cxrdask.runtime.cluster import close_cluster, start_local_cluster

    workers_then = []
    connect = bokeh_dashboard.connect

    def counting_connect(application, server, scheduler, prefix=""):
        workers_then.append(len(getattr(scheduler, "workers", ())))  # none yet in __init__
        connect(application, server, scheduler, prefix=prefix)

    monkeypatch.setattr(bokeh_dashboard, "connect", counting_connect)
    cluster = start_local_cluster(2, dashboard_address="127.0.0.1:0")
    try:
        assert workers_then == [2]
        link = cluster.dashboard_link
        assert link.startswith("http://127.0.0.1:") and link.endswith("/status"), link
        for page in ("status", "workers", "individual-task-stream", "info/main/workers.html"):
            with urllib.request.urlopen(link.removesuffix("status") + page, timeout=30) as reply:
                assert reply.status == 200 and b"<html" in reply.read().lower(), page
    finally:
        close_cluster(cluster)


def test_a_running_clusters_counters_are_served_again_when_a_newer_one_closes():
    """Prometheus' registry is one per process: the newest scheduler's counters are served,
    and when it closes, those of the one still running before it (not none at all)."""
    import asyncio

    prometheus = pytest.importorskip("prometheus_client")
    from cxrdask.extract.metrics import CountersPlugin

    def served() -> float:
        text = prometheus.generate_latest(prometheus.REGISTRY).decode()
        found = re.findall(r'^cxrdask_images_done_total\{worker="probe"\} ([\d.e+]+)$', text, re.M)
        return float(found[0]) if found else -1.0

    older, newer = CountersPlugin(), CountersPlugin()
    older.done, newer.done = {"probe": 3}, {"probe": 5}
    asyncio.run(older.start(None))
    assert served() == 3
    asyncio.run(newer.start(None))
    assert served() == 5
    asyncio.run(newer.close())
    assert served() == 3  # the older cluster is still running: its counters are back
    asyncio.run(older.close())
    assert served() == -1.0
