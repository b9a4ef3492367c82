"""TCIA Spine-Mets-CT-SEG: CT series + DICOM-SEG vertebra masks + the clinical spreadsheet.

``root`` is a download of the collection in either layout (NBIA Data Retriever or IDC; see
docs/tcia.md). CT and SEG series are told apart by their DICOM Modality and paired through the
SEG's ReferencedSeriesSequence (or, without one, its FrameOfReferenceUID); folder names are never
read. Segments become levels by their SegmentLabel. The collection has whole-vertebra masks only,
so the vertebral body is derived (:func:`wsbench.data.preprocess.derive_body`), and no lesion masks:
``lesion_metrics`` is false unless the ``lesions`` option names a folder of lesion masks.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
import pandas as pd
from wsbench.datasets.tcia.layout import (
    CLINICAL_FILE,
    CLINICAL_SHEET,
    COLLECTION,
    LEVEL_COLUMNS,
    PHENOTYPE_COLUMNS,
)

from wsbench.contract import (
    BLASTIC,
    DatasetAdapter,
    Phenotype,
    PreparedDataset,
    PreparedVertebra,
    Skipped,
    Split,
    VertebraKey,
    WeakLabel,
)
from wsbench.data.dicom import (
    CtVolume,
    DicomError,
    SeriesInfo,
    read_ct_series,
    read_seg_levels,
    scan_series,
)
from wsbench.data.preprocess import (
    PreprocessParams,
    SubjectResult,
    cached_result,
    derive_body,
    preprocess_subject,
    psr_lattice,
    sample_on_grid,
)
from wsbench.data.splits import DEFAULT_SEED, DEFAULT_TEST_FRACTION, seeded_split
from wsbench.data.volumes import BODY_SUBREGIONS, LEVEL_NAMES, LEVEL_NUMBERS
from wsbench.files import digest
from wsbench.models.store import cache_root, sha256_file
from wsbench.progress import progress_over

READER_VERSION = "1"
"""Part of every cache key; bump when reading or pairing changes the prepared arrays."""

LEVEL_TOKEN = re.compile(r"([CTL])\s*(\d{1,2})(?:\s*[-–—]\s*([CTL])?\s*(\d{1,2}))?")
"""A level (``T3``, ``T 3``) or a range (``T5-T8``, ``T11-L2``, ``T5-8``) in the clinical text."""

SEPARATORS = re.compile(r"(?:[\s,;/&+.]|\bAND\b)*")
"""What may stand between levels in a level list."""

EMPTY_TEXT = {"", "NONE", "NO", "N/A", "NA", "NAN", "-", "0"}
"""Cell texts that mean an empty level list."""

MAIN_LEVELS = tuple(n for n in sorted(LEVEL_NAMES) if LEVEL_NAMES[n][0] in "CTL" and n <= 24)
"""VerSe numbers C1…L5 in cranio-caudal order (ranges expand over these; T13 and L6 are
never inside a range)."""

LESION_SUFFIXES = (".nii.gz", ".nii")


def parse_level_list(text: object) -> list[str]:
    """Levels of a free-text list (``"T1, T2 T3, T5-T7"``); ``ValueError`` on anything else."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return []
    upper = str(text).strip().upper().replace("\u00a0", " ")
    if upper in EMPTY_TEXT:
        return []
    levels: list[str] = []
    leftover = []
    position = 0
    for match in LEVEL_TOKEN.finditer(upper):
        leftover.append(upper[position : match.start()])
        position = match.end()
        first = f"{match.group(1)}{int(match.group(2))}"
        if first not in LEVEL_NUMBERS:
            raise ValueError(f"{first!r} is not a vertebra level")
        if match.group(4) is None:
            levels.append(first)
            continue
        last = f"{match.group(3) or match.group(1)}{int(match.group(4))}"
        start, stop = LEVEL_NUMBERS[first], LEVEL_NUMBERS.get(last, 0)
        if start not in MAIN_LEVELS or stop not in MAIN_LEVELS or stop < start:
            raise ValueError(f"{match.group(0)!r} is not a cranio-caudal range of levels")
        levels += [LEVEL_NAMES[n] for n in MAIN_LEVELS if start <= n <= stop]
    leftover.append(upper[position:])
    for piece in leftover:
        if not SEPARATORS.fullmatch(piece):
            raise ValueError(f"cannot read {piece.strip()!r} as a level")
    return list(dict.fromkeys(levels))


