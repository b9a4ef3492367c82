"""Predicted masks exported into the source CT's grid (NIfTI), through a real run."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from test_inhouse import subject
from typer.testing import CliRunner

from wsbench.cli.main import app
from wsbench.contract import Phenotype, Split, WeakLabel
from wsbench.datasets.inhouse.layout import write_inhouse
from wsbench.harness.runner import RunConfig, RunError, run


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
    from wsbench.report.export import export_run

    with pytest.raises(RunError, match=r"no manifest\.json"):
        export_run(tmp_path, tmp_path / "out")


def test_dicom_seg_export_matches_the_nifti_export(tmp_path: Path):
    from test_dicomio import box_spine

    from wsbench.data.dicom import read_ct_series, scan_series
    from wsbench.datasets.phantom.tcia_writer import write_tcia
    from wsbench.report.export import export_run

    labels = {"L1": (WeakLabel.MALIGNANT, Phenotype.BLASTIC), "L2": (WeakLabel.HEALTHY, None)}
    write_tcia(tmp_path / "tcia", [box_spine("s01", labels), box_spine("s02", labels)])
    result = run(RunConfig("otsu", "tcia", root=str(tmp_path / "tcia")), tmp_path / "runs")
    [nifti] = export_run(result.run_dir, tmp_path / "nii", "nifti")
    [seg] = export_run(result.run_dir, tmp_path / "seg", "dicom-seg")
    assert seg.path.name == f"sub-{seg.subject}_desc-otsu_seg-lesion.dcm"
    expected = np.asarray(nib.load(nifti.path).dataobj)
    assert (expected == 2).any()  # Otsu's blastic branch marks the bright half of L1's body

    ct_series = [s for s in scan_series(tmp_path / "tcia")[0] if s.modality == "CT"]
    ct = read_ct_series(next(s for s in ct_series if s.patient_id == seg.subject).files)
    volume = hd.seg.segread(seg.path).get_volume(combine_segments=True)
    decoded = np.asarray(volume.match_geometry(ct.geometry()).array).transpose(2, 1, 0)
    np.testing.assert_array_equal(decoded, expected)

    with pytest.raises(RunError, match="not one of"):
        export_run(result.run_dir, tmp_path / "x", "png")  # type: ignore[arg-type]
