"""Zarr stores of image rows. Its modules export: :mod:`~cxrdask.store.rows` ``RowStore`` (what
every store shares: rows in split order, chunks, status, done markers, the per-row table);
:mod:`~cxrdask.store.features` ``FeatureStore``; :mod:`~cxrdask.store.pixels` ``PixelStore``,
``open_any_store``; :mod:`~cxrdask.store.lease` ``StoreLease`` (one writer per store);
:mod:`~cxrdask.store.targets` where a store may be written."""