def case_key(value: object) -> str:
    """Comparable form of a PatientID / ``Case`` cell (``"01234"``, ``1234`` and ``"1234.0"``
    match)."""
    text = str(value).strip()
    if re.fullmatch(r"\d+(?:\.0+)?", text):
        return str(int(float(text)))
    return text


@dataclass(frozen=True)
class CaseLabels:
    """The clinical sheet's verdict for one case (``case`` as written in the sheet, ``row`` its
    spreadsheet row): the columns listing each of its malignant levels."""

    case: str
    row: int
    columns: dict[str, tuple[str, ...]]

    def label(self, level: str) -> tuple[WeakLabel, Phenotype | None]:
        """Malignant with the listed phenotype (several → mixed) or healthy when not listed."""
        columns = self.columns.get(level)
        if columns is None:
            return WeakLabel.HEALTHY, None
        types = (PHENOTYPE_COLUMNS[c] for c in columns if c in PHENOTYPE_COLUMNS)
        return WeakLabel.MALIGNANT, Phenotype.combine(types)


def read_clinical(path: Path) -> tuple[dict[str, CaseLabels | None], list[Skipped]]:
    """Parse ``Spine-Mets-CT-SEG_Clinical.xlsx``: case key → labels (``None``: unusable row).

    A row with unparseable level text, or a case listed twice, yields ``None`` (its vertebrae
    stay unlabeled) and a :class:`Skipped` record naming the cell. Raises ``ValueError`` when the
    sheet or a needed column is missing.
    """
    try:
        sheets = pd.read_excel(path, sheet_name=None, dtype=str, keep_default_na=False)
    except Exception as exc:  # openpyxl/zip errors for damaged files
        raise ValueError(f"{path}: not a readable xlsx file ({exc})") from None
    if CLINICAL_SHEET not in sheets:
        raise ValueError(f"{path}: no sheet {CLINICAL_SHEET!r} (sheets: {', '.join(sheets)})")
    table = sheets[CLINICAL_SHEET]
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("Case", *LEVEL_COLUMNS) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: sheet {CLINICAL_SHEET!r} lacks column(s) {', '.join(missing)}")
    cases: dict[str, CaseLabels | None] = {}
    skipped: list[Skipped] = []
    for i, record in enumerate(table.to_dict(orient="records")):
        row = i + 2
        if not str(record["Case"]).strip():
            continue
        key = case_key(record["Case"])
        where = f"{path.name} row {row} (Case {record['Case']})"
        if key in cases:
            skipped.append(Skipped(where, "case listed twice; its vertebrae are left unlabeled"))
            cases[key] = None
            continue
        columns: dict[str, list[str]] = defaultdict(list)
        try:
            for column in LEVEL_COLUMNS:
                try:
                    levels = parse_level_list(record[column])
                except ValueError as exc:
                    raise ValueError(f"column {column!r} text {record[column]!r}: {exc}") from None
                for level in levels:
                    columns[level].append(column)
        except ValueError as exc:
            skipped.append(Skipped(where, f"{exc}; the case's vertebrae are left unlabeled"))
            cases[key] = None
            continue
        columns_of = {lv: tuple(c) for lv, c in columns.items()}
        cases[key] = CaseLabels(str(record["Case"]).strip(), row, columns_of)
    return cases, skipped


@dataclass
class Study:
    """One patient's CT series and the DICOM-SEG of its vertebrae."""

    patient: str
    session: str
    ct: SeriesInfo
    seg: SeriesInfo

    @property
    def where(self) -> str:
        """Human-readable name for skip records."""
        return f"patient {self.patient}" + (f" series {self.session}" if self.session else "")


