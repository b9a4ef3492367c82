"""NIfTI writing and BIDS naming shared by the adapters and the export.

Files are byte-for-byte deterministic: the same array always gives the same bytes (NIfTI
headers built from the data alone, gzip with ``mtime = 0`` and no file name).
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np

GZIP_LEVEL = 6


def bids_stem(subject: str, session: str = "") -> str:
    """File-name stem ``sub-<S>[_ses-<E>]``."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def bids_folder(root: Path, tree: str, subject: str, session: str = "") -> Path:
    """``<root>/<tree>/sub-<S>[/ses-<E>]`` (``tree`` is ``rawdata`` or ``derivatives``)."""
    folder = Path(root) / tree / f"sub-{subject}"
    return folder / f"ses-{session}" if session else folder


def write_nifti_gz(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a ``.nii.gz`` deterministically (gzip mtime 0, no stored name; units mm)."""
    image = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with gzip.GzipFile(
        filename="", mode="wb", fileobj=buffer, compresslevel=GZIP_LEVEL, mtime=0
    ) as gz:
        gz.write(image.to_bytes())
    path.write_bytes(buffer.getvalue())
