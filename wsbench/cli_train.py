"""``wsbench train``: train (or find) the model a learned method needs, before any run.

Mount with ``app.add_typer(cli_train.app, name="train")``. Trainers are looked up by method name
in :data:`TRAINERS`; a module adds its own with ``TRAINERS["name"] = function``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from wsbench.nets.classifier import ClassifierConfig, ensure_classifier
from wsbench.registry import PluginError
from wsbench.runner import RunConfig, RunError, prepare_dataset
from wsbench.types import TrainingSet

Trainer = Callable[[TrainingSet, "int | None", int], "tuple[Path, bool]"]
"""``(training set, epochs or None for the default, seed) -> (checkpoint, newly trained)``."""


def train_cam_classifier(training: TrainingSet, epochs: int | None, seed: int) -> tuple[Path, bool]:
    """The ResNet-18 classifier shared by the CAM baselines (found or trained)."""
    config = ClassifierConfig(seed=seed) if epochs is None else ClassifierConfig(epochs, seed=seed)
    return ensure_classifier(training, config)


TRAINERS: dict[str, Trainer] = {
    name: train_cam_classifier
    for name in ("classifier", "gradcam", "gradcampp", "layercam", "eigencam")
}
"""Method name → trainer; the CAM methods all use the one classifier."""

console = Console()
app = typer.Typer(help="Train the model of a learned method (reused when already stored).")


@app.callback(invoke_without_command=True)
def train(
    method: Annotated[str, typer.Option("--method", "-m", help="Method (or 'classifier').")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name.")] = "phantom",
    root: Annotated[Path | None, typer.Option(help="Dataset folder (not for phantom).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: method's).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
) -> None:
    """Train the model of --method on the training split of --dataset, or report the stored one."""
    if method not in TRAINERS:
        known = ", ".join(sorted(TRAINERS))
        message = f"no trainer for {method!r}; known: {known}"
        raise typer.BadParameter(message, param_hint="--method")
    try:
        _, prepared = prepare_dataset(RunConfig(method, dataset, root=str(root) if root else None))
        path, trained = TRAINERS[method](prepared.training_set(), epochs, seed)
    except (OSError, ValueError, RuntimeError, RunError, PluginError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(card_table(path, trained))


def card_table(path: Path, trained: bool) -> Table:
    """The model card beside ``path`` as a two-column table."""
    table = Table(title=f"{'trained' if trained else 'reused'} {path}")
    table.add_column("field")
    table.add_column("value")
    card = path.with_suffix(".json")
    record = json.loads(card.read_text()) if card.exists() else {"card": "missing"}
    for name, value in record.items():
        table.add_row(name, str(value))
    return table
