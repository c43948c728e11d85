"""The single-image web page and its JSON API (the ``web`` extra: FastAPI and uvicorn)."""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the web page needs FastAPI and uvicorn: pip install 'cxrdask[web]'") from exc

from cxrdask.serve.diagnosis import DISCLAIMER, Diagnoser, Diagnosis, grad_cam
from cxrdask.serve.web.app import DEFAULT_MAX_UPLOAD_BYTES, create_app

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "DISCLAIMER", "Diagnoser", "Diagnosis", "create_app", "grad_cam"]
