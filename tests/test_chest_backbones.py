"""Backbones a chest X-ray lab chooses: torchxrayvision's networks (their own preprocessing, features
equal to its own pipeline) and timm's CNNs (their data config); a head trained on each."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrdask.backbones.build import build_backbone
from cxrdask.backbones.spec import XRV_BACKBONES, BackboneSpec
from cxrdask.errors import OptionError, WeightsUnavailableError
from cxrdask.evaluation.report import evaluate
from cxrdask.extract.plan import plan_extraction
from cxrdask.extract.run import extract_features
from cxrdask.head.train import train_head
from cxrdask.store.features import FeatureStore
from cxrdask.testing import make_feature_store
from tests.helpers import assert_the_web_page_agrees_with_predict, radiographs

xrv = pytest.importorskip("torchxrayvision")


def test_the_table_of_networks_is_torchxrayvisions():
    for name, (architecture, weights, side, url) in XRV_BACKBONES.items():
        published = xrv.models.model_urls[weights]
        assert url == published["weights_url"], name
        assert side == published["input_resolution"], name
        assert weights.startswith(architecture)


@pytest.mark.parametrize("name", sorted(XRV_BACKBONES))
def test_every_network_builds_offline_with_random_weights(name):
    spec = BackboneSpec(name, "random", 3)
    size = spec.preprocessing()["size"]
    with torch.inference_mode():
        features = build_backbone(spec)(torch.zeros(2, 1, size, size))
    assert features.shape == (2, spec.feature_dim)
    assert spec.identity()["weights"] == "random, seed 3"


@pytest.fixture
def no_network(monkeypatch):
    """Every connection this process opens is refused, as on a machine offline."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_published_weights_offline_say_which_file_goes_where(monkeypatch, tmp_path, no_network):
    from cxrdask.backbones.spec import check_weights_available

    monkeypatch.setenv("HOME", str(tmp_path))  # an empty torchxrayvision cache
    with pytest.raises(WeightsUnavailableError,
                       match=r"densenet121-res224-all.*models_data.*nih-pc-chex-mimic_ch"):
        check_weights_available(BackboneSpec("xrv-densenet121-res224-all", "imagenet"))


def _torchxrayvisions_features(model, paths: list[str]) -> np.ndarray:
    """torchxrayvision's own pipeline: imread, normalize, XRayCenterCrop, XRayResizer(224),
    features2."""
    import skimage.io

    pipeline = [xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)]
    batch = []
    for path in paths:
        image = xrv.datasets.normalize(skimage.io.imread(path), 255)[None]
        for step in pipeline:
            image = step(image)
        batch.append(image)
    with torch.inference_mode():
        return model.features2(torch.from_numpy(np.stack(batch))).numpy()


def _centred_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))


def test_features_equal_torchxrayvisions_pipeline_and_a_head_trains_on_them(
        tmp_path, cluster_client):
    archive = tmp_path / "archive"
    archive.mkdir()
    paths = radiographs(archive)
    torch.manual_seed(11)
    model = xrv.models.DenseNet(weights=None).eval()
    weights = tmp_path / "densenet121-res224-all.pt"
    torch.save(model, weights)  # a whole pickled model, as torchxrayvision publishes it

    store = str(tmp_path / "xrv.zarr")
    extract_features(None, str(archive), store, client=cluster_client, progress=False,
                     backbone="xrv-densenet121-res224-all", weights=str(weights),
                     dtype="float32", chunk_rows=4, split="patient")
    opened = FeatureStore.open(store)
    assert opened.feature_dim == 1024
    assert opened.provenance["backbone"]["name"] == "xrv-densenet121-res224-all"
    assert opened.provenance["preprocessing"]["channels"] == "gray-1"
    assert opened.provenance["preprocessing"]["crop"] == "centre"
    order = {str(p).rsplit("/", 1)[-1]: k for k, p in enumerate(paths)}
    ours = opened.read("features")
    rows = [order[name] for name in opened.read("image")]
    theirs = _torchxrayvisions_features(model, [paths[r] for r in rows])
    similarity = _centred_cosine(ours, theirs)
    assert np.diag(similarity).min() >= 0.99, np.diag(similarity)
    assert (similarity.argmax(axis=1) == np.arange(len(rows))).all()

    head = train_head(store, out_dir=tmp_path / "head", epochs=2, batch_size=4, progress=False)
    report = evaluate(store, head.checkpoint, bootstrap=0)
    assert list(report.table["label"]) == ["Effusion", "Cardiomegaly"]
    assert_the_web_page_agrees_with_predict(head.checkpoint, paths[0], str(weights))
    assert_two_backbones_compare_on_one_archive(store, head.checkpoint, archive, tmp_path,
                                                cluster_client)


