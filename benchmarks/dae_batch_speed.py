"""Does batching images pay on this machine? Milliseconds per image of the shipped DAE's noise
predictor (one DDIM step) and semantic encoder, by batch size.

    python benchmarks/dae_batch_speed.py [--threads 1] [--batches 1,8,16,32] [--repeats 10]

Hide-and-Seek batches the candidates of one vertebra; this measures whether batching several
vertebrae together (the issue's "and vertebrae together") would make a DDIM pass cheaper per
image. Run it on an otherwise idle machine: other jobs on the same cores distort the figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

import torch
import typer
from wsbench.plugins.shared.dae.network import DiffusionAutoencoder, find_dae

from wsbench.harness.runner import RunConfig, prepare_dataset
from wsbench.models.store import SHIPPED_DIR

app = typer.Typer(add_completion=False)


def ms_per_image(call: Callable[[int], None], batch: int, repeats: int) -> float:
    """Mean wall milliseconds per image of ``call(batch)`` after two warm-up calls."""
    for _ in range(2):
        call(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        call(batch)
    return 1000 * (time.perf_counter() - start) / repeats / batch


@app.command()
def main(
    threads: Annotated[int, typer.Option(help="torch CPU threads")] = 1,
    batches: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "1,8,16,32",
    repeats: Annotated[int, typer.Option(help="timed calls per batch size")] = 10,
) -> None:
    """Print ms per image of one noise-prediction step and of one encoding, per batch size."""
    torch.set_num_threads(threads)
    _, data = prepare_dataset(RunConfig("hideseek", "phantom"))
    path = find_dae(data.fingerprint, "dae")
    if path is None:
        raise typer.BadParameter(f"no phantom DAE in {SHIPPED_DIR}; train one first")
    dae = DiffusionAutoencoder.load(path)
    size = dae.config.image_size

    def unet(batch: int) -> None:
        dae.noise(torch.randn(batch, 1, size, size), 500, torch.randn(batch, dae.config.z_dim))

    def encoder(batch: int) -> None:
        dae.encode(torch.randn(batch, 1, size, size))

    print(f"{path.name}, {threads} thread(s)")
    print("batch | UNet step ms/image | encoder ms/image")
    with torch.inference_mode():
        for batch in (int(b) for b in batches.split(",")):
            step, encode = ms_per_image(unet, batch, repeats), ms_per_image(encoder, batch, repeats)
            print(f"{batch:5d} | {step:18.2f} | {encode:16.2f}")


if __name__ == "__main__":
    app()
