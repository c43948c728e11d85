"""Vision transformers as backbones: a Hugging Face ``transformers`` model from a
``save_pretrained`` folder (a random-weight DINOv2 with RAD-DINO's processor config) and
timm's ViTs. Features equal ``transformers``' own pipeline, every engine agrees with eager
PyTorch, a head trains on the store, and the web page's heatmaps have the patch grid's
resolution; pickled weights and offline repositories are refused before any work."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrdask.backbones.build import build_backbone
from cxrdask.backbones.runner import BackboneRunner
from cxrdask.backbones.spec import BackboneSpec, check_weights_available
from cxrdask.errors import OptionError, WeightsNotFoundError, WeightsUnavailableError
from cxrdask.extract.run import extract_features
from cxrdask.head.train import train_head
from cxrdask.imaging.decode import decode_gray, to_model_input
from cxrdask.imaging.preprocessing import Preprocessing
from cxrdask.store.features import FeatureStore
from tests.helpers import assert_the_web_page_agrees_with_predict, radiographs

transformers = pytest.importorskip("transformers")

# RAD-DINO's preprocessor_config.json (microsoft/rad-dino): BitImageProcessor, the shorter
# side resized bicubic to 518 and the centred 518 square cropped, its own mean and std.
RAD_DINO_PROCESSOR = {"size": {"shortest_edge": 518}, "crop_size": {"height": 518, "width": 518},
                      "do_center_crop": True, "do_convert_rgb": True, "resample": 3,
                      "image_mean": [0.5307, 0.5307, 0.5307], "image_std": [0.2583, 0.2583, 0.2583]}


def save_dinov2(folder, *, side: int = 518, crop: int = 518, registers: int = 0,
                safe: bool = True) -> str:
    """A small random DINOv2 (RAD-DINO's architecture, narrower and shallower) and its
    processor, written by ``save_pretrained`` as a user's download is laid out."""
    config_class = (transformers.Dinov2WithRegistersConfig if registers
                    else transformers.Dinov2Config)
    extra = {"num_register_tokens": registers} if registers else {}
    config = config_class(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                          intermediate_size=96, patch_size=14, image_size=crop,
                          layerscale_value=1.0, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config)
    model.save_pretrained(folder)
    if not safe:  # as older checkpoints were published (transformers 5 writes safetensors only)
        torch.save(model.state_dict(), f"{folder}/pytorch_model.bin")
        os.remove(f"{folder}/model.safetensors")
    processor = transformers.BitImageProcessor(
        **{**RAD_DINO_PROCESSOR, "size": {"shortest_edge": side},
           "crop_size": {"height": crop, "width": crop}})
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory) -> str:
    return save_dinov2(tmp_path_factory.mktemp("rad-dino-like"))


def centred_cosines(mine: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each image's cosine between its two feature vectors, both centred on the
    reference's mean (a random network's features share a large constant part), and the
    full matrix: row i against every reference."""
    centre = reference.mean(axis=0)
    a, b = mine - centre, reference - centre
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_the_processor_config_becomes_the_stores_preprocessing(dinov2, tmp_path):
    spec = BackboneSpec(f"hf:{dinov2}", "published")
    assert spec.preprocessing() == {
        "size": 518, "crop": "shortest-edge", "crop_fraction": 1.0, "mean": (0.5307,) * 3,
        "std": (0.2583,) * 3, "channels": "gray-repeated-3",
        "interpolation": "bicubic-antialias", "reducing_gap": None, "fixed_size": True}
    # DINOv2's own processor: shorter side to 256, centre 224 (crop 0.875), bicubic
    small = save_dinov2(tmp_path / "dinov2-small", side=256, crop=224)
    assert BackboneSpec(f"hf:{small}").preprocessing()["crop_fraction"] == 224 / 256
    identity = spec.identity()
    assert identity["kind"] == "hf" and identity["pooling"] == "cls"
    assert identity["feature_dim"] == 48 and identity["weights"] == "model.safetensors"
    assert len(identity["sha256"]) == 64


def test_features_equal_transformers_own_pipeline(dinov2, tmp_path):
    """``processor(images=...)`` then the model's ``pooler_output`` (RAD-DINO's model card)
    against cxrdask's decode, crop, bicubic resize and runner, on non-square radiographs."""
    paths = radiographs(tmp_path, 12)
    processor = transformers.AutoImageProcessor.from_pretrained(dinov2)
    model = transformers.AutoModel.from_pretrained(dinov2).eval()
    images = [Image.open(path).convert("RGB") for path in paths]
    with torch.inference_mode():
        reference = model(**processor(images=images, return_tensors="pt")).pooler_output.numpy()
    spec = BackboneSpec(f"hf:{dinov2}", "published")
    preprocessing = Preprocessing(**{k: v for k, v in spec.preprocessing().items()
                                     if k != "fixed_size"})
    batch = np.stack([to_model_input(decode_gray(Path(p).read_bytes(), p)[0], preprocessing)
                      for p in paths])
    mine = BackboneRunner.build(spec, device="cpu", batch_size=len(paths))(batch)
    cosines = centred_cosines(mine, reference)
    assert np.diag(cosines).min() >= 0.99, np.diag(cosines)
    assert (cosines.argmax(axis=1) == np.arange(len(paths))).all()


