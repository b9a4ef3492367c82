"""Seconds per vertebra of the MedSAM plugin with a full-size ViT-B on CPU.

The weights are randomly initialised (speed does not depend on them): segment-anything's
``sam_model_registry["vit_b"]()`` is saved once as a checkpoint and loaded through the plugin's
own loader, then 64×64 vertebra slices (0.8 mm) are segmented one by one (what the runner does)
and in encoder batches of ``--batch``; one encoder and one decoder pass are also timed
alone. Prints one JSON record.

    python benchmarks/medsam_speed.py --threads 2 --repeats 3 --batch 2
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import sam_model_registry
from wsbench.plugins.medsam import MedSAM, loose_box, preprocess, scale_box

SLICE = 64
SPACING = (0.8, 0.8)


def random_vit_b(path: Path) -> Path:
    """A randomly initialised SAM ViT-B saved as a plain state dict (kept for later runs)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    return path


def vertebra(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 64×64 HU slice (bone on soft tissue, noisy) and its body mask."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 30.0, (SLICE, SLICE)).astype(np.float32)
    body = np.zeros((SLICE, SLICE), bool)
    body[14:50, 12:52] = True
    image[body] += 300.0
    return image, body


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def seconds(call) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed single-vertebra calls")
    parser.add_argument("--batch", type=int, default=2, help="vertebrae per encoder batch")
    parser.add_argument(
        "--checkpoint", type=Path, default=Path("/work/scratch/medsam/random_vit_b.pth")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    path = random_vit_b(args.checkpoint)
    load = time.perf_counter()
    method = MedSAM(checkpoint=str(path))
    load = time.perf_counter() - load
    slices = [vertebra(i) for i in range(max(args.repeats, args.batch) + 1)]

    image, body = slices[0]
    warmup = seconds(lambda: method.segment(image, body, spacing=SPACING))
    single = [
        seconds(lambda im=im, b=b: method.segment(im, b, spacing=SPACING))
        for im, b in slices[1 : args.repeats + 1]
    ]
    rss_single = peak_rss_gb()
    x = torch.from_numpy(preprocess(image, method.window, method.architecture.img_size))
    box = scale_box(loose_box(body, (5, 5)), body.shape, method.architecture.img_size)
    with torch.inference_mode():
        start = time.perf_counter()
        embedding = method.sam.image_encoder(x[None])
        encoder = time.perf_counter() - start
        decoder = seconds(lambda: method.decode(embedding, box, body.shape))
    images, bodies = zip(*slices[: args.batch], strict=True)
    batched = seconds(lambda: method.segment_many(images, bodies, [SPACING] * args.batch))
    print(
        json.dumps(
            {
                "architecture": method.architecture.name,
                "threads": args.threads,
                "load_s": round(load, 2),
                "warmup_s": round(warmup, 2),
                "per_vertebra_s": [round(s, 2) for s in single],
                "per_vertebra_median_s": round(float(np.median(single)), 2),
                "encoder_s": round(encoder, 2),
                "decoder_s": round(decoder, 4),
                "peak_rss_single_gb": rss_single,
                "batch": args.batch,
                "batched_per_vertebra_s": round(batched / args.batch, 2),
                "peak_rss_gb": peak_rss_gb(),
            }
        )
    )


if __name__ == "__main__":
    main()
