"""Localisation on a Dask cluster: NIH-format boxes of the synthetic archive, Grad-CAM maps
computed on the workers from the archive's images, scored beside Wang et al. 2017."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrdask.archive.boxes import BOX_IMAGE_SIZE, box_from_heatmap, read_boxes
from cxrdask.evaluation.report import evaluate
from cxrdask.extract.run import extract_features
from cxrdask.head.train import TrainConfig, train_head
from cxrdask.serve.diagnosis import Diagnoser
from cxrdask.store.features import FeatureStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(small_archive, cluster_client, tmp_path_factory):
    out = tmp_path_factory.mktemp("localise")
    store = str(out / "features.zarr")
    extract_features(small_archive.metadata_url, small_archive.root, store, client=cluster_client,
                     weights="random", backbone="resnet18", chunk_rows=16, progress=False)
    result = train_head(store, TrainConfig(epochs=3, batch_size=16), out / "head", progress=False)
    return store, str(result.checkpoint), out


def test_every_box_of_the_split_is_scored_from_its_own_image(small_archive, cluster_client,
                                                             trained):
    store, checkpoint, out = trained
    boxes_url = f"{small_archive.root}/BBox_List_2017.csv"
    report = evaluate(store, checkpoint, boxes=boxes_url, images=small_archive.root,
                      client=cluster_client, out_dir=out / "report", bootstrap=50)
    found = report.localisation
    listed = read_boxes(boxes_url)
    table = FeatureStore.open(store).table()
    in_test = set(table.loc[table["split"] == 2, "image_index"])
    expected = listed[listed["image_index"].isin(in_test)]
    assert len(expected) >= 5 and len(found.boxes) == len(expected) == found.listed
    assert found.missing_images == 0
    drawn = found.boxes[["drawn_x", "drawn_y", "drawn_w", "drawn_h"]].to_numpy()
    assert (drawn[:, 2] > 0).all() and (drawn[:, :2] + drawn[:, 2:] <= BOX_IMAGE_SIZE + 1e-6).all()
    # The map behind a box is that image's, as the web page computes it in this process.
    first = found.boxes.iloc[0]
    path = next(Path(small_archive.root).glob(f"images_*/images/{first['image_index']}"))
    row = table.set_index("image_index").loc[first["image_index"]]
    diagnosis = Diagnoser.load(checkpoint, device="cpu").diagnose(
        path.read_bytes(), first["image_index"], age=float(row["age"]), sex=row["sex"],
        view=row["view"])
    x, y, w, h = box_from_heatmap(np.asarray(diagnosis.heatmaps[first["finding"]]),
                                  diagnosis.width, diagnosis.height)
    scale = BOX_IMAGE_SIZE / diagnosis.width
    np.testing.assert_allclose(drawn[0], np.array([x, y, w, h]) * scale, rtol=1e-5)
    # The report: the lead line, the section beside Wang et al., the JSON.
    markdown = (out / "report" / "report.md").read_text()
    assert f"of {len(found.boxes)} boxes (maps of other images:" in markdown
    assert "## Localisation (NIH's boxes)" in markdown and "Wang 0.88)" in markdown
    data = json.loads((out / "report" / "report.json").read_text())
    assert data["localisation"]["boxes_scored"] == len(found.boxes)
    iobb = [r for r in data["localisation"]["accuracy"] if r["measure"] == "iobb"]
    assert {r["threshold"] for r in iobb} == {0.1, 0.25, 0.5, 0.75, 0.9}


def test_localisation_needs_both_files(trained, small_archive):
    from cxrdask.errors import OptionError

    store, checkpoint, _ = trained
    with pytest.raises(OptionError, match="both the boxes"):
        evaluate(store, checkpoint, boxes=f"{small_archive.root}/BBox_List_2017.csv")


def test_localisation_reads_images_through_flaky_object_storage(small_archive, cluster_client,
                                                                trained):
    """Each image's first 8 GETs fail: more than botocore and s3fs try in one call, so every
    boxed image needs cxrdask's own retry; every box is still scored, as from local disk."""
    import fsspec

    from cxrdask.evaluation.localisation import localise
    from cxrdask.testing import FaultyProxy, local_s3_server

    store, checkpoint, _ = trained
    boxes_url = f"{small_archive.root}/BBox_List_2017.csv"
    local = localise(store, checkpoint, boxes_url, small_archive.root, client=cluster_client)
    with local_s3_server("boxes") as options:
        fsspec.filesystem("s3", **options).put(f"{small_archive.root}/", "boxes/archive/",
                                               recursive=True)
        with FaultyProxy(options["client_kwargs"]["endpoint_url"], fail_first=8,
                         only_suffix=".png") as proxy:
            flaky = {**options, "config_kwargs": {"retries": {"max_attempts": 1}},
                     "client_kwargs": {**options["client_kwargs"], "endpoint_url": proxy.endpoint}}
            remote = localise(store, checkpoint, boxes_url, "s3://boxes/archive",
                              client=cluster_client, storage_options=flaky)
    images = local.boxes["image_index"].nunique()
    assert images >= 3 and proxy.faults >= 8 * images  # the faults landed on every image read
    assert remote.missing_images == 0 and len(remote.boxes) == len(local.boxes)
    columns = ["image_index", "finding", "drawn_x", "drawn_y", "drawn_w", "drawn_h"]
    assert remote.boxes[columns].equals(local.boxes[columns])


