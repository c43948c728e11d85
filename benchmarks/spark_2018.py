"""The 2018 way, for comparison: PySpark ``local[N]``, an RDD of file paths, ``mapPartitions``
loading the frozen ResNet50 once per partition, features saved as comma-joined text lines.

Eager fp32 in PyTorch's default memory layout, as the 2018 system ran it, with the same
decode and resize as cxrdask so only the engine differs. Needs the ``bench`` extra
(pyspark) and Java 17.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path


def spark_available() -> str | None:
    """None when PySpark and a Java runtime are here, else why not."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install 'cxrdask[bench]')"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime (PySpark needs Java 17)"
    return None


def text_line(name: str, vector) -> str:
    """One image's features as the 2018 system saved them: ``name,f1,...,f2048`` (Python floats)."""
    return name + "," + ",".join(map(str, vector.tolist()))


def features_of_partition(rows: Iterator[tuple[str, str]], precision: str = "fp32",
                          batch_size: int = 8) -> Iterator[str]:
    """One Spark partition: build the model once, then ``name,f1,...,f2048`` per image."""
    import numpy as np
    import torch

    from cxrdask.backbones.build import build_backbone
    from cxrdask.backbones.runner import BackboneSpec
    from cxrdask.imaging.decode import preprocess_bytes

    torch.set_num_threads(1)
    model = build_backbone(BackboneSpec("resnet50", "random", 0))
    dtype = {"bf16": torch.bfloat16}.get(precision)

    def run(names: list[str], arrays: list) -> Iterator[str]:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = model(torch.from_numpy(np.stack(arrays))).float().numpy()
        for name, vector in zip(names, out, strict=True):
            yield text_line(name, vector)

    names, arrays = [], []
    for name, path in rows:
        with open(path, "rb") as handle:
            arrays.append(preprocess_bytes(handle.read(), name)[0])
        names.append(name)
        if len(names) == batch_size:
            yield from run(names, arrays)
            names, arrays = [], []
    if names:
        yield from run(names, arrays)


def run_spark(names: list[str], paths: list[str], out_dir: str, cores: int,
              precision: str = "fp32", batch_size: int = 8, partitions_per_core: int = 4) -> dict:
    """Extract with PySpark into text files under ``out_dir``; seconds exclude the session start."""
    import time
    from functools import partial

    from pyspark import SparkConf, SparkContext

    repo = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    conf = (SparkConf().setMaster(f"local[{cores}]").setAppName("cxrdask-bench-2018")
            .set("spark.ui.enabled", "false").set("spark.driver.memory", "2g")
            .set("spark.python.worker.reuse", "true"))
    started = time.perf_counter()
    context = SparkContext(conf=conf)
    context.setLogLevel("ERROR")
    session_s = time.perf_counter() - started
    try:
        start = time.perf_counter()
        rdd = context.parallelize(list(zip(names, paths, strict=True)),
                                  numSlices=cores * partitions_per_core)
        rdd.mapPartitions(partial(features_of_partition, precision=precision,
                                  batch_size=batch_size)).saveAsTextFile(out_dir)
        seconds = time.perf_counter() - start
    finally:
        context.stop()
    return {"seconds": seconds, "session_s": session_s}
