"""Deprecated: NIH's metadata reader is :mod:`cxrdask.archive.kinds.nih` (beside the other
archives' readers) and image location is :mod:`cxrdask.archive.images`. This module keeps
the old spelling working for one release, with a ``DeprecationWarning``."""

import warnings

from cxrdask.archive.images import ImageLocations, locate_images
from cxrdask.archive.kinds.nih import (
    CSV_NAMES,
    DEFAULT_MAX_AGE,
    MetadataReport,
    find_metadata,
    parse_age,
    read_metadata,
)

warnings.warn("cxrdask.archive.metadata is deprecated: import read_metadata and find_metadata "
              "from cxrdask.archive.kinds.nih (or cxrdask), locate_images from "
              "cxrdask.archive.images", DeprecationWarning, stacklevel=2)

__all__ = ["CSV_NAMES", "DEFAULT_MAX_AGE", "ImageLocations", "MetadataReport", "find_metadata",
           "locate_images", "parse_age", "read_metadata"]
