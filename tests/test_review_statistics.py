"""What a statistician reviewing a paper built on cxrdask rejected, each reproduced and fixed:
the real expert-label file refused, under-diagnosis of 100% without thresholds, a
specificity rule that missed the lowest qualifying threshold, NaN scores ranked silently,
fractional bootstrap weights rounded, non-square images' boxes scaled by the width."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from cxrdask.archive.labels import LABELS
from cxrdask.errors import ScoreError

# Google's 2019 expert labels as published: NIH's 2020 metadata columns with the bracketed
# names split by their commas, the four findings, Set Id ``test`` or ``val``, CRLF line
# ends, and no line end after the last line.
GOOGLE_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                 "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
                 "Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id")
GOOGLE_ROWS = ("00000003_000.png,Pneumothorax,0,3,45,F,PA,2500,2048,0.143,0.143,NO,YES,NO,NO,test",
               "00000002_000.png,No Finding,0,2,12,F,AP,2500,2048,0.1,0.1,NO,NO,YES,YES,val")


def test_the_published_expert_label_file_is_read_as_published(tmp_path):
    """The real file was refused: ``column 'Set Id': expected test or validation (value
    'val') ... and 2394 more``."""
    from cxrdask.archive.expert_labels import read_expert_labels

    data = ("\r\n".join([GOOGLE_HEADER, *GOOGLE_ROWS])).encode()
    assert data.count(b"\r\n") == 2 and not data.endswith(b"\n")
    path = tmp_path / "google2019_nih-chest-xray-labels.csv.gz"
    path.write_bytes(gzip.compress(data))
    labels = read_expert_labels(str(path))
    assert labels["set_id"].tolist() == ["test", "val"]
    assert labels["Nodule or mass"].tolist() == [False, True]
    assert labels["image_index"].tolist()[-1] == "00000002_000.png"  # the last line, no line end

    older = tmp_path / "older.csv"  # what cxrdask's synthetic archives wrote before
    older.write_text(GOOGLE_HEADER + "\n" + GOOGLE_ROWS[1].replace(",val", ",validation") + "\n")
    assert read_expert_labels(str(older))["set_id"].tolist() == ["val"]


def test_the_synthetic_archive_writes_the_expert_file_as_published():
    from cxrdask.archive.synthetic.expert import format_expert_labels
    from cxrdask.archive.synthetic.layout import make_metadata

    frame = make_metadata(3000, seed=2)
    text = format_expert_labels(frame, set(frame["image_index"][:1500]), seed=2)
    lines = text.split("\r\n")
    assert "\n" not in text.replace("\r\n", "") and not text.endswith("\n")
    assert lines[0] == GOOGLE_HEADER
    assert {line.rsplit(",", 1)[1] for line in lines[1:]} == {"test", "val"}


def test_under_diagnosis_is_missing_not_total_without_thresholds():
    """``underdiagnosis_rate(ones, rand, nan)`` was 1.0: with no threshold nothing is
    called, and the report said every finding was missed."""
    from cxrdask.evaluation.audit import Scored, audit
    from cxrdask.evaluation.audit_report import audit_markdown
    from cxrdask.evaluation.subgroups import underdiagnosis_rate

    rng = np.random.default_rng(0)
    assert np.isnan(underdiagnosis_rate(np.ones((3, 14), bool), rng.random((3, 14)),
                                        np.full(14, np.nan)))
    n = 60
    targets = rng.random((n, len(LABELS))) < 0.3
    rows = pd.DataFrame({"patient_id": np.arange(n), "sex": ["M", "F"] * (n // 2),
                         "age": rng.integers(20, 80, n), "view": ["PA"] * n})
    found = audit(Scored(targets, rng.random((n, len(LABELS))), rows), None, resamples=0)
    assert found.underdiagnosis["rate"].isna().all()
    assert "Under-diagnosis is n/a: no disease has an operating threshold" in audit_markdown(found)


def _exhaustive_lowest_threshold(positive: np.ndarray, scores: np.ndarray, specificity: float
                                 ) -> float:
    """The lowest score t whose rule ``score >= t`` keeps the specificity, trying every one."""
    negatives = scores[~positive]
    for t in np.unique(scores):
        if np.mean(negatives < t) >= specificity:
            return float(t)
    return 1.0


def test_the_specificity_rule_finds_the_lowest_qualifying_threshold():
    """Against an exhaustive search over 200 seeded cases (n = 400, half with probabilities
    rounded to 2 decimals), roc_curve's thinned curve chose another threshold in 58."""
    from cxrdask.evaluation.calibration import choose_threshold, operating_point

    for seed in range(200):
        rng = np.random.default_rng(seed)
        positive = rng.random(400) < 0.3
        scores = np.clip(rng.normal(0.45 + 0.15 * positive, 0.2), 0, 0.999)
        if seed % 2:
            scores = np.round(scores, 2)
        chosen = choose_threshold(positive, scores, "specificity", specificity=0.9)
        expected = _exhaustive_lowest_threshold(positive, scores, 0.9)
        assert chosen == pytest.approx(expected), seed
        ours = operating_point(positive, scores, chosen)
        assert ours["specificity"] >= 0.9
        assert ours["sensitivity"] == operating_point(positive, scores, expected)["sensitivity"]


