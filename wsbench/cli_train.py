"""``wsbench train``: train (or find) the model a learned method needs, before any run.

Mount with ``app.add_typer(cli_train.app, name="train")``. Trainers are looked up by method name
in :data:`TRAINERS`; a module adds its own with ``TRAINERS["name"] = function``. The diffusion
autoencoder has its own options: ``wsbench train --model dae --dataset D [--config cpu|paper]
[--healthy-only] [--resume] [--steps N] [--lr-decay-from N] [--reevaluate] [--device cuda]``
(``--method hideseek`` / ``--method ad`` are shortcuts for the default DAE of those methods).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from wsbench.registry import PluginError
from wsbench.types import TrainingSet

Trainer = Callable[[TrainingSet, "int | None", int], "tuple[Path, bool]"]
"""``(training set, epochs or None for the default, seed) -> (checkpoint, newly trained)``."""


def train_cam_classifier(training: TrainingSet, epochs: int | None, seed: int) -> tuple[Path, bool]:
    """The ResNet-18 classifier shared by the CAM baselines (found or trained)."""
    from wsbench.nets.classifier import ClassifierConfig, ensure_classifier

    config = ClassifierConfig(seed=seed) if epochs is None else ClassifierConfig(epochs, seed=seed)
    return ensure_classifier(training, config)


TRAINERS: dict[str, Trainer] = {
    name: train_cam_classifier
    for name in ("classifier", "gradcam", "gradcampp", "layercam", "eigencam")
}
"""Method name → trainer; the CAM methods all use the one classifier."""

DAE_METHODS = {"hideseek": False, "ad": True}
"""Methods whose model is the DAE → whether it is trained on healthy vertebrae only."""
MODELS = ("dae",)

console = Console()
app = typer.Typer(help="Train the model of a learned method (reused when already stored).")


@app.callback(invoke_without_command=True)
def train(
    method: Annotated[
        str | None, typer.Option("--method", "-m", help="Method (or 'classifier').")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model to train: dae.")] = None,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name.")] = "phantom",
    root: Annotated[Path | None, typer.Option(help="Dataset folder (not for phantom).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: method's).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    config: Annotated[str, typer.Option(help="DAE config: cpu, paper or tiny.")] = "cpu",
    healthy_only: Annotated[
        bool, typer.Option("--healthy-only", help="DAE on healthy vertebrae (the AD model).")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(help="Continue an interrupted DAE run, or extend a finished one to --steps."),
    ] = False,
    steps: Annotated[int | None, typer.Option(min=1, help="DAE training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="DAE batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="DAE learning rate (Adam).")] = None,
    lr_decay_from: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Hold the DAE learning rate until this step, then decay it to zero at --steps "
            "along a cosine [default: constant]. With --resume it extends a constant-rate run.",
        ),
    ] = None,
    eval_steps: Annotated[
        tuple[int, int] | None,
        typer.Option(help="DDIM steps (stochastic encode, decode) of the report [default: 20 20]."),
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="DAE resume-state period.")] = 200,
    reevaluate: Annotated[
        bool, typer.Option("--reevaluate", help="Recompute a stored DAE's quality report.")
    ] = False,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Torch threads (1 on a shared machine).")
    ] = None,
    device: Annotated[
        str,
        typer.Option(help="Torch device of DAE training and its report: cpu, cuda, cuda:N, mps."),
    ] = "cpu",
) -> None:
    """Train the model of --method (or --model) on the training split of --dataset.

    A model already stored for the same data and configuration is reported, not retrained.
    Examples: `wsbench train --method gradcam`, `wsbench train --model dae --dataset phantom
    --config cpu --steps 3000`, `wsbench train --model dae --healthy-only --resume`.
    """
    if (method is None) == (model is None):
        raise typer.BadParameter("give exactly one of --method and --model", param_hint="--method")
    if model is not None and model not in MODELS:
        raise typer.BadParameter(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    if method is not None and method not in TRAINERS and method not in DAE_METHODS:
        known = ", ".join(sorted([*TRAINERS, *DAE_METHODS]))
        message = f"no trainer for {method!r}; known: {known}"
        raise typer.BadParameter(message, param_hint="--method")
    import torch  # torch and the trainers load only when a command trains (fast --help)

    from wsbench import dae_train
    from wsbench.nets.device import torch_device
    from wsbench.runner import RunConfig, RunError, prepare_dataset

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if method in TRAINERS and device != "cpu":
            raise ValueError(
                f"--device {device}: only the DAE (--model dae, --method hideseek or ad) trains "
                "on another device; the CAM classifier trains on the CPU (drop --device)"
            )
        torch_device(device)  # a device this machine lacks stops before any data work
        name = method or model or ""
        _, prepared = prepare_dataset(RunConfig(name, dataset, root=str(root) if root else None))
        if method in TRAINERS:
            path, trained = TRAINERS[method](prepared.training_set(), epochs, seed)
        else:
            healthy = DAE_METHODS.get(method, healthy_only) if method else healthy_only
            settings = {
                "steps": steps,
                "batch_size": batch_size,
                "lr": lr,
                "lr_decay_from": lr_decay_from,
            }
            train_cfg = dae_train.train_config(config, seed=seed, healthy_only=healthy, **settings)
            path, trained = dae_train.ensure_dae(
                prepared,
                train_cfg,
                resume,
                eval_steps or dae_train.EVAL_STEPS,
                checkpoint_every=checkpoint_every,
                reevaluate=reevaluate,
                device=device,
            )
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
