"""Property-based fuzzing (Hypothesis, bounded) of what the in-house adapter reads: the labels
table, the Hide-and-Seek manifest and NIfTI headers. Each reader either returns its rows and
:class:`~wsbench.contract.Skipped` records or raises ``ValueError`` naming the file — never any
other exception — and keeps every valid row."""

from __future__ import annotations

import csv
import gzip
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsbench.contract import Phenotype, Scope, Split, WeakLabel
from wsbench.data.nifti import write_nifti_gz
from wsbench.data.volumes import SubjectVolumes, VertebraLabel, level_name
from wsbench.datasets.inhouse import InHouseDataset, LabelRow, parse_labels
from wsbench.datasets.inhouse.layout import write_inhouse

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# --- labels table ---------------------------------------------------------------------------------

SUBJECTS = ["001", "002", "sub-003", "a/b", "..", "x y"]
LEVELS = ["L3", "T12", "22", "8"]
LABELS = ["healthy", "malignant", "0", "1", "MALIGNANT"]
PHENOTYPES = ["", "lytic", "blastic", "mixed"]
SPLITS = ["train", "test", "TEST"]
JUNK = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\x00"), max_size=8)


@st.composite
def label_tables(draw) -> tuple[list[str], list[dict[str, str]]]:
    """Columns (required ones, optional ones, junk ones, shuffled) and rows mixing valid and
    junk cells."""
    optional = draw(st.lists(st.sampled_from(["session", "phenotype", "split"]), unique=True))
    extra = draw(st.lists(st.sampled_from(["notes", "Weight", "id"]), unique=True, max_size=2))
    known = ["subject", "vertebra", "label", *optional]
    columns = draw(st.permutations([*known, *extra]))
    with_split = "split" in optional and draw(st.booleans())
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        good = draw(st.booleans())
        cell = {
            "subject": st.sampled_from(SUBJECTS),
            "vertebra": st.sampled_from(LEVELS),
            "label": st.sampled_from(LABELS),
            "session": st.sampled_from(["", "base", "ses-2"]),
            "phenotype": st.sampled_from(PHENOTYPES),
            "split": st.sampled_from(SPLITS) if with_split else st.just(""),
        }
        row = {c: draw(cell[c]) if good or draw(st.booleans()) else draw(JUNK) for c in known}
        rows.append({c: row[c] if c in row else draw(JUNK) for c in columns})
    return columns, rows


def expected_row(row: dict[str, str]) -> LabelRow | None:
    """The row as parse_labels must read it, or None when a cell is invalid."""
    try:
        if not row["subject"].strip().removeprefix("sub-"):
            return None
        return LabelRow(
            subject=row["subject"].strip().removeprefix("sub-"),
            session=row.get("session", "").strip().removeprefix("ses-"),
            level=level_name(row["vertebra"]),
            label=WeakLabel.parse(row["label"]),
            phenotype=Phenotype.parse(row.get("phenotype", "")),
            split=Split(row["split"].strip().lower()) if row.get("split", "").strip() else None,
        )
    except ValueError:
        return None


@FUZZ
@given(table=label_tables())
def test_labels_table_fuzz(table: tuple[list[str], list[dict[str, str]]]) -> None:
    columns, rows = table
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        try:
            parsed, skipped = parse_labels(path)
        except ValueError as exc:
            assert str(path) in str(exc)
            return
    splits_given = any(r.get("split", "").strip() for r in rows)
    expected = [expected_row(r) for r in rows]
    usable = [r for r in expected if r is not None and (r.split is not None or not splits_given)]
    by_key: dict[tuple[str, str, str], list[LabelRow]] = {}
    for row in usable:
        by_key.setdefault((row.subject, row.session, row.level), []).append(row)
    agreed = [found for found in by_key.values() if len(set(found)) == 1]
    assert sorted(map(repr, parsed)) == sorted(repr(found[0]) for found in agreed)
    # every other row is one record naming it: exact repeats count once, silently
    assert len(skipped) == len(rows) - sum(len(found) for found in agreed)
    assert all(s.where.startswith("labels.csv row ") for s in skipped)


# --- Hide-and-Seek manifest ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one valid 64³ crop ``good.nii.gz`` and its mask ``good_seg.nii.gz``."""
    folder = tmp_path_factory.mktemp("crops")
    image = np.full((64, 64, 64), 0.5, np.float32)
    seg = np.zeros((64, 64, 64), np.uint8)
    seg[20:44, 20:44, 20:44] = 1
    affine = np.diag([0.8, 0.675, 0.8, 1.0])
    write_nifti_gz(folder / "good.nii.gz", image, affine)
    write_nifti_gz(folder / "good_seg.nii.gz", seg, affine)
    return folder