def test_nan_scores_and_too_few_images_are_refused_by_name():
    from cxrdask.evaluation.delong import auc_variance, delong_test

    targets = [True, True, False, False, False]
    auc, variance = auc_variance(targets, [0.9, 0.8, 0.1, 0.2, 0.3])  # plain lists work
    assert auc == 1.0 and variance >= 0.0
    with pytest.raises(ScoreError, match=r"1 score\(s\) are NaN, at rows \[3\]"):
        auc_variance(targets, [0.9, 0.8, 0.1, np.nan, 0.3])
    with pytest.raises(ScoreError, match="at least two positive and two negative images"):
        auc_variance([True, False, False], [0.9, 0.1, 0.2])
    with pytest.raises(ScoreError, match="NaN"):
        delong_test(targets, [0.9, 0.8, 0.1, 0.2, 0.3], [np.nan, 0.8, 0.1, 0.2, 0.3])


def test_bootstrap_weights_are_whole_numbers_or_refused():
    from sklearn.metrics import roc_auc_score

    from cxrdask.evaluation.bootstrap import weighted_auc

    rng = np.random.default_rng(1)
    scores, positive = rng.random(50), rng.random(50) < 0.4
    counts = rng.integers(0, 3, (4, 50))
    np.testing.assert_allclose(weighted_auc(scores, positive, counts),
                               [roc_auc_score(positive, scores, sample_weight=w) for w in counts])
    with pytest.raises(ValueError, match="whole numbers"):
        weighted_auc(scores, positive, counts + 0.3)


def test_boxes_of_a_non_square_image_are_scaled_per_axis():
    from cxrdask.evaluation.localisation import to_box_space

    # A 512-wide, 2048-high image: x doubles, y halves, into NIH's 1024 x 1024 frame.
    assert to_box_space((100, 400, 50, 200), width=512, height=2048) == (200, 200, 100, 100)


def _clustered_case(seed: int, patients: int = 400, images: int = 8):
    """A finding that belongs to the patient: every image of a patient shares its label and
    the patient's own effects on each model's scores."""
    rng = np.random.default_rng(seed)
    label = rng.random(patients) < 0.3
    shared, own_a, own_b = (rng.normal(0, 1, patients), rng.normal(0, 0.6, patients),
                            rng.normal(0, 0.6, patients))
    patient = np.repeat(np.arange(patients), images)
    y = label[patient]
    a = 1.0 * y + shared[patient] + own_a[patient] + rng.normal(0, 0.3, len(patient))
    b = 0.9 * y + shared[patient] + own_b[patient] + rng.normal(0, 0.3, len(patient))
    return y, a, b, patient


