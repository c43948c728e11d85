"""The statistics of a clinical evaluation, each against an independent computation or a
published value: patient-bootstrap AUCs, DeLong's test, calibration, operating points,
subgroups and under-diagnosis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrdask.evaluation.bootstrap import bootstrap_aucs, patient_weights, percentile_interval, weighted_auc
from cxrdask.evaluation.calibration import (
    choose_threshold,
    expected_calibration_error,
    operating_point,
    reliability,
)
from cxrdask.evaluation.delong import auc_variance, delong_test
from cxrdask.evaluation.subgroups import subgroup_masks, underdiagnosis_rate


def test_weighted_auc_equals_scikit_learn_with_weights_and_ties():
    rng = np.random.default_rng(0)
    for n in (7, 300, 5000):
        scores = np.round(rng.random(n), 2)  # many ties
        positive = rng.random(n) < 0.2
        positive[:2] = [True, False]
        weights = rng.integers(0, 4, (6, n)).astype(np.float32)
        ours = weighted_auc(scores, positive, weights)
        theirs = [roc_auc_score(positive, scores, sample_weight=w) for w in weights]
        np.testing.assert_allclose(ours, theirs, atol=1e-12)
    assert np.isnan(weighted_auc(np.arange(4.0), np.array([True, True, False, False]),
                                 np.array([[1, 1, 0, 0]], np.float32)))[0]


def test_patients_are_resampled_together():
    patients = np.array([7, 7, 7, 3, 9, 9, 1])
    for weights in patient_weights(patients, 300, seed=1, block=128):
        assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()
        assert (weights[:, 4] == weights[:, 5]).all()
        # Four patients drawn four times in all.
        per_patient = weights[:, [0, 3, 4, 6]]
        assert (per_patient.sum(axis=1) == 4).all()


def test_patient_bootstrap_is_not_fooled_by_repeated_images():
    """Each patient's image repeated five times adds no information: the patient bootstrap
    keeps the interval's width, a bootstrap over images would shrink it by about sqrt(5)."""
    rng = np.random.default_rng(3)
    n = 600
    positive = rng.random((n, 1)) < 0.3
    scores = rng.random((n, 1)) + 0.6 * positive
    patients = np.arange(n)
    once = bootstrap_aucs(positive, {"m": scores}, patients, {"all": np.ones(n, bool)},
                          n_resamples=400, seed=0)[("m", "all")][:, 0]
    repeated = bootstrap_aucs(np.repeat(positive, 5, axis=0), {"m": np.repeat(scores, 5, axis=0)},
                              np.repeat(patients, 5), {"all": np.ones(5 * n, bool)},
                              n_resamples=400, seed=0)[("m", "all")][:, 0]
    by_image = bootstrap_aucs(np.repeat(positive, 5, axis=0), {"m": np.repeat(scores, 5, axis=0)},
                              np.arange(5 * n), {"all": np.ones(5 * n, bool)},
                              n_resamples=400, seed=0)[("m", "all")][:, 0]
    assert repeated.std() == pytest.approx(once.std(), rel=0.2)
    assert by_image.std() < 0.6 * repeated.std()
    point = roc_auc_score(positive[:, 0], scores[:, 0])
    interval = percentile_interval(point, once)
    assert interval.low < point < interval.high


def test_delong_matches_hanley_and_mcneils_worked_example():
    """Hanley & McNeil, Radiology 143:29-36 (1982), Table 1: 109 CT images rated on a
    five-point scale, 58 normal and 51 abnormal; published AUC 0.893 with a standard error
    of 0.032 by their approximation (DeLong's estimator is close to it, not identical)."""
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    targets = np.r_[np.zeros(58), np.ones(51)]
    scores = np.r_[normal, abnormal].astype(float)
    auc, variance = auc_variance(targets, scores)
    assert round(auc, 3) == 0.893
    assert np.sqrt(variance) == pytest.approx(0.032, abs=0.002)


