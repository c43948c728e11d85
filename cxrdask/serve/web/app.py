"""The web app: one page for a single X-ray, and a JSON API beside it (``/api/predict``,
``/api/health``, OpenAPI at ``/openapi.json`` and ``/docs``).

Every bad upload is answered with a 4xx JSON body ``{"error": code, "detail": message}``
and the server goes on serving.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from cxrdask import __version__
from cxrdask.errors import ImageDecodeError, ImageTooLargeError, NotARadiographError
from cxrdask.head.model import Checkpoint
from cxrdask.imaging.decode import DEFAULT_MAX_PIXELS
from cxrdask.imaging.dicom import PROJECTION_MODALITIES, Modalities
from cxrdask.serve.diagnosis import DISCLAIMER, Diagnoser
from cxrdask.serve.web.cases import SimilarCases

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
ACCEPTED_TYPES = {"image/png", "image/jpeg", "application/dicom", "application/octet-stream"}
MULTIPART_SLACK = 64 * 2**10  # form boundaries and headers around the file


class ApiError(Exception):
    """A request the API refuses: HTTP status, a short machine-readable code and a message."""

    def __init__(self, status: int, code: str, detail: str):
        self.status, self.code, self.detail = status, code, detail
        super().__init__(detail)


def create_app(checkpoint: str | Checkpoint, *, weights: str | None = None, device: str = "auto",
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_concurrent: int = 1,
               max_pixels: int = DEFAULT_MAX_PIXELS,
               modalities: Modalities = PROJECTION_MODALITIES,
               store: str | None = None) -> FastAPI:
    """The web page and JSON API for one head checkpoint; the backbone and head are loaded once.

    Parameters
    ----------
    checkpoint
        A head checkpoint (``head.pt``).
    weights
        The backbone's weights file, when the head was trained on one.
    device
        ``cpu``, ``cuda`` or ``auto``.
    max_upload_bytes
        Larger uploads are answered 413.
    max_concurrent
        Images computed at once (each uses every core).
    max_pixels
        Larger images are refused before decoding (decompression bombs).
    modalities
        DICOM modalities answered (CR and DX: computed and digital radiography; ``"any"``);
        an upload of another (a CT slice, a scanned report) is refused, naming its modality.
    store
        A feature store of the head's backbone: each diagnosis then lists the five stored
        images most like the upload, with their labels (:mod:`cxrdask.serve.web.cases`).

    Returns
    -------
    fastapi.FastAPI
        ``/`` (the page), ``POST /api/predict``, ``/api/health``, ``/docs``, and with a
        store ``/api/cases/{row}.png``.
    """
    diagnoser = Diagnoser.load(checkpoint, weights, device, max_concurrent, max_pixels,
                               modalities)
    started = time.time()
    app = FastAPI(title="cxrdask diagnosis", version=__version__,
                  description=f"14 ChestX-ray14 findings for one chest X-ray. {DISCLAIMER}")
    app.state.diagnoser = diagnoser
    cases = None if store is None else SimilarCases.open(store, diagnoser.checkpoint)
    app.state.cases = cases
    static = resources.files("cxrdask.serve.web") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status)

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        """Refuse an upload by its Content-Length before reading it."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes + MULTIPART_SLACK:
            return JSONResponse({"error": "too_large", "detail": _too_large(int(length), max_upload_bytes)},
                                status_code=413)
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    @app.get("/api/health", summary="Is the model loaded, and which one")
    async def health() -> dict:
        return {"status": "ok", "version": __version__, "model": diagnoser.identity,
                "labels": list(diagnoser.checkpoint.label_names), "max_upload_bytes": max_upload_bytes,
                "uptime_s": round(time.time() - started, 1), "disclaimer": DISCLAIMER}

    @app.post("/api/predict", summary="The head's probabilities of its findings (and heatmaps) for one image",
              responses={400: {"description": "empty upload"},
                         413: {"description": "file or image too large"},
                         415: {"description": "not a PNG, JPEG or DICOM content type"},
                         422: {"description": "not a decodable image"}})
    async def predict(
        file: Annotated[UploadFile, File(description="a PNG, JPEG or DICOM chest X-ray")],
        age: Annotated[float | None, Form(ge=0, le=123, description="years")] = None,
        sex: Annotated[str | None, Form(pattern="^[MFmf]$")] = None,
        view: Annotated[str | None, Form(pattern="^(PA|AP)$")] = None,
        heatmaps: Annotated[bool, Query(description="also return a Grad-CAM map per disease")] = True,
    ) -> dict:
        answer, features = await _diagnosis(diagnoser, max_upload_bytes, file, age=age, sex=sex,
                                             view=view, heatmaps=heatmaps)
        if cases is not None and features is not None:
            answer["similar"] = await run_in_threadpool(cases.around, features)
        return answer

    _add_case_pictures(app, cases)
    return app