def test_delong_accounts_for_several_images_per_patient():
    """Image-level DeLong gave an SE of the AUC difference of 0.0135 where resampling
    patients gave 0.0386: p-values far too small. Obuchowski's clustered variance must come
    within 20% of the patient bootstrap."""
    from cxrdask.evaluation.bootstrap import bootstrap_aucs
    from cxrdask.evaluation.delong import clustered_delong_test, delong_test

    y, a, b, patient = _clustered_case(seed=3)
    resampled = bootstrap_aucs(y[:, None], {"a": a[:, None], "b": b[:, None]}, patient,
                               {"all": np.ones(len(y), bool)}, n_resamples=2000, seed=0)
    bootstrap_sd = float(np.std(resampled[("a", "all")][:, 0] - resampled[("b", "all")][:, 0],
                                ddof=1))
    clustered = clustered_delong_test(y, a, b, patient)
    per_image = delong_test(y, a, b)
    assert abs(clustered.se_difference / bootstrap_sd - 1) < 0.2, (clustered, bootstrap_sd)
    assert per_image.se_difference < 0.6 * bootstrap_sd  # what the image-level test claimed
    assert clustered.difference == per_image.difference  # the same AUCs, another variance


def test_clustered_delong_with_one_image_per_patient_is_delongs():
    from cxrdask.evaluation.delong import clustered_delong_test, delong_test

    rng = np.random.default_rng(5)
    y = rng.random(300) < 0.4
    a, b = y + rng.normal(0, 1, 300), 0.8 * y + rng.normal(0, 1, 300)
    ours, theirs = clustered_delong_test(y, a, b, np.arange(300)), delong_test(y, a, b)
    assert ours.se_difference == pytest.approx(theirs.se_difference, rel=0.01)
    with pytest.raises(ScoreError, match="at least two clusters"):
        clustered_delong_test(y, a, b, np.zeros(300))


