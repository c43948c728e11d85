"""cxrdask: out-of-core chest X-ray feature extraction with Dask and Zarr, and diagnosis heads.

Typical use::

    from cxrdask import make_archive, read_metadata, extract_features
    archive = make_archive("demo-archive", n=200, size=256)
    summary = extract_features(archive.metadata_url, archive.root, "demo.zarr", weights="random")
"""

import logging
from importlib import import_module
from typing import Any

# The library never prints: messages (the Dask dashboard's link, ...) go to the "cxrdask"
# logger, shown where the application configures logging (the CLI prints them; in a
# notebook: logging.basicConfig(level="INFO") or cxrdask.show_messages()).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

# Public names, imported lazily so `import cxrdask` stays fast (torch is heavy).
_EXPORTS = {
    "LABELS": "archive.labels",
    "parse_labels": "archive.labels",
    "read_metadata": "archive.kinds.nih",
    "locate_images": "archive.images",
    "find_metadata": "archive.kinds.nih",
    "read_archive": "archive.kinds",
    "detect_archive": "archive.kinds",
    "read_dicom_headers": "archive.dicom_headers",
    "ARCHIVE_KINDS": "archive.kinds",
    "DEFAULT_PATHOLOGIES": "archive.findings",
    "harmonise": "archive.findings",
    "encode_demographics": "head.encoding",
    "assign_splits": "archive.splits",
    "make_archive": "archive.synthetic.writer",
    "SyntheticSpec": "archive.synthetic.spec",
    "BackboneSpec": "backbones.spec",
    "load_backbone": "backbones.runner",
    "Preprocessing": "imaging.preprocessing",
    "FeatureStore": "store.features",
    "PixelStore": "store.pixels",
    "cache_pixels": "extract.run",
    "extract_from_pixels": "extract.run",
    "plan_from_pixels": "extract.plan",
    "extract_features": "extract.run",
    "plan_extraction": "extract.plan",
    "run_extraction": "extract.run",
    "ExtractionPlan": "extract.plan",
    "ExtractSummary": "extract.summary",
    "local_client": "runtime.cluster",
    "session_client": "runtime.cluster",
    "close_session_cluster": "runtime.cluster",
    "start_local_cluster": "runtime.cluster",
    "FeatureBatches": "head.batches",
    "ExtractConfig": "config",
    "TrainConfig": "config",
    "EvaluateConfig": "config",
    "train_head": "head.train",
    "grid_search": "head.train",
    "evaluate": "evaluation.report",
    "score_split": "evaluation.scoring",
    "audit": "evaluation.audit",
    "localise": "evaluation.localisation",
    "build_report": "evaluation.report",
    "write_report": "evaluation.report",
    "predict": "serve.inference",
    "create_app": "serve.web.app",
    "run_study": "study.table",
    "find_overlap": "store.overlap",
    "neighbours": "store.neighbours",
    "open_index": "store.neighbours",
    "audit_labels": "evaluation.label_audit",
    "measure_shift": "study.shift",
    "StudyResult": "study.table",
    "run_demo": "demo",
    "show_messages": "progress",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"cxrdask.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cxrdask' has no attribute {name!r}")