@pytest.mark.parametrize("pooling,width", [("cls", 48), ("mean", 48), ("cls+mean", 96)])
def test_poolings_are_the_class_token_the_patch_mean_or_both(tmp_path, pooling, width):
    """With four register tokens, ``mean`` leaves out the class token and the registers."""
    folder = save_dinov2(tmp_path / "registers", side=224, crop=224, registers=4)
    spec = BackboneSpec(f"hf:{folder}", "published", pooling=pooling)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        features = build_backbone(spec)(x)
        hidden = transformers.AutoModel.from_pretrained(folder)(pixel_values=x).last_hidden_state
    expected = {"cls": hidden[:, 0], "mean": hidden[:, 5:].mean(1),
                "cls+mean": torch.cat([hidden[:, 0], hidden[:, 5:].mean(1)], 1)}[pooling]
    assert spec.feature_dim == width and features.shape == (2, width)
    torch.testing.assert_close(features, expected)
    assert spec.identity()["pooling"] == pooling


def _other_architectures() -> dict:
    """Small random ViT, Swin, ResNet and ConvNeXt as ``transformers`` defines them, each
    with the processor its model cards use: (config, processor, the grid of its map)."""
    squash = transformers.ViTImageProcessor(size={"height": 224, "width": 224})
    convnext = transformers.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875)
    return {
        "vit": (transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                       intermediate_size=96, patch_size=16), squash, 14),
        "swin": (transformers.SwinConfig(embed_dim=24, depths=[1, 1], num_heads=[2, 2],
                                         window_size=7), squash, 28),
        "resnet": (transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32],
                                             depths=[1, 1], layer_type="basic"), convnext, 28),
        "convnext": (transformers.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1],
                                                 num_stages=2), convnext, 28),
    }


@pytest.mark.parametrize("architecture", ["vit", "swin", "resnet", "convnext"])
def test_vit_swin_and_the_cnns_transformers_hosts_run_with_their_own_embedding(tmp_path,
                                                                                architecture):
    """ViT: its class token; Swin and the CNNs (no class token): their ``pooler_output``;
    each with a Grad-CAM map at its own grid."""
    from cxrdask.serve.diagnosis import layer_grad_cam

    config, processor, grid = _other_architectures()[architecture]
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    spec = BackboneSpec(f"hf:{tmp_path}", "published")
    size = spec.preprocessing()["size"]
    x = torch.randn(1, 3, size, size)
    network = build_backbone(spec)
    with torch.inference_mode():
        output = transformers.AutoModel.from_pretrained(tmp_path)(pixel_values=x)
        expected = (output.last_hidden_state[:, 0] if architecture == "vit"
                    else torch.flatten(output.pooler_output, 1))
        torch.testing.assert_close(network(x), expected)
    assert spec.identity()["pooling"] == ("cls" if architecture == "vit" else "mean")
    head = torch.nn.Linear(spec.feature_dim, 14)
    _, cams = layer_grad_cam(network, network.cam_layer, x, lambda f: head(f[None])[0])
    assert cams.shape == (14, grid, grid) and float(cams.max()) == pytest.approx(1.0)
    if architecture == "convnext":  # ConvNeXt's crop_pct: the shorter side to 256, centre 224
        assert spec.preprocessing()["crop_fraction"] == 0.875


