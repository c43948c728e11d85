"""A synthetic archive in the exact NIH ChestX-ray14 layout, with learnable disease signs.

The real archive (45 GB) cannot be fetched in tests or CI, so this package writes a
stand-in, in three parts: :mod:`~cxrdask.archive.synthetic.layout` (labels, patients, the metadata
CSV in its three real variants, the official split lists), :mod:`~cxrdask.archive.synthetic.render`
(one radiograph with a visible sign per disease) and :mod:`~cxrdask.archive.synthetic.writer`
(:func:`make_archive`: the folders, the PNGs, the files, in parallel).
"""

from cxrdask.archive.synthetic.layout import (
    CSV_NAMES,
    NIH_COUNTS,
    CsvVariant,
    Prevalence,
    format_csv,
    make_metadata,
    official_lists,
    sample_labels,
)
from cxrdask.archive.synthetic.render import encode_png, render_image
from cxrdask.archive.synthetic.writer import (
    IMAGES_PER_FOLDER,
    SYNTHETIC_MARKER,
    SyntheticArchive,
    SyntheticSpec,
    image_folder,
    make_archive,
    synthetic_settings,
)

__all__ = [
    "CSV_NAMES",
    "IMAGES_PER_FOLDER",
    "NIH_COUNTS",
    "SYNTHETIC_MARKER",
    "CsvVariant",
    "Prevalence",
    "SyntheticArchive",
    "SyntheticSpec",
    "encode_png",
    "format_csv",
    "image_folder",
    "make_archive",
    "make_metadata",
    "official_lists",
    "render_image",
    "sample_labels",
    "synthetic_settings",
]