def pair_series(
    series: Sequence[SeriesInfo], incomplete: frozenset[str] = frozenset()
) -> tuple[list[Study], list[Skipped]]:
    """Pair each SEG with its CT by referenced series, else by FrameOfReferenceUID + patient.

    CT series in ``incomplete`` (files missing per metadata.csv) are not used.
    """
    cts = {s.uid: s for s in series if s.modality == "CT" and s.uid not in incomplete}
    segs = [s for s in series if s.modality == "SEG"]
    skipped = [
        Skipped(str(s.files[0].parent), f"modality {s.modality} is not used (CT and SEG only)")
        for s in series
        if s.modality not in {"CT", "SEG"}
    ]
    paired: dict[str, SeriesInfo] = {}
    for seg in segs:
        where = str(seg.files[0])
        if len(seg.files) != 1:
            skipped.append(Skipped(where, f"SEG series {seg.uid} has {len(seg.files)} files"))
            continue
        if seg.references:
            found = [cts[r] for r in seg.references if r in cts]
            missing = [r for r in seg.references if r in incomplete]
            if not found and missing:
                skipped.append(Skipped(where, f"its CT series {missing[0]} is incomplete"))
                continue
            if not found:
                skipped.append(
                    Skipped(
                        where,
                        f"references series {', '.join(seg.references)}, which is not a CT "
                        "series under --root; download that CT or remove the SEG",
                    )
                )
                continue
        else:
            found = [
                c
                for c in cts.values()
                if c.frame_of_reference_uid
                and c.frame_of_reference_uid == seg.frame_of_reference_uid
                and c.patient_id == seg.patient_id
            ]
        if len(found) != 1:
            skipped.append(
                Skipped(where, f"matches {len(found)} CT series; cannot tell which it segments")
            )
            continue
        ct = found[0]
        problem = None
        if ct.patient_id != seg.patient_id:
            problem = f"PatientID {seg.patient_id!r} differs from its CT's {ct.patient_id!r}"
        elif (
            ct.frame_of_reference_uid
            and seg.frame_of_reference_uid
            and ct.frame_of_reference_uid != seg.frame_of_reference_uid
        ):
            problem = f"FrameOfReferenceUID differs from its CT series {ct.uid}"
        elif ct.uid in paired:
            problem = f"CT series {ct.uid} already has SEG {paired[ct.uid].files[0]}"
        if problem:
            skipped.append(Skipped(where, problem))
            continue
        paired[ct.uid] = seg
    for uid, ct in sorted(cts.items()):
        if uid not in paired:
            skipped.append(
                Skipped(str(ct.files[0].parent), f"CT series {uid}: no DICOM-SEG segments it")
            )
    per_patient: dict[str, list[str]] = defaultdict(list)
    for uid in sorted(paired):
        per_patient[cts[uid].patient_id].append(uid)
    studies = []
    for patient, uids in sorted(per_patient.items()):
        for uid in uids:
            session = uid.rsplit(".", 1)[-1] if len(uids) > 1 else ""
            studies.append(Study(patient, session, cts[uid], paired[uid]))
    return studies, skipped


def check_nbia_metadata(root: Path, series: Sequence[SeriesInfo]) -> tuple[set[str], list[Skipped]]:
    """Compare NBIA ``metadata.csv`` files under ``root`` with what is on disk.

    Returns the UIDs of series with fewer files than ``Number of Images`` (they are not used) and
    a :class:`Skipped` record for each such series or series missing altogether.
    """
    found = {s.uid: s for s in series}
    incomplete: set[str] = set()
    skipped: list[Skipped] = []
    for path in (root / "metadata.csv", root / COLLECTION / "metadata.csv"):
        if not path.is_file():
            continue
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        needed = ("Series UID", "Number of Images", "File Location")
        if any(c not in table.columns for c in needed):
            skipped.append(Skipped(str(path), f"not an NBIA metadata.csv (needs {needed}); unused"))
            continue
        for record in table.to_dict(orient="records"):
            uid, location = record["Series UID"].strip(), record["File Location"].strip()
            try:
                expected = int(float(record["Number of Images"]))
            except ValueError:
                skipped.append(Skipped(f"{path.name} {location}", "unreadable Number of Images"))
                continue
            have = len(found[uid].files) if uid in found else 0
            if have < expected:
                incomplete.add(uid)
                skipped.append(
                    Skipped(
                        location.replace("\\", "/"),
                        f"{path.name} lists {expected} file(s) of series {uid}, {have} found; "
                        "re-download the series",
                    )
                )
    return incomplete, skipped


