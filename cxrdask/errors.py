"""Typed errors raised by cxrdask, so callers can tell bad input from bugs."""

from __future__ import annotations

from dataclasses import dataclass


class CxrDaskError(Exception):
    """Base class of every error cxrdask raises on purpose."""


@dataclass(frozen=True)
class RowProblem:
    """One bad CSV row: its line number in the file (header = line 1), column and reason."""

    line: int
    image_index: str
    column: str
    value: str
    reason: str

    def __str__(self) -> str:
        return (
            f"line {self.line} (image {self.image_index!r}), column {self.column!r}: "
            f"{self.reason} (value {self.value!r})"
        )


class OptionError(CxrDaskError, ValueError):
    """An option has a value cxrdask does not accept (an unknown preset, precision, dtype ...)."""


class MissingExtraError(CxrDaskError, ImportError):
    """A feature needs an optional dependency that is not installed; the message says which extra."""


class DeviceUnavailableError(CxrDaskError, RuntimeError):
    """A device was asked for (``cuda``) that this machine does not have."""


class LabelParseError(CxrDaskError, ValueError):
    """A label string names an unknown disease or combines "No Finding" with one."""


class MetadataError(CxrDaskError, ValueError):
    """The metadata CSV (or a split list) is unusable; ``problems`` names each bad row."""

    def __init__(self, source: str, problems: list[RowProblem] | None = None, message: str = ""):
        self.source = source
        self.problems = list(problems or [])
        if not message:
            shown = "\n  ".join(str(p) for p in self.problems[:20])
            more = len(self.problems) - 20
            tail = f"\n  ... and {more} more" if more > 0 else ""
            message = f"{source}: {len(self.problems)} bad row(s):\n  {shown}{tail}"
        super().__init__(message)


class MetadataNotFoundError(CxrDaskError, FileNotFoundError):
    """No metadata CSV where one was looked for."""


class ArchiveNotRecognisedError(MetadataNotFoundError):
    """A folder holds none of the archives cxrdask reads (the message lists what it looked for)."""


class MissingColumnError(MetadataError):
    """A required column is absent from the metadata CSV."""


class SplitError(CxrDaskError, ValueError):
    """A split cannot be made as asked (unknown method, image in no official list, ...)."""


class ImageDecodeError(CxrDaskError, ValueError):
    """One image could not be read or decoded; carries the image index and the cause."""

    def __init__(self, image_index: str, reason: str):
        self.image_index = image_index
        self.reason = reason
        super().__init__(f"image {image_index!r}: {reason}")


class StrictFailureError(ImageDecodeError):
    """With ``strict``, an image failed while the run was under way: the run stopped at once.
    Chunks finished before it (the failing one included) are kept in the store."""


class FailedRowsError(CxrDaskError, ValueError):
    """With ``strict``, the store to be resumed already holds failed rows (refused before any
    work); ``failures`` lists them: image index and reason."""

    def __init__(self, url: str, failures: list[tuple[str, str]]):
        self.url = url
        self.failures = list(failures)
        shown = "; ".join(f"{name}: {reason}" for name, reason in self.failures[:5])
        more = f"; and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
        super().__init__(
            f"strict: the store {url} holds {len(self.failures)} failed row(s) from an earlier "
            f"run ({shown}{more}); a strict run fails while it does. Fix those images and read "
            "them again (retry_failed=True, --retry-failed), or run without strict")


class ImagesNotFoundError(CxrDaskError, FileNotFoundError):
    """The images root does not exist, or holds none (or too few) of the metadata's images.

    Raised by planning, before anything is written; ``missing`` lists the image
    indices that were not found (``found`` of ``expected`` were).
    """

    def __init__(self, message: str, *, root: str = "", missing: list[str] | None = None,
                 found: int = 0, expected: int = 0):
        self.root = root
        self.missing = list(missing or [])
        self.found = found
        self.expected = expected
        super().__init__(message)


class ExtractionFailedError(CxrDaskError, RuntimeError):
    """An extraction ran, but more rows failed than allowed; ``summary`` says which and why.

    What was written is kept. Failed rows are final in a store: after fixing the archive,
    extract into a new store or with ``resume=False`` (``--overwrite``).
    """

    def __init__(self, summary, max_failed_fraction: float):
        self.summary = summary
        self.max_failed_fraction = max_failed_fraction
        failed, done = summary.store_rows_failed, summary.store_rows_done
        what = (f"every row failed ({failed} of {done})" if failed and failed == done else
                f"{failed} of {done} rows failed ({summary.failed_fraction:.1%}), above the "
                f"allowed {max_failed_fraction:.1%}")
        first = summary.failures[0] if summary.failures else None
        example = f"; first: {first[0]}: {first[1]}" if first else ""
        super().__init__(f"extraction into {summary.store_url}: {what}{example}")


