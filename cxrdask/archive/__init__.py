"""The archive: which archive a folder holds and its one table of rows, labels, splits, boxes,
expert labels, and synthetic archives. Its modules export:

- :mod:`~cxrdask.archive.kinds`: ``read_archive``, ``detect_archive`` (every kind), with one
  reader per kind: :mod:`~cxrdask.archive.kinds.nih` (``read_metadata``, ``find_metadata``),
  ``chexpert``, ``padchest``, ``vindr``, ``manifest``;
- :mod:`~cxrdask.archive.images`: ``locate_images``, ``locate_archive_images``, ``ImageLocations``;
- :mod:`~cxrdask.archive.findings`: ``harmonise``, ``DEFAULT_PATHOLOGIES``, ``MISSING``;
- :mod:`~cxrdask.archive.labels`: NIH's ``LABELS``, ``parse_labels``;
- :mod:`~cxrdask.archive.splits`: ``assign_splits`` and the split codes;
- :mod:`~cxrdask.archive.boxes`, :mod:`~cxrdask.archive.expert_labels`: NIH's boxes and
  Google's expert labels;
- :mod:`~cxrdask.archive.synthetic`: ``make_archive``, ``SyntheticSpec``.

The choices these take (archive kinds, layouts, uncertain-label policies) are
:mod:`cxrdask.choices`'.
"""
