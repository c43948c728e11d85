"""Where an archive's images are: one listing of its tree, each image's URL by image index.

NIH's images are found by their folder (``images/`` or Kaggle's ``images_###/images/``,
:func:`locate_images`); every other kind's table says where each image is
(:func:`locate_archive_images`). Either lists the tree once (``fs.find``), which stays fast
for 112,120 objects on S3.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cxrdask._fs import StorageOptions, filesystem, find_files, full_url
from cxrdask.errors import ImageDecodeError, ImagesNotFoundError
from cxrdask.options import storage_options_by_keyword

if TYPE_CHECKING:
    import pandas as pd

_NIH_IMAGE_FOLDER = re.compile(r"^(?:images|images_\d{3}/images)$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ImageLocations:
    """Where each image lives: ``urls`` by image index, plus what is missing or doubled."""

    root: str
    urls: dict[str, str]
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.urls)

    def urls_for(self, image_indices) -> list[str]:
        """URLs in the order asked; raises ``KeyError`` naming the first absent image."""
        try:
            return [self.urls[name] for name in image_indices]
        except KeyError as exc:
            raise KeyError(f"image {exc.args[0]!r} is not under {self.root}") from None


@storage_options_by_keyword(position=1)
def locate_images(
    root: str,
    *,
    storage_options: StorageOptions | None = None,
    expected=None,
) -> ImageLocations:
    """Map each image index to its URL under ``root/images/`` or ``root/images_###/images/``.

    The tree is listed once (``fs.find``), which stays fast for 112,120 objects on S3.

    Parameters
    ----------
    root
        The archive's root folder or URL.
    storage_options
        fsspec options.
    expected
        Image indices (e.g. the metadata's) to report as ``missing`` when absent.

    Returns
    -------
    ImageLocations
        ``urls`` by image index, ``missing`` and ``duplicates``.
    """
    urls: dict[str, str] = {}
    duplicates: list[str] = []
    image_folders: dict[str, bool] = {}  # a few hundred folders hold a million images
    for relative, url in sorted(listed_tree(root, storage_options)):
        folder, _, name = relative.rpartition("/")
        if folder not in image_folders:
            image_folders[folder] = bool(_NIH_IMAGE_FOLDER.match(folder))
        if not image_folders[folder] or not name.lower().endswith(_IMAGE_SUFFIXES):
            continue
        if name in urls:
            duplicates.append(name)
            continue
        urls[name] = url
    if expected is not None:  # a Series' own tolist: iterating one costs a call a name
        expected = expected.tolist() if hasattr(expected, "tolist") else list(expected)
    missing = [] if expected is None else [n for n in expected if n not in urls]
    return ImageLocations(root=root, urls=urls, missing=missing, duplicates=duplicates)


def listed_tree(root: str, storage_options: StorageOptions | None = None
                ) -> Iterator[tuple[str, str]]:
    """Every file under ``root`` as (its path relative to ``root``, its full URL), from one
    listing."""
    fs, base = filesystem(root, storage_options)
    base = base.rstrip("/")
    for path in find_files(fs, base):
        relative = path[len(base) + 1:] if path.startswith(base + "/") else path
        yield relative, full_url(fs, path)


def locate_archive_images(frame: pd.DataFrame, root: str,
                          storage_options: StorageOptions | None = None) -> ImageLocations:
    """Each row's image URL (by ``image_index``) from its ``path`` under ``root``, with one
    listing of the tree. Non-NIH kinds only (NIH's images are found by :func:`locate_images`).

    The table's paths are relative to the folder its archive was published in; ``root`` may
    be that folder or one above it (the folder that holds ``CheXpert-v1.0-small/``, a
    download's parent of MIMIC-CXR-JPG's ``files/``): the folders between are found from
    the listing, once, and put before every path. A file found one level off (a flat folder
    where the archive nests them, as PadChest's copies differ) is matched by its name when
    that name is unique.
    """
    by_path: dict[str, str] = {}
    by_name: dict[str, str | None] = {}
    for relative, url in listed_tree(root, storage_options):
        by_path[relative] = url
        name = relative.rsplit("/", 1)[-1]
        by_name[name] = None if name in by_name else url
    paths = [str(relative).lstrip("/") for relative in frame["path"]]
    prefix = _folders_above(paths, by_path)
    urls: dict[str, str] = {}
    missing: list[str] = []
    for index, relative in zip(frame["image_index"], paths, strict=True):
        found = (by_path.get(prefix + relative) or by_path.get(relative)
                 or by_name.get(relative.rsplit("/", 1)[-1]))
        if found is None:
            missing.append(index)
        else:
            urls[index] = found
    return ImageLocations(root=root, urls=urls, missing=missing)


def _folders_above(paths: list[str], listed: dict[str, str], sample: int = 32) -> str:
    """The folders between the listed root and the folder the table's ``paths`` are relative
    to (``"CheXpert-v1.0-small/"``), or ``""`` where the paths are found as they are. Read
    from the first ``sample`` paths: the listed file that ends with one of them, path part by
    path part, gives the prefix; one pass over the listing."""
    wanted = [p for p in paths[:sample] if p]
    if not wanted or any(p in listed for p in wanted):
        return ""
    by_name = {p.rsplit("/", 1)[-1]: p for p in wanted}
    for relative in listed:
        path = by_name.get(relative.rsplit("/", 1)[-1])
        if path is not None and relative.endswith("/" + path):
            return relative[:len(relative) - len(path)]
    return ""


def check_images_found(located: ImageLocations, expected: int, source: str, strict: bool,
                       max_failed_fraction: float, by_path: bool = False) -> None:
    """Refuse, before any work, a run whose images are not where its table says: none found
    (a wrong root, named with where it looked), any missing under ``strict``, or more missing
    than ``max_failed_fraction``; fewer become failed rows. ``by_path``: the table gives
    each image's path (every kind but NIH's), which the message then says it looked for."""
    missing = located.missing
    found = expected - len(missing)
    details: dict[str, Any] = dict(root=located.root, missing=missing, found=found, expected=expected)
    if not missing:
        return
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    if found == 0:
        raise ImagesNotFoundError(
            f"none of the {expected} images named in {source} is under {located.root} (looked "
            + ("for each row's path there and in the folders below it" if by_path else
               f"for {located.root}/images/*.png and {located.root}/images_###/images/*.png")
            + f"; e.g. {shown}); is --images the archive's root folder?", **details)
    if strict:
        raise ImageDecodeError(missing[0], f"file not found under {located.root} "
                               f"({len(missing)} of {expected} images missing: {shown})")
    if len(missing) / expected > max_failed_fraction:
        raise ImagesNotFoundError(
            f"{len(missing)} of the {expected} images named in {source} are not under "
            f"{located.root} ({len(missing) / expected:.1%}, above the allowed "
            f"{max_failed_fraction:.1%}; e.g. {shown}). Complete the archive, or allow more "
            "failed rows (max_failed_fraction=, --max-failed-fraction)", **details)


__all__ = ["ImageLocations", "check_images_found", "listed_tree", "locate_archive_images",
           "locate_images"]
