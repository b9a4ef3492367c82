"""TCIA Spine-Mets-CT-SEG: CT series + DICOM-SEG vertebra masks + the clinical spreadsheet.

``root`` is a download of the collection in either layout (NBIA Data Retriever or IDC; see
docs/tcia.md). Segments become levels by their SegmentLabel. The collection has whole-vertebra
masks only, so the vertebral body is derived (:func:`wsbench.data.preprocess.derive_body`), and no
lesion masks: ``lesion_metrics`` is false unless the ``lesions`` option names a folder of lesion
masks.

* this module: the adapter :class:`TciaDataset` and :func:`derived_body_dice`;
* :mod:`~wsbench.datasets.tcia.layout`: the collection's names and spreadsheet columns;
* :mod:`~wsbench.datasets.tcia.clinical`: the clinical spreadsheet (:func:`read_clinical`);
* :mod:`~wsbench.datasets.tcia.series`: CT and SEG series paired into studies
  (:func:`pair_series`), NBIA ``metadata.csv`` checks, lesion-mask lookup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import nibabel as nib
import numpy as np

from wsbench.contract import (
    DatasetAdapter,
    Phenotype,
    PreparedDataset,
    PreparedVertebra,
    Scope,
    Skipped,
    Split,
    VertebraKey,
    WeakLabel,
)
from wsbench.data.dicom import (
    DicomError,
    SeriesInfo,
    read_ct_series,
    read_seg_levels,
    scan_series,
)
from wsbench.data.preprocess import (
    PreprocessParams,
    SubjectResult,
    VertebraCrop,
    cached_result,
    derive_body,
    preprocess_subject,
    psr_lattice,
    sample_on_grid,
)
from wsbench.data.splits import DEFAULT_SEED, DEFAULT_TEST_FRACTION, seeded_split
from wsbench.data.volumes import BODY_SUBREGIONS, LEVEL_NAMES, LEVEL_NUMBERS
from wsbench.datasets.tcia.clinical import CaseLabels, case_key, read_clinical
from wsbench.datasets.tcia.layout import CLINICAL_FILE, CLINICAL_SHEET
from wsbench.datasets.tcia.series import (
    Study,
    check_nbia_metadata,
    find_lesion_mask,
    lesion_file_name,
    lesion_on_ct_grid,
    pair_series,
)
from wsbench.files import digest
from wsbench.models.store import cache_root, sha256_file
from wsbench.progress import progress_over

READER_VERSION = "1"
"""Part of every cache key; bump when reading or pairing changes the prepared arrays."""

NAMED_PROBLEMS = 5
"""How many unusable files the error for a root without any CT series names."""


class TciaDataset(DatasetAdapter):
    """TCIA Spine-Mets-CT-SEG download (NBIA or IDC layout) with its clinical spreadsheet.

    Options: ``clinical`` (path of ``Spine-Mets-CT-SEG_Clinical.xlsx``; default: the file of that
    name under ``root``), ``lesions`` (folder of ``<PatientID>.nii.gz`` lesion masks 0/1/2 on the
    CT grid; enables lesion metrics), ``seed`` / ``test_fraction`` of the subject split, ``edge``
    (``"keep"``, the default, or ``"exclude"`` vertebrae whose mask touches the scan's edge), and
    for library code only ``params`` (:class:`~wsbench.data.preprocess.PreprocessParams`).
    """

    name: ClassVar[str] = "tcia"
    library_options: ClassVar[tuple[str, ...]] = ("params",)
    lesion_metrics: ClassVar[bool] = False
    needs_root: ClassVar[bool] = True
    root_hint: ClassVar[str] = (
        "the folder of the TCIA collection Spine-Mets-CT-SEG (DOI 10.7937/kh36-ds04, ~25 GB), "
        "downloaded with the NBIA Data Retriever or `idc download spine_mets_ct_seg "
        "--download-dir DIR` (pip install idc-index), plus the collection page's "
        "Spine-Mets-CT-SEG_Clinical.xlsx; see docs/tcia.md"
    )

    def __init__(
        self,
        root: Path | None = None,
        cache_dir: Path | None = None,
        *,
        clinical: Path | None = None,
        lesions: Path | None = None,
        seed: int = DEFAULT_SEED,
        test_fraction: float = DEFAULT_TEST_FRACTION,
        edge: Literal["keep", "exclude"] = "keep",
        params: PreprocessParams | None = None,
    ) -> None:
        if edge not in ("keep", "exclude"):
            raise ValueError(f"option edge={edge!r} is neither 'keep' nor 'exclude'")
        super().__init__(
            root, cache_dir, clinical=clinical, lesions=lesions, seed=seed,
            test_fraction=test_fraction, edge=edge, params=params,
        )  # fmt: skip

    @property
    def params(self) -> PreprocessParams:
        """Preprocessing parameters (``params`` option or the defaults)."""
        params = self.options["params"]
        return PreprocessParams() if params is None else params

    def _cache(self) -> Path:
        base = Path(self.cache_dir) if self.cache_dir is not None else cache_root() / "prepared"
        return base / self.name

    def _clinical_path(self, root: Path) -> Path:
        given = self.options["clinical"]
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
        given = self.options["lesions"]
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
            raise FileNotFoundError(no_ct_message(root, series, skipped))
        incomplete, problems = check_nbia_metadata(root, series)
        skipped += problems
        studies, problems = pair_series(series, frozenset(incomplete))
        skipped += problems
        cases, problems = read_clinical(clinical_path)
        skipped += problems
        if not cases:
            skipped.append(
                Skipped(
                    str(clinical_path),
                    f"sheet {CLINICAL_SHEET!r} lists no case, so no vertebra has a label; use the "
                    "collection's spreadsheet (https://doi.org/10.7937/kh36-ds04)",
                    Scope.DATASET,
                )
            )
        seed, fraction = int(self.options["seed"]), float(self.options["test_fraction"])
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
                        Skipped(study.where, f"no lesion mask {lesion_file_name(study.patient)} "
                                f"in {lesion_folder}; no lesion reference for its vertebrae",
                                Scope.FILE)
                    )  # fmt: skip
            key = self._study_key(study, lesion_path, params)
            keys.append(key)
            result, _ = cached_result(
                self._cache(), key, lambda s=study, p=lesion_path: self._process(s, p, params)
            )
            skipped += result.skipped
            labels = self._study_labels(study, result, cases, clinical_path, skipped)
            crops = self._selected(study, result, skipped)
            vertebrae += self._vertebrae(study, crops, labels, splits[study.patient])
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
        selection = [] if self.options["edge"] == "keep" else [f"edge={self.options['edge']}"]
        dataset_fp = digest([
            "tcia", sorted(keys), label_rows, params.data_dict(), seed, fraction,
            lesion_folder is not None, *selection], length=64)  # fmt: skip
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
            return SubjectResult([], [Skipped(study.where, str(exc), Scope.FILE)], [])
        if not vert.any():
            reason = f"{study.seg.files[0]}: every vertebra segment is empty"
            return SubjectResult([], [*problems, Skipped(study.where, reason, Scope.FILE)], [])
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

    def _selected(
        self, study: Study, result: SubjectResult, skipped: list[Skipped]
    ) -> list[VertebraCrop]:
        """The study's crops, less (with ``edge=exclude``) those touching the scan's edge, each
        recorded."""
        if self.options["edge"] == "keep":
            return result.crops
        kept = []
        for crop in result.crops:
            if crop.geometry["touches_scan_border"]:
                reason = (
                    "its mask touches the scan's edge (the vertebra may be cut off); excluded by "
                    "-o edge=exclude"
                )
                skipped.append(Skipped(f"{study.where} {crop.level}", reason))
            else:
                kept.append(crop)
        return kept

    def _vertebrae(
        self,
        study: Study,
        crops: list[VertebraCrop],
        labels: dict[str, tuple[WeakLabel, Phenotype | None]],
        split: Split,
    ) -> list[PreparedVertebra]:
        out = []
        for crop in crops:
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


def no_ct_message(root: Path, series: list[SeriesInfo], skipped: list[Skipped]) -> str:
    """The error for a root without any usable CT series: what was found and the first
    :data:`NAMED_PROBLEMS` unusable files with their reasons."""
    modalities = ", ".join(sorted({s.modality for s in series})) or "none"
    text = f"no CT series (DICOM Modality CT) under {root} (series found: {modalities})"
    if skipped:
        shown = "; ".join(f"{s.where}: {s.reason}" for s in skipped[:NAMED_PROBLEMS])
        more = (
            f"; and {len(skipped) - NAMED_PROBLEMS} more" if len(skipped) > NAMED_PROBLEMS else ""
        )
        text += f"; {len(skipped)} file(s) unusable: {shown}{more}"
    return f"{text}. Point --root at the Spine-Mets-CT-SEG download, or re-download it"


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
