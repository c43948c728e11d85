"""Similar cases: FAISS's exact search over a store's centred, unit-length features.

Checked against a plain NumPy computation of the same similarity (every row against every
other), not against what the index itself says.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from cxrdask.errors import OptionError
from cxrdask.store.features import FeatureStore
from cxrdask.store.neighbours import (
    build_index,
    index_url,
    neighbours,
    open_index,
)
from cxrdask.testing import make_feature_store


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("neighbours") / "store.zarr")
    make_feature_store(url, 300, feature_dim=64, chunk_rows=64, seed=4)
    return url


def _brute_force(store: FeatureStore) -> np.ndarray:
    """Every row's centred cosine similarity with every other, in NumPy."""
    features = np.asarray(store.read("features"), dtype=np.float64)
    centred = features - features.mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    return unit @ unit.T


def test_a_stored_rows_neighbours_start_with_itself_and_are_the_exact_nearest(store_url):
    store = FeatureStore.open(store_url)
    similarity = _brute_force(store)
    index = open_index(store)
    for row in (0, 1, 77, 299):
        found = neighbours(store, row, 6, index=index)
        assert found["row"].iloc[0] == row and found["similarity"].iloc[0] == 1.0
        expected = [r for r in np.argsort(-similarity[row], kind="stable") if r != row][:5]
        assert sorted(found["row"].iloc[1:]) == sorted(expected)
        np.testing.assert_allclose(found["similarity"].iloc[1:], np.sort(similarity[row][expected])[::-1],
                                   atol=2e-3)  # the index holds float16 vectors
        assert (np.diff(found["similarity"].to_numpy()) <= 1e-6).all()
        assert found.attrs["query_in_store"] == row
    name = store.read("image_index")[77]
    assert neighbours(store, str(name), 3, index=index)["row"].tolist()[0] == 77


def test_a_vector_query_says_whether_it_is_in_the_store(store_url):
    store = FeatureStore.open(store_url)
    vector = np.asarray(store.read("features")[12], dtype=np.float32)
    found = neighbours(store, vector + np.float32(1e-3), 3)
    assert found["row"].iloc[0] == 12 and found.attrs["query_in_store"] == 12
    far = neighbours(store, np.random.default_rng(0).random(64, dtype=np.float32) * 5, 3)
    assert far.attrs["query_in_store"] is None
    labels = store.read("labels")[found["row"].to_numpy()]
    assert all((f == "No Finding") == (lab == 0).all() for f, lab in zip(found["findings"], labels,
                                                                         strict=True))


def test_the_index_is_kept_beside_the_store_and_built_again_when_the_store_changes(store_url,
                                                                               tmp_path):
    import shutil

    copy = str(tmp_path / "copy.zarr")
    shutil.copytree(store_url, copy)
    built = build_index(copy)
    assert built.seconds > 0 and (tmp_path / "copy.zarr.neighbours" / "index.json").exists()
    assert index_url(FeatureStore.open(copy)).endswith("copy.zarr.neighbours")
    kept = open_index(copy)
    assert kept.seconds == 0 and len(kept.rows) == 300  # read, not built
    store = FeatureStore.open(copy, mode="r+")
    store.forget_chunks([1])  # the store changed: a chunk is to be computed again
    again = open_index(copy)
    assert again.seconds > 0 and again.state["done_chunks"] == store.n_chunks - 1


def test_the_index_builds_on_a_dask_worker(store_url, tmp_path, cluster_client):
    import shutil

    copy = str(tmp_path / "worker.zarr")
    shutil.copytree(store_url, copy)
    index = open_index(copy, client=cluster_client)
    assert len(index.rows) == 300 and (tmp_path / "worker.zarr.neighbours" / "index.faiss").exists()
    assert neighbours(copy, 5, 2, index=index)["row"].iloc[0] == 5


def test_bad_queries_are_refused_by_name(store_url):
    with pytest.raises(OptionError, match="not an image of"):
        neighbours(store_url, "nope.png")
    with pytest.raises(OptionError, match="row 300 is not a row"):
        neighbours(store_url, 300)
    with pytest.raises(OptionError, match="at least 1"):
        neighbours(store_url, 0, 0)
    with pytest.raises(OptionError, match="a query vector of 3 values"):
        neighbours(store_url, np.ones(3, np.float32))
