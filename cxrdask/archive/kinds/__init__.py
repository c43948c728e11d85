"""Archive kinds: which archive a folder holds (from its files), and its one table.

Detection looks at the archive root's own files, never at the images, so it costs one
listing: NIH's metadata CSV (any of its three names); CheXpert's ``train.csv``/``valid.csv``
(with its ``Path,Sex,Age,Frontal/Lateral`` header, also one folder down, in
``CheXpert-v1.0*/``); MIMIC-CXR-JPG's ``mimic-cxr-2.0.0-metadata.csv(.gz)``; PadChest's
``PADCHEST_chest_x_ray_images_labels_160K*.csv(.gz)``; VinDr-CXR's
``annotations/image_labels_train.csv`` (PhysioNet) or a ``train.csv`` of boxes with
``image_id,class_name,...,rad_id`` (Kaggle); RSNA Pneumonia's ``stage_2_train_labels.csv``;
and for private archives a ``manifest.csv`` with a ``path`` column (``dicom`` when it lists
DICOM files, else ``csv``), or a CSV keyed by ``SOPInstanceUID``, ``StudyInstanceUID`` or
``AccessionNumber`` beside a folder of DICOM files (``dicom``, no path list:
:mod:`~cxrdask.archive.kinds.dicom_labels`). The first that matches wins; ``kind=`` forces
one. Where a DICOM archive's files leave out patients, studies, views, sexes or ages, they
are read from the DICOM headers (:mod:`cxrdask.archive.dicom_headers`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from cxrdask._fs import StorageOptions, filesystem, full_url, join_url
from cxrdask.archive.dicom_headers import ClientSource, fill_from_headers
from cxrdask.archive.findings import check_uncertain
from cxrdask.choices import ARCHIVE_KINDS, ArchiveChoice, ArchiveKind, UncertainPolicy
from cxrdask.errors import ArchiveNotRecognisedError, ImagesNotFoundError, OptionError
from cxrdask.options import storage_options_by_keyword


@dataclass(frozen=True)
class ArchiveFiles:
    """What detection found: the kind and the label/metadata files to read, as URLs."""

    kind: str
    files: tuple[str, ...]
    root: str  # the folder the table's paths are relative to

    def describe(self) -> str:
        return f"{self.kind} archive ({', '.join(self.files)})"


def _first_line(fs, path: str) -> str:
    with fs.open(path, "rb", compression="infer") as handle:
        return handle.readline().decode("utf-8", "replace").lstrip("\ufeff")


def _header(fs, path: str) -> list[str]:
    return [c.strip().strip('"') for c in _first_line(fs, path).split(",")]


def _header_has(fs, path: str, *names: str) -> bool:
    header = _header(fs, path)
    return all(name in header for name in names)


def _keyed_by_dicom_id(fs, path: str) -> bool:
    """A labels file keyed by a DICOM identifier (and not a manifest, which lists paths)."""
    from cxrdask.archive.kinds.dicom_labels import key_of

    header = _header(fs, path)
    return "path" not in header and key_of(header) is not None


def _existing(fs, base: str, *names: str) -> list[str]:
    return [join_url(base, n) for n in names if fs.isfile(join_url(base, n))]


def _find_kind(fs, base: str) -> tuple[str, list[str], str] | None:
    """(kind, files, images base) of the archive at ``base``, or None."""
    from cxrdask.archive.kinds import chexpert, padchest, vindr
    from cxrdask.archive.kinds.manifest import MANIFEST_NAME
    from cxrdask.archive.kinds.nih import CSV_NAMES

    names = {p.rstrip("/").rsplit("/", 1)[-1]: p for p in fs.ls(base, detail=False)}
    nih = [n for n in CSV_NAMES.values() if n in names]
    if nih:
        return "nih", [join_url(base, nih[0])], base
    for folder in [base, *(join_url(base, n) for n in sorted(names) if n.startswith("CheXpert-v1.0"))]:
        found = _existing(fs, folder, *chexpert.CSV_NAMES)
        if found and _header_has(fs, found[0], *chexpert.HEADER):
            return "chexpert", found, folder
    for suffix in ("", ".gz"):
        if chexpert.MIMIC_METADATA + suffix in names:
            return "mimic-cxr-jpg", [join_url(base, chexpert.MIMIC_METADATA + suffix)], base
    padchest_csv = sorted(n for n in names if n.startswith(padchest.CSV_PREFIX))
    if padchest_csv:
        return "padchest", [join_url(base, padchest_csv[0])], base
    physionet = _existing(fs, base, *vindr.PHYSIONET_LABELS)
    if physionet:
        return "vindr-cxr", physionet, base
    kaggle = _existing(fs, base, vindr.KAGGLE_LABELS)
    if kaggle and _header_has(fs, kaggle[0], *vindr.KAGGLE_HEADER):
        return "vindr-cxr", kaggle, base
    if vindr.RSNA_LABELS in names:
        return "rsna-pneumonia", [join_url(base, vindr.RSNA_LABELS)], base
    if MANIFEST_NAME in names:
        return "manifest", [join_url(base, MANIFEST_NAME)], base
    keyed = [join_url(base, n) for n in sorted(names) if n.lower().endswith((".csv", ".csv.gz"))]
    keyed = [url for url in keyed if _keyed_by_dicom_id(fs, url)]
    if keyed:
        return "dicom", keyed[:1], base
    return None


LOOKED_FOR = ("Data_Entry_2017.csv / Data_Entry_2017_v2020.csv / sample_labels.csv (nih)",
              "train.csv or valid.csv with a Path,Sex,Age,Frontal/Lateral header, here or in "
              "CheXpert-v1.0*/ (chexpert)",
              "mimic-cxr-2.0.0-metadata.csv.gz (mimic-cxr-jpg)",
              "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv (padchest)",
              "annotations/image_labels_train.csv, or train.csv with image_id,class_name,rad_id "
              "(vindr-cxr)",
              "stage_2_train_labels.csv (rsna-pneumonia)",
              "manifest.csv with a path column (dicom, csv)",
              "a CSV with a SOPInstanceUID, StudyInstanceUID or AccessionNumber column beside "
              "DICOM files (dicom)")


@storage_options_by_keyword(position=1)
def detect_archive(root: str, *, storage_options: StorageOptions | None = None) -> ArchiveFiles:
    """Which archive ``root`` holds, from its own files (one listing, a header or two).

    Raises
    ------
    ImagesNotFoundError
        ``root`` does not exist.
    ArchiveNotRecognisedError
        None of the known files is there; the message lists what was looked for.
    """
    fs, base = filesystem(root, storage_options)
    if not fs.exists(base):
        raise ImagesNotFoundError(f"the images folder {root} does not exist", root=root)
    found = _find_kind(fs, base.rstrip("/"))
    if found is None:
        raise ArchiveNotRecognisedError(
            f"{root} holds no archive cxrdask knows; looked for: " + "; ".join(LOOKED_FOR)
            + ". Pass the metadata file (--metadata) and the kind (--archive), or write a "
            "manifest.csv")
    kind, files, images = found
    return ArchiveFiles(kind=kind, files=tuple(full_url(fs, f) for f in files),
                        root=full_url(fs, images))


def _kind_of_file(url: str, storage_options: StorageOptions | None) -> str:
    """The kind a metadata file given by hand belongs to, from its name and header."""
    from cxrdask.archive.kinds import chexpert, padchest, vindr

    fs, path = filesystem(url, storage_options)
    name = path.rsplit("/", 1)[-1]
    rules: list[tuple[str, Callable[[], bool]]] = [
        ("nih", lambda: _header_has(fs, path, "Image Index")),
        ("chexpert", lambda: _header_has(fs, path, *chexpert.HEADER)),
        ("mimic-cxr-jpg", lambda: name.startswith(chexpert.MIMIC_METADATA)),
        ("padchest", lambda: _header_has(fs, path, *padchest.HEADER)),
        ("vindr-cxr", lambda: _header_has(fs, path, "image_id", "rad_id")),
        ("rsna-pneumonia", lambda: _header_has(fs, path, *vindr.RSNA_HEADER)),
        ("manifest", lambda: _header_has(fs, path, "path")),
        ("dicom", lambda: _keyed_by_dicom_id(fs, path)),
    ]
    for kind, matches in rules:
        if matches():
            return kind
    return "nih"  # its reader names the missing column


def read_archive(root: str, kind: ArchiveChoice = "auto", *, metadata: str | None = None,
                 uncertain: UncertainPolicy = "missing", max_age: int | None = None,
                 storage_options: StorageOptions | None = None,
                 client: ClientSource = None) -> pd.DataFrame:
    """The one table of the archive at ``root``: rows, paths, patients, findings.

    Parameters
    ----------
    root
        The archive's root folder or URL.
    kind
        ``"auto"`` detects it (:func:`detect_archive`); or one of :data:`ARCHIVE_KINDS`.
    metadata
        The label/metadata file, when it is not where the archive keeps it.
    uncertain
        Uncertain labels (CheXpert's ``-1``): ``missing`` (torchxrayvision's choice),
        ``positive`` or ``negative``.
    max_age
        NIH only: rows with a greater age are dropped and reported (default 123).
    storage_options
        fsspec options.
    client
        Where DICOM headers are read when the archive's files leave something to them: a
        Dask client (or a function returning one); None: threads of this process.

    Returns
    -------
    pandas.DataFrame
        The canonical table (see :mod:`cxrdask.archive.kinds.table`); ``attrs["findings"]``
        names the finding columns, ``attrs["archive"]`` the kind.
    """
    check_uncertain(uncertain)
    if kind != "auto" and kind not in ARCHIVE_KINDS:
        raise OptionError(f"archive must be auto or one of {', '.join(ARCHIVE_KINDS)}, not {kind!r}")
    if metadata is not None:
        found = ArchiveFiles(kind=_kind_of_file(metadata, storage_options) if kind == "auto"
                             else kind, files=(metadata,), root=root)
    else:
        found = detect_archive(root, storage_options=storage_options)
        if kind != "auto" and _family(kind) != _family(found.kind):
            raise ArchiveNotRecognisedError(f"{root} looks like a {found.describe()}, not {kind}; "
                                            "pass its metadata file with --metadata")
    frame = _read(found, uncertain, max_age, storage_options, client)
    frame.attrs["root"] = found.root
    if "report" not in frame.attrs:
        frame.attrs["report"] = describe_table(frame)
    if frame.attrs.get("from_headers"):
        frame = fill_from_headers(frame, found.root, client=client, storage_options=storage_options)
    return frame


def describe_table(frame: pd.DataFrame) -> str:
    """One line per fact of an archive's table, for the CLI and notebooks: kind, rows,
    patients, findings, and how many labels are missing."""
    from cxrdask.archive.findings import findings_of

    findings = findings_of(frame)
    values = frame.loc[:, findings].to_numpy(dtype="float32")
    missing = float(pd.isna(values).mean()) if values.size else 0.0
    return (f"{frame.attrs.get('source', '?')}: {frame.attrs.get('archive', '?')} archive, "
            f"{len(frame)} images of {frame['patient_id'].nunique()} patients\n"
            f"{len(findings)} findings ({', '.join(findings)}); {missing:.1%} of labels missing")


def _family(kind: str) -> str:
    return "manifest" if kind in ("dicom", "csv", "manifest") else kind


def _read(found: ArchiveFiles, uncertain: UncertainPolicy, max_age: int | None,
          storage_options: StorageOptions | None, client: ClientSource) -> pd.DataFrame:
    from cxrdask.archive.kinds import chexpert, padchest, vindr
    from cxrdask.archive.kinds.manifest import read_manifest
    from cxrdask.archive.kinds.nih import DEFAULT_MAX_AGE, read_metadata

    kind, files = _family(found.kind), list(found.files)
    if kind == "nih":
        frame, report = read_metadata(files[0], storage_options=storage_options,
                                      max_age=DEFAULT_MAX_AGE if max_age is None else max_age,
                                      return_report=True)
        frame.attrs.update(archive="nih", report=report.summary())
        return frame
    if kind == "chexpert":
        return chexpert.read_chexpert(files, uncertain, storage_options)
    if kind == "mimic-cxr-jpg":
        return _read_mimic(files[0], uncertain, storage_options)
    if kind == "padchest":
        return padchest.read_padchest(files[0], storage_options)
    if kind == "vindr-cxr":  # the file's header says which layout it is, never its name
        fs, path = filesystem(files[0], storage_options)
        if _header_has(fs, path, *vindr.KAGGLE_HEADER):
            return vindr.read_vindr_kaggle(files[0], storage_options)
        return vindr.read_vindr_physionet(files, storage_options)
    if kind == "rsna-pneumonia":
        return vindr.read_rsna(files[0], storage_options)
    fs, path = filesystem(files[0], storage_options)
    if not _header_has(fs, path, "path") and _keyed_by_dicom_id(fs, path):
        from cxrdask.archive.kinds.dicom_labels import read_keyed_labels

        return read_keyed_labels(files[0], found.root, uncertain, client=client,
                                 storage_options=storage_options)
    return read_manifest(files[0], uncertain, storage_options)


def _read_mimic(metadata_url: str, uncertain: UncertainPolicy,
                storage_options: StorageOptions | None) -> pd.DataFrame:
    from cxrdask.archive.kinds.chexpert import MIMIC_LABELS, MIMIC_SPLIT, read_mimic

    fs, path = filesystem(metadata_url, storage_options)
    base = path.rsplit("/", 1)[0]
    suffix = ".gz" if path.endswith(".gz") else ""
    labels = _existing(fs, base, *(name + suffix for name in MIMIC_LABELS))
    if not labels:
        raise ArchiveNotRecognisedError(f"{metadata_url}: no {MIMIC_LABELS[0]}{suffix} (or "
                                        f"-negbio) beside it: MIMIC-CXR-JPG's labels are needed")
    split = _existing(fs, base, MIMIC_SPLIT + suffix)
    return read_mimic(metadata_url, full_url(fs, labels[0]),
                      full_url(fs, split[0]) if split else None, uncertain, storage_options)


__all__ = ["ARCHIVE_KINDS", "ArchiveChoice", "ArchiveFiles", "ArchiveKind", "detect_archive", "read_archive"]