def test_the_comparison_says_its_variance_and_adjusts_its_p_values():
    from scipy.stats import false_discovery_control

    from cxrdask.evaluation.audit import Scored, adjusted_p_values, audit
    from cxrdask.evaluation.audit_report import audit_markdown

    p = np.array([0.001, 0.04, np.nan, 0.03, 0.5])
    adjusted = adjusted_p_values(p)
    assert np.isnan(adjusted[2])
    np.testing.assert_allclose(adjusted[[0, 1, 3, 4]], false_discovery_control(p[[0, 1, 3, 4]]))
    assert (adjusted[[0, 1, 3, 4]] >= p[[0, 1, 3, 4]]).all()

    rng = np.random.default_rng(2)
    n = 160
    targets = rng.random((n, len(LABELS))) < 0.3
    rows = pd.DataFrame({"patient_id": np.repeat(np.arange(40), 4), "sex": ["M", "F"] * (n // 2),
                         "age": rng.integers(20, 80, n), "view": ["PA"] * n})
    scores = targets + rng.normal(0, 1, targets.shape)
    found = audit(Scored(targets, scores, rows), None, other=scores + rng.normal(0, 1, scores.shape),
                  resamples=0)
    assert (found.comparison["delong_variance"] == "clustered by patient (Obuchowski 1997)").all()
    assert found.comparison["delong_p_adjusted"].notna().all()
    text = audit_markdown(found, "other.pt")
    assert "clustered by patient (Obuchowski 1997)" in text and "| p (BH) |" in text


def _men_perfect_women_guessed(ages: bool):
    """400 images, one a patient: the head ranks every finding right on men and guesses on
    women. Ages all 50, or spread over 20-79."""
    rng = np.random.default_rng(4)
    n = 400
    sex = np.array(["M", "F"] * (n // 2))
    targets = rng.random((n, len(LABELS))) < 0.4
    scores = np.where((sex == "M")[:, None], targets + rng.random((n, len(LABELS))) * 0.5,
                      rng.random((n, len(LABELS))))
    rows = pd.DataFrame({"patient_id": np.arange(n), "sex": sex,
                         "age": rng.integers(20, 80, n) if ages else np.full(n, 50),
                         "view": ["PA"] * n})
    return targets, scores, rows, sex


def test_a_subgroup_is_compared_with_the_rest_of_the_split():
    """The gap was measured against the whole split, which contains the subgroup: a head
    perfect on men and guessing on women showed men 0.25 ahead instead of 0.5."""
    from sklearn.metrics import roc_auc_score

    from cxrdask.evaluation.audit import Scored, audit

    targets, scores, rows, sex = _men_perfect_women_guessed(ages=False)
    found = audit(Scored(targets, scores, rows), None, resamples=200)
    men = found.subgroups[(found.subgroups["subgroup"] == "sex M")].set_index("label")
    women = ~(sex == "M")
    expected = 1.0 - roc_auc_score(targets[women, 0], scores[women, 0])
    assert men.at[LABELS[0], "gap"] == pytest.approx(expected)
    assert men.at["mean", "gap"] > 0.4 and men.at["mean", "gap_low"] > 0.3


def test_resamples_without_a_positive_are_counted_and_reported():
    """With five positives, a few of 2,000 patient resamples hold none: they were dropped
    from the interval without a word."""
    from cxrdask.evaluation.audit import Scored, audit
    from cxrdask.evaluation.audit_report import audit_markdown

    rng = np.random.default_rng(7)
    n = 120
    targets = rng.random((n, len(LABELS))) < 0.3
    targets[:, 0] = False
    targets[rng.choice(n, 5, replace=False), 0] = True  # Atelectasis: five positives
    rows = pd.DataFrame({"patient_id": np.arange(n), "sex": ["M", "F"] * (n // 2),
                         "age": rng.integers(20, 80, n), "view": ["PA"] * n})
    found = audit(Scored(targets, rng.random((n, len(LABELS))), rows), None, resamples=2000)
    used = found.auc.set_index("label")["resamples_used"]
    # P(no positive among n draws) = (1 - 5/n)**n, about 0.6% of resamples.
    assert 1980 <= used[LABELS[0]] < 2000 and (used.drop(LABELS[0]) == 2000).all()
    text = audit_markdown(found)
    assert f"these used fewer: {LABELS[0]} {used[LABELS[0]]}" in text
    assert "not stratified by class" in text


def test_stratified_resamples_keep_both_classes_of_every_finding_and_say_so():
    """pROC's default: resamples drawn within each class (here: within the patients with
    and without a positive image), so a rare finding's interval uses every resample."""
    from cxrdask.evaluation.audit import Scored, audit
    from cxrdask.evaluation.audit_report import audit_markdown
    from cxrdask.evaluation.bootstrap import stratified_patient_weights

    rng = np.random.default_rng(7)
    n = 120
    patients = np.repeat(np.arange(n // 3), 3)  # three images a patient
    positive = np.zeros(n, bool)
    positive[[0, 1, 30, 61, 99]] = True  # five positive images of four patients
    for weights in stratified_patient_weights(patients, positive, 500, seed=3):
        assert (weights @ positive > 0).all() and (weights @ ~positive > 0).all()
        assert (weights.sum(axis=1) == n).all()  # as many patients drawn as there are
        per_patient = weights[:, ::3]
        assert (per_patient[:, [0, 10, 20, 33]].sum(axis=1) == 4).all()  # the positive stratum
    targets = rng.random((n, len(LABELS))) < 0.3
    targets[:, 0] = positive
    rows = pd.DataFrame({"patient_id": patients, "sex": ["M", "F"] * (n // 2),
                         "age": rng.integers(20, 80, n), "view": ["PA"] * n})
    found = audit(Scored(targets, rng.random((n, len(LABELS))), rows), None, resamples=400,
                  stratified=True)
    assert (found.auc["resamples_used"] == 400).all() and found.stratified
    assert "stratified, as pROC's default" in audit_markdown(found)


def test_ece_and_under_diagnosis_have_patient_bootstrap_intervals():
    """The weighted statistics equal the plain ones on the resampled rows, and the report
    gives each its interval."""
    from cxrdask.evaluation.audit import Scored, audit
    from cxrdask.evaluation.calibration import expected_calibration_error, resampled_ece
    from cxrdask.evaluation.subgroups import resampled_underdiagnosis, underdiagnosis_rate

    rng = np.random.default_rng(9)
    n = 300
    targets = rng.random((n, len(LABELS))) < 0.3
    scores = np.clip(targets * 0.3 + rng.random((n, len(LABELS))) * 0.7, 0, 1)
    counts = rng.integers(0, 3, size=(2, n)).astype(np.float32)  # two resamples' counts
    thresholds = np.full(len(LABELS), 0.6)
    for weights in counts:
        rows = np.repeat(np.arange(n), weights.astype(int))  # the resample, written out
        assert resampled_ece(targets[:, 0], scores[:, 0], weights[None])[0] == pytest.approx(
            expected_calibration_error(targets[rows, 0], scores[rows, 0]))
        assert resampled_underdiagnosis(targets, scores, thresholds, weights[None])[0] == \
            pytest.approx(underdiagnosis_rate(targets[rows], scores[rows], thresholds))
    frame = pd.DataFrame({"patient_id": np.arange(n), "sex": ["M", "F"] * (n // 2),
                          "age": rng.integers(20, 80, n), "view": ["PA"] * n})
    validation = Scored(targets, np.clip(scores + 0.3, 0, 1), frame)  # thresholds set high
    found = audit(Scored(targets, scores, frame), validation, resamples=300)
    ece = found.calibration
    assert ((ece["ece_low"] <= ece["ece"]) & (ece["ece"] <= ece["ece_high"])).all()
    rate = found.underdiagnosis.set_index("subgroup").loc["all"]
    assert 0 < rate["rate_low"] <= rate["rate"] <= rate["rate_high"] < 1


def test_subgroup_gaps_have_bootstrap_p_values_adjusted_for_their_number():
    from cxrdask.evaluation.audit import Scored, audit
    from cxrdask.evaluation.bootstrap import bootstrap_p_value

    assert bootstrap_p_value(np.full(99, 0.1)) == pytest.approx(2 / 100)  # never zero
    assert bootstrap_p_value(np.r_[np.full(50, -1.0), np.full(50, 1.0)]) == 1.0
    assert np.isnan(bootstrap_p_value(np.full(5, np.nan)))
    targets, scores, rows, _ = _men_perfect_women_guessed(ages=True)
    groups = audit(Scored(targets, scores, rows), None, resamples=200).subgroups
    men = groups[groups["subgroup"] == "sex M"].set_index("label")
    assert men.at["mean", "gap_p_adjusted"] < 0.05  # men far ahead: a real gap
    per_disease = groups[(groups["label"] != "mean") & groups["gap_p"].notna()]
    assert (per_disease["gap_p_adjusted"] >= per_disease["gap_p"] - 1e-12).all()


def test_localisation_beside_wang_says_where_the_protocol_differs():
    from cxrdask.archive.boxes import BOX_FINDINGS
    from cxrdask.evaluation.audit_report import localisation_markdown
    from cxrdask.evaluation.localisation import IOBB_THRESHOLDS, IOU_THRESHOLDS, LocalisationReport

    rows = [{"finding": f, "measure": m, "threshold": t, "accuracy": 0.5, "control": 0.2,
             "wang2017": 0.4, "boxes": 3}
            for f in BOX_FINDINGS for m, ts in (("iobb", IOBB_THRESHOLDS), ("iou", IOU_THRESHOLDS))
            for t in ts]
    report = LocalisationReport(boxes=pd.DataFrame({"finding": []}), accuracy=pd.DataFrame(rows),
                                images=3, listed=3, missing_images=0)
    text = localisation_markdown(report)
    assert "Not directly comparable with Wang et al.'s figures" in text
    assert "one box is drawn per finding and image" in text and "strictly above" in text
