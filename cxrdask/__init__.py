"""cxrdask: out-of-core chest X-ray feature extraction with Dask and Zarr, and diagnosis heads.

Typical use::

    from cxrdask import make_archive, read_metadata, extract_features
    archive = make_archive("demo-archive", n=200, size=256)
    summary = extract_features(archive.metadata_url, archive.root, "demo.zarr", weights="random")
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public names, imported lazily so `import cxrdask` stays fast (torch is heavy).
_EXPORTS = {
    "LABELS": "labels",
    "parse_labels": "labels",
    "read_metadata": "metadata",
    "locate_images": "metadata",
    "find_metadata": "metadata",
    "encode_demographics": "encoding",
    "assign_splits": "splits",
    "make_archive": "synthetic",
    "BackboneSpec": "backbone_spec",
    "load_backbone": "backbone",
    "Preprocessing": "imaging",
    "FeatureStore": "store",
    "PixelStore": "pixels",
    "cache_pixels": "extract",
    "extract_from_pixels": "extract",
    "plan_from_pixels": "extract",
    "extract_features": "extract",
    "plan_extraction": "extract",
    "run_extraction": "extract",
    "ExtractionPlan": "extract",
    "ExtractSummary": "extract",
    "local_client": "cluster",
    "session_client": "cluster",
    "close_session_cluster": "cluster",
    "start_local_cluster": "cluster",
    "FeatureBatches": "batches",
    "TrainConfig": "config",
    "train_head": "train",
    "grid_search": "train",
    "evaluate": "evaluation",
    "predict": "inference",
    "create_app": "web",
    "run_demo": "demo",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"cxrdask.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cxrdask' has no attribute {name!r}")