def _add_case_pictures(app: FastAPI, cases: SimilarCases | None) -> None:
    """``GET /api/cases/{row}.png``: a stored image shown beside a diagnosis."""

    @app.get("/api/cases/{row}.png", summary="A stored image beside a diagnosis (with --store)",
             responses={404: {"description": "no store, or no such row"}})
    async def case_picture(row: int) -> Response:
        if cases is None:
            raise ApiError(404, "no_store", "the server was started without a store (--store)")
        try:
            return Response(await run_in_threadpool(cases.picture, row), media_type="image/png")
        except IndexError:
            raise ApiError(404, "no_such_row", f"row {row} is not a row of {cases.store.url}") from None


async def _diagnosis(diagnoser: Diagnoser, limit: int, file: UploadFile, *, age: float | None,
                     sex: str | None, view: str | None, heatmaps: bool
                     ) -> tuple[dict, np.ndarray | None]:
    """``POST /api/predict``'s answer for one upload and the upload's features, or the
    :class:`ApiError` that refuses it."""
    name = file.filename or "upload"
    content_type = (file.content_type or "application/octet-stream").split(";")[0].strip()
    if content_type not in ACCEPTED_TYPES:
        raise ApiError(415, "unsupported_type",
                       f"{name}: content type {content_type!r} is not a PNG, JPEG or DICOM image")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"{name}: {_too_large(None, limit)}")
    if not data:
        raise ApiError(400, "empty_upload", f"{name}: the uploaded file is empty")
    try:
        result = await run_in_threadpool(diagnoser.diagnose, data, name, age=age, sex=sex,
                                         view=view, heatmaps=heatmaps)
    except ImageTooLargeError as exc:
        raise ApiError(413, "image_too_large", f"{name}: {exc.reason}") from exc
    except NotARadiographError as exc:
        raise ApiError(422, "not_a_radiograph", f"{name}: {exc.reason}") from exc
    except ImageDecodeError as exc:
        raise ApiError(422, "not_an_image", f"{name}: {exc.reason}") from exc
    return {
        "image": {"name": name, "width": result.width, "height": result.height,
                  "conversion": result.note},
        "probabilities": result.probabilities,
        "ranking": result.ranking(),
        "heatmaps": None if result.heatmaps is None else {
            "layer": "last convolutional block", "method": "Grad-CAM through the head",
            "maps": result.heatmaps},
        "model": diagnoser.identity,
        "timing_ms": result.timing_ms,
        "disclaimer": DISCLAIMER,
    }, result.features


def _too_large(length: int | None, limit: int) -> str:
    size = f" ({length / 2**20:.1f} MiB)" if length else ""
    return f"the upload{size} is over the limit of {limit / 2**20:.0f} MiB"


__all__ = ["ACCEPTED_TYPES", "DEFAULT_MAX_UPLOAD_BYTES", "MULTIPART_SLACK", "ApiError", "create_app"]
