"""Calls given no client: the notebook's client where there is one, else one local cluster
kept for the Python session (a second call starts no processes, its models are built); the
client never imports torch (seconds of a cold start), only the workers do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from cxrdask.runtime.cluster import session_client

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from cxrdask import close_session_cluster, extract_features, show_messages
    show_messages()  # the dashboard's link, as a notebook user asks for it
    from cxrdask.runtime.cluster import session_client

    metadata, root, out = sys.argv[1:4]
    seconds, warm = [], []
    for name in ("first", "second"):
        started = time.perf_counter()
        summary = extract_features(metadata, root, f"{out}/{name}.zarr", weights="random",
                                   backbone="resnet18", chunk_rows=16, n_workers=2,
                                   progress=False)
        seconds.append(time.perf_counter() - started)
        warm.append(summary.warmup_seconds)
        if name == "first":
            kept = session_client(2)
            pids = sorted(kept.run(os.getpid).values())
    same = session_client(2) is kept
    # The client planned, submitted and gathered without torch; the workers ran the models.
    torch_in = {"client": "torch" in sys.modules, "engine": summary.engine,
                "workers": sorted(kept.run(lambda: "torch" in sys.modules).values())}
    close_session_cluster()
    time.sleep(1)
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    print(json.dumps({"seconds": seconds, "warm": warm, "same": same, "alive": alive,
                      "torch": torch_in}))
""")


def test_calls_without_a_client_share_one_cluster_kept_warm(small_archive, tmp_path):
    run = subprocess.run([sys.executable, "-c", SCRIPT, small_archive.metadata_url,
                          small_archive.root, str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TQDM_DISABLE": "1"})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["same"]  # the second call ran on the cluster the first one started
    assert run.stdout.count("Dask dashboard:") == 1 and "kept for this Python session" in run.stdout
    first, second = result["seconds"]
    assert second < first - 1.0  # no processes started, no model built the second time
    assert result["warm"][1] < result["warm"][0]
    assert result["torch"]["client"] is False
    if result["torch"]["engine"] == "torch":  # ONNX Runtime's workers: see test_engine_auto
        assert result["torch"]["workers"] == [True, True]
    assert result["alive"] == []  # close_session_cluster() ended the worker processes


def test_a_current_client_is_the_one_used(cluster_client):
    from distributed import Client

    with Client(cluster_client.scheduler.address, set_as_default=True) as mine:
        assert session_client() is mine  # a notebook's Client() is what calls run on


OVERLAP_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import cxrdask.extract.run as extract
    from cxrdask import extract_features
    from cxrdask.runtime.cluster import _SESSION
    from cxrdask.errors import ImagesNotFoundError

    metadata, root, out = sys.argv[1:4]
    real_plan, seen = extract.plan_extraction, {}

    def plan_once_the_cluster_is_up(*args, **kwargs):
        # Planning that takes as long as the cluster's start: it only finishes when the
        # cluster started without waiting for it.
        deadline = time.monotonic() + 60
        while "local" not in _SESSION and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.setdefault("cluster_up_while_planning", []).append("local" in _SESSION)
        return real_plan(*args, **kwargs)

    extract.plan_extraction = plan_once_the_cluster_is_up
    try:
        extract_features(metadata, root + "/nowhere", out + "/bad.zarr", weights="random",
                         n_workers=2, progress=False)
    except ImagesNotFoundError as exc:
        seen["error"] = type(exc).__name__
    layout, cluster, client = _SESSION["local"]
    seen["workers_after_the_error"] = len(client.nthreads())
    seen["bad_store_written"] = os.path.exists(out + "/bad.zarr")
    summary = extract_features(metadata, root, out + "/good.zarr", weights="random",
                               backbone="resnet18", chunk_rows=16, n_workers=2, progress=False)
    seen["rows_written"] = summary.rows_written
    seen["same_cluster"] = _SESSION["local"][1] is cluster
    print(json.dumps(seen))
""")


def test_the_cluster_starts_while_the_run_is_planned(small_archive, tmp_path):
    """extract_features plans (metadata, images, weights: 1.5 s for the whole archive) while
    its local cluster starts: planning here waits for the cluster, and would wait forever if
    the cluster only started after it. A plan's error is still raised, nothing is written,
    and the cluster it started is whole and kept for the next call."""
    run = subprocess.run([sys.executable, "-c", OVERLAP_SCRIPT, small_archive.metadata_url,
                          small_archive.root, str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TQDM_DISABLE": "1"})
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen == {"cluster_up_while_planning": [True, True], "error": "ImagesNotFoundError",
                    "workers_after_the_error": 2, "bad_store_written": False,
                    "rows_written": seen["rows_written"], "same_cluster": True}
    assert seen["rows_written"] == 80
