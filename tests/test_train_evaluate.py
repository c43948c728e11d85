"""Out-of-core batches, head training, checkpoints, grid search on Dask, evaluation, predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cxrdask.archive.labels import LABELS
from cxrdask.errors import CheckpointMismatchError
from cxrdask.evaluation.report import CHEXNET_2017, WANG_2017, evaluate
from cxrdask.head.batches import FeatureBatches, label_counts
from cxrdask.head.model import load_checkpoint
from cxrdask.head.train import TrainConfig, grid_search, train_head
from cxrdask.store.features import FeatureStore
from cxrdask.testing import make_feature_store


@pytest.fixture(scope="module")
def feature_store(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("fs") / "features.zarr")
    make_feature_store(url, 3000, feature_dim=64, chunk_rows=100, seed=2, signal=0.8)
    return url


def test_batches_cover_split_once_per_epoch_and_stay_bounded(feature_store):
    batches = FeatureBatches(feature_store, "train", 64, buffer_chunks=3, seed=1)
    store = FeatureStore.open(feature_store)
    expected = store.rows("train")
    seen_rows = 0
    for epoch in range(2):
        batches.set_epoch(epoch)
        sizes = [len(x) for x, _ in batches]
        assert sum(sizes) == len(expected) and max(sizes) == 64
        seen_rows += sum(sizes)
    n_chunks = len(batches.chunk_ids)
    assert batches.chunks_read == 2 * n_chunks  # each chunk read once per epoch, lazily
    assert n_chunks > 3 * 3  # the split is far larger than the buffer ...
    assert batches.max_rows_held <= batches.row_bound  # ... yet no more than a buffer is held
    assert batches.n_inputs == 64 + 2


def test_batches_are_the_rows_of_the_store(feature_store):
    store = FeatureStore.open(feature_store)
    ordered = FeatureBatches(store, "validation", 1000, shuffle=False, demographics=())
    x = torch.cat([b[0] for b in ordered]).numpy()
    rows = store.rows("validation")
    np.testing.assert_array_equal(x, store.features.compute()[rows].astype(np.float32))
    shuffled = FeatureBatches(store, "validation", 1000, shuffle=True, seed=3, demographics=())
    y = torch.cat([b[0] for b in shuffled]).numpy()
    assert not np.array_equal(x, y)
    np.testing.assert_array_equal(np.sort(x, axis=0), np.sort(y, axis=0))
    with_view = FeatureBatches(store, "validation", 10, demographics=("age", "sex", "view"))
    assert next(iter(with_view))[0].shape == (10, 67)


def test_label_counts(feature_store):
    store = FeatureStore.open(feature_store)
    n, positives, negatives = label_counts(store, "train")
    table = store.table()
    train = table[table["split"] == 0]
    assert n == len(train)
    assert positives.tolist() == train[list(LABELS)].sum().tolist()
    assert (positives + negatives).tolist() == [n] * len(LABELS)  # NIH labels every finding


def test_train_checkpoint_and_evaluate(feature_store, tmp_path):
    config = TrainConfig(epochs=8, batch_size=64, lr=1e-3)
    result = train_head(feature_store, config, tmp_path / "head", progress=False)
    history = pd.read_csv(tmp_path / "head" / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "lr", "seconds"]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert (tmp_path / "head" / "curves.png").stat().st_size > 5000
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.epoch == result.best_epoch == int(history["val_loss"].idxmin())
    assert ckpt.input == {"feature_dim": 64, "demographics": ["age", "sex"], "n_inputs": 66}
    assert ckpt.config["lr"] == 1e-3 and ckpt.provenance["backbone"]["name"] == "synthetic"
    report = evaluate(feature_store, result.checkpoint, out_dir=tmp_path / "report")
    assert report.mean_auc > 0.85 and report.mean_auc > report.mean_auc_untrained + 0.2
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["mean_auc"] == pytest.approx(report.mean_auc)
    assert data["per_label"][0]["wang2017"] == WANG_2017["Atelectasis"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "CheXNet" in markdown and "**mean of 14**" in markdown and "patient split" in markdown
    assert markdown.startswith("> **Synthetic archive, random-weight backbone: not comparable")
    assert f"{CHEXNET_2017['Hernia']:.3f}" in markdown
    for name in ("roc.png", "auc_bars.png", "reliability.png", "subgroup_gaps.png"):
        assert (tmp_path / "report" / name).stat().st_size > 5000
    # The audit: intervals from a patient bootstrap, subgroups, calibration.
    audit = report.audit
    assert audit.resamples == 1000
    assert audit.mean_auc.low < report.mean_auc < audit.mean_auc.high
    assert audit.mean_auc.high - audit.mean_auc.low < 0.1
    assert (audit.auc["auc_low"] <= audit.auc["auc"]).all()
    assert set(audit.subgroups["subgroup"]) >= {"all", "sex M", "sex F", "view PA", "view AP"}
    whole = audit.subgroups[(audit.subgroups["subgroup"] == "all")]
    assert whole["gap"].isna().all()  # the whole split has no rest to compare with
    assert audit.calibration["threshold"].notna().all()
    assert audit.underdiagnosis["rate"].between(0, 1).all()
    lead = markdown.split("| disease |")[0]
    assert "| mean AUC (95% CI, 1000 patient resamples) |" in lead
    assert "worst subgroup gap" in lead and "expected calibration error" in lead
    assert "## Subgroups" in markdown and "## Calibration and operating points" in markdown
    assert data["bootstrap"] == {"resamples": 1000, "unit": "patient", "level": 0.95,
                                 "stratified": False}
    assert len(data["calibration"]) == 14 and data["comparison"] is None

    # Two heads compared on the same images: a head trained for one epoch is worse.
    early = train_head(feature_store, TrainConfig(epochs=1, batch_size=64, lr=1e-4),
                       tmp_path / "early", progress=False)
    compared = evaluate(feature_store, result.checkpoint, compare_to=early.checkpoint,
                        bootstrap=300).audit.comparison
    assert (compared["difference"] > 0).mean() > 0.8
    better = compared[(compared["low"] > 0) & (compared["delong_p"] < 0.05)]
    assert len(better) >= 5
    itself = evaluate(feature_store, result.checkpoint, compare_to=result.checkpoint,
                      bootstrap=100).audit.comparison
    # Expert labels (a stand-in in Google's format for some of the test images): with no
    # disagreement they score exactly as NIH's labels; with disagreement, not.
    from cxrdask.archive.synthetic.expert import format_expert_labels
    from cxrdask.archive.synthetic.layout import make_metadata

    store = FeatureStore.open(feature_store)
    frame = make_metadata(3000, seed=2)  # the rows make_feature_store wrote
    test_images = set(store.read("image_index")[store.rows("test")])
    (tmp_path / "same.csv").write_text(format_expert_labels(frame, test_images, missed=0, added=0))
    same = evaluate(feature_store, result.checkpoint, bootstrap=100,
                    expert_labels=str(tmp_path / "same.csv")).audit.expert
    listed = frame[frame["image_index"].isin(test_images)]
    assert 0 < same["images"].iloc[0] < len(listed)
    assert (same["auc_expert"] == same["auc_nih"]).all() and (same["difference"] == 0).all()
    (tmp_path / "flipped.csv").write_text(format_expert_labels(frame, test_images, seed=1,
                                                               missed=0.5, added=0.2))
    flipped = evaluate(feature_store, result.checkpoint, bootstrap=100,
                       expert_labels=str(tmp_path / "flipped.csv")).audit.expert
    assert (flipped["positives_expert"] != flipped["positives_nih"]).any()
    assert (flipped["auc_expert"] < flipped["auc_nih"]).all()  # noisier reference, lower AUC

    scored = itself["delong_p"].notna()  # DeLong needs two positives (Hernia may have fewer)
    assert scored.sum() >= 12 and (itself.loc[scored, "delong_p"] == 1).all()
    assert (itself.loc[scored, "difference"] == 0).all()


def test_shuffled_labels_learn_nothing(tmp_path):
    url = str(tmp_path / "shuffled.zarr")
    make_feature_store(url, 3000, feature_dim=64, chunk_rows=100, seed=2, signal=0.8,
                       shuffle_labels=True)
    result = train_head(url, TrainConfig(epochs=8, batch_size=64), tmp_path / "h", progress=False)
    assert abs(evaluate(url, result.checkpoint).mean_auc - 0.5) < 0.07


def test_seed2018_preset():
    config = TrainConfig.preset_config("seed2018")
    assert (config.lr, config.weight_decay, config.batch_size, config.epochs) == (3e-4, 1e-5, 10, 50)
    assert (config.plateau_patience, config.plateau_factor, config.betas, config.eps) == (
        1, 0.2, (0.9, 0.999), 1e-8)
    assert TrainConfig.preset_config("seed2018", epochs=3).epochs == 3
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.preset_config("2019")


def test_checkpoint_refuses_other_inputs(feature_store, tmp_path):
    result = train_head(feature_store, TrainConfig(epochs=1, batch_size=256), tmp_path,
                        progress=False)
    ckpt = load_checkpoint(result.checkpoint)
    with pytest.raises(CheckpointMismatchError, match="takes 66 inputs"):
        ckpt.check_inputs(67)
    with pytest.raises(CheckpointMismatchError, match="trained on features of"):
        ckpt.check_inputs(66, {"name": "resnet50", "weights": "ResNet50_Weights.IMAGENET1K_V1"})
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointMismatchError, match="not a cxrdask head checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pt"))


@pytest.mark.slow
def test_grid_search_on_cluster(feature_store, cluster_client, tmp_path):
    base = TrainConfig(epochs=3, batch_size=128)
    frame = grid_search(feature_store, [1e-3, 3e-3], [0.0, 1e-4], base=base, out_dir=tmp_path,
                        client=cluster_client, progress=False)
    assert len(frame) == 4 and frame["best_val_loss"].is_monotonic_increasing
    assert set(frame["lr"]) == {1e-3, 3e-3}
    best = load_checkpoint(str(tmp_path / "head.pt"))
    assert best.val_loss == pytest.approx(frame.loc[0, "best_val_loss"])
    assert (tmp_path / "grid.png").stat().st_size > 5000
    assert pd.read_csv(tmp_path / "grid.csv").shape[0] == 4


def test_evaluating_another_backbones_store_is_refused(feature_store, tmp_path):
    other = str(tmp_path / "other.zarr")
    make_feature_store(other, 600, feature_dim=64, chunk_rows=100, seed=9)  # other "weights"
    result = train_head(feature_store, TrainConfig(epochs=1), tmp_path / "h", progress=False)
    with pytest.raises(CheckpointMismatchError, match="trained on features of"):
        evaluate(other, result.checkpoint)
    wider = str(tmp_path / "wider.zarr")
    make_feature_store(wider, 600, feature_dim=65, chunk_rows=100, seed=2)
    with pytest.raises(CheckpointMismatchError, match="takes 66 inputs"):
        evaluate(wider, result.checkpoint)


@pytest.mark.slow
def test_bf16_head_training_stays_within_noise_of_fp32(tmp_path):
    """bf16 autocast (auto on CPUs with native bf16) learns what fp32 learns, and the
    checkpoint says which arithmetic was used."""
    from cxrdask.head.model import load_checkpoint
    from cxrdask.head.train import TrainConfig, train_head
    from cxrdask.testing import make_feature_store

    url = str(tmp_path / "f.zarr")
    make_feature_store(url, 3000, feature_dim=64, chunk_rows=256, signal=0.6)
    results = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(epochs=8, early_stopping=None, precision=precision)
        results[precision] = train_head(url, config, tmp_path / precision, progress=False,
                                        plot=False, device="cpu")
        assert load_checkpoint(results[precision].checkpoint).config["precision"] == precision
    fp32, bf16 = results["fp32"].history, results["bf16"].history
    assert fp32["val_loss"].iloc[-1] < fp32["val_loss"].iloc[0]  # it learns
    assert abs(bf16["val_loss"] - fp32["val_loss"]).max() < 0.03 * fp32["val_loss"].max()


def test_a_split_with_no_rows_is_a_one_line_error_and_all_scores_every_row(tmp_path):
    """A store without a test split (CheXpert's train.csv alone) is refused before any pass,
    in one line naming the splits' sizes, not with a traceback; ``split="all"`` scores every
    readable row."""
    from cxrdask.errors import ScoreError

    url = str(tmp_path / "f.zarr")
    make_feature_store(url, 400, feature_dim=16, chunk_rows=100, seed=3)
    head = train_head(url, TrainConfig(epochs=1, batch_size=64), tmp_path / "head",
                      progress=False, plot=False).checkpoint
    store = FeatureStore.open(url, mode="r+")
    codes = store.read("split")
    store.array("split")[:] = np.where(codes == 2, 0, codes)  # the test rows become training rows
    sizes = FeatureStore.open(url).split_counts(ok_only=True)
    assert sizes["test"] == 0 and sizes["train"] > 0
    with pytest.raises(ScoreError) as refused:
        evaluate(url, head, split="test")
    message = str(refused.value)
    assert "\n" not in message and "no readable test rows" in message
    assert f"train {sizes['train']}, validation {sizes['validation']}, test 0" in message
    report = evaluate(url, head, split="all", bootstrap=0)
    assert report.split == "all" and report.n_rows == 400
    assert report.external is None  # the head's own archive: not an external validation