class ExtractionIncompleteError(CxrDaskError, RuntimeError):
    """An extraction ran, but some images could not be read because of transient storage
    failures (resets, timeouts, 5xx) that outlasted the retries; their chunks are not done.

    Nothing is lost: run the same extraction again and it reads just those chunks.
    ``summary.retriable`` lists the rows and the last error of each.
    """

    def __init__(self, summary):
        self.summary = summary
        rows = summary.retriable
        name, reason = rows[0]
        everything = summary.rows_written == 0 and summary.rows_failed == 0
        what = ("no image could be read: is the storage reachable?" if everything else
                f"{len(rows)} image(s) could not be read for now")
        super().__init__(
            f"extraction into {summary.store_url}: {what} (e.g. {name}: {reason}). What was "
            "written is kept; run the same extraction again to read the rest")


class ImageTooLargeError(ImageDecodeError):
    """An image whose pixel count is above the limit (a possible decompression bomb)."""


class NotARadiographError(ImageDecodeError):
    """A DICOM object whose modality is not a projection radiograph's (a CT or MR slice, a
    secondary capture of a report) and was not allowed: the reason names its modality."""

    def __init__(self, image_index: str, reason: str, modality: str):
        self.modality = modality
        super().__init__(image_index, reason)


class StoreError(CxrDaskError):
    """A feature store is missing, not a cxrdask store, or cannot be used as asked."""


class WriteTargetError(StoreError, ValueError):
    """A place to write that would harm something: the image archive (or a folder inside or
    around it), a file, or a folder holding files that are not the store's own."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No feature store (or checkpoint) at the URL given."""


class StoreLockedError(StoreError):
    """Another run holds the store's writer lease."""


class CorruptChunkError(StoreError):
    """A chunk of a store fails its checksum or cannot be decoded; ``chunk`` names it."""

    def __init__(self, url: str, array: str, chunk: int | None, reason: str):
        self.url, self.array, self.chunk, self.reason = url, array, chunk, reason
        where = f"chunk {chunk} of {array!r}" if chunk is not None else f"a chunk of {array!r}"
        super().__init__(f"{url}: {where} is corrupt ({reason}); `cxrdask verify {url} --repair` "
                         "clears its marker, and a resumed extraction recomputes it")


class StoreKindError(StoreError):
    """A cxrdask store of another kind than asked for (a pixel store opened for features)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class StoreMismatchError(StoreError):
    """A store exists but was made with other settings; ``differences`` names each."""

    def __init__(self, url: str, differences: dict[str, tuple[object, object]]):
        self.url = url
        self.differences = differences
        lines = "\n  ".join(
            f"{key}: store has {old!r}, this run asks for {new!r}"
            for key, (old, new) in differences.items()
        )
        super().__init__(
            f"store {url} was made with other settings; refusing to mix them:\n  {lines}\n"
            "Write to a new store URL, or run with the store's settings."
        )


class FeatureOverflowError(CxrDaskError, ValueError):
    """Backbone outputs do not fit the store's dtype (float16 tops out at 65504)."""


class WeightsUnavailableError(CxrDaskError, RuntimeError):
    """Pretrained weights could not be loaded (offline, missing file, wrong architecture)."""


class WeightsNotFoundError(WeightsUnavailableError, FileNotFoundError):
    """A weights file that does not exist."""


class CheckpointMismatchError(CxrDaskError, ValueError):
    """A head checkpoint does not match the backbone, store or inputs it is used with."""


class CheckpointNotFoundError(CxrDaskError, FileNotFoundError):
    """No head checkpoint at the path given."""


class ScoreError(CxrDaskError, ValueError):
    """Scores an AUC statistic cannot use: NaN scores (the rows are named), or fewer than two
    positive or negative images where a variance needs them."""


class ClusterError(CxrDaskError, RuntimeError):
    """A Dask cluster could not be started or reached as asked."""


__all__ = ["ArchiveNotRecognisedError", "CheckpointMismatchError", "CheckpointNotFoundError",
           "ClusterError", "CorruptChunkError", "CxrDaskError", "DeviceUnavailableError",
           "ExtractionFailedError", "ExtractionIncompleteError", "FailedRowsError",
           "FeatureOverflowError", "ImageDecodeError", "ImageTooLargeError", "ImagesNotFoundError",
           "LabelParseError", "MetadataError", "MetadataNotFoundError", "MissingColumnError",
           "MissingExtraError", "NotARadiographError", "OptionError", "RowProblem", "ScoreError",
           "SplitError",
           "StoreError", "StoreKindError", "StoreLockedError", "StoreMismatchError",
           "StoreNotFoundError", "StrictFailureError", "WeightsNotFoundError",
           "WeightsUnavailableError", "WriteTargetError"]