@pytest.fixture(scope="module")
def signs_archive(cluster_client, tmp_path_factory):
    """900 images with every finding alike and signs half again as strong as the default;
    167 boxes on its test list."""
    from cxrdask.archive.synthetic import make_archive

    root = tmp_path_factory.mktemp("signs") / "archive"
    return make_archive(str(root), n=900, size=256, seed=5, prevalence="balanced", strength=1.5,
                        client=cluster_client, progress=False)


def _localise_with(archive, weights: str, client, out: Path):
    """Extract with ``weights`` (a file, or "random"), train a head, localise on the test list
    (fp32 on every CPU, so the numbers do not depend on whether it has native bf16)."""
    from cxrdask.evaluation.localisation import localise

    store = str(out / "features.zarr")
    extract_features(archive.metadata_url, archive.root, store, client=client, weights=weights,
                     backbone="resnet18", image_size=224, precision="fp32", progress=False)
    result = train_head(store, TrainConfig(epochs=30), out / "head", progress=False)
    return localise(store, str(result.checkpoint), f"{archive.root}/BBox_List_2017.csv",
                    archive.root, client=client, weights=None if weights == "random" else weights)


def _gain_over_shuffled(report, measure: str = "iou", threshold: float = 0.1) -> tuple[float, float]:
    """How many more boxes an image's own map finds (``measure`` above ``threshold``) than the
    map of another image with the same finding, and the t statistic of that paired difference."""
    boxes = report.boxes
    gain = ((boxes[measure] > threshold).astype(float)
            - (boxes[f"control_{measure}"] > threshold).astype(float)).to_numpy()
    spread = gain.std(ddof=1) / np.sqrt(len(gain))
    return float(gain.mean()), float(gain.mean() / spread) if spread > 0 else 0.0


@pytest.mark.timeout(900)
def test_gradcam_localises_the_signs_a_backbone_learned_and_not_those_it_did_not(
        signs_archive, cluster_client, tmp_path):
    """The maps of a backbone that learned the signs (its last block fine-tuned on the train
    list) box them far more often than another image's map of the same finding does (the
    chance a map that knows nothing of the image has); a random-weight backbone's maps, which
    carry a sign only as pooled statistics, do not: the comparison is one that can fail."""
    from helpers import finetune_backbone

    weights = finetune_backbone(signs_archive.metadata_url, signs_archive.root,
                                tmp_path / "resnet18-signs.pth", epochs=3, frozen_stages=3)
    learned = _localise_with(signs_archive, weights, cluster_client, tmp_path / "learned")
    unlearned = _localise_with(signs_archive, "random", cluster_client, tmp_path / "random")
    assert len(learned.boxes) >= 100 and learned.missing_images == 0

    gain, t = _gain_over_shuffled(learned)
    assert learned.mean_accuracy("iou", 0.1) >= 0.5
    # measured: 0.16 more boxes, t = 4.1 (with layer3 learning too: 0.20, t = 4.1, 20 s more)
    assert gain >= 0.1 and t >= 2.5, (gain, t)

    gain, t = _gain_over_shuffled(unlearned)
    assert gain < 0.1 and t < 2.5, (gain, t)  # measured: 0.02, t = 0.5