MANIFEST_CELLS = {
    "image": ["good.nii.gz", "missing.nii.gz", ""],
    "seg_msk": ["good_seg.nii.gz", "good.nii.gz", "nothing"],
    "label": ["0", "1", "malignant", "maybe", ""],
    "patient_id": ["p1", "p2", "", "a/b"],
    "split": ["train", "test", "", "later"],
}


@FUZZ
@given(data=st.data())
def test_manifest_fuzz(crops: Path, data: st.DataObject) -> None:
    optional = data.draw(st.lists(st.sampled_from(["patient_id", "split"]), unique=True))
    columns = data.draw(st.permutations(["image", "seg_msk", "label", *optional]))
    n_rows = data.draw(st.integers(0, 4))
    rows = [
        {c: data.draw(st.sampled_from(MANIFEST_CELLS[c]) | JUNK) for c in columns}
        for _ in range(n_rows)
    ]
    manifest = crops / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    try:
        prepared = InHouseDataset(root=manifest).prepare()
    except ValueError as exc:
        assert str(manifest) in str(exc)
        return
    splits = [r.get("split", "").strip().lower() for r in rows]
    patients = [r.get("patient_id", "").strip() or "good" for r in rows]
    given = {(p, s) for p, s in zip(patients, splits, strict=True) if s}
    torn = {p for p, _ in given if sum(q == p for q, _ in given) > 1}
    for i, row in enumerate(rows):
        valid = (
            row["image"] == "good.nii.gz"
            and row["seg_msk"] == "good_seg.nii.gz"
            and row["label"].strip().lower() in {"0", "1", "healthy", "malignant"}
            and (splits[i] in {"train", "test"} or not any(splits))
            and patients[i] not in torn
        )
        if valid:
            assert any(v.key.subject == patients[i] for v in prepared.vertebrae), (i, rows)
    assert len(prepared.vertebrae) + len(prepared.skipped) >= len(rows) - len(torn)


# --- NIfTI headers ------------------------------------------------------------------------------

HEADER_FIELDS = {
    "dim": (40, "8h"),
    "datatype": (70, "h"),
    "bitpix": (72, "h"),
    "pixdim": (76, "8f"),
    "vox_offset": (108, "f"),
    "scl_slope": (112, "f"),
    "scl_inter": (116, "f"),
    "qform_code": (252, "h"),
    "sform_code": (254, "h"),
    "quatern": (256, "6f"),
    "srow": (280, "12f"),
}
SHORTS = st.integers(-32768, 32767) | st.sampled_from([0, 1, 2, 3, 4, 16, 64, 512, 768])
FLOATS = st.floats(width=32) | st.sampled_from([0.0, -1.0, 1e-9, 1e9])


@st.composite
def header_damage(draw) -> tuple[str, str, tuple]:
    """A file role, a header field and new values for it."""
    role = draw(st.sampled_from(["ct", "vert"]))
    name = draw(st.sampled_from(sorted(HEADER_FIELDS)))
    fmt = HEADER_FIELDS[name][1]
    count, kind = (int(fmt[:-1]) if len(fmt) > 1 else 1), fmt[-1]
    values = tuple(draw(SHORTS if kind == "h" else FLOATS) for _ in range(count))
    return role, name, values


@pytest.fixture(scope="module")
def small_subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24×24×24 in-house subject with one malignant L3 (a box with a hole for its canal)."""
    root = tmp_path_factory.mktemp("small")
    vert = np.zeros((24, 24, 24), np.uint8)
    vert[4:20, 6:18, 4:20] = 22
    vert[12:16, 6:18, 10:14] = 0
    ct = np.where(vert > 0, 300, 0).astype(np.int16)
    affine = np.array([[0, 0, 1.5, 0], [-1.5, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1.0]])
    labels = [VertebraLabel("L3", WeakLabel.MALIGNANT, Phenotype.LYTIC)]
    volumes = SubjectVolumes("x", ct, affine, vert, labels, split=Split.TEST)
    write_inhouse(root, [volumes])
    return root


@FUZZ
@given(damage=header_damage())
def test_nifti_header_fuzz(small_subject: Path, damage: tuple[str, str, tuple]) -> None:
    role, name, values = damage
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "bids"
        shutil.copytree(small_subject, root)
        suffix = "rawdata/sub-x/sub-x_ct.nii.gz" if role == "ct" else (
            "derivatives/sub-x/sub-x_seg-vert_msk.nii.gz"
        )  # fmt: skip
        path = root / suffix
        raw = bytearray(gzip.decompress(path.read_bytes()))
        offset, fmt = HEADER_FIELDS[name]
        struct.pack_into("<" + fmt, raw, offset, *values)
        path.write_bytes(gzip.compress(bytes(raw)))
        prepared = InHouseDataset(root=root, cache_dir=Path(folder) / "cache").prepare()
    assert len(prepared.vertebrae) + len(prepared.skipped) >= 1
    for item in prepared.skipped:
        if item.scope is Scope.FILE:
            assert path.name in item.reason or "CT" in item.reason, item
