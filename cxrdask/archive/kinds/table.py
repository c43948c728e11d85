"""The one table every archive kind is read into, and the CSV reading they share.

Columns: ``image_index`` (the row's identity, unique), ``path`` (the image under the
archive's root), ``patient_id`` (int), ``patient`` and ``study`` (the archive's own ids),
``follow_up``, ``age`` (years, -1 unknown), ``sex`` (``M``/``F``, empty unknown),
``view_position``, ``finding_labels`` (``A|B`` of the positives), ``archive``,
``official_split`` where the archive publishes one, ``csv_line``, then one float32 column per
finding: 1 positive, 0 negative, NaN missing. ``attrs`` carry ``findings``, ``archive`` and
``source``, and for DICOM archives ``from_headers``: the columns the archive's files do not
give, which :func:`~cxrdask.archive.dicom_headers.fill_from_headers` takes from the headers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import fsspec
import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.archive.findings import ordered_findings, positives_string
from cxrdask.errors import MetadataError, MissingColumnError

FIRST_DATA_LINE = 2
_INT32_MAX = 2**31 - 1
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}


def read_csv(url: str, storage_options: StorageOptions | None, required: tuple[str, ...] = (),
             *, allow_empty: bool = False, **kwargs) -> pd.DataFrame:
    """A published CSV (gzipped or not, any fsspec URL) as strings, blanks as NaN (pandas'
    ``kwargs`` may say otherwise); every ``required`` column present, else
    :class:`MissingColumnError` naming the file; a header without rows refused unless
    ``allow_empty`` (the caller then says so after its own column checks)."""
    with fsspec.open(url, "rb", compression="infer", **(storage_options or {})) as handle:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            # Rows with a trailing comma under a header without one (NIH's Kaggle CSV):
            # pandas warns and drops the empty last field, which is what we want.
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            try:
                frame = pd.read_csv(handle, dtype=str, **kwargs)
            except pd.errors.EmptyDataError:
                raise MetadataError(url, message=f"{url} is empty: no header, no rows") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise MissingColumnError(url, message=f"{url}: required column {missing[0]!r} is missing "
                                 f"(columns found: {', '.join(map(repr, frame.columns))})")
    if frame.empty and not allow_empty:
        raise MetadataError(url, message=f"{url} has a header but no rows: no images to read")
    return frame


def check_known_columns(frame: pd.DataFrame, url: str, known: tuple[str, ...], what: str) -> None:
    """Refuse a published label file with a column its format does not name
    (:class:`MetadataError` naming them): no column becomes a finding, or is dropped unseen,
    unless the format says what it is. Your own columns belong in a manifest."""
    unknown = [c for c in frame.columns if c not in known]
    if unknown:
        raise MetadataError(url, message=(
            f"{url}: column(s) {', '.join(map(repr, unknown))} are not in {what}'s published "
            f"header ({', '.join(known)}); cxrdask reads no column its format does not name: "
            "drop them, or list your images in a manifest.csv (path, then your findings)"))


def label_values(column: pd.Series, url: str) -> np.ndarray:
    """A CheXpert-style label column as float32: ``1.0``, ``0.0``, ``-1.0``, blank -> NaN.
    Any other value is a :class:`MetadataError` naming the first bad line."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float32)
    bad = np.flatnonzero(column.notna().to_numpy() & ~np.isin(values, (1.0, 0.0, -1.0)))
    if len(bad):
        raise MetadataError(url, message=f"{url}: line {bad[0] + FIRST_DATA_LINE}, column "
                            f"{column.name!r}: {column.iat[bad[0]]!r} is not a label (1, 0, -1 "
                            "or blank)")
    return values


def patient_numbers(patients: pd.Series) -> np.ndarray:
    """Patient ids as the store's int32: the archive's own number where every id is one that
    fits, else a stable number per distinct id (in sorted order)."""
    numbers = pd.to_numeric(patients, errors="coerce")
    if numbers.notna().all() and numbers.between(0, _INT32_MAX).all():
        return numbers.to_numpy(dtype=np.int64)
    codes, _ = pd.factorize(patients.astype(str), sort=True)
    return codes.astype(np.int64)


def sex_codes(sex: pd.Series) -> pd.Series:
    """``M``/``F`` from the archives' spellings (``Male``, ``F``, ...); empty where unknown."""
    return each_distinct(sex.fillna(""), lambda text: text.strip().upper()).map(_SEX).fillna("")


def each_distinct(values: pd.Series, change: Callable[[str], str]) -> pd.Series:
    """``values`` as text, ``change`` (``str.strip``, ``str.upper``) applied to each distinct
    value once: a column of a million rows holds a few hundred distinct values, and pandas'
    string methods (without pyarrow) make a Python call a row, 3.4 of the 5 s a
    million-row CSV took to read."""
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    changed = np.array([change(str(value)) for value in np.asarray(uniques, dtype=object)],
                       dtype=object)
    return pd.Series(changed[codes], index=values.index).astype(str)


def archive_table(kind: str, source: str, columns: Mapping[str, object],
                  labels: Mapping[str, np.ndarray], from_headers: tuple[str, ...] = ()
                  ) -> pd.DataFrame:
    """The canonical frame of an archive: ``columns`` (``image_index``, ``path``,
    ``patient``, and optionally ``study``, ``age``, ``sex``, ``view_position``,
    ``official_split``, ``csv_line``, ...) and ``labels`` by harmonised finding name;
    ``from_headers`` names the columns its DICOM headers are to fill."""
    frame = pd.DataFrame({k: np.asarray(v) if not isinstance(v, pd.Series) else v.to_numpy()
                          for k, v in columns.items()})
    n = len(frame)
    frame["patient"] = frame["patient"].astype(str)
    frame["patient_id"] = patient_numbers(frame["patient"])
    defaults = {"study": "", "follow_up": 0, "age": -1, "sex": "", "view_position": "",
                "csv_line": np.arange(FIRST_DATA_LINE, FIRST_DATA_LINE + n)}
    for name, value in defaults.items():
        if name not in frame:
            frame[name] = value
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce").fillna(-1).astype(np.int64)
    frame.loc[frame["age"] <= 0, "age"] = -1
    frame["view_position"] = frame["view_position"].fillna("").astype(str).str.upper()
    frame["archive"] = kind
    findings = ordered_findings(labels)
    for name in findings:
        frame[name] = np.asarray(labels[name], dtype=np.float32)
    frame["finding_labels"] = positives_string(frame, findings)
    duplicated = frame["image_index"].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise MetadataError(source, message=f"{source}: image {frame['image_index'].iat[row]!r} "
                            "is listed twice")
    frame.attrs.update(findings=findings, archive=kind, source=source,
                       from_headers=list(from_headers))
    return frame


__all__ = ["FIRST_DATA_LINE", "archive_table", "check_known_columns", "each_distinct",
           "label_values", "patient_numbers", "read_csv", "sex_codes"]
