"""The in-house BIDS-like layout: its writer and the file finder the in-house adapter reads with.

Files are byte-for-byte deterministic: the same subjects always give the same bytes (NIfTI
headers built from the data alone, gzip with ``mtime = 0`` and no file name, CSV with ``\\n``).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsbench.api import Skipped, SubjectVolumes, bids_folder, bids_stem, write_nifti_gz
from wsbench.contract import Scope

LABEL_COLUMNS = ("subject", "session", "vertebra", "label", "phenotype", "split")
"""Columns of ``labels.csv`` in the in-house layout."""


def _check_subject(subject: SubjectVolumes) -> None:
    """Raise ``ValueError`` naming the subject when its arrays are not on one grid."""
    shape = subject.ct.shape
    if subject.ct.ndim != 3:
        raise ValueError(f"subject {subject.subject}: CT must be 3D, got shape {shape}")
    for name in ("vert", "subreg", "lesion"):
        data = getattr(subject, name)
        if data is None:
            continue
        if data.shape != shape:
            raise ValueError(
                f"subject {subject.subject}: {name} shape {data.shape} differs from CT {shape}"
            )
        if data.size and (data.min() < 0 or data.max() > 255):
            raise ValueError(f"subject {subject.subject}: {name} labels must lie in 0..255")
    if np.asarray(subject.affine).shape != (4, 4):
        raise ValueError(f"subject {subject.subject}: affine must be 4×4")


def write_inhouse(root: Path, subjects: Sequence[SubjectVolumes]) -> None:
    """Write subjects in the in-house BIDS layout under ``root`` (``labels.csv`` included).

    Per subject (``sub-<S>``, with ``ses-<E>`` when ``session`` is set):
    ``rawdata/.../sub-<S>_ct.nii.gz`` (int16 HU), ``derivatives/.../sub-<S>_seg-vert_msk.nii.gz``,
    ``..._seg-subreg_msk.nii.gz`` when ``subreg`` is given and ``..._seg-lesion_msk.nii.gz`` when
    ``lesion`` is given (uint8). ``labels.csv`` has one row per vertebra with a known label (columns
    :data:`LABEL_COLUMNS`; vertebrae labelled ``None`` are left out, i.e. unlabeled); ``split`` is
    empty where a subject has none. Same input → byte-identical files.
    """
    root = Path(root)
    rows = []
    for subject in subjects:
        _check_subject(subject)
        stem = bids_stem(subject.subject, subject.session)
        raw = bids_folder(root, "rawdata", subject.subject, subject.session)
        der = bids_folder(root, "derivatives", subject.subject, subject.session)
        write_nifti_gz(raw / f"{stem}_ct.nii.gz", np.asarray(subject.ct, np.int16), subject.affine)
        masks = {"vert": subject.vert, "subreg": subject.subreg, "lesion": subject.lesion}
        for seg, data in masks.items():
            if data is not None:
                path = der / f"{stem}_seg-{seg}_msk.nii.gz"
                write_nifti_gz(path, np.asarray(data, np.uint8), subject.affine)
        for vertebra in subject.vertebrae:
            if vertebra.label is None:
                continue
            rows.append(
                {
                    "subject": subject.subject,
                    "session": subject.session,
                    "vertebra": vertebra.level,
                    "label": vertebra.label.value,
                    "phenotype": "" if vertebra.phenotype is None else vertebra.phenotype.value,
                    "split": "" if subject.split is None else subject.split.value,
                }
            )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LABEL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


# --- reading the in-house layout ----------------------------------------------------------------

MASK_KINDS = {"vert": "vert", "subreg": "subreg", "spine": "subreg", "lesion": "lesion"}
"""``seg-<x>`` entity → mask role (SPINEPS writes subregions as ``seg-spine``)."""


@dataclass(frozen=True)
class BidsName:
    """A parsed BIDS-like file name: subject, session, other entities and suffix."""

    path: Path
    subject: str
    session: str
    entities: tuple[tuple[str, str], ...]
    suffix: str

    def entity(self, key: str) -> str:
        """Value of one entity (empty when absent)."""
        return dict(self.entities).get(key, "")

    def others(self) -> frozenset[tuple[str, str]]:
        """Entities other than subject, session and seg (used to pair CT with its masks)."""
        return frozenset((k, v) for k, v in self.entities if k not in {"sub", "ses", "seg"})


def parse_bids_name(path: Path) -> BidsName | None:
    """Parse ``sub-<S>[_ses-<E>][_key-value...]_<suffix>.nii[.gz]``; ``None`` if not such a name."""
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            stem = name[: -len(ext)]
            break
    else:
        return None
    *pairs, suffix = stem.split("_")
    entities = tuple(tuple(p.split("-", 1)) for p in pairs if "-" in p)
    found = dict(entities)
    if "sub" not in found or len(entities) != len(pairs):
        return None
    return BidsName(path, found["sub"], found.get("ses", ""), entities, suffix)  # type: ignore[arg-type]


@dataclass
class SubjectFiles:
    """The files of one subject/session: CT and masks by role."""

    subject: str
    session: str
    ct: Path
    masks: dict[str, Path] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """``sub-<S>[_ses-<E>]``."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    def files(self) -> list[tuple[str, Path]]:
        """(role, path) of every file, in a fixed order."""
        roles = [r for r in ("vert", "subreg", "lesion") if r in self.masks]
        return [("ct", self.ct)] + [(r, self.masks[r]) for r in roles]