def _delong_by_definition(targets, a, b):
    """DeLong 1988 as written: placement values by comparing every positive with every
    negative (O(m n)), their covariances, z."""
    pos, neg = targets.astype(bool), ~targets.astype(bool)

    def psi(x, y):
        return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])

    comps = []
    for s in (a, b):
        kernel = psi(s[pos], s[neg])
        comps.append((kernel.mean(), kernel.mean(axis=1), kernel.mean(axis=0)))
    s10 = np.cov([comps[0][1], comps[1][1]])
    s01 = np.cov([comps[0][2], comps[1][2]])
    cov = s10 / pos.sum() + s01 / neg.sum()
    return (comps[0][0] - comps[1][0]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def test_delong_equals_its_definition_and_says_nothing_of_identical_models():
    rng = np.random.default_rng(5)
    targets = rng.random(400) < 0.3
    a = np.round(rng.random(400) + 0.5 * targets, 1)  # ties
    b = np.round(a + rng.normal(0, 0.3, 400), 1)
    result = delong_test(targets, a, b)
    assert result.z == pytest.approx(_delong_by_definition(targets, a, b), rel=1e-9)
    assert result.auc_a == pytest.approx(roc_auc_score(targets, a))
    assert 0 < result.p_value < 1
    same = delong_test(targets, a, a)
    assert same.z == 0 and same.p_value == 1
    with pytest.raises(ValueError, match="two positive"):
        delong_test(np.array([1, 0, 0]), np.arange(3.0), np.arange(3.0))


def test_calibration_error_tells_calibrated_from_overconfident():
    rng = np.random.default_rng(7)
    p = rng.random(50_000)
    y = rng.random(50_000) < p  # calibrated by construction
    assert expected_calibration_error(y, p) < 0.01
    overconfident = np.where(p > 0.5, 1 - (1 - p) / 4, p / 4)
    assert expected_calibration_error(y, overconfident) > 0.1
    table = reliability(y, p)
    assert table["images"].sum() == 50_000 and len(table) == 10
    np.testing.assert_allclose(table["observed"], table["predicted"], atol=0.02)


def test_thresholds_chosen_on_one_split_and_scored_on_another():
    rng = np.random.default_rng(9)
    y = rng.random(4000) < 0.2
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.15), 0, 1)
    youden = choose_threshold(y, p, "youden")
    assert 0.4 < youden < 0.6  # the two classes' normals cross at 0.5
    strict = choose_threshold(y, p, "specificity", specificity=0.95)
    assert operating_point(y, p, strict)["specificity"] >= 0.95
    assert strict > youden
    assert np.isnan(choose_threshold(np.zeros(5, bool), np.arange(5.0)))
    point = operating_point(np.array([1, 1, 0, 0, 0], bool), np.array([0.9, 0.2, 0.8, 0.1, 0.0]),
                            0.5)
    assert point == {"threshold": 0.5, "sensitivity": 0.5, "specificity": 2 / 3, "ppv": 0.5,
                     "npv": 2 / 3}


def test_subgroups_and_underdiagnosis():
    rows = pd.DataFrame({"sex": ["M", "F", "M", "F"], "age": [19, 20, 79, 80],
                         "view": ["PA", "AP", "PA", "PA"]})
    masks = subgroup_masks(rows)
    assert masks["all"].all()
    assert masks["age 0-19"].tolist() == [True, False, False, False]
    assert masks["age 20-39"].tolist() == [False, True, False, False]
    assert masks["age 60-79"].tolist() == [False, False, True, False]
    assert masks["age 80+"].tolist() == [False, False, False, True]
    assert "age 40-59" not in masks  # nobody in it
    assert masks["view AP"].tolist() == [False, True, False, False]
    targets = np.array([[1, 0], [0, 1], [0, 0], [1, 1]], bool)
    probabilities = np.array([[0.9, 0.1], [0.2, 0.3], [0.9, 0.9], [0.1, 0.1]])
    # With findings: rows 0, 1 and 3; row 1 and row 3 reach no threshold: 2 of 3.
    assert underdiagnosis_rate(targets, probabilities, np.array([0.5, 0.5])) == pytest.approx(2 / 3)
    assert underdiagnosis_rate(targets, probabilities, np.array([0.5, np.nan])) == pytest.approx(2 / 3)
    assert np.isnan(underdiagnosis_rate(targets[[2]], probabilities[[2]], np.array([0.5, 0.5])))


GOOGLE_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                 "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
                 "Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id")