def find_lesion_mask(folder: Path, patient: str) -> Path | None:
    """``<folder>/<PatientID>.nii.gz`` (or ``.nii``) if present."""
    for suffix in LESION_SUFFIXES:
        path = folder / f"{patient}{suffix}"
        if path.is_file():
            return path
    return None


def lesion_on_ct_grid(path: Path, ct: CtVolume) -> nib.Nifti1Image:
    """A lesion-mask NIfTI reoriented onto the CT's voxel axes (flips/permutations only).

    Raises ``ValueError`` naming the file for NaN voxels or values other than 0/1/2; a remaining
    shape or affine difference is reported by :func:`~wsbench.data.preprocess.preprocess_subject`.
    """
    image = nib.load(path)
    if len(image.shape) != 3:
        raise ValueError(f"{path}: lesion mask is not 3D (shape {image.shape})")
    data = np.asanyarray(image.dataobj)
    if np.issubdtype(data.dtype, np.floating) and np.isnan(data).any():
        raise ValueError(f"{path}: lesion mask has {int(np.isnan(data).sum())} NaN voxels")
    values = set(np.unique(data).tolist())
    if not values <= set(range(BLASTIC + 1)):
        raise ValueError(f"{path}: lesion mask values {sorted(values)} are not within 0/1/2")
    current = nib.orientations.io_orientation(image.affine)
    target = nib.orientations.io_orientation(ct.affine)
    reoriented = image.as_reoriented(nib.orientations.ornt_transform(current, target))
    return nib.Nifti1Image(np.asarray(reoriented.dataobj).astype(np.uint8), reoriented.affine)


