"""k-slice evaluation: K sagittal slices per vertebra, each segmented on its own, scored as one
slab against the reference slab, beside the centre slice's own figures."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from test_inhouse import subject
from test_preprocess import PSR_0P8, PSR_SHAPE, anatomy
from test_preprocess import run as preprocess
from typer.testing import CliRunner

from wsbench.cli.main import app
from wsbench.contract import (
    BLASTIC,
    DatasetAdapter,
    Method,
    Phenotype,
    PreparedDataset,
    PreparedVertebra,
    Split,
    VertebraKey,
    VertebraSample,
    WeakLabel,
    central_slices_needed,
    slice_offsets,
)
from wsbench.data.preprocess import PreprocessParams
from wsbench.datasets.inhouse.layout import write_inhouse
from wsbench.datasets.phantom import PhantomDataset
from wsbench.files import digest
from wsbench.harness.runner import RunConfig, RunError, run
from wsbench.report.export import export_run
from wsbench.report.summary import print_summary

SIZE = 32
ID_COLUMNS = {"dataset", "subject", "session", "level", "label", "phenotype", "category",
              "status", "reason"}  # fmt: skip
STEP = 2
"""Slice step of the constructed dataset's runs (slices of its 0.8 mm grid)."""


def vertebra(level: str, lesion_offsets: tuple[int, ...], n_slices: int) -> PreparedVertebra:
    """A blastic vertebra of ``n_slices`` slices at 200 HU, body [4, 28)²: on the slices at
    ``lesion_offsets`` from the middle one, a bright square [8, 13)² (900 HU) whose reference
    lesion is one column wider, [8, 13) × [8, 14) (30 pixels against 25 found)."""
    slices = np.full((n_slices, SIZE, SIZE), 200.0, np.float32)
    lesions = np.zeros((n_slices, SIZE, SIZE), np.uint8)
    for offset in lesion_offsets:
        slices[n_slices // 2 + offset, 8:13, 8:13] = 900.0
        lesions[n_slices // 2 + offset, 8:13, 8:14] = BLASTIC
    body = np.zeros((n_slices, SIZE, SIZE), bool)
    body[:, 4:28, 4:28] = True
    return PreparedVertebra(
        key=VertebraKey("offcentre", "s1", level),
        split=Split.TEST,
        label=WeakLabel.MALIGNANT,
        phenotype=Phenotype.BLASTIC,
        slices=slices,
        body=body,
        spacing=(0.8, 0.8),
        lesions=lesions,
    )


class OffCentre(DatasetAdapter):
    """L1: a lesion only at centre + 2 slices; L2: one on the centre and centre + 2 slices.
    Prepares as many central slices as its ``params`` ask for."""

    name = "offcentre"
    needs_root = False
    library_options = ("params",)

    def __init__(self, root=None, cache_dir=None, *, params: PreprocessParams | None = None):
        super().__init__(root, cache_dir, params=params)

    def prepare(self) -> PreparedDataset:
        n = (self.options["params"] or PreprocessParams()).n_slices
        vertebrae = [vertebra("L1", (STEP,), n), vertebra("L2", (0, STEP), n)]
        return PreparedDataset("offcentre", "offcentre-fingerprint", vertebrae)


class Bright(Method):
    """Blastic wherever the slice is brighter than 500 HU."""

    name = "bright"

    def segment(self, sample: VertebraSample) -> np.ndarray:
        return np.where(sample.image > 500, BLASTIC, 0).astype(np.uint8)


def offcentre(method: str = "test_kslice:Bright", slices: int = 1) -> RunConfig:
    return RunConfig(method, "test_kslice:OffCentre", slices=slices, slice_step=STEP)


def test_offsets_and_slices_needed():
    assert slice_offsets(1, 8) == [0]
    assert slice_offsets(5, 8) == [-16, -8, 0, 8, 16]
    assert central_slices_needed(1, 8) == 5 and central_slices_needed(5, 8) == 37
    with pytest.raises(ValueError, match="--slices 4: give an odd number"):
        slice_offsets(4, 8)
    with pytest.raises(ValueError, match="--slice-step 0"):
        slice_offsets(3, 0)


def test_an_off_centre_lesion_is_nothing_to_find_on_one_slice(tmp_path: Path):
    cases = run(offcentre(slices=1), tmp_path).cases.set_index("vertebra")
    case = cases.loc["offcentre_s1_L1"]
    assert (case["n_ref"], case["n_pred"], case["tp"], case["fp"]) == (0, 0, 0, 0)
    assert bool(case["empty_both"]) and math.isnan(case["sq"])


def test_three_slices_find_the_off_centre_lesion_with_its_exact_dice(tmp_path: Path):
    result = run(offcentre(slices=3), tmp_path)
    case = result.cases.set_index("vertebra").loc["offcentre_s1_L1"]
    assert (case["n_ref"], case["n_pred"], case["tp"], case["fp"], case["fn"]) == (1, 1, 1, 0, 0)
    assert case["sq"] == pytest.approx(2 * 25 / (25 + 30))
    assert case["global_dice"] == pytest.approx(2 * 25 / (25 + 30))
    assert case["ref_area_mm2"] == pytest.approx(30 * 0.64)
    # the centre slice, from the same answers, has nothing to find
    assert (case["centre_n_ref"], case["centre_tp"]) == (0, 0) and case["centre_empty_both"]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert (manifest["slices"], manifest["slice_step"]) == (3, STEP)
    assert manifest["config"]["slices"] == 3
    with np.load(result.run_dir / "masks" / "offcentre_s1_L1.npz") as masks:
        assert masks["labels"].shape == masks["reference"].shape == (3, SIZE, SIZE)
        assert masks["offsets"].tolist() == [-STEP, 0, STEP]
        assert masks["labels"][2, 8:13, 8:13].all() and not masks["labels"][:2].any()


def test_a_lesion_on_two_neighbouring_evaluated_slices_counts_once(tmp_path: Path):
    case = run(offcentre(slices=3), tmp_path).cases.set_index("vertebra").loc["offcentre_s1_L2"]
    assert (case["n_ref"], case["n_pred"], case["tp"], case["fp"], case["fn"]) == (1, 1, 1, 0, 0)
    assert case["sq"] == pytest.approx(2 * 50 / (50 + 60))
    assert case["ref_area_px"] == 60 and case["centre_ref_area_px"] == 30


def test_the_centre_figures_are_the_single_slice_runs(tmp_path: Path):
    single = run(offcentre("fakes:NoisyMethod"), tmp_path / "one").cases.set_index("vertebra")
    slab = run(offcentre("fakes:NoisyMethod", 3), tmp_path / "three").cases.set_index("vertebra")
    measured = [c for c in single.columns if c not in ID_COLUMNS]
    assert {"tp", "sq", "pred_area_px", "empty_both"} <= set(measured)
    centre = slab[[f"centre_{c}" for c in measured]].set_axis(measured, axis=1)
    pd.testing.assert_frame_equal(centre, single[measured], check_dtype=False)


def test_a_single_slice_run_is_the_run_as_before(tmp_path: Path):
    before = {"method": "otsu", "dataset": "fakes:TinyDataset", "split": "test", "seed": 0,
              "root": None, "params": {}, "dataset_options": {}}  # fmt: skip
    config = RunConfig("otsu", "fakes:TinyDataset")
    assert config.digest == digest(before, length=8)
    assert RunConfig("otsu", "fakes:TinyDataset", slices=3).digest != config.digest
    result = run(config, tmp_path)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["config"] == before and manifest["slices"] == 1
    assert not [c for c in result.cases.columns if c.startswith("centre_")]
    with np.load(result.run_dir / "masks" / "tiny_s3_L1.npz") as masks:
        assert "offsets" not in masks and masks["labels"].shape == (SIZE, SIZE)


def test_a_dataset_that_cannot_prepare_more_slices_is_refused(tmp_path: Path):
    config = RunConfig("otsu", "fakes:TinyDataset", slices=3)
    with pytest.raises(RunError, match="'fakes:TinyDataset' cannot prepare the 21 central"):
        run(config, tmp_path)
    too_wide = RunConfig("otsu", "test_kslice:OffCentre", slices=9, slice_step=8)
    with pytest.raises(RunError, match=r"spans 69 central slices.*crop.s 64"):
        run(too_wide, tmp_path)


def test_the_cli_checks_the_slices_before_preparing(tmp_path: Path):
    result = CliRunner().invoke(app, ["run", "-m", "otsu", "--dataset", "fakes:TinyDataset",
                                      "--slices", "2", "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 1
    assert "--slices 2: give an odd number" in result.output
    assert not (tmp_path / "fakes-TinyDataset").exists()


def test_more_central_slices_hold_the_same_five_and_the_same_data():
    arrays = anatomy(PSR_0P8, PSR_SHAPE)
    (five,) = preprocess(arrays, PSR_0P8).crops
    (wide,) = preprocess(arrays, PSR_0P8, params=PreprocessParams(n_slices=21)).crops
    assert wide.slices.shape == (21, 64, 64)
    np.testing.assert_array_equal(wide.slices[8:13], five.slices)
    np.testing.assert_array_equal(wide.lesions[8:13], five.lesions)
    np.testing.assert_array_equal(wide.body[8:13], five.body)
    assert wide.geometry["slice_indices"] == list(range(22, 43))
    params = PreprocessParams(n_slices=21)
    assert params.data_dict() == PreprocessParams().data_dict() == PreprocessParams().as_dict()
    assert params.as_dict() != PreprocessParams().as_dict()
    with pytest.raises(ValueError, match="n_slices=4"):
        PreprocessParams(n_slices=4)


def second_lesion_subject():
    """The constructed L3 with a second blastic ball (r = 3 mm) 6.4 mm right of the mid-sagittal
    plane (lattice plane R 38; the middle one is R 30): absent from the mid-sagittal slice."""
    volumes = subject("001")
    arrays = anatomy(PSR_0P8, PSR_SHAPE)
    idx = np.indices(PSR_SHAPE).reshape(3, -1).T
    x, y, z = nib.affines.apply_affine(PSR_0P8, idx).T
    ball = ((x - 6.8) ** 2 + (y - 16) ** 2 + (z - 10) ** 2 < 9).reshape(PSR_SHAPE)
    volumes.ct = np.where(ball, 900, arrays["ct"]).astype(np.int16)
    volumes.lesion = np.where(ball, BLASTIC, arrays["lesion"]).astype(np.uint8)
    return volumes, ball


def test_export_writes_every_evaluated_slice_back(tmp_path: Path):
    volumes, ball = second_lesion_subject()
    root = tmp_path / "bids"
    write_inhouse(root, [volumes, subject("002", split=Split.TRAIN)])
    one = run(RunConfig("test_kslice:Bright", "inhouse", root=str(root)), tmp_path / "runs")
    config = RunConfig("test_kslice:Bright", "inhouse", root=str(root), slices=3, slice_step=8)
    three = run(config, tmp_path / "runs")
    assert one.cases.iloc[0]["n_ref"] == 2 and three.cases.iloc[0]["n_ref"] == 3
    assert three.cases.iloc[0]["centre_n_ref"] == 2
    (exported,) = export_run(three.run_dir, tmp_path / "export")
    back = np.asarray(nib.load(exported.path).dataobj)
    planes = np.flatnonzero(back.any(axis=(0, 1)))
    assert set(planes) <= {22, 30, 38} and {30, 38} <= set(planes)
    found = back[:, :, 38] == BLASTIC
    assert (found & ball[:, :, 38]).sum() > 0.5 * ball[:, :, 38].sum()
    (single,) = export_run(one.run_dir, tmp_path / "export-one")
    np.testing.assert_array_equal(np.asarray(nib.load(single.path).dataobj)[:, :, 30],
                                  back[:, :, 30])  # fmt: skip


def test_the_summary_sets_the_slab_against_the_centre_slice(tmp_path: Path):
    console = Console(record=True, width=100)
    print_summary(run(offcentre("test_kslice:Bright", 3), tmp_path), console)
    text = console.export_text()
    assert "3 slices 2 apart vs the centre slice alone (same answers)" in text
    assert re.search(r"SQ ↑\s+│\s+0\.91 vs 0\.91", text)
    single = Console(record=True, width=100)
    print_summary(run(offcentre("test_kslice:Bright", 1), tmp_path), single)
    assert "vs the centre slice" not in single.export_text()


class Narrow(OffCentre):
    """:class:`OffCentre` whose vertebral body lies on the three middle slices only."""

    def prepare(self) -> PreparedDataset:
        prepared = super().prepare()
        for vertebra in prepared.vertebrae:
            middle = vertebra.mid
            vertebra.body[: middle - 1] = vertebra.body[middle + 2 :] = False
        return prepared


def test_slices_without_body_are_empty_answers_not_failures(tmp_path: Path):
    config = RunConfig("otsu", "test_kslice:Narrow", slices=3, slice_step=STEP)
    result = run(config, tmp_path)  # otsu raises on a slice without body
    assert (result.cases["status"] == "ok").all()
    with np.load(result.run_dir / "masks" / "offcentre_s1_L1.npz") as masks:
        assert not masks["labels"][[0, 2]].any() and not masks["body"][[0, 2]].any()
    case = result.cases.set_index("vertebra").loc["offcentre_s1_L1"]
    assert (case["n_ref"], case["tp"], case["fn"]) == (1, 0, 1)


def test_the_phantom_prepares_more_slices_of_the_same_data(tmp_path: Path):
    options = {"subjects": 2, "seed": 1, "test_fraction": 0.5, "min_levels": 2, "max_levels": 2}
    cache = tmp_path / "prepared"
    wide_params = PreprocessParams(n_slices=9)
    wide = PhantomDataset(cache_dir=cache, workers=1, params=wide_params, **options).prepare()
    five = PhantomDataset(cache_dir=cache, workers=1, **options).prepare()
    assert wide.fingerprint == five.fingerprint
    assert wide.training_set().fingerprint == five.training_set().fingerprint
    for a, b in zip(wide.vertebrae, five.vertebrae, strict=True):
        assert a.slices.shape[0] == 9 and b.slices.shape[0] == 5
        np.testing.assert_array_equal(a.training_view().slices, b.slices)
        np.testing.assert_array_equal(a.sample().stack, b.sample().stack)
        np.testing.assert_array_equal(a.reference, b.reference)
