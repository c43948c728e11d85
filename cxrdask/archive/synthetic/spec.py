"""What a synthetic archive looks like: :class:`SyntheticSpec`, recorded in its marker file.

Light (no pandas, no images), so ``cxrdask synth --help`` reads its options from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrdask.choices import CsvVariant, Layout, Prevalence
from cxrdask.options import Options, option


@dataclass(frozen=True)
class SyntheticSpec(Options):
    """What a synthetic archive looks like (recorded in its marker file).

    Attributes
    ----------
    size : int
        Image side in pixels (the real archive's is 1024).
    seed : int
        Seed of labels, patients and pixels (the same seed gives the same bytes).
    strength : float
        Disease sign strength (1: clearly visible).
    prevalence : str
        ``"nih"`` (NIH's label frequencies) or ``"balanced"`` (every disease alike).
    csv_variant : str
        Which real metadata file to imitate (NIH layout).
    layout : str
        Whose archive to imitate: ``nih`` (ChestX-ray14, Kaggle's folders), ``chexpert``,
        ``mimic-cxr-jpg``, ``padchest``, ``vindr-cxr`` or ``rsna-pneumonia``, each in its
        published folders, image format and label files.
    copies_of, copies : str, int
        Make the first ``copies`` images the images of the synthetic NIH archive at
        ``copies_of`` (in file-name order), re-encoded as this layout's files hold them and
        brought to ``size``: as RSNA Pneumonia's images are NIH's, JPEG in DICOM (quality
        90) for a DICOM layout. Overlap between archives is then there to be found.
    official : bool
        Write ``train_val_list.txt``, ``test_list.txt``, a stand-in for Google's expert
        labels of some of their images (``google2019_nih-chest-xray-labels.csv.gz``) and
        ``BBox_List_2017.csv``: where the signs of the eight boxed findings were drawn on
        the test list's images, in NIH's format.
    """

    OPTIONS_NAME = "synthetic archive"

    size: int = option(1024, "image side in pixels")
    seed: int = option(0, "seed of the labels, patients and pixels")
    strength: float = option(1.0, "disease sign strength")
    prevalence: Prevalence = option("nih", "label frequencies: NIH's, or every disease alike")
    csv_variant: CsvVariant = option("kaggle2017", "which real NIH metadata CSV to imitate")
    official: bool = True
    layout: Layout = option(
        "nih", "whose archive to imitate: its folders, image format and label files")
    copies_of: str = option(
        "", "a synthetic NIH archive whose images the first --copies images are, re-encoded "
            "(as RSNA Pneumonia's images are NIH's: JPEG in DICOM for a DICOM layout)")
    copies: int = option(0, "how many images are copies of --copies-of's")

    def __post_init__(self) -> None:
        from cxrdask.errors import OptionError

        self.check_choices()
        if self.copies < 0 or (self.copies and not self.copies_of):
            raise OptionError("copies is a number of images of copies_of's archive: give both "
                              f"(copies={self.copies!r}, copies_of={self.copies_of!r})")


__all__ = ["SyntheticSpec"]