@pytest.mark.parametrize("engine,precision,tolerance", [
    ("onnxruntime", "fp32", 1e-4), ("openvino", "fp32", 1e-4), ("openvino", "bf16", 0.99),
    ("torch", "bf16", 0.99)])
def test_every_cpu_engine_runs_the_transformer_as_eager_does(dinov2, tmp_path, monkeypatch,
                                                             engine, precision, tolerance):
    """fp32 engines within 1e-4 of eager PyTorch; bf16 at cosine 0.99 or more per image (the
    tolerances the CNNs are held to)."""
    monkeypatch.setenv("CXRDASK_CACHE_DIR", str(tmp_path))
    spec = BackboneSpec(f"hf:{dinov2}", "published")
    batch = np.random.default_rng(1).normal(size=(2, 3, 518, 518)).astype(np.float32)
    eager = BackboneRunner.build(spec, device="cpu", batch_size=2)(batch)
    other = BackboneRunner.build(spec, device="cpu", engine=engine, precision=precision,
                                 batch_size=2)(batch)
    if precision == "fp32":
        np.testing.assert_allclose(other, eager, atol=tolerance, rtol=tolerance)
    else:
        cosine = (other * eager).sum(1) / np.linalg.norm(other, axis=1) / np.linalg.norm(eager, axis=1)
        assert cosine.min() >= tolerance


def test_an_hf_folder_extracts_a_head_trains_and_the_heatmap_has_the_patch_grid(
        dinov2, tmp_path, cluster_client):
    from cxrdask.serve.diagnosis import Diagnoser

    archive = tmp_path / "archive"
    archive.mkdir()
    radiographs(archive)
    store = str(tmp_path / "rad-dino.zarr")
    extract_features(None, str(archive), store, client=cluster_client, progress=False,
                     backbone=f"hf:{dinov2}", weights="published", chunk_rows=5,
                     split="patient")
    opened = FeatureStore.open(store)
    assert opened.feature_dim == 48
    assert opened.provenance["backbone"]["pooling"] == "cls"
    recorded = opened.provenance["preprocessing"]
    assert recorded["size"] == 518 and recorded["interpolation"] == "bicubic-antialias"
    assert recorded["mean"] == [0.5307] * 3
    head = train_head(store, out_dir=tmp_path / "head", epochs=2, batch_size=4, progress=False)
    image = str(archive / "img03.png")
    assert_the_web_page_agrees_with_predict(head.checkpoint, image)
    diagnosis = Diagnoser.load(head.checkpoint, device="cpu").diagnose(Path(image).read_bytes())
    for cam in diagnosis.heatmaps.values():
        assert np.asarray(cam).shape == (37, 37)  # 518 / 14
        assert np.asarray(cam).max() == pytest.approx(1.0) or np.asarray(cam).max() == 0.0


def test_pickled_weights_are_refused_unless_allowed(tmp_path):
    folder = save_dinov2(tmp_path / "pickled", side=224, crop=224, safe=False)
    with pytest.raises(WeightsUnavailableError, match=r"pickled weights only.*allow-pickle"):
        check_weights_available(BackboneSpec(f"hf:{folder}", "published"))
    spec = BackboneSpec(f"hf:{folder}", "allow-pickle")
    check_weights_available(spec)
    assert spec.identity()["weights"] == "pytorch_model.bin"
    with torch.inference_mode():
        assert build_backbone(spec)(torch.zeros(1, 3, 224, 224)).shape == (1, 48)