class TciaDataset(DatasetAdapter):
    """TCIA Spine-Mets-CT-SEG download (NBIA or IDC layout) with its clinical spreadsheet.

    Options: ``clinical`` (path of ``Spine-Mets-CT-SEG_Clinical.xlsx``; default: the file of that
    name under ``root``), ``lesions`` (folder of ``<PatientID>.nii.gz`` lesion masks 0/1/2 on the
    CT grid; enables lesion metrics), ``seed`` / ``test_fraction`` of the subject split, ``params``
    (:class:`~wsbench.data.preprocess.PreprocessParams`).
    """

    name: ClassVar[str] = "tcia"
    lesion_metrics: ClassVar[bool] = False
    needs_root: ClassVar[bool] = True
    root_hint: ClassVar[str] = (
        "the folder of the TCIA collection Spine-Mets-CT-SEG (DOI 10.7937/kh36-ds04, ~25 GB), "
        "downloaded with the NBIA Data Retriever or `idc download spine_mets_ct_seg "
        "--download-dir DIR` (pip install idc-index), plus the collection page's "
        "Spine-Mets-CT-SEG_Clinical.xlsx; see docs/tcia.md"
    )

    @property
    def params(self) -> PreprocessParams:
        """Preprocessing parameters (``params`` option or the defaults)."""
        return self.options.get("params", PreprocessParams())

    def _cache(self) -> Path:
        base = Path(self.cache_dir) if self.cache_dir is not None else cache_root() / "prepared"
        return base / self.name

    def _clinical_path(self, root: Path) -> Path:
        given = self.options.get("clinical")
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"clinical spreadsheet {path} does not exist")
            return path
        found = sorted(p for p in root.rglob("*.xlsx") if p.name.lower() == CLINICAL_FILE.lower())
        if len(found) == 1:
            return found[0]
        if not found:
            raise FileNotFoundError(
                f"no {CLINICAL_FILE} under {root}; download it from the collection page "
                "(https://doi.org/10.7937/kh36-ds04) into the root or pass the clinical option"
            )
        raise ValueError(f"several {CLINICAL_FILE} under {root}: {', '.join(map(str, found))}")

    def _lesion_folder(self) -> Path | None:
        given = self.options.get("lesions")
        if not given:
            return None
        folder = Path(given).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"lesion-mask folder {folder} does not exist")
        return folder

    def prepare(self) -> PreparedDataset:
        """Scan, pair, validate and preprocess the download (per-study results cached)."""
        if self.root is None:
            raise ValueError("the tcia dataset needs --root (the Spine-Mets-CT-SEG download)")
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder")
        clinical_path = self._clinical_path(root)
        lesion_folder = self._lesion_folder()
        series, skipped = scan_series(root)
        if not any(s.modality == "CT" for s in series):
            raise FileNotFoundError(f"no CT series (DICOM Modality CT) under {root}")
        incomplete, problems = check_nbia_metadata(root, series)
        skipped += problems
        studies, problems = pair_series(series, frozenset(incomplete))
        skipped += problems
        cases, problems = read_clinical(clinical_path)
        skipped += problems
        seed = int(self.options.get("seed", DEFAULT_SEED))
        fraction = float(self.options.get("test_fraction", DEFAULT_TEST_FRACTION))
        splits = seeded_split((s.patient for s in studies), seed, fraction)
        params = self.params

        vertebrae: list[PreparedVertebra] = []
        keys: list[str] = []
        for study in progress_over(studies, "preparing TCIA studies"):
            lesion_path = None
            if lesion_folder is not None:
                lesion_path = find_lesion_mask(lesion_folder, study.patient)
                if lesion_path is None:
                    skipped.append(
                        Skipped(study.where, f"no lesion mask {study.patient}.nii.gz in "
                                f"{lesion_folder}; no lesion reference for its vertebrae")
                    )  # fmt: skip
            key = self._study_key(study, lesion_path, params)
            keys.append(key)
            result, _ = cached_result(
                self._cache(), key, lambda s=study, p=lesion_path: self._process(s, p, params)
            )
            skipped += result.skipped
            labels = self._study_labels(study, result, cases, clinical_path, skipped)
            vertebrae += self._vertebrae(study, result, labels, splits[study.patient])
        paired = {case_key(s.patient) for s in studies}
        for key, labels in sorted(cases.items()):
            if key not in paired:
                name = f" row {labels.row} (Case {labels.case})" if labels else f" (Case {key})"
                skipped.append(
                    Skipped(
                        f"{clinical_path.name}{name}",
                        "no CT + DICOM-SEG of this patient under --root",
                    )
                )
        label_rows = sorted(
            (case, sorted((lv, cols) for lv, cols in lab.columns.items()) if lab else None)
            for case, lab in cases.items()
        )
        dataset_fp = digest([
            "tcia", sorted(keys), label_rows, params.as_dict(), seed, fraction,
            lesion_folder is not None], length=64)  # fmt: skip
        return PreparedDataset(
            self.name, dataset_fp, vertebrae, skipped, lesion_folder is not None, root
        )

    @staticmethod
    def _study_key(study: Study, lesion: Path | None, params: PreprocessParams) -> str:
        """Cache key: bytes of every CT, SEG (and lesion) file (not their names or order), the
        parameters and the reader version."""
        hashes = sorted(sha256_file(p) for p in study.ct.files)
        hashes += [sha256_file(p) for p in study.seg.files]
        lesion_hash = sha256_file(lesion) if lesion is not None else None
        return digest(
            ["tcia-study", READER_VERSION, hashes, lesion_hash, study.patient, params.as_dict()],
            length=64,
        )

    @staticmethod
    def _process(study: Study, lesion_path: Path | None, params: PreprocessParams) -> SubjectResult:
        """Read the CT and SEG (and lesion mask) and preprocess; problems become skips."""
        try:
            ct = read_ct_series(study.ct.files)
            vert, problems = read_seg_levels(study.seg.files[0], ct)
            lesion = None if lesion_path is None else lesion_on_ct_grid(lesion_path, ct)
        except (DicomError, ValueError, OSError) as exc:
            return SubjectResult([], [Skipped(study.where, str(exc))], [])
        if not vert.any():
            reason = f"{study.seg.files[0]}: every vertebra segment is empty"
            return SubjectResult([], [*problems, Skipped(study.where, reason)], [])
        result = preprocess_subject(
            ct.image(),
            nib.Nifti1Image(vert, ct.affine),
            None,
            lesion,
            where=study.where,
            params=params,
        )
        return SubjectResult(result.crops, problems + result.skipped, result.mask_levels)

    @staticmethod
    def _study_labels(
        study: Study,
        result: SubjectResult,
        cases: dict[str, CaseLabels | None],
        clinical_path: Path,
        skipped: list[Skipped],
    ) -> dict[str, tuple[WeakLabel, Phenotype | None]]:
        """Level → (label, phenotype) for the study's segmented levels; records sheet problems."""
        key = case_key(study.patient)
        if key not in cases:
            skipped.append(
                Skipped(study.where, f"no row in {clinical_path.name}; its vertebrae are unlabeled")
            )
            return {}
        labels = cases[key]
        if labels is None or not result.mask_levels:
            return {}
        for level in sorted(set(labels.columns) - set(result.mask_levels), key=LEVEL_NUMBERS.get):
            skipped.append(
                Skipped(
                    f"{study.where} {level}",
                    f"listed in {clinical_path.name} row {labels.row} "
                    f"({', '.join(labels.columns[level])}) but the SEG has no segment for it",
                )
            )
        return {level: labels.label(level) for level in result.mask_levels}

    def _vertebrae(
        self,
        study: Study,
        result: SubjectResult,
        labels: dict[str, tuple[WeakLabel, Phenotype | None]],
        split: Split,
    ) -> list[PreparedVertebra]:
        out = []
        for crop in result.crops:
            label, phenotype = labels.get(crop.level, (None, None))
            geometry: dict[str, Any] = {
                **crop.geometry,
                "source": str(study.ct.files[0].parent),
                "source_series_uid": study.ct.uid,
                "seg_file": str(study.seg.files[0]),
            }
            out.append(
                PreparedVertebra(
                    key=VertebraKey(self.name, study.patient, crop.level, study.session),
                    split=split,
                    label=label,
                    phenotype=phenotype,
                    slices=crop.slices,
                    body=crop.body,
                    spacing=crop.spacing,
                    lesions=crop.lesions,
                    geometry=geometry,
                )
            )
        return out


