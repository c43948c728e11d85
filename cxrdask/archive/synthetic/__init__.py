"""A synthetic archive in the published layout of NIH ChestX-ray14 or of another archive
(``layout=``), with learnable disease signs.

The real archive (45 GB) cannot be fetched in tests or CI, so this package writes a
stand-in, in three parts: :mod:`~cxrdask.archive.synthetic.layout` (labels, patients, the metadata
CSV in its three real variants, the official split lists), :mod:`~cxrdask.archive.synthetic.render`
(one radiograph with a visible sign per disease) and :mod:`~cxrdask.archive.synthetic.writer`
(:func:`make_archive`: the folders, the PNGs, the files, in parallel), with
:mod:`~cxrdask.archive.synthetic.spec` (:class:`SyntheticSpec`: what it looks like).
"""

from importlib import import_module
from typing import Any

# Public names, imported at first use: the spec alone (``cxrdask synth --help``) needs
# neither pandas nor the image code.
_EXPORTS = {
    **dict.fromkeys(("CSV_NAMES", "NIH_COUNTS", "CsvVariant", "Prevalence", "format_csv",
                     "make_metadata", "official_lists", "sample_labels"), "layout"),
    **dict.fromkeys(("encode_png", "render_image"), "render"),
    **dict.fromkeys(("IMAGES_PER_FOLDER", "SYNTHETIC_MARKER", "SyntheticArchive", "image_folder",
                     "make_archive", "synthetic_settings"), "writer"),
    "SyntheticSpec": "spec",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"cxrdask.archive.synthetic.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cxrdask.archive.synthetic' has no attribute {name!r}")


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
