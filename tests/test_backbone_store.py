"""Backbone loading (random, file, torchvision cache, offline error) and the feature store."""

from __future__ import annotations

import urllib.error

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from cxrdask.archive.labels import LABELS
from cxrdask.backbones.build import build_backbone
from cxrdask.backbones.runner import BackboneSpec, load_backbone
from cxrdask.errors import (
    FeatureOverflowError,
    StoreError,
    StoreMismatchError,
    WeightsUnavailableError,
)
from cxrdask.imaging.preprocessing import Preprocessing
from cxrdask.store.features import STATUS_FAILED, STATUS_OK, FeatureSettings, FeatureStore

BATCH = torch.randn(2, 3, 224, 224)


def test_random_weights_are_seeded_and_frozen():
    one = load_backbone("resnet50", weights="random", device="cpu", seed=3)
    two = load_backbone("resnet50", weights="random", device="cpu", seed=3)
    with torch.inference_mode():
        out = one(BATCH)
        assert out.shape == (2, 2048)
        torch.testing.assert_close(out, two(BATCH))
    assert not one.training and not any(p.requires_grad for p in one.parameters())
    assert BackboneSpec("resnet50", "random", 3).identity()["weights"] == "random, seed 3"


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121"])
def test_networks_are_torchvisions_to_the_last_random_draw(name):
    """cxrdask builds torchvision's networks without importing torchvision (1.5 s a worker);
    the same seed must draw the same tensors, so stores and heads made with torchvision's
    own classes keep matching, and torchvision's files load into them unchanged."""
    from cxrdask.backbones.networks import build_network

    torch.manual_seed(11)
    ours = build_network(name)
    torch.manual_seed(11)
    theirs = getattr(torchvision.models, name)(weights=None)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    for key, value in theirs_state.items():
        assert torch.equal(ours_state[key], value), key
    ours.eval(), theirs.eval()
    with torch.inference_mode():
        torch.testing.assert_close(ours(BATCH[:1]), theirs(BATCH[:1]))


def test_torchvision_weights_are_named_and_found_as_torchvision_does():
    """The weights table that spares importing torchvision is torchvision's own."""
    from cxrdask.backbones.spec import TORCHVISION_WEIGHTS, torchvision_weights_file

    for name, (enum_name, members) in TORCHVISION_WEIGHTS.items():
        enum = torchvision.models.get_model_weights(name)
        assert enum.__name__ == enum_name
        assert members == {member: weights.url for member, weights in enum.__members__.items()}
        for member in members:
            url, cache = torchvision_weights_file(BackboneSpec(name, member))
            assert url == enum[member].url
            assert cache == f"{torch.hub.get_dir()}/checkpoints/{url.rsplit('/', 1)[-1]}"


def test_old_densenet_files_load_under_their_renamed_keys(tmp_path):
    source = torchvision.models.densenet121(weights=None)
    # As torchvision's own densenet121 file: old key names, BatchNorm without a batch count.
    old_names = {key.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): value
                 for key, value in source.state_dict().items()
                 if not key.endswith("num_batches_tracked")}
    assert any(".norm.1." in key for key in old_names)
    path = tmp_path / "densenet121-old.pth"
    torch.save(old_names, path)
    model = build_backbone(BackboneSpec("densenet121", str(path)))
    source.classifier = torch.nn.Identity()
    source.eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(BATCH[:1]), source(BATCH[:1]))


def test_densenet121_gives_1024_features():
    model = load_backbone("densenet121", weights="random", device="cpu")
    with torch.inference_mode():
        assert model(BATCH[:1]).shape == (1, 1024)


def test_weights_file_identified_by_sha256(tmp_path):
    source = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)  # with its fc layer, as published files are
    spec = BackboneSpec("resnet50", str(path))
    identity = spec.identity()
    assert identity["kind"] == "file" and len(identity["sha256"]) == 64
    model = build_backbone(spec)
    source.fc = torch.nn.Identity()
    source.eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(BATCH), source(BATCH))