def test_expert_labels_read_in_googles_format(tmp_path):
    """The header's bracketed names split by their commas (16 fields on every line), CRLF
    line ends, gzip; YES/NO and test/validation."""
    import gzip

    from cxrdask.archive.expert_labels import nih_composite, read_expert_labels
    from cxrdask.archive.labels import LABEL_POSITION

    text = (GOOGLE_HEADER + "\r\n"
            "00000003_000.png,Pneumothorax,0,3,45,F,PA,2500,2048,0.143,0.143,NO,YES,NO,NO,test\r\n"
            "00000002_000.png,No Finding,0,2,12,F,AP,2500,2048,0.1,0.1,NO,NO,YES,yes,validation\r\n")
    path = tmp_path / "google2019_nih-chest-xray-labels.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    labels = read_expert_labels(str(path))
    assert labels["image_index"].tolist() == ["00000003_000.png", "00000002_000.png"]
    assert labels["Pneumothorax"].tolist() == [True, False]
    assert labels["Nodule or mass"].tolist() == [False, True]
    assert labels["set_id"].tolist() == ["test", "val"]  # "validation" (older synthetic files) reads as "val"
    nih = np.zeros((2, 14))
    nih[0, LABEL_POSITION["Mass"]] = 1
    nih[1, LABEL_POSITION["Pneumonia"]] = 1
    assert nih_composite(nih, "Nodule or mass").tolist() == [1, 0]
    assert nih_composite(nih, "Airspace opacity").tolist() == [0, 1]


def test_bad_expert_label_files_are_refused_naming_the_row(tmp_path):
    from cxrdask.archive.expert_labels import read_expert_labels
    from cxrdask.errors import MetadataError, MissingColumnError

    bad = tmp_path / "bad.csv"
    bad.write_text(GOOGLE_HEADER + "\n"
                   "a.png,No Finding,0,1,40,M,PA,1,1,0.1,0.1,NO,NO,NO,NO,test\n"
                   "b.png,No Finding,0,1,40,M,PA,1,1,0.1,0.1,NO,MAYBE,NO,NO,test\n"
                   "a.png,No Finding,0,1,40,M,PA,1,1,0.1,0.1,NO,NO,NO,NO,train\n")
    with pytest.raises(MetadataError) as caught:
        read_expert_labels(str(bad))
    message = str(caught.value)
    assert "bad.csv" in message and "line 3 (image 'b.png'), column 'Pneumothorax'" in message
    assert "line 4 (image 'a.png'), column 'Set Id'" in message and "listed twice" in message
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("Image Index,Finding Labels\na.png,No Finding\n")
    with pytest.raises(MissingColumnError, match=r"'Fracture'.*missing"):
        read_expert_labels(str(wrong))


def test_nih_box_file_read_with_its_quirks(tmp_path):
    """Header ``Bbox [x,y,w,h],,,`` (the bracketed name split in four, empty columns after),
    ``Infiltrate`` for Infiltration, rows with or without trailing empty fields."""
    from cxrdask.archive.boxes import read_boxes

    path = tmp_path / "BBox_List_2017.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "00013118_008.png,Atelectasis,225.084745762712,547.019216763771,"
                    "86.7796610169491,79.1864406779661,,,\n"
                    "00014716_007.png,Infiltrate,686.5,301.0,200.5,305.0\n"
                    "00029817_009.png,Mass,10,20,30,40,,\n")
    boxes = read_boxes(str(path))
    assert boxes["finding"].tolist() == ["Atelectasis", "Infiltration", "Mass"]
    assert boxes.loc[0, ["x", "y", "w", "h"]].tolist() == pytest.approx(
        [225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661])


def test_bad_box_files_are_refused_naming_the_row(tmp_path):
    from cxrdask.archive.boxes import read_boxes
    from cxrdask.errors import MetadataError, MissingColumnError

    path = tmp_path / "boxes.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "a.png,Hernia,1,2,3,4,,\n"
                    "b.png,Mass,1,2,wide,4,,\n"
                    "c.png,Nodule,1,2,0,4,,\n")
    with pytest.raises(MetadataError) as caught:
        read_boxes(str(path))
    message = str(caught.value)
    assert "line 2 (image 'a.png'), column 'Finding Label'" in message
    assert "line 3 (image 'b.png')" in message and "not four numbers" in message
    assert "line 4 (image 'c.png')" in message and "positive width" in message
    other = tmp_path / "other.csv"
    other.write_text("Image Index,Finding Labels\n")
    with pytest.raises(MissingColumnError, match="not NIH's box list"):
        read_boxes(str(other))


