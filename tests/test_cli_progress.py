"""Progress lines without a terminal, the bench plan, one-line errors and help text."""

from __future__ import annotations

from pathlib import Path

import fakes
from typer.testing import CliRunner

from wsbench.cli.main import app
from wsbench.progress import progress_bar, progress_line

TINY = ["--dataset", "fakes:TinyDataset"]


def test_progress_line_says_done_total_rate_and_eta() -> None:
    assert progress_line("otsu on tiny", 2, 4, 0.5) == "otsu on tiny: 2/4 (50%), 0.5/s, ETA 0:00:04"
    assert progress_line("build", 0, None, None) == "build: 0/?, ?/s, ETA ?"
    assert progress_line("otsu on tiny", 4, 4, 0.5) == "otsu on tiny: 4/4 (100%), 0.5/s, done"
    assert progress_line("preparing", 1, 1, None) == "preparing: 1/1 (100%), done"


def test_run_without_a_terminal_logs_progress_lines(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--method", "otsu", *TINY, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "4/4 (100%)" in line]
    assert len(lines) == 1 and lines[0].startswith("otsu on fakes:TinyDataset")
    assert lines[0].endswith("/s, done")


def test_a_loop_logs_once_at_the_end_when_quicker_than_the_interval(capsys) -> None:
    with progress_bar() as bar:
        for _ in bar.track(range(3), description="reading"):
            pass
    assert capsys.readouterr().err.count("reading: 3/3 (100%)") == 1


def test_disabled_progress_prints_nothing(capsys) -> None:
    with progress_bar(enabled=False) as bar:
        for _ in bar.track(range(3), description="quiet"):
            pass
    assert capsys.readouterr().err == ""


def test_missing_root_is_one_line_without_a_bar(tmp_path: Path) -> None:
    for command in (["run", "-m", "hideseek"], ["bench"], ["train", "-m", "hideseek"]):
        result = CliRunner().invoke(app, [*command, "-d", "tcia"])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1, result.output
        assert len(lines) == 1 and lines[0].startswith("error: dataset 'tcia' needs --root: ")
        assert "ETA" not in result.output


def test_datasets_check_without_root_is_one_line() -> None:
    result = CliRunner().invoke(app, ["datasets", "check", "-d", "tcia"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith("error: dataset 'tcia' needs --root")


def test_bench_prints_its_plan_before_running(tmp_path: Path) -> None:
    args = ["bench", *TINY, "--methods", "otsu,fakes:NoisyMethod", "--out", str(tmp_path)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    plan = first.output[: first.output.index("bench on")]
    assert "bench plan" in plan and plan.index("otsu") < plan.index("fakes:NoisyMethod")
    assert "unknown" in plan
    again = CliRunner().invoke(app, args)
    plan = again.output[: again.output.index("bench on")]
    assert "reuse finished run" in plan and "unknown" not in plan


def test_default_bench_order_puts_methods_that_train_nothing_first() -> None:
    from wsbench.harness.bench import default_methods
    from wsbench.harness.registry import load_method

    learns = [load_method(name).learns() for name in default_methods()]
    assert learns == sorted(learns)


def test_help_shows_no_type_metavars_for_flags_and_key_value_for_lists() -> None:
    for command in (["run"], ["bench"], ["train"], ["datasets", "check"]):
        text = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"}).output
        assert "list[str]" not in text
        options = [line for line in text.splitlines() if "--" in line and "--help" not in line]
        assert not any("<bool>" in line for line in options), command
    assert "KEY=VALUE" in CliRunner().invoke(app, ["run", "--help"]).output


def test_an_interrupt_says_how_to_continue(tmp_path: Path) -> None:
    cases = (
        ("run", ["-m", "fakes:CrashAfterTwo"], "run the same command with --resume to continue"),
        ("bench", ["--methods", "fakes:CrashAfterTwo"],
         "run the same command again: finished runs are kept, unfinished ones resumed"),
    )  # fmt: skip
    for command, args, advice in cases:
        fakes.CrashAfterTwo.calls, fakes.CrashAfterTwo.crash_at = 0, 2
        out = ["--out", str(tmp_path / command), "--timeout", "0", *TINY]
        result = CliRunner().invoke(app, [command, *args, *out], env={"COLUMNS": "200"})
        assert result.exit_code == 130, result.output
        assert f"interrupted — finished work is kept; {advice}" in result.output
