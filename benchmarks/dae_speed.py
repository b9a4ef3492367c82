"""Diffusion-autoencoder speed on this machine: training step, encode, invert, decode, memory.

    python benchmarks/dae_speed.py --config cpu --threads 2 --batch 16 --repeats 5

Times (median of ``--repeats``) a training step (forward, backward, Adam, EMA) at ``--batch`` on
random 64×64 slices, and images per second of ``encode``, ``stochastic_encode`` and ``decode`` at
the given DDIM step counts (default: Hide-and-Seek's 20/20 and the paper's 250/100) for a batch
of ``--infer-batch``. The weights are random (speed does not depend on them). Peak memory is the
process's maximum resident set size (``ru_maxrss``) after each stage.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
from wsbench.plugins.shared.dae.network import DiffusionAutoencoder, config_named
from wsbench.plugins.shared.dae.training import diffusion_loss, update_ema


def peak_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux ``ru_maxrss`` is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_seconds(function, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--infer-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs=2, action="append", metavar=("STOCH", "DEC"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = config_named(args.config)
    model = DiffusionAutoencoder(config)
    ema = DiffusionAutoencoder(config).requires_grad_(False)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    size = config.image_size
    x = torch.rand(args.batch, 1, size, size) * 2 - 1
    generator = torch.Generator().manual_seed(0)

    def train_step() -> None:
        loss = diffusion_loss(model, x, generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        update_ema(ema, model, 0.999)

    result = {"config": args.config, "threads": args.threads, **model.parameter_count()}
    result["train_step_s"] = round(median_seconds(train_step, args.repeats), 3)
    result["train_batch"] = args.batch
    result["peak_rss_mb_after_training"] = round(peak_mb())
    model.eval()
    xi = torch.rand(args.infer_batch, 1, size, size) * 2 - 1
    with torch.inference_mode():
        z = model.encode(xi)
        seconds = median_seconds(lambda: model.encode(xi), args.repeats)
        result["encode_images_per_s"] = round(args.infer_batch / seconds, 1)
        for stoch, dec in args.steps or [(20, 20), (250, 100)]:
            repeats = max(1, args.repeats // 3) if max(stoch, dec) > 50 else args.repeats
            s = median_seconds(lambda n=stoch: model.stochastic_encode(xi, z, n), repeats)
            d = median_seconds(lambda n=dec: model.decode(xi, z, n), repeats)
            result[f"stochastic_encode_{stoch}_images_per_s"] = round(args.infer_batch / s, 2)
            result[f"decode_{dec}_images_per_s"] = round(args.infer_batch / d, 2)
    result["infer_batch"] = args.infer_batch
    result["peak_rss_mb"] = round(peak_mb())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
