"""The collection's clinical spreadsheet: which levels of each case are malignant, and how.

``Spine-Mets-CT-SEG_Clinical.xlsx`` lists, per case, free-text level lists (``"T1, T2 T3,
T5-T7"``) in the columns of :data:`~wsbench.datasets.tcia.layout.LEVEL_COLUMNS`;
:func:`read_clinical` turns them into a :class:`CaseLabels` per case, keyed by :func:`case_key`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wsbench.contract import Phenotype, Skipped, WeakLabel
from wsbench.data.volumes import LEVEL_NAMES, LEVEL_NUMBERS
from wsbench.datasets.tcia.layout import CLINICAL_SHEET, LEVEL_COLUMNS, PHENOTYPE_COLUMNS

LEVEL_TOKEN = re.compile(r"([CTL])\s*(\d{1,2})(?:\s*[-–—]\s*([CTL])?\s*(\d{1,2}))?")
"""A level (``T3``, ``T 3``) or a range (``T5-T8``, ``T11-L2``, ``T5-8``) in the clinical text."""

SEPARATORS = re.compile(r"(?:[\s,;/&+.]|\bAND\b)*")
"""What may stand between levels in a level list."""

EMPTY_TEXT = {"", "NONE", "NO", "N/A", "NA", "NAN", "-", "0"}
"""Cell texts that mean an empty level list."""

MAIN_LEVELS = tuple(n for n in sorted(LEVEL_NAMES) if LEVEL_NAMES[n][0] in "CTL" and n <= 24)
"""VerSe numbers C1…L5 in cranio-caudal order (ranges expand over these; T13 and L6 are
never inside a range)."""


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