def test_weights_file_errors(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found"):
        BackboneSpec("resnet50", str(tmp_path / "absent.pth")).identity()
    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(WeightsUnavailableError, match="does not fit resnet50"):
        build_backbone(BackboneSpec("resnet50", str(wrong)))


def test_imagenet_enum_loads_from_torch_cache(tmp_path, monkeypatch):
    """The real torchvision path: a file in the torch hub cache is used without a download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), cache / weights.url.rsplit("/", 1)[-1])
    spec = BackboneSpec("resnet50", "imagenet")
    assert spec.identity()["weights"] == "ResNet50_Weights.IMAGENET1K_V1"
    model = build_backbone(spec)
    reference.fc = torch.nn.Identity()
    reference.eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(BATCH), reference(BATCH))


def test_imagenet_offline_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError, match=r"--weights /path/to/resnet50\.pth"):
        build_backbone(BackboneSpec("resnet50", "IMAGENET1K_V2"))
    with pytest.raises(WeightsUnavailableError, match="no torchvision weights 'IMAGENET9'"):
        BackboneSpec("resnet50", "IMAGENET9").identity()


# --------------------------------------------------------------------------- store


def table(n=10):
    frame = pd.DataFrame({
        "image_index": [f"{i:08d}_000.png" for i in range(n)],
        "patient_id": np.arange(n), "follow_up": np.zeros(n, int), "age": np.full(n, 40),
        "sex": ["M", "F"] * (n // 2), "view_position": ["PA"] * n,
        "split": np.repeat([0, 1, 2], [n - 4, 2, 2]),
    })
    for position, name in enumerate(LABELS):
        frame[name] = (np.arange(n) % 14 == position).astype(np.uint8)
    return frame


def make_store(url, dtype="float16", chunk_rows=4, **overrides):
    settings = dict(backbone={"name": "resnet50", "feature_dim": 8,
                              "kind": "random", "weights": "random, seed 0"},
                    preprocessing=Preprocessing().to_dict(), dtype=dtype,
                    split={"method": "given"})
    settings.update(overrides)
    return FeatureStore.create(url, table(), FeatureSettings(**settings), chunk_rows=chunk_rows)


def test_store_layout_and_lazy_views(tmp_path):
    store = make_store(str(tmp_path / "s.zarr"))
    assert store.n_chunks == 3 and store.chunk_bounds(2) == (8, 10)
    assert store.split_counts() == {"train": 6, "validation": 2, "test": 2}
    lazy = store.features
    assert lazy.chunks == ((4, 4, 2), (8,))
    rows = np.arange(4, 8)
    store.write_chunk(1, np.tile(rows[:, None], (1, 8)).astype(np.float32),
                      np.array([STATUS_OK, STATUS_OK, STATUS_FAILED, STATUS_OK]),
                      ["", "", "cannot decode: truncated", ""])
    assert store.done_chunks().tolist() == [False, True, False]
    values = lazy.compute()
    assert values[4, 0] == 4 and np.isnan(values[6]).all() and np.isnan(values[0]).all()
    assert store.failures()[["image_index", "reason"]].values.tolist() == [
        ["00000006_000.png", "cannot decode: truncated"]]
    assert store.rows("train").tolist() == [4, 5]  # rows 0-5 are train; only 4, 5 are read ok
    assert store.rows("train", ok_only=False).tolist() == list(range(6))
    frame = store.table()
    assert frame["image_index"].iloc[9] == "00000009_000.png" and frame["Mass"].sum() == 1
    reopened = FeatureStore.open(store.url)
    assert reopened.provenance["backbone"]["weights"] == "random, seed 0"
    assert reopened.provenance["label_names"] == list(LABELS)


def test_float16_overflow_names_float32(tmp_path):
    store = make_store(str(tmp_path / "s.zarr"))
    with pytest.raises(FeatureOverflowError, match="dtype='float32'"):
        store.write_chunk(0, np.full((4, 8), 1e6, np.float32), np.ones(4, np.uint8), [""] * 4)
    assert not store.done_chunks()[0]
    wide = make_store(str(tmp_path / "w.zarr"), dtype="float32")
    wide.write_chunk(0, np.full((4, 8), 1e6, np.float32), np.ones(4, np.uint8), [""] * 4)
    assert wide.features[:4].compute().max() == 1e6


def test_mismatch_names_the_setting(tmp_path):
    store = make_store(str(tmp_path / "s.zarr"))
    with pytest.raises(StoreMismatchError, match="dtype: store has 'float16'") as info:
        store.check_settings({"dtype": "float32", "chunk_rows": 4})
    assert list(info.value.differences) == ["dtype"]
    store.check_settings({"dtype": "float16", "chunk_rows": 4})  # same settings: fine


def test_a_store_from_before_the_engine_setting_resumes_with_torch_only(tmp_path):
    store = make_store(str(tmp_path / "s.zarr"))
    attrs = dict(store.group.attrs["cxrdask"])
    del attrs["engine"]
    store.group.attrs["cxrdask"] = attrs
    old = FeatureStore.open(str(tmp_path / "s.zarr"))
    old.check_settings({"engine": "torch"})
    with pytest.raises(StoreMismatchError, match="engine"):
        old.check_settings({"engine": "onnxruntime"})


def test_not_a_store(tmp_path):
    import zarr

    with pytest.raises(StoreError, match="no feature store"):
        FeatureStore.open(str(tmp_path / "absent.zarr"))
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a cxrdask store"):
        FeatureStore.open(str(tmp_path / "plain.zarr"))
    store = make_store(str(tmp_path / "old.zarr"))
    store.update_provenance(format_version=0)
    with pytest.raises(StoreError, match="format 0"):
        FeatureStore.open(store.url)
