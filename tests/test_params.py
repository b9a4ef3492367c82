"""Method parameters and training settings come from the signatures that take them."""

from __future__ import annotations

from typing import Literal

import pytest
from typer.testing import CliRunner

from wsbench.cli.main import app
from wsbench.harness.params import ParameterError, coerce, method_params, train_settings
from wsbench.harness.registry import load_method
from wsbench.plugins.hideseek import HideAndSeekUngated
from wsbench.plugins.otsu import Otsu


@pytest.mark.parametrize(
    ("text", "hint", "default", "expected"),
    [
        ("true", bool, False, True),
        ("0", bool, True, False),
        ("7", int, 1, 7),
        ("1e-3", float, 0.5, 1e-3),
        ("none", int | None, None, None),
        ("3", int | None, None, 3),
        ("20,10", tuple[int, ...], None, (20, 10)),
        ("fast", Literal["fast", "slow"], "slow", "fast"),
        ("2.5", None, 1.0, 2.5),  # no annotation: the default's type
        ("cpu", None, "cuda", "cpu"),
    ],
)
def test_coerce_by_annotation_or_default(text, hint, default, expected):
    assert coerce(text, hint, default, "-p x") == expected


@pytest.mark.parametrize(
    ("text", "hint", "message"),
    [
        ("maybe", bool, "not a boolean"),
        ("x", int, "'x' is not int"),
        ("warm", Literal["a"], "not one of a"),
    ],
)
def test_coerce_names_the_option_and_the_value(text, hint, message):
    with pytest.raises(ParameterError, match=f"-p x: .*{message}"):
        coerce(text, hint, None, "-p x")


def test_a_configuration_lists_its_parents_parameters_with_its_own_defaults():
    parameters = HideAndSeekUngated.parameters()
    assert parameters["only_malignant"].default is False and "p_target" in parameters
    assert method_params(HideAndSeekUngated, ["p_target=0.01", "only_malignant=true"]) == {
        "p_target": 0.01,
        "only_malignant": True,
    }
    assert Otsu.parameters() == {} and Otsu().params() == {}
    with pytest.raises(
        ParameterError, match=r"has no parameter 'p_targt'. Did you mean 'p_target'"
    ):
        method_params(HideAndSeekUngated, ["p_targt=1"])
    with pytest.raises(ParameterError, match="not of the form key=value"):
        method_params(HideAndSeekUngated, ["p_target"])


def test_training_settings_are_the_keyword_arguments_of_train():
    hideseek = load_method("hideseek")
    assert set(hideseek.train_settings()) >= {"config", "steps", "lr_decay_from"}
    assert train_settings(hideseek, ["steps=10", "lr=1e-4"]) == {"steps": 10, "lr": 1e-4}
    assert load_method("gradcam").train_settings() == {}


def test_methods_describes_one_method():
    result = CliRunner().invoke(app, ["methods", "hideseek-ungated"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "only_malignant" in result.output and "False" in result.output
    assert "training settings" in result.output and "lr_decay_from" in result.output