def assert_two_backbones_compare_on_one_archive(store, checkpoint, archive, tmp_path, client):
    """A second backbone's store of the same images: its head scored on it, paired with the
    first head on the first store (bootstrap differences and DeLong's test)."""
    from cxrdask.errors import CheckpointMismatchError, StoreMismatchError

    other = str(tmp_path / "resnet18.zarr")
    extract_features(None, str(archive), other, client=client, progress=False,
                     backbone="resnet18", weights="random", image_size=64, chunk_rows=4,
                     split="patient")
    other_head = train_head(other, out_dir=tmp_path / "head18", epochs=2, batch_size=4,
                            progress=False, plot=False).checkpoint
    report = evaluate(store, checkpoint, bootstrap=20, compare_to=other_head,
                      compare_store=other)
    compared = report.audit.comparison
    assert list(compared["label"]) == ["Effusion", "Cardiomegaly"]
    assert {"delong_p", "low", "high"} <= set(compared.columns)
    with pytest.raises(CheckpointMismatchError, match="resnet18"):  # it reads its own store only
        evaluate(store, checkpoint, bootstrap=0, compare_to=other_head)
    elsewhere = str(tmp_path / "other-images.zarr")  # features of other images
    make_feature_store(elsewhere, 20, feature_dim=512, chunk_rows=4, seed=2)
    with pytest.raises(StoreMismatchError, match="rows_fingerprint"):
        evaluate(store, checkpoint, bootstrap=0, compare_to=other_head, compare_store=elsewhere)


def test_an_image_size_other_than_the_networks_is_refused(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    radiographs(archive, 2)
    with pytest.raises(OptionError, match="takes 512-pixel images"):
        plan_extraction(None, str(archive), str(tmp_path / "s.zarr"),
                        backbone="xrv-resnet50-res512-all", weights="random", image_size=320)


def test_a_timm_network_extracts_with_its_data_config_and_a_head_trains(tmp_path, cluster_client):
    pytest.importorskip("timm")
    archive = tmp_path / "archive"
    archive.mkdir()
    radiographs(archive)
    store = str(tmp_path / "timm.zarr")
    extract_features(None, str(archive), store, client=cluster_client, progress=False,
                     backbone="timm:efficientnet_b0", weights="random", image_size=64,
                     chunk_rows=4, split="patient")
    opened = FeatureStore.open(store)
    assert opened.feature_dim == 1280
    preprocessing = opened.provenance["preprocessing"]
    assert preprocessing["size"] == 64 and preprocessing["crop_fraction"] == 0.875
    assert preprocessing["channels"] == "gray-repeated-3"
    head = train_head(store, out_dir=tmp_path / "head", epochs=2, batch_size=4, progress=False)
    assert evaluate(store, head.checkpoint, bootstrap=0).n_rows > 0
    assert_the_web_page_agrees_with_predict(head.checkpoint, str(archive / "img03.png"))


def test_an_unknown_timm_model_is_refused():
    pytest.importorskip("timm")
    with pytest.raises(OptionError, match="timm has no model 'no_such_net'"):
        _ = BackboneSpec("timm:no_such_net", "random").feature_dim


def test_the_configs_backbone_names_are_the_specs():
    """``BackboneName`` (the type and --help's list) spells the names the spec knows."""
    import typing

    from cxrdask.backbones.spec import FEATURE_DIMS
    from cxrdask.config import BackboneName

    assert set(typing.get_args(BackboneName)) == set(FEATURE_DIMS)


def test_timm_weights_offline_say_which_repository_to_fetch(monkeypatch, tmp_path, no_network):
    pytest.importorskip("timm")
    import huggingface_hub.constants

    from cxrdask.backbones.spec import check_weights_available

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty
    with pytest.raises(WeightsUnavailableError,
                       match=r"timm/efficientnet_b0.*not in the Hub's cache.*huggingface\.co"):
        check_weights_available(BackboneSpec("timm:efficientnet_b0", "imagenet"))