def test_a_folder_without_its_processor_or_weights_says_what_is_missing(tmp_path, dinov2):
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text(Path(dinov2, "config.json").read_text())
    with pytest.raises(WeightsNotFoundError, match=r"preprocessor_config\.json"):
        check_weights_available(BackboneSpec(f"hf:{tmp_path / 'config-only'}", "published"))
    with pytest.raises(WeightsNotFoundError, match="no folder"):
        _ = BackboneSpec(f"hf:{tmp_path / 'nowhere'}", "published").feature_dim
    with pytest.raises(OptionError, match="weights are its own"):
        BackboneSpec(f"hf:{dinov2}", "model.pth")
    with pytest.raises(OptionError, match="pooling applies to hf: backbones"):
        BackboneSpec("resnet50", pooling="cls")


def test_an_hf_repository_offline_names_the_repository_and_the_cache(monkeypatch, tmp_path):
    import socket

    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError,
                       match=r"hf:microsoft/rad-dino is not in the Hugging Face Hub's cache "
                             rf"\({tmp_path}\).*huggingface\.co cannot be reached"):
        check_weights_available(BackboneSpec("hf:microsoft/rad-dino", "published"))


def test_a_timm_vit_extracts_its_pre_logits_and_maps_at_its_patch_grid(tmp_path, cluster_client):
    timm = pytest.importorskip("timm")
    from cxrdask.serve.diagnosis import Diagnoser

    spec = BackboneSpec("timm:vit_tiny_patch16_224", "random", 2)
    assert spec.takes_tokens and spec.preprocessing()["fixed_size"]
    x = torch.randn(2, 3, 224, 224)
    torch.manual_seed(2)
    network = timm.create_model("vit_tiny_patch16_224", num_classes=0).eval()
    with torch.inference_mode():
        torch.testing.assert_close(build_backbone(spec)(x),
                                   network.forward_head(network.forward_features(x), pre_logits=True))
    archive = tmp_path / "archive"
    archive.mkdir()
    radiographs(archive)
    store = str(tmp_path / "vit.zarr")
    extract_features(None, str(archive), store, client=cluster_client, progress=False,
                     backbone="timm:vit_tiny_patch16_224", weights="random", weights_seed=2,
                     chunk_rows=5, split="patient")
    assert FeatureStore.open(store).feature_dim == 192
    head = train_head(store, out_dir=tmp_path / "head", epochs=2, batch_size=4, progress=False)
    diagnosis = Diagnoser.load(head.checkpoint, device="cpu").diagnose(
        (archive / "img01.png").read_bytes())
    assert {np.asarray(cam).shape for cam in diagnosis.heatmaps.values()} == {(14, 14)}
    with pytest.raises(OptionError, match="takes 224-pixel images"):
        extract_features(None, str(archive), str(tmp_path / "s.zarr"), progress=False,
                         backbone="timm:vit_tiny_patch16_224", weights="random", image_size=320)


def test_a_long_run_logs_its_expected_time_before_it_starts(tmp_path, cluster_client,
                                                            monkeypatch, caplog):
    """One timed batch per worker after the warm-up; the estimate is logged before the first
    chunk, and a short run (the threshold's default) times nothing."""
    import logging

    from cxrdask.extract import run

    archive = tmp_path / "archive"
    archive.mkdir()
    radiographs(archive, 8)
    caplog.set_level(logging.INFO, logger="cxrdask")
    extract_features(None, str(archive), str(tmp_path / "short.zarr"), client=cluster_client,
                     progress=False, weights="random", image_size=64, split="patient")
    assert "expected:" not in caplog.text
    monkeypatch.setattr(run, "ESTIMATE_MIN_BATCHES", 0)
    extract_features(None, str(archive), str(tmp_path / "s.zarr"), client=cluster_client,
                     progress=False, weights="random", image_size=64, split="patient")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("expected:"))
    assert "8 images through resnet50 at 64x64" in line and "on 2 workers" in line
    rate = float(line.split("(")[1].split(" images/s")[0].replace(",", ""))
    assert rate > 0
