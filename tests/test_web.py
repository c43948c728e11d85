"""The web page and its API: every bad input, Grad-CAM, concurrency, and a real browser."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cxrdask.archive.labels import LABELS
from cxrdask.backbones.build import build_backbone
from cxrdask.backbones.runner import BackboneSpec
from cxrdask.serve.diagnosis import last_conv_maps
from cxrdask.serve.inference import predict
from cxrdask.serve.web import create_app, grad_cam
from cxrdask.testing import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(small_archive) -> list[Path]:
    return sorted(Path(small_archive.root).rglob("*.png"))[:6]


@pytest.fixture(scope="module")
def client(trained_checkpoint):
    app = create_app(trained_checkpoint, device="cpu", max_upload_bytes=100_000)
    with TestClient(app) as test_client:
        yield test_client


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def post(client, data: bytes, name="x.png", content_type="image/png", **params):
    return client.post("/api/predict", files={"file": (name, data, content_type)}, params=params)


def test_health_names_the_model(client, trained_checkpoint):
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["labels"] == list(LABELS)
    assert body["model"]["backbone"]["name"] == "resnet50"
    assert body["model"]["backbone"]["weights"] == "random, seed 0"
    assert body["model"]["head"]["file"] == os.path.basename(trained_checkpoint)
    assert len(body["model"]["head"]["sha256"]) == 64


def test_predict_matches_the_library_and_returns_heatmaps(client, images, trained_checkpoint):
    response = post(client, images[0].read_bytes(), name=images[0].name)
    assert response.status_code == 200, response.text
    body = response.json()
    library = predict([str(images[0])], trained_checkpoint, device="cpu").iloc[0]
    got = np.array([body["probabilities"][label] for label in LABELS])
    assert np.allclose(got, library[list(LABELS)].to_numpy(float), atol=1e-4)
    ranking = [item["probability"] for item in body["ranking"]]
    assert ranking == sorted(ranking, reverse=True) and len(ranking) == 14
    maps = body["heatmaps"]["maps"]
    assert set(maps) == set(LABELS)
    cams = np.array([maps[label] for label in LABELS])
    assert cams.shape == (14, 7, 7) and cams.min() >= 0 and cams.max() <= 1
    assert (cams.reshape(14, -1).max(1) == 1).sum() >= 1  # each map is scaled to its own peak
    assert body["image"] == {"name": images[0].name, "width": 128, "height": 128, "conversion": None}
    assert {"decode", "backbone", "total"} <= set(body["timing_ms"])
    assert "not a medical device" in body["disclaimer"]


def test_demographics_change_the_answer_and_heatmaps_are_optional(client, images):
    data = images[1].read_bytes()
    young = post(client, data, heatmaps=False).json()
    assert young["heatmaps"] is None
    old = client.post("/api/predict", params={"heatmaps": False},
                      files={"file": ("a.png", data, "image/png")},
                      data={"age": "90", "sex": "M", "view": "AP"}).json()
    assert old["probabilities"] != young["probabilities"]
    bad = client.post("/api/predict", files={"file": ("a.png", data, "image/png")}, data={"age": "300"})
    assert bad.status_code == 422


def test_jpeg_and_16_bit_png_are_converted(client, images):
    gray = Image.open(images[2])
    jpeg = io.BytesIO()
    gray.save(jpeg, format="JPEG", quality=95)
    response = post(client, jpeg.getvalue(), name="x.jpg", content_type="image/jpeg")
    assert response.status_code == 200 and "JPEG" in response.json()["image"]["conversion"]
    deep = io.BytesIO()
    Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257).save(deep, format="PNG")
    response = post(client, deep.getvalue(), name="deep.png")
    assert response.status_code == 200 and "16" in response.json()["image"]["conversion"]


@pytest.mark.parametrize(("data", "name", "content_type", "status", "code", "message"), [
    (b"", "empty.png", "image/png", 400, "empty_upload", "empty.png: the uploaded file is empty"),
    (b"hello", "notes.txt", "text/plain", 415, "unsupported_type",
     "'text/plain' is not a PNG, JPEG or DICOM image"),
    (b"not an image at all", "broken.png", "image/png", 422, "not_an_image", "broken.png: cannot decode"),
    (png_claiming(30_000, 30_000), "bomb.png", "image/png", 413, "image_too_large",
     "decompression bomb"),
    (b"\x89PNG" + bytes(150_000), "big.png", "image/png", 413, "too_large", "over the limit"),
    (b"\x89PNG" + bytes(400_000), "huge.png", "image/png", 413, "too_large", "over the limit"),
])
def test_bad_uploads_get_clear_4xx_json_and_the_server_keeps_serving(
        client, images, data, name, content_type, status, code, message):
    # 150 kB passes the Content-Length gate (limit + 64 KiB of form) and is refused on reading;
    # 400 kB is refused from its Content-Length before the body is read.
    response = post(client, data, name=name, content_type=content_type)
    assert response.status_code == status
    assert response.json()["error"] == code and message in response.json()["detail"]
    assert post(client, images[0].read_bytes()).status_code == 200


def test_a_dicom_that_is_not_a_radiograph_is_refused_naming_its_modality(client, trained_checkpoint):
    """A hospital export holds CT slices and scanned reports too; the page says what they
    are instead of giving them a diagnosis, unless the server allows their modality."""
    pytest.importorskip("pydicom")
    from cxrdask.archive.synthetic.layouts import encode_dicom

    stored = np.random.default_rng(0).integers(0, 4096, (64, 64)).astype(np.uint16)
    ct = encode_dicom(stored, header={"Modality": "CT"})
    response = post(client, ct, name="slice.dcm", content_type="application/dicom")
    assert response.status_code == 422 and response.json()["error"] == "not_a_radiograph"
    assert "slice.dcm: DICOM of modality CT is not a projection radiograph" in response.json()["detail"]
    dx = encode_dicom(stored, header={"Modality": "DX"})
    assert post(client, dx, name="chest.dcm", content_type="application/dicom").status_code == 200
    allowing = create_app(trained_checkpoint, device="cpu", modalities="any")
    with TestClient(allowing) as other:
        assert post(other, ct, name="slice.dcm", content_type="application/dicom").status_code == 200


def test_with_a_store_each_diagnosis_lists_the_most_similar_stored_images(
        trained_checkpoint, images, tmp_path):
    """``--store``: five stored images beside the diagnosis, the upload's own stored row
    first (it is in the store), each with its labels, split and a picture; a store of another
    backbone is refused at start."""
    from cxrdask.errors import CheckpointMismatchError
    from cxrdask.store.features import FeatureStore
    from cxrdask.testing import make_feature_store

    store = trained_store(trained_checkpoint)
    with TestClient(create_app(trained_checkpoint, device="cpu", store=store)) as with_store:
        body = post(with_store, images[0].read_bytes(), name=images[0].name).json()
        similar = body["similar"]
        rows = FeatureStore.open(store).read("image_index")
        assert [c["rank"] for c in similar["cases"]] == [1, 2, 3, 4, 5]
        assert similar["cases"][0]["image"] == images[0].name
        assert similar["query_in_store"] == list(rows).index(images[0].name)
        assert similar["cases"][0]["similarity"] > 0.995 > similar["cases"][1]["similarity"]
        assert {"findings", "split", "patient_id", "picture"} <= set(similar["cases"][1])
        picture = with_store.get(similar["cases"][1]["picture"])
        assert picture.status_code == 200 and Image.open(io.BytesIO(picture.content)).size == (128, 128)
        assert with_store.get("/api/cases/99999.png").status_code == 404
    with TestClient(create_app(trained_checkpoint, device="cpu")) as without:
        assert "similar" not in post(without, images[0].read_bytes()).json()
        assert without.get("/api/cases/0.png").json()["error"] == "no_store"
    other = str(tmp_path / "other.zarr")
    make_feature_store(other, 64, feature_dim=32, chunk_rows=32, seed=1)
    with pytest.raises(CheckpointMismatchError, match="similar cases need a store of the head"):
        create_app(trained_checkpoint, device="cpu", store=other)


def test_a_request_without_a_file_is_a_json_422(client):
    response = client.post("/api/predict", data={"age": "40"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "file"


def test_openapi_and_page(client):
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/health"} <= set(schema["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "not a medical device" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_grad_cam_equals_explicit_gradients():
    torch.manual_seed(0)
    maps = torch.rand(16, 5, 4)
    head = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    cams = grad_cam(maps, head)
    for output in range(3):
        leaf = maps.clone().requires_grad_(True)
        head(leaf.mean(dim=(1, 2)))[output].backward()
        weights = leaf.grad.mean(dim=(1, 2))
        expected = torch.relu((weights[:, None, None] * maps).sum(0))
        if expected.max() > 0:
            expected = expected / expected.max()
        assert torch.allclose(cams[output], expected, atol=1e-6)


def test_heatmap_layer_pools_to_the_stored_features():
    model = build_backbone(BackboneSpec("resnet50", "random", 0))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        pooled = last_conv_maps(model, "resnet50", x).mean(dim=(2, 3))
        assert torch.allclose(pooled, model(x), atol=1e-5)


# --------------------------------------------------------------------------- the real server


def trained_store(checkpoint: str) -> str:
    """The feature store a head was trained on, as its checkpoint records it."""
    from cxrdask.head.model import load_checkpoint

    return load_checkpoint(checkpoint).provenance["stores"][0]["url"]


@pytest.fixture(scope="module")
def server(trained_checkpoint, tmp_path_factory):
    """``cxrdask serve`` on 127.0.0.1, as a user starts it."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cxrdask.cli", "serve", "--checkpoint", trained_checkpoint,
             "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
             "--store", trained_store(trained_checkpoint)],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"cxrdask serve did not start:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_concurrent_requests_each_get_their_own_answer(server, images):
    def ask(path: Path) -> dict:
        with open(path, "rb") as handle:
            response = httpx.post(server + "/api/predict", timeout=120,
                                  files={"file": (path.name, handle.read(), "image/png")})
        response.raise_for_status()
        return response.json()["probabilities"]

    alone = [ask(path) for path in images]
    with ThreadPoolExecutor(len(images)) as pool:
        together = list(pool.map(ask, images + images[::-1]))
    for path, answer in zip(images + images[::-1], together, strict=True):
        expected = alone[images.index(path)]
        assert all(abs(answer[k] - expected[k]) < 1e-5 for k in LABELS), path.name
    assert len({tuple(a.values()) for a in alone}) == len(images)  # different images differ


