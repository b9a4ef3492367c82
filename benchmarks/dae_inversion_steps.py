"""Which half of a few-step DAE round trip loses the image: the DDIM inversion or the decoding?

    python benchmarks/dae_inversion_steps.py DAE.pt [...] [--settings 20/20,100/20,20/100,100/100]

For each DAE and each ``S/D`` setting, the quality report's seeded sample of 64 test slices is
reconstructed as ``decode(stochastic_encode(x, z, S), z, D)`` and compared with the original
(SSIM and PSNR in network units, as the report does). Raising only ``S`` or only ``D`` shows
which of the two step counts the reconstruction needs. One torch thread; seconds per setting.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import pandas as pd
import torch
import typer
from wsbench.plugins.shared.dae.network import DiffusionAutoencoder
from wsbench.plugins.shared.dae.training import (
    mid_slices,
    reconstruct_slices,
    report_sample,
    similarity,
)

from wsbench.contract import Split
from wsbench.harness.runner import RunConfig, prepare_dataset

app = typer.Typer(add_completion=False, help=__doc__)


def step_pairs(text: str) -> list[tuple[int, int]]:
    """``"20/20,100/20"`` → ``[(20, 20), (100, 20)]``."""
    pairs = []
    for item in text.split(","):
        stochastic, decode = item.split("/")
        pairs.append((int(stochastic), int(decode)))
    return pairs


@app.command()
def main(
    checkpoints: Annotated[list[Path], typer.Argument(help="DAE checkpoints")],
    settings: Annotated[
        str, typer.Option(help="comma list of S/D step pairs")
    ] = "20/20,100/20,20/100,100/100",
    dataset: Annotated[str, typer.Option(help="registered dataset")] = "phantom",
    seed: Annotated[int, typer.Option(help="slice sample seed (the report's)")] = 0,
) -> None:
    """Print SSIM and PSNR per DAE and step setting."""
    torch.set_num_threads(1)
    _, data = prepare_dataset(RunConfig("hideseek", dataset))
    slices = report_sample(mid_slices(data.split(Split.TEST)), seed)
    rows = []
    for path in checkpoints:
        dae = DiffusionAutoencoder.load(path).eval()
        for steps in step_pairs(settings):
            start = time.perf_counter()
            ssim, psnr = similarity(dae.to_unit(slices), reconstruct_slices(dae, slices, steps))
            rows.append({"DAE": path.stem, "S/D": f"{steps[0]}/{steps[1]}",
                         "SSIM": ssim.mean(), "PSNR dB": psnr.mean(),
                         "seconds": time.perf_counter() - start})  # fmt: skip
            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False), flush=True)
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    app()
