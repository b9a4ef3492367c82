"""Predicted masks exported into the source CT's grid (NIfTI), through a real run."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_inhouse import subject
from typer.testing import CliRunner

from wsbench.cli import app
from wsbench.formats import write_inhouse
from wsbench.runner import RunConfig, RunError, run
from wsbench.types import Split


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_otsu_masks_land_on_the_source_lesions(tmp_path: Path):
    root = tmp_path / "bids"
    source = subject("001")
    write_inhouse(root, [source, subject("002", split=Split.TRAIN)])
    result = run(RunConfig("otsu", "inhouse", root=str(root)), tmp_path / "runs")

    cli = CliRunner().invoke(app, ["export", str(result.run_dir), "--out", str(tmp_path / "x")])
    assert cli.exit_code == 0, cli.output
    image = nib.load(tmp_path / "x" / "sub-001_desc-otsu_seg-lesion_msk.nii.gz")
    exported = np.asarray(image.dataobj)
    assert exported.shape == source.ct.shape and exported.dtype == np.uint8
    np.testing.assert_allclose(image.affine, source.affine, atol=1e-4)
    # one sagittal plane (source axis 2 is left-right) holds every exported voxel
    planes = np.unique(np.nonzero(exported)[2])
    assert len(planes) == 1
    plane = planes[0]
    for label in (1, 2):
        predicted = exported[:, :, plane] == label
        reference = source.lesion[:, :, plane] == label
        assert dice(predicted, reference) > 0.8, label
    sidecar = (tmp_path / "x" / "sub-001_desc-otsu_seg-lesion_msk.json").read_text()
    assert "inhouse_001_L3" in sidecar


def test_export_refuses_a_folder_that_is_not_a_run(tmp_path: Path):
    from wsbench.export import export_nifti

    with pytest.raises(RunError, match=r"no manifest\.json"):
        export_nifti(tmp_path, tmp_path / "out")