def test_overlaps_and_boxes_from_heatmaps():
    from cxrdask.archive.boxes import box_from_heatmap, iobb, iou

    truth = np.array([[0.0, 0.0, 10.0, 10.0]] * 3)
    drawn = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 10.0, 10.0], [2.0, 2.0, 4.0, 4.0]])
    np.testing.assert_allclose(iou(drawn, truth), [1.0, 50 / 150, 16 / 100])
    np.testing.assert_allclose(iobb(drawn, truth), [1.0, 0.5, 1.0])  # over the drawn box
    cam = np.zeros((8, 8), np.float32)
    cam[2:4, 5:7] = 1.0  # hot cells: columns 5-6, rows 2-3 of an 8 x 8 grid
    cam[7, 0] = 0.4  # a weaker spot far away is not boxed
    x, y, w, h = box_from_heatmap(cam, 800, 800)
    assert 440 <= x <= 520 and 160 <= y <= 240 and 180 <= w <= 280 and 180 <= h <= 280


def test_boxes_from_maps_that_know_the_sign_localise_and_others_do_not(tmp_path):
    """The synthetic archive's box file is where each sign was drawn: a map made from the
    sign itself (the image with it less the image without it, pooled to a 7 x 7 grid like
    Grad-CAM's), boxed and scored like Grad-CAM's maps, localises; the same maps paired with
    other images (the control) do not."""
    from cxrdask.archive.boxes import BOX_IMAGE_SIZE, box_from_heatmap, read_boxes
    from cxrdask.archive.findings import label_matrix
    from cxrdask.archive.labels import LABEL_POSITION
    from cxrdask.archive.synthetic import make_archive, make_metadata, render_image
    from cxrdask.evaluation.localisation import _score

    n, size, seed = 600, 128, 4
    archive = make_archive(str(tmp_path / "a"), n=n, size=size, seed=seed, prevalence="balanced",
                           threads=2)
    boxes = read_boxes(f"{archive.root}/BBox_List_2017.csv")
    frame = make_metadata(n, seed=seed, prevalence="balanced")
    labels = label_matrix(frame)
    position = {name: i for i, name in enumerate(frame["image_index"])}
    drawn = []
    for row in boxes.itertuples():
        i = position[row.image_index]
        without = labels[i].copy()
        without[LABEL_POSITION[row.finding]] = 0
        sign = np.abs(render_image(labels[i], size, seed=(seed, 7, i)).astype(np.float32)
                      - render_image(without, size, seed=(seed, 7, i)).astype(np.float32))
        cells = sign[: size // 7 * 7, : size // 7 * 7].reshape(7, size // 7, 7, size // 7).mean(axis=(1, 3))
        x, y, w, h = box_from_heatmap(cells / max(cells.max(), 1e-6), size, size)
        scale = BOX_IMAGE_SIZE / size
        drawn.append((row.image_index, row.finding, x * scale, y * scale, w * scale, h * scale))
    found = _score(boxes, drawn, len(boxes), boxes["image_index"].nunique(), seed=0)
    assert len(boxes) >= 60 and set(boxes["finding"]) == set(found.accuracy["finding"])
    assert found.mean_accuracy("iobb", 0.5) > found.mean_accuracy("iobb", 0.5, "control")
    # Signs drawn at the same place on every image (the heart, both lungs) are found by any
    # map; those that move between images (side, height) tell a knowing map from the rest.
    moving = found.boxes[found.boxes["finding"].isin(
        ["Atelectasis", "Mass", "Pneumonia", "Pneumothorax"])]
    assert len(moving) >= 30
    assert (moving["iobb"] > 0.5).mean() > (moving["control_iobb"] > 0.5).mean() + 0.3
    assert (moving["iou"] > 0.3).mean() > (moving["control_iou"] > 0.3).mean() + 0.3