def chromium_path() -> str | None:
    for candidate in ("chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def test_page_in_headless_chromium(server, images, tmp_path):
    browser_path = chromium_path()
    if browser_path is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server + "/")
            assert "not a medical device" in page.inner_text("#disclaimer")
            page.set_input_files("#file", str(images[0]))
            page.wait_for_selector('#heatmap[data-drawn="true"]', timeout=60_000)

            labels = page.eval_on_selector_all("#bars .bar", "bars => bars.map(b => b.dataset.label)")
            assert sorted(labels) == sorted(LABELS)
            names = page.eval_on_selector_all("#bars .bar .name", "els => els.map(e => e.textContent)")
            assert sorted(names) == sorted(label.replace("_", " ") for label in LABELS)
            shown = page.eval_on_selector_all("#bars .bar .value", "els => els.map(e => e.textContent)")
            assert all(re.fullmatch(r"\d{1,3}\.\d%", value) for value in shown)
            probabilities = page.eval_on_selector_all(
                "#bars .bar", "bars => bars.map(b => Number(b.dataset.probability))")
            assert probabilities == sorted(probabilities, reverse=True)
            painted = page.evaluate("""() => {
                const c = document.getElementById('heatmap');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                return n / (c.width * c.height); }""")
            assert painted > 0.01
            assert page.get_attribute("#heatmap", "data-label") == labels[0]

            # the similar cases: this stored image first, said to be in the store, with pictures
            page.wait_for_selector("#similar:not([hidden])", timeout=30_000)
            cases = page.eval_on_selector_all("#cases .case .meta", "els => els.map(e => e.textContent)")
            assert len(cases) == 5 and cases[0].startswith(images[0].name)
            assert "itself in the store" in page.inner_text("#similar-note")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#cases .case img')].every(i => i.naturalWidth)",
                timeout=30_000)
            widths = page.eval_on_selector_all("#cases .case img", "imgs => imgs.map(i => i.naturalWidth)")
            assert widths == [128] * 5

            page.click(f'#bars .bar[data-label="{labels[-1]}"]')
            assert page.get_attribute("#heatmap", "data-label") == labels[-1]
            assert page.inner_text("#heatmap-label") == labels[-1].replace("_", " ")
            screenshot = tmp_path / "page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert Image.open(screenshot).size[0] == 1280

            page.set_input_files("#file", str(broken))
            page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            assert "broken.png: cannot decode" in page.inner_text("#error")
        finally:
            browser.close()
