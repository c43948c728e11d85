"""Split invariants: no patient leakage, proportions, determinism, official lists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrdask.archive.splits import assign_splits, official_split, patient_split, random_split
from cxrdask.archive.synthetic import make_metadata, official_lists
from cxrdask.errors import SplitError


@pytest.fixture(scope="module")
def big_metadata():
    return make_metadata(12_000, seed=11)


def shares(codes):
    return np.bincount(codes, minlength=3) / len(codes)


def test_random_split_proportions_and_determinism(big_metadata):
    codes = random_split(len(big_metadata), seed=4)
    np.testing.assert_allclose(shares(codes), [0.7, 0.1, 0.2], atol=0.01)
    np.testing.assert_array_equal(codes, random_split(len(big_metadata), seed=4))
    assert not np.array_equal(codes, random_split(len(big_metadata), seed=5))


def test_random_split_leaks_patients_as_documented(big_metadata):
    codes = random_split(len(big_metadata), seed=4)
    per_patient = pd.Series(codes).groupby(big_metadata["patient_id"].to_numpy()).nunique()
    assert (per_patient > 1).any()


def test_patient_split_no_leak_and_proportions(big_metadata):
    codes = patient_split(big_metadata["patient_id"], seed=1)
    per_patient = pd.Series(codes).groupby(big_metadata["patient_id"].to_numpy()).nunique()
    assert (per_patient == 1).all()
    np.testing.assert_allclose(shares(codes), [0.7, 0.1, 0.2], atol=0.01)
    np.testing.assert_array_equal(codes, patient_split(big_metadata["patient_id"], seed=1))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=300), st.integers(0, 2**31))
def test_patient_split_never_leaks(images_per_patient, seed):
    patients = np.repeat(np.arange(len(images_per_patient)), images_per_patient)
    codes = patient_split(patients, seed=seed)
    assert len(codes) == len(patients)
    assert set(np.unique(codes)) <= {0, 1, 2}
    assert pd.Series(codes).groupby(patients).nunique().max() == 1


def test_official_split(big_metadata):
    train_val, test = official_lists(big_metadata, seed=2)
    codes = official_split(big_metadata["image_index"], big_metadata["patient_id"],
                           set(train_val), set(test), seed=0)
    names = big_metadata["image_index"].to_numpy()
    assert set(names[codes == 2]) == set(test)
    per_patient = pd.Series(codes).groupby(big_metadata["patient_id"].to_numpy()).nunique()
    assert (per_patient == 1).all()
    inner = codes[codes != 2]
    assert abs((inner == 1).mean() - 0.125) < 0.01


def test_official_split_refuses_images_in_no_list(big_metadata):
    with pytest.raises(SplitError, match="in neither official list"):
        official_split(big_metadata["image_index"][:5], big_metadata["patient_id"][:5],
                       set(), {"other.png"})


def test_auto_uses_official_lists_when_present(small_archive):
    from cxrdask.archive.kinds.nih import read_metadata

    frame = read_metadata(small_archive.metadata_url)
    _, spec = assign_splits(frame, "auto", archive_root=small_archive.root)
    assert spec.method == "official"
    _, spec = assign_splits(frame, "auto", archive_root=None)
    assert spec.method == "patient" and "by patient" in spec.describe()
    with pytest.raises(SplitError, match="unknown split method"):
        assign_splits(frame, "stratified")
