"""Quality of DAE training snapshots: does ``z_sem`` become semantic as training goes on?

    python benchmarks/dae_snapshots.py STATE_OR_CHECKPOINT [...] [--dataset phantom]

Each argument is a training state (``<stem>.resume`` of a run in progress — copy it first, the
run rewrites it — or ``<stem>.state`` of a finished one; its EMA weights are read) or a DAE
checkpoint (``.pt``). One row each, at 20/20 DDIM steps on the quality report's seeded sample of
64 test slices: the decoder's use of ``z_sem`` (``latent_swap_hu``), the mean |HU| reconstruction
error and SSIM of those slices, and the report's held-out latent AUC. A semantic DAE has a swap
effect well above its reconstruction error and a latent AUC well above the untrained level
(``latent_auc_untrained`` on the model cards).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from wsbench.plugins.shared.dae.network import DiffusionAutoencoder
from wsbench.plugins.shared.dae.training import (
    EVAL_STEPS,
    latent_auc,
    latent_swap_hu,
    mid_slices,
    reconstruct_slices,
    report_sample,
    similarity,
    training_state_ema,
)

from wsbench.contract import Split
from wsbench.harness.runner import RunConfig, prepare_dataset

app = typer.Typer(add_completion=False, help=__doc__)


def snapshot(path: Path) -> tuple[DiffusionAutoencoder, int | None]:
    """The model in ``path`` and its step (``None`` for a checkpoint, whose card has it)."""
    if path.suffix == ".pt":
        return DiffusionAutoencoder.load(path), None
    return training_state_ema(path)


def table(rows: list[dict[str, object]]) -> str:
    """The rows as printed text (steps as integers, blank for checkpoints)."""
    return pd.DataFrame(rows).astype({"step": "Int64"}).round(3).to_string(index=False)


@app.command()
def main(
    paths: Annotated[list[Path], typer.Argument(help="training states or DAE checkpoints")],
    dataset: Annotated[str, typer.Option(help="registered dataset")] = "phantom",
    seed: Annotated[int, typer.Option(help="slice sample and hold-out seed")] = 0,
) -> None:
    """Print one quality row per snapshot."""
    torch.set_num_threads(1)
    _, data = prepare_dataset(RunConfig("hideseek", dataset))
    test = data.split(Split.TEST)
    slices = report_sample(mid_slices(test), seed)
    rows = []
    for path in paths:
        dae, step = snapshot(path)
        recon = reconstruct_slices(dae, slices, EVAL_STEPS)
        ssim, _ = similarity(dae.to_unit(slices), recon)
        error = np.abs(dae.to_hu(recon) - slices.clip(*dae.hu_window)).mean()
        rows.append({
            "snapshot": path.name,
            "step": step,
            "swap |HU|": latent_swap_hu(dae, slices, EVAL_STEPS),
            "recon |HU|": float(error),
            "SSIM": float(ssim.mean()),
            "latent AUC": latent_auc(dae, data.training_set(), seed)["latent_auc"],
        })  # fmt: skip
        print(table(rows[-1:]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    app()
