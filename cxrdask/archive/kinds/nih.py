"""NIH ChestX-ray14: read and validate its metadata CSV (every real variant).

Three variants exist: NIH's v2020 file, the 2017 Kaggle copy (a trailing
empty column, a few impossible ages) and Kaggle's ``sample_labels.csv`` (other column
names, ages like ``058Y``). All are read into one validated frame with the same columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, overload

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions, filesystem, join_url
from cxrdask.archive.kinds.table import each_distinct, read_csv
from cxrdask.archive.labels import LABELS, parse_labels
from cxrdask.errors import (
    ImagesNotFoundError,
    LabelParseError,
    MetadataError,
    MetadataNotFoundError,
    MissingColumnError,
    OptionError,
    RowProblem,
)
from cxrdask.options import storage_options_by_keyword

DEFAULT_MAX_AGE = 123
FIRST_DATA_LINE = 2  # the header is line 1 of the file

# Canonical column -> the names it has in the real variants.
_REQUIRED_COLUMNS = {
    "image_index": ("Image Index",),
    "finding_labels": ("Finding Labels",),
    "follow_up": ("Follow-up #",),
    "patient_id": ("Patient ID",),
    "age": ("Patient Age",),
    "sex": ("Patient Gender",),
    "view_position": ("View Position",),
}
_OPTIONAL_COLUMNS = {
    "original_width": ("OriginalImage[Width", "OriginalImageWidth"),
    "original_height": ("Height]", "OriginalImageHeight"),
    "pixel_spacing_x": ("OriginalImagePixelSpacing[x", "OriginalImagePixelSpacing_x"),
    "pixel_spacing_y": ("y]", "OriginalImagePixelSpacing_y"),
}
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
_AGE = re.compile(r"^(\d+)(?:\.0*)?\s*([YMD])?$", re.IGNORECASE)

# The metadata file's name in each variant of the archive, as the archive ships it.
CSV_NAMES = {
    "kaggle2017": "Data_Entry_2017.csv",
    "v2020": "Data_Entry_2017_v2020.csv",
    "sample_labels": "sample_labels.csv",
}


@storage_options_by_keyword(position=1)
def find_metadata(root: str, *, storage_options: StorageOptions | None = None) -> str:
    """The metadata CSV under ``root``: the first of the three real file names found there.

    Parameters
    ----------
    root
        The archive's root folder or URL.
    storage_options
        fsspec options.

    Returns
    -------
    str
        The CSV's URL.

    Raises
    ------
    ImagesNotFoundError
        ``root`` does not exist.
    MetadataNotFoundError
        No known metadata file is there.
    """
    fs, base = filesystem(root, storage_options)
    if not fs.exists(base):
        raise ImagesNotFoundError(f"the images folder {root} does not exist", root=root)
    for name in CSV_NAMES.values():
        if fs.exists(join_url(base, name)):
            return join_url(root, name)
    raise MetadataNotFoundError(f"no metadata CSV ({', '.join(CSV_NAMES.values())}) under {root}; "
                       "pass it explicitly (--metadata)")


@dataclass
class MetadataReport:
    """What reading the CSV found: the variant, rows dropped by age, rows left out as bad."""

    source: str
    variant: str
    rows_read: int
    rows_kept: int
    max_age: int
    dropped_for_age: pd.DataFrame = field(repr=False)
    problems: list[RowProblem] = field(default_factory=list)

    def summary(self) -> str:
        """One human line per fact, for the CLI and notebooks."""
        lines = [
            f"{self.source}: {self.variant} variant, {self.rows_read} rows read, "
            f"{self.rows_kept} kept",
            f"dropped {len(self.dropped_for_age)} row(s) with age > {self.max_age}"
            + (
                ": " + ", ".join(f"{r.image_index} ({r.age})" for r in
                                 self.dropped_for_age.head(10).itertuples())
                if len(self.dropped_for_age) else ""
            ),
        ]
        if self.problems:
            lines.append(f"left out {len(self.problems)} bad row(s):")
            lines += [f"  {p}" for p in self.problems[:20]]
        return "\n".join(lines)


def parse_age(text: str) -> int:
    """Age in whole years from ``"58"``, ``"058Y"``, ``"013M"`` (months) or ``"001D"`` (days)."""
    match = _AGE.match(str(text).strip())
    if match is None:
        raise ValueError(f"not an age: {text!r}")
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    return {"Y": number, "M": number // 12, "D": number // 365}[unit]


@overload
def read_metadata(url: str, *, storage_options: StorageOptions | None = None, max_age: int = ...,
                  errors: Literal["raise", "report"] = ...,
                  return_report: Literal[False] = ...) -> pd.DataFrame: ...


@overload
def read_metadata(url: str, *, storage_options: StorageOptions | None = None, max_age: int = ...,
                  errors: Literal["raise", "report"] = ...,
                  return_report: Literal[True]) -> tuple[pd.DataFrame, MetadataReport]: ...


@storage_options_by_keyword(position=1)
def read_metadata(
    url: str,
    *,
    storage_options: StorageOptions | None = None,
    max_age: int = DEFAULT_MAX_AGE,
    errors: Literal["raise", "report"] = "raise",
    return_report: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, MetadataReport]:
    """Read ``Data_Entry_2017.csv`` (any of its three real variants, any fsspec URL) into a frame.

    Columns: ``image_index, patient_id, follow_up, age`` (int years), ``sex`` (M/F),
    ``view_position``, ``finding_labels`` (the original string), the 14 label columns (uint8,
    NIH order), the original size and spacing where present, and ``csv_line``.

    Parameters
    ----------
    url
        The CSV: ``Data_Entry_2017.csv``, ``Data_Entry_2017_v2020.csv`` or ``sample_labels.csv``.
    storage_options
        fsspec options (credentials, endpoints).
    max_age
        Rows with a greater age are dropped and reported (the 2017 file has a few above 123).
    errors
        ``"raise"``: any bad row raises; ``"report"``: bad rows are left out and listed.
    return_report
        Also return the :class:`MetadataReport` (variant, rows kept and dropped, and why).

    Returns
    -------
    pandas.DataFrame or tuple of (pandas.DataFrame, MetadataReport)
        The validated rows (and the report).

    Raises
    ------
    MissingColumnError
        A required column is absent.
    MetadataError
        The file is empty or holds no rows; with ``errors="raise"``, a bad row; the error
        names each one's line, image and column.
    """
    if errors not in ("raise", "report"):
        raise OptionError(f"errors must be 'raise' or 'report', not {errors!r}")
    raw = _read_raw_csv(url, storage_options)
    variant = _detect_variant(raw.columns)
    columns = _canonical_columns(raw, url)
    if raw.empty:
        raise MetadataError(url, message=f"{url} has a header but no rows: no images to read")
    frame, problems = _validate(columns, url)
    if problems and errors == "raise":
        raise MetadataError(url, problems)

    too_old = frame["age"] > max_age
    dropped = frame.loc[too_old, ["csv_line", "image_index", "age"]].reset_index(drop=True)
    frame = frame.loc[~too_old].reset_index(drop=True)
    frame.attrs["source"] = url  # error messages about these rows name the file
    report = MetadataReport(
        source=url,
        variant=variant,
        rows_read=len(raw),
        rows_kept=len(frame),
        max_age=max_age,
        dropped_for_age=dropped,
        problems=problems,
    )
    return (frame, report) if return_report else frame


def _read_raw_csv(url: str, storage_options: StorageOptions | None) -> pd.DataFrame:
    return read_csv(url, storage_options, allow_empty=True, keep_default_na=False,
                    index_col=False, skipinitialspace=True)


def _detect_variant(columns: pd.Index) -> str:
    names = set(columns)
    if "OriginalImageWidth" in names:
        return "sample_labels"
    if any(c.startswith("Unnamed:") for c in names):
        return "kaggle2017"
    return "v2020"


def _canonical_columns(raw: pd.DataFrame, url: str) -> pd.DataFrame:
    out = {}
    for canonical, names in {**_REQUIRED_COLUMNS, **_OPTIONAL_COLUMNS}.items():
        present = [n for n in names if n in raw.columns]
        if present:
            out[canonical] = each_distinct(raw[present[0]], str.strip)
        elif canonical in _REQUIRED_COLUMNS:
            raise MissingColumnError(
                url,
                message=f"{url}: required column {names[0]!r} is missing "
                f"(columns found: {', '.join(map(repr, raw.columns))})",
            )
    frame = pd.DataFrame(out)
    frame["csv_line"] = np.arange(FIRST_DATA_LINE, FIRST_DATA_LINE + len(frame))
    return frame


def _validate(frame: pd.DataFrame, url: str) -> tuple[pd.DataFrame, list[RowProblem]]:
    """Parse every column; return the good rows and a problem per bad cell."""
    problems: list[RowProblem] = []
    bad = np.zeros(len(frame), dtype=bool)

    def note(rows: np.ndarray, column: str, values, reason_of) -> None:
        for row, value in zip(rows, values, strict=True):
            bad[row] = True
            problems.append(
                RowProblem(
                    line=int(frame["csv_line"].iat[row]),
                    image_index=str(frame["image_index"].iat[row]),
                    column=column,
                    value=str(value),
                    reason=reason_of(value),
                )
            )

    index = frame["image_index"]
    _check_image_index(frame, note)
    label_matrix = _parse_label_column(frame["finding_labels"], note)
    ages = _parse_column(frame["age"], parse_age, "Patient Age", note)
    follow_up = _parse_column(frame["follow_up"], _parse_int, "Follow-up #", note)
    patient = _parse_column(frame["patient_id"], _parse_int, "Patient ID", note)

    sex = each_distinct(frame["sex"], str.upper).map(_SEX)
    rows = np.flatnonzero(sex.isna().to_numpy())
    note(rows, "Patient Gender", frame["sex"].iloc[rows], lambda v: "unknown sex (expected M or F)")

    view = each_distinct(frame["view_position"], str.upper)
    rows = np.flatnonzero(view.eq("").to_numpy())
    note(rows, "View Position", view.iloc[rows], lambda v: "missing view position")

    out = pd.DataFrame(
        {
            "image_index": index,
            "patient_id": patient,
            "follow_up": follow_up,
            "age": ages,
            "sex": sex,
            "view_position": view,
            "finding_labels": frame["finding_labels"],
        }
    )
    for position, name in enumerate(LABELS):
        out[name] = label_matrix[:, position]
    for name in _OPTIONAL_COLUMNS:
        if name in frame:  # each distinct size or spacing parsed once
            codes, uniques = pd.factorize(frame[name], use_na_sentinel=False)
            out[name] = pd.to_numeric(pd.Series(uniques), errors="coerce").to_numpy()[codes]
    out["csv_line"] = frame["csv_line"]
    out = out.loc[~bad].reset_index(drop=True)
    for name in ("patient_id", "follow_up", "age"):
        out[name] = out[name].astype(np.int64)
    problems.sort(key=lambda p: (p.line, p.column))
    return out, problems


def _check_image_index(frame: pd.DataFrame, note) -> None:
    """Every image index present and unique; ``note`` each that is not."""
    index = frame["image_index"]
    empty = np.flatnonzero(index.eq("").to_numpy())
    note(empty, "Image Index", index.iloc[empty], lambda v: "missing image index")
    duplicated = index.duplicated(keep="first") & index.ne("")
    rows = np.flatnonzero(duplicated.to_numpy())
    if len(rows) == 0:
        return
    first_line = frame.groupby("image_index")["csv_line"].transform("min")
    note(rows, "Image Index", index.iloc[rows],
         lambda v: f"duplicate image index (first seen on line {first_line[index == v].iat[0]})")


def _parse_label_column(labels: pd.Series, note) -> np.ndarray:
    """The 0/1 label matrix of the ``Finding Labels`` strings, each distinct string parsed
    once (there are a few hundred in 112,120 rows); ``note`` each that does not parse."""
    label_matrix = np.zeros((len(labels), len(LABELS)), dtype=np.uint8)
    codes, uniques = pd.factorize(labels)
    for code, text in enumerate(uniques):
        rows = np.flatnonzero(codes == code)
        try:
            label_matrix[rows] = parse_labels(text)
        except LabelParseError as exc:
            note(rows, "Finding Labels", [text] * len(rows), lambda v, e=exc: str(e))
    return label_matrix


def _parse_int(text: str) -> int:
    value = int(str(text).strip())
    if value < 0:
        raise ValueError("negative")
    return value


def _parse_column(values: pd.Series, parse, column: str, note) -> pd.Series:
    """Parse each distinct value once; note the rows whose value does not parse."""
    codes, uniques = pd.factorize(values)
    parsed = np.full(len(uniques), -1, dtype=np.int64)
    for code, text in enumerate(uniques):
        try:
            parsed[code] = parse(text)
        except (TypeError, ValueError):
            rows = np.flatnonzero(codes == code)
            reason = "missing value" if text == "" else f"not a valid {column.lower()}"
            note(rows, column, [text] * len(rows), lambda v, r=reason: r)
    return pd.Series(parsed[codes], index=values.index)


__all__ = ["CSV_NAMES", "DEFAULT_MAX_AGE", "FIRST_DATA_LINE", "MetadataReport", "find_metadata",
           "parse_age", "read_metadata"]
