"""The store's per-row table is sharded (Zarr v3): a million-row store is tens of objects per
column, not thousands; stores written before, with unsharded tables, still open, resume,
verify, describe themselves and train a head. ``tests/data/store-unsharded-table.zarr`` was
written by cxrdask at commit 955ecae (``cxrdask synth arch --n 12 --size 64`` then
``cxrdask extract --images arch --store old.zarr --weights random --image-size 32
--chunk-rows 4``), before the table was sharded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from cxrdask.head.train import train_head
from cxrdask.store.features import FeatureStore
from cxrdask.store.rows import TABLE_ARRAYS, TABLE_SHARD_CHUNKS
from cxrdask.testing import make_feature_store
from tests.helpers import cxrdask, tree_digest

OLD_STORE = Path(__file__).parent / "data" / "store-unsharded-table.zarr"
TABLE = ("image", *TABLE_ARRAYS, "labels", "split")
WRITTEN_BY_TASKS = ("status", "error", "done", "features")


def _shards(url: str, name: str):
    return zarr.open_group(url, mode="r")[name].shards


def test_the_table_is_sharded_and_what_tasks_write_is_not(tmp_path):
    url = str(tmp_path / "s.zarr")
    make_feature_store(url, 3000, feature_dim=8, chunk_rows=16)
    for name in TABLE:
        assert _shards(url, name)[0] == 16 * TABLE_SHARD_CHUNKS, name
    for name in WRITTEN_BY_TASKS:  # no two tasks ever rewrite one object
        assert _shards(url, name) is None, name
    store = FeatureStore.open(url)
    assert len(list((tmp_path / "s.zarr" / "image" / "c").iterdir())) == 2  # 188 chunks
    table = store.table()
    assert len(table) == 3000 and table["image_index"].is_unique
    assert np.array_equal(store.read("split", slice(100, 140)), store.read("split")[100:140])


def test_a_store_written_before_the_table_was_sharded_still_works(tmp_path):
    assert all(_shards(str(OLD_STORE), name) is None for name in TABLE)
    cxrdask("synth", "arch", "--n", 12, "--size", 64, "--quiet", cwd=tmp_path, check=True)
    old = tmp_path / "old.zarr"
    shutil.copytree(OLD_STORE, old)
    features = FeatureStore.open(str(old)).read("features")
    resumed = cxrdask("extract", "--images", "arch", "--store", "old.zarr", "--weights", "random",
                      "--image-size", 32, "--chunk-rows", 4, "--workers", 1, cwd=tmp_path,
                      check=True)
    assert "0 run, 3 skipped as already done" in resumed.stdout
    store = FeatureStore.open(str(old))
    assert np.array_equal(store.read("features"), features)
    assert store.verify().empty
    before = tree_digest(old)
    info = cxrdask("info", "old.zarr", cwd=tmp_path, check=True)
    assert "12 ok, 0 failed" in info.stdout and tree_digest(old) == before
    result = train_head(str(old), out_dir=tmp_path / "head", epochs=1, batch_size=4,
                        progress=False, plot=False)
    assert Path(result.checkpoint).is_file()


def test_the_rows_fingerprint_is_the_one_older_stores_recorded():
    """rows_fingerprint hashes blocks of names now (one update per name took 2 s of a
    million-row resume): the digest must be what a name at a time gave, or every existing
    store would be refused as holding other rows."""
    import hashlib

    import pandas as pd

    from cxrdask.store.rows import rows_fingerprint

    def one_name_at_a_time(names) -> str:  # the recorded stores' way
        digest = hashlib.sha256()
        for name in names:
            digest.update(str(name).encode())
            digest.update(b"\n")
        return digest.hexdigest()

    names = [f"{i:08d}_{i % 7:03d}.png" for i in range(250_001)] + ["Ünïcode 画像.dcm"]
    for given in (names, pd.Series(names), pd.Series(names, dtype=object), np.array(names),
                  names[:1], [], [12, 13]):
        assert rows_fingerprint(given) == one_name_at_a_time(given)
    old = FeatureStore.open(str(OLD_STORE))
    assert rows_fingerprint(old.table(["image_index"])["image_index"]) == \
        old.provenance["rows_fingerprint"]


def test_verify_checks_each_chunks_stored_checksum_and_finds_what_a_read_refuses(tmp_path):
    """verify (and so a resume's read-back) checks the crc32c each task-written chunk ends
    with on its stored bytes, without decompressing: every damaged chunk it lists is one a
    read refuses, and an intact store lists none. A sharded table array has no such
    checksum of its own: it is decoded, as before."""
    url = tmp_path / "s.zarr"
    make_feature_store(str(url), 64, feature_dim=8, chunk_rows=8)
    store = FeatureStore.open(str(url))
    assert store.verify().empty and store.verify(("image", "labels")).empty

    def damage(key: str, change) -> None:
        path = url / key
        path.write_bytes(change(bytearray(path.read_bytes())))

    damage("features/c/1/0", lambda data: data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 1])
           + data[len(data) // 2 + 1:])
    damage("status/c/2", lambda data: data[:3])  # truncated below a checksum's 4 bytes
    damage("features/c/4/0", lambda data: data[:-1] + bytes([data[-1] ^ 0x80]))  # the checksum
    problems = FeatureStore.open(str(url)).verify()
    found = set(zip(problems["chunk"], problems["array"], problems["problem"], strict=True))
    assert found == {(1, "features", "corrupt"), (2, "status", "corrupt"), (4, "features", "corrupt")}
    for chunk, name, _ in found:
        start, stop = store.chunk_bounds(chunk)
        with pytest.raises(Exception):  # noqa: B017 - zarr's own error, whichever it raises
            zarr.open_array(str(url / name), mode="r")[start:stop]