def find_subjects(
    root: Path, *, anywhere: bool = False
) -> tuple[list[SubjectFiles], list[Skipped]]:
    """Pair every ``rawdata`` CT with its ``derivatives`` masks by subject, session and suffix;
    with ``anywhere``, CTs and masks are searched in every folder under ``root`` (subject ids
    must then be unique under ``root``)."""
    ct_folder = root if anywhere else root / "rawdata"
    mask_folder = root if anywhere else root / "derivatives"
    cts: dict[tuple[str, str], list[BidsName]] = defaultdict(list)
    masks: dict[tuple[str, str], list[BidsName]] = defaultdict(list)
    for path in sorted(ct_folder.rglob("*.nii*")):
        parsed = parse_bids_name(path)
        if parsed is not None and parsed.suffix == "ct":
            cts[(parsed.subject, parsed.session)].append(parsed)
    for path in sorted(mask_folder.rglob("*.nii*")):
        parsed = parse_bids_name(path)
        if parsed is not None and parsed.suffix == "msk" and parsed.entity("seg") in MASK_KINDS:
            masks[(parsed.subject, parsed.session)].append(parsed)
    found, skipped = [], []
    for key in sorted(set(masks) - set(cts)):
        names = ", ".join(str(m.path) for m in masks[key])
        reason = (
            "mask without a CT in rawdata/ for this subject/session; add the CT or move the mask"
        )
        skipped.append(Skipped(names, reason, Scope.FILE))
    for key in sorted(cts):
        if len(cts[key]) > 1:
            names = ", ".join(str(c.path.name) for c in cts[key])
            reason = f"several CT files ({names}); keep one"
            skipped.append(Skipped(f"sub-{key[0]}", reason, Scope.FILE))
            continue
        ct = cts[key][0]
        subject = SubjectFiles(key[0], key[1], ct.path)
        problem = None
        for role in ("vert", "subreg", "lesion"):
            candidates = [m for m in masks[key] if MASK_KINDS[m.entity("seg")] == role]
            if len(candidates) > 1:
                candidates = [m for m in candidates if m.others() == ct.others()]
            if len(candidates) > 1:
                problem = f"several {role} masks match {ct.path.name}: " + ", ".join(
                    m.path.name for m in candidates
                )
            elif candidates:
                subject.masks[role] = candidates[0].path
        if problem is None and "vert" not in subject.masks:
            problem = f"no seg-vert mask for {ct.path.name} in derivatives/"
        if problem:
            skipped.append(Skipped(str(ct.path), problem, Scope.FILE))
        else:
            found.append(subject)
    if not cts:
        raise FileNotFoundError(
            f"no CT files (sub-*_ct.nii.gz) under {ct_folder}; is --root the BIDS folder?"
        )
    return found, skipped
