"""The experiments behind the claims in docs/: one command each (benchmarks/README.md).

Usage:

    python benchmarks/experiment.py --help
    python benchmarks/experiment.py hideseek-curve measure --settings 20/20 --vertebrae 4
    python benchmarks/experiment.py phantom-lesion-contrast --split test

An experiment with several commands (``hideseek-curve``: ``measure``, ``report``, ``edit``) is a
command group; one with a single command is that command.
"""

from __future__ import annotations

import typer
from experiments import (
    hideseek_classifier_recipe,
    hideseek_curve,
    hideseek_delta_auc,
    hideseek_edit_localisation,
    hideseek_real_sample,
    hideseek_reencoder,
    phantom_lesion_contrast,
    phantom_realism,
    weights_precision,
)

EXPERIMENTS = {
    "hideseek-classifier-recipe": hideseek_classifier_recipe,
    "hideseek-curve": hideseek_curve,
    "hideseek-delta-auc": hideseek_delta_auc,
    "hideseek-edit-localisation": hideseek_edit_localisation,
    "hideseek-real-sample": hideseek_real_sample,
    "hideseek-reencoder": hideseek_reencoder,
    "phantom-realism": phantom_realism,
    "phantom-lesion-contrast": phantom_lesion_contrast,
    "weights-precision": weights_precision,
}

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode="markdown"
)


def mount(root: typer.Typer, name: str, sub: typer.Typer) -> None:
    """Add ``sub`` to ``root`` as ``name``: its only command directly, else as a group."""
    commands = sub.registered_commands
    if len(commands) == 1 and not sub.registered_groups:
        root.command(name, help=sub.info.help)(commands[0].callback)
    else:
        root.add_typer(sub, name=name)


for experiment, module in EXPERIMENTS.items():
    mount(app, experiment, module.app)


if __name__ == "__main__":
    app()
