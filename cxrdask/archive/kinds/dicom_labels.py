"""A folder of DICOM files and a labels CSV keyed by a DICOM identifier, without a path list.

What a hospital's report extraction gives is labels per ``SOPInstanceUID`` (one image),
``StudyInstanceUID`` or ``AccessionNumber`` (one study, every image of it), not paths. The
folder is listed (every ``.dcm``/``.dicom`` file, and files without a suffix as DICOM exports
name them), each file's header is read without its pixels
(:mod:`cxrdask.archive.dicom_headers`), and the two are joined on the key. Patients,
studies, views, sexes and ages come from the headers (columns of those names in the CSV are
not findings, and ``split`` is its split, as in a manifest); every other column of the CSV is
a finding, valued ``1``, ``0``, ``-1`` (uncertain) or blank. The report says
how many files had no label row and how many label rows had no file.
"""

from __future__ import annotations

import pandas as pd

from cxrdask._fs import StorageOptions, filesystem, find_files, full_url
from cxrdask.archive.dicom_headers import ClientSource, header_columns, read_dicom_headers
from cxrdask.archive.findings import UncertainPolicy, apply_uncertain, harmonised_labels
from cxrdask.archive.kinds.table import archive_table, label_values, read_csv
from cxrdask.errors import MetadataError

# The identifiers a labels file may be keyed by, the most specific first.
KEYS = ("SOPInstanceUID", "StudyInstanceUID", "AccessionNumber")
_NOT_DICOM = {"dicomdir", "license", "readme", "makefile"}
# Columns a labels file may hold beside its findings: its split, and what the headers give.
_NOT_FINDINGS = {"split", "patient_id", "study_id", "view", "sex", "age"}


def key_of(columns) -> str | None:
    """The key column of a labels file's header (None: not keyed by a DICOM identifier)."""
    return next((key for key in KEYS if key in columns), None)


def list_dicom_files(root: str, storage_options: StorageOptions | None) -> list[str]:
    """Every DICOM file under ``root`` by its name: ``.dcm``, ``.dicom``, or no suffix (as
    exports name them, ``IM000001``), never ``DICOMDIR``; as paths under ``root``, sorted."""
    fs, base = filesystem(root, storage_options)
    base = base.rstrip("/")
    found = []
    for path in find_files(fs, base):
        name = path.rsplit("/", 1)[-1]
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if suffix in ("dcm", "dicom") or (not suffix and name.lower() not in _NOT_DICOM):
            found.append(path[len(base) + 1:])
    return sorted(found)


def read_keyed_labels(url: str, root: str, uncertain: UncertainPolicy, *,
                      client: ClientSource = None,
                      storage_options: StorageOptions | None = None) -> pd.DataFrame:
    """The canonical table of the DICOM files under ``root`` that ``url`` labels.

    Raises
    ------
    MetadataError
        The file has no key column, a key repeats, or no file under ``root`` has a key of
        the file (the message gives the first of each).
    """
    frame = read_csv(url, storage_options)
    key = key_of(frame.columns)
    if key is None:
        raise MetadataError(url, message=f"{url}: no column {', '.join(KEYS)} to find the DICOM "
                                         "files by (or a path column: a manifest)")
    frame[key] = frame[key].fillna("").str.strip()
    repeated = frame[key].duplicated() & (frame[key] != "")
    if repeated.any():
        row = int(repeated.to_numpy().nonzero()[0][0])
        raise MetadataError(url, message=f"{url}: line {row + 2}: {key} {frame[key].iat[row]!r} "
                                         "is labelled twice (one row per key)")
    paths = list_dicom_files(root, storage_options)
    fs, base = filesystem(root, storage_options)
    headers = read_dicom_headers([full_url(fs, f"{base.rstrip('/')}/{p}") for p in paths],
                                 client=client, storage_options=storage_options)
    headers["path"] = paths
    joined = headers.merge(frame, left_on=key, right_on=key, how="inner", suffixes=("", "_csv"))
    unmatched_files = len(headers) - len(joined)
    unmatched_rows = int((~frame[key].isin(headers[key])).sum())
    if joined.empty:
        raise MetadataError(url, message=(
            f"{url}: none of the {len(paths):,} DICOM files under {root} has a {key} of its "
            f"{len(frame):,} rows (first: {frame[key].iat[0]!r})"))
    given = header_columns(joined)
    columns: dict[str, object] = {
        "image_index": joined["SOPInstanceUID"].where(joined["SOPInstanceUID"] != "",
                                                      joined["path"]),
        "path": joined["path"], **given}
    columns["patient"] = given["patient"].where(given["patient"] != "", columns["image_index"])
    if "split" in frame:  # a split of the labels' own, as a manifest's
        columns["official_split"] = joined["split"].fillna("")
    findings = [c for c in frame.columns if c not in KEYS and c not in _NOT_FINDINGS]
    labels = harmonised_labels({name: apply_uncertain(label_values(joined[name], url), uncertain)
                                for name in findings})
    table = archive_table("dicom", url, columns, labels)
    table.attrs["report"] = (
        f"{url}: labels by {key}, {len(joined):,} of {len(paths):,} DICOM files under {root} "
        f"labelled; {unmatched_files:,} files without a label row and {unmatched_rows:,} label "
        "rows without a file left out; patients, studies, views, sexes and ages from the "
        "headers")
    return table


__all__ = ["KEYS", "key_of", "list_dicom_files", "read_keyed_labels"]