def derived_body_dice(
    vert: nib.spatialimages.SpatialImage,
    subreg: nib.spatialimages.SpatialImage,
    spacing_mm: float = PreprocessParams().spacing_mm,
) -> dict[str, float]:
    """Dice of the derived body (:func:`~wsbench.data.preprocess.derive_body`, as used for TCIA's
    whole-vertebra masks) against the true corpus (subregions 49 ∪ 50), per level.

    Both are compared on the PSR lattice the preprocessing uses, where the derivation runs.
    """
    lattice, shape = psr_lattice(vert.affine, vert.shape, spacing_mm)
    vert_psr = sample_on_grid(
        np.asarray(vert.dataobj), vert.affine, shape, lattice, 0, dtype=np.int32
    )
    subreg_psr = sample_on_grid(
        np.asarray(subreg.dataobj), subreg.affine, shape, lattice, 0, dtype=np.int32
    )
    scores = {}
    for number in np.unique(vert_psr):
        if number not in LEVEL_NAMES:
            continue
        vertebra = vert_psr == number
        truth = vertebra & np.isin(subreg_psr, BODY_SUBREGIONS)
        derived = derive_body(vertebra, spacing_mm)
        total = int(truth.sum()) + int(derived.sum())
        overlap = int((truth & derived).sum())
        scores[LEVEL_NAMES[int(number)]] = 2 * overlap / total if total else 0.0
    return scores
