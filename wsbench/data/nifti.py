"""NIfTI reading and writing and BIDS naming shared by the adapters and the export.

Files are byte-for-byte deterministic: the same array always gives the same bytes (NIfTI
headers built from the data alone, gzip with ``mtime = 0`` and no file name).
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

GZIP_LEVEL = 6

READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    ValueError,
    OverflowError,
    HeaderDataError,
    ImageFileError,
)
"""What nibabel raises on a truncated or corrupt file (header or compressed data)."""


class UnreadableNiftiError(ValueError):
    """A NIfTI file whose header or data cannot be read; the message names the file."""


def load_nifti(path: Path) -> nib.Nifti1Image:
    """The image at ``path`` with its data read into memory (same affine, header and scaled
    values as :func:`nibabel.load`), so that a truncated or corrupt file fails here, naming it,
    rather than later inside the processing."""
    try:
        image = nib.load(path)
        loaded = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header)
    except READ_ERRORS as exc:
        raise UnreadableNiftiError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); the file is truncated or "
            "corrupt: re-export or re-download it"
        ) from exc
    except MemoryError:
        raise UnreadableNiftiError(
            f"{path}: its header claims a volume of shape {image.shape}, more than this machine's "
            "memory holds; fix the header's dim field or re-export the file"
        ) from None
    loaded.set_filename(str(path))
    return loaded


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
